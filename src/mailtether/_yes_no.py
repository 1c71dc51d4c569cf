"""``YES_NO``: the words a yes-or-no setting takes, in a settings file or a URL."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["YES_NO"]

YES_NO: Final[Mapping[str, bool]] = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}
"""Each word (lower case, no spaces around it) and what it says."""
