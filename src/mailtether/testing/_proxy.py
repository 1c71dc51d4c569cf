"""Placeholder: the fault-injecting TCP proxy is being written (see issue 3)."""

from __future__ import annotations

__all__ = ["FaultProxy"]


class FaultProxy:
    """Not written yet."""
