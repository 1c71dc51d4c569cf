"""``Watchdog``: gives up a PostgreSQL call that gets no answer in time; one per process."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from typing import Any, Final

__all__ = ["WATCHDOG", "Watchdog"]

_TICK: Final = 0.1
"""How often the watchdog looks at calls in flight."""
_QUIET: Final = 5.0
"""Seconds without calls after which the watchdog sleeps until the next one."""


class Watchdog:
    """Shuts down the connection of a call that got no answer in time; one for every store.

    ``statement_timeout`` makes a live server cancel a slow statement, but nothing makes a
    silent one answer (a frozen host, a black-holed network, a half-open connection), and
    psycopg would wait for it forever. Shutting the socket down wakes the waiting call with
    an error. The thread looks every ``_TICK`` seconds while calls come, and sleeps when none
    has come for ``_QUIET`` seconds, so an idle process pays nothing.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # Also in a forked child, which has the parent's state but not its thread.
        self._wake = threading.Condition(threading.Lock())
        self._watched: dict[int, tuple[float, Any]] = {}
        self._ids = itertools.count()
        self._last_call = 0.0
        self._sleeping = True
        self._thread: threading.Thread | None = None

    def watch(self, connection: Any, seconds: float) -> int:
        """Start watching a call on *connection*; return the id to pass to :meth:`unwatch`."""
        now = time.monotonic()
        with self._wake:
            ident = next(self._ids)
            self._watched[ident] = (now + seconds, connection)
            self._last_call = now
            if self._sleeping:
                self._sleeping = False
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._loop, name="mailtether-postgres-watchdog", daemon=True
                    )
                    self._thread.start()
                else:
                    self._wake.notify()
        return ident

    def unwatch(self, ident: int) -> bool:
        """Stop watching; ``False`` if the watchdog has already shut the connection down."""
        with self._wake:
            return self._watched.pop(ident, None) is not None

    def _loop(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                for ident, (deadline, connection) in list(self._watched.items()):
                    if deadline <= now:
                        # Under the lock: the caller cannot close the connection (and free
                        # its file descriptor for reuse) before it has unwatched it.
                        del self._watched[ident]
                        _shut_down(connection)
                if not self._watched and now - self._last_call > _QUIET:
                    self._sleeping = True
                    while self._sleeping:
                        self._wake.wait()
                else:
                    self._wake.wait(_TICK)


WATCHDOG: Final = Watchdog()
"""The one watchdog, for every PostgresStore of the process."""
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WATCHDOG._reset)


def _shut_down(connection: Any) -> None:
    """Shut the connection's socket down, so a call waiting on it fails at once."""
    try:
        duplicate = os.dup(connection.fileno())
    except Exception:  # the call ended and the connection was closed meanwhile
        return
    try:
        sock = socket.socket(fileno=duplicate)
    except OSError:
        os.close(duplicate)
        return
    with sock, contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
