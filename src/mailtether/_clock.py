"""Time as an injected dependency.

Every part of mailtether that waits or reads the time takes a :class:`Clock`, so tests
drive schedules with :class:`mailtether.testing.FakeClock` instead of sleeping for real.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Where mailtether reads the time and waits.

    Implementations must be safe to call from several threads.
    """

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences are meaningful."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch, for values that outlive the process."""
        ...

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        """Wait *seconds*, or less if *stop* is set meanwhile.

        A delay of zero or less returns at once without waiting.

        Returns:
            ``True`` if *stop* was set (the wait was interrupted), else ``False``.
        """
        ...


def _check_seconds(seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"seconds must be a number, not {type(seconds).__name__}")
    if math.isnan(seconds):
        raise ValueError("seconds must not be NaN")
    return float(seconds)


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.time` and an interruptible sleep."""

    __slots__ = ()

    def monotonic(self) -> float:
        """Return :func:`time.monotonic`."""
        return time.monotonic()

    def time(self) -> float:
        """Return :func:`time.time`."""
        return time.time()

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        """Wait *seconds* or until *stop* is set; zero or less returns at once."""
        seconds = _check_seconds(seconds)
        if stop is not None and stop.is_set():
            return True
        if seconds <= 0:
            return False
        if stop is None:
            time.sleep(seconds)
            return False
        return stop.wait(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: Clock = SystemClock()
"""The process-wide :class:`SystemClock`, the default wherever a clock is optional."""
