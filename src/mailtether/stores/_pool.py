"""``Pool``: the few idle connections SQLiteStore and PostgresStore keep for reuse."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["Pool"]


class _Connection(Protocol):
    def close(self) -> None: ...


_C = TypeVar("_C", bound=_Connection)


class Pool(Generic[_C]):
    """Idle connections kept for the next call: a few at most, closed for good by :meth:`close`.

    A pool rather than one connection per thread: callers (a lock's heartbeat) may use a new
    thread for every call. ``list.pop`` and ``list.append`` are atomic under the GIL, so
    :meth:`take` and :meth:`put_back` take no lock; :meth:`close` empties the pool under one,
    and a connection put back while it ran is closed too.

    Args:
        connect: Opens a new connection, when no idle one is left.
        size: How many idle connections to keep at most.
        usable: Whether an idle connection is still worth using; one that is not is closed
            and the next is tried. ``None``: every idle connection is.
    """

    def __init__(
        self,
        connect: Callable[[], _C],
        *,
        size: int = 8,
        usable: Callable[[_C], bool] | None = None,
    ) -> None:
        self._connect = connect
        self._size = size
        self._usable = usable
        self._idle: list[_C] = []
        self._lock = threading.Lock()
        self.closed = False
        """Whether :meth:`close` was called: the store refuses calls from then on."""

    def take(self) -> _C:
        """An idle connection that is still usable, or else a new one."""
        while True:
            try:
                connection = self._idle.pop()
            except IndexError:
                return self._connect()
            if self._usable is None or self._usable(connection):
                return connection
            connection.close()

    def put_back(self, connection: _C) -> None:
        """Keep *connection* for the next call, or close it if the pool is full or closed."""
        if len(self._idle) < self._size and not self.closed:
            self._idle.append(connection)
            if self._is_closed():  # close() ran meanwhile: leave no connection open
                self._close_idle()
        else:
            connection.close()

    def close(self) -> None:
        """Close every idle connection; connections put back later are closed too."""
        self.closed = True
        self._close_idle()

    def _is_closed(self) -> bool:
        # A call, not the attribute: it may have changed since put_back looked at it.
        return self.closed

    def _close_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
