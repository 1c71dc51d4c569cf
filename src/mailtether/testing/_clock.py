"""A clock for tests that advances instantly."""

from __future__ import annotations

import math
import threading

from mailtether._clock import _check_seconds

__all__ = ["FakeClock"]


class FakeClock:
    """A :class:`mailtether.Clock` whose time moves only when told to, or when slept on.

    ``sleep(s)`` returns at once and moves both the monotonic and the wall clock forward by
    *s*, and records *s* in :attr:`sleeps`, so a test can assert the exact schedule a
    component followed without waiting for it. A zero (or negative) delay is not recorded:
    it never sleeps.

    Example:
        >>> from mailtether.testing import FakeClock
        >>> clock = FakeClock(wall=1_000.0)
        >>> clock.sleep(30)
        False
        >>> clock.sleep(0)
        False
        >>> clock.sleeps, clock.monotonic(), clock.time()
        ([30.0], 30.0, 1030.0)
    """

    def __init__(self, *, monotonic: float = 0.0, wall: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._monotonic = _check_seconds(monotonic)
        self._wall = _check_seconds(wall)
        self.sleeps: list[float] = []
        """Every positive delay :meth:`sleep` was asked for, in order."""

    def monotonic(self) -> float:
        """Return the fake monotonic time."""
        with self._lock:
            return self._monotonic

    def time(self) -> float:
        """Return the fake wall-clock time (seconds since the epoch)."""
        with self._lock:
            return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by *seconds* (which must be finite and non-negative)."""
        seconds = _check_seconds(seconds)
        if seconds < 0 or math.isinf(seconds):
            raise ValueError(f"seconds must be finite and >= 0, got {seconds!r}")
        with self._lock:
            self._monotonic += seconds
            self._wall += seconds

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        """Advance by *seconds* at once; return ``True`` without advancing if *stop* is set."""
        seconds = _check_seconds(seconds)
        if stop is not None and stop.is_set():
            return True
        if seconds <= 0:
            return False
        if math.isinf(seconds):
            raise ValueError("FakeClock cannot sleep forever")
        with self._lock:
            self.sleeps.append(seconds)
            self._monotonic += seconds
            self._wall += seconds
        return False

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._monotonic!r}, wall={self._wall!r})"
