"""A clock for tests that advances instantly, or only when the test says so."""

from __future__ import annotations

import math
import threading

from mailtether._clock import _check_seconds

__all__ = ["FakeClock"]


class FakeClock:
    """A :class:`mailtether.Clock` whose time moves only when told to.

    With ``auto_advance=True`` (the default), ``sleep(s)`` returns at once and moves both the
    monotonic and the wall clock forward by *s*: a single-threaded component runs its whole
    schedule instantly. With ``auto_advance=False``, ``sleep`` blocks until the test moves
    the clock past the sleeper's deadline with :meth:`advance` (or a stop event is set):
    the way to drive a background thread, such as a lock's heartbeat, step by step.
    :meth:`wait_for_sleepers` lets the test wait until the thread is asleep.

    Every positive delay asked of :meth:`sleep` is recorded in :attr:`sleeps`. A zero (or
    negative) delay is not recorded: it never sleeps.

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

    def __init__(
        self,
        *,
        monotonic: float = 0.0,
        wall: float = 1_700_000_000.0,
        auto_advance: bool = True,
    ) -> None:
        self._changed = threading.Condition()
        self._monotonic = _check_seconds(monotonic)
        self._wall = _check_seconds(wall)
        self._sleepers = 0
        self.auto_advance = auto_advance
        """Whether :meth:`sleep` moves time itself (``True``) or waits for :meth:`advance`."""
        self.sleeps: list[float] = []
        """Every positive delay :meth:`sleep` was asked for, in order."""

    def monotonic(self) -> float:
        """Return the fake monotonic time."""
        with self._changed:
            return self._monotonic

    def time(self) -> float:
        """Return the fake wall-clock time (seconds since the epoch)."""
        with self._changed:
            return self._wall

    @property
    def sleepers(self) -> int:
        """How many threads are blocked in :meth:`sleep` right now (``auto_advance=False``)."""
        with self._changed:
            return self._sleepers

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by *seconds* (finite, >= 0), waking due sleepers."""
        seconds = _check_seconds(seconds)
        if seconds < 0 or math.isinf(seconds):
            raise ValueError(f"seconds must be finite and >= 0, got {seconds!r}")
        with self._changed:
            self._monotonic += seconds
            self._wall += seconds
            self._changed.notify_all()

    def wait_for_sleepers(self, count: int = 1, timeout: float = 10.0) -> None:
        """Block (in real time, at most *timeout*) until *count* threads are asleep.

        Raises:
            TimeoutError: fewer threads went to sleep in time.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: self._sleepers >= count, timeout):
                raise TimeoutError(
                    f"expected {count} sleeping thread(s), found {self._sleepers} after {timeout} s"
                )

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        """Sleep on the fake clock; return ``True`` at once if *stop* is set.

        With ``auto_advance`` time jumps forward by *seconds*; otherwise this blocks until
        :meth:`advance` reaches the deadline or *stop* is set (checked every few
        milliseconds of real time, as an event cannot be waited on together with a condition).
        """
        seconds = _check_seconds(seconds)
        if stop is not None and stop.is_set():
            return True
        if seconds <= 0:
            return False
        if math.isinf(seconds):
            raise ValueError("FakeClock cannot sleep forever")
        with self._changed:
            self.sleeps.append(seconds)
            if self.auto_advance:
                self._monotonic += seconds
                self._wall += seconds
                self._changed.notify_all()
                return False
            deadline = self._monotonic + seconds
            self._sleepers += 1
            self._changed.notify_all()
            try:
                while self._monotonic < deadline:
                    if stop is not None and stop.is_set():
                        return True
                    self._changed.wait(0.005 if stop is not None else None)
            finally:
                self._sleepers -= 1
                self._changed.notify_all()
        return False

    def __repr__(self) -> str:
        return (
            f"FakeClock(monotonic={self._monotonic!r}, wall={self._wall!r}, "
            f"auto_advance={self.auto_advance!r})"
        )
