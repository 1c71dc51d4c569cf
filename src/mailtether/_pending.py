"""``Pending``: how much queued work is not done yet, and a wait until none is (``flush``)."""

from __future__ import annotations

import threading
import time

__all__ = ["Pending"]


class Pending:
    """A count of queued items not done yet, for a notifier's ``flush(timeout)``.

    The caller calls :meth:`add` before it queues an item, the worker :meth:`done` when it
    finished with one (an item that could not be queued is done at once).
    """

    def __init__(self) -> None:
        self._count = 0
        self._changed = threading.Condition()

    def add(self) -> None:
        """One more item is queued."""
        with self._changed:
            self._count += 1

    def done(self) -> None:
        """One item is finished with (sent, given up on, or never queued)."""
        with self._changed:
            self._count -= 1
            self._changed.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no item is pending; ``False`` after *timeout* real seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._count:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True
