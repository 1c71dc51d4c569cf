"""``Line``: the one connection a RedisStore keeps for its lease calls (and small writes).

A lease's acquire and release are two round trips of tiny commands, and for those redis-py's
connection pool costs more client time than the server's work: taking a connection and
giving it back (a lock, bookkeeping, a check that the idle connection is still good) is
about half the client time of a call. A line is one connection, used by one call at a time,
with only the check kept: a connection the server closed while it was idle (a restart, an
idle timeout) is replaced before the call, not failed in the caller's face (one failed
renewal would cost a process lock).
"""

from __future__ import annotations

import os
import threading
from typing import Any

__all__ = ["Line"]


class Line:
    """One connection of *pool*'s kind, one command at a time, safe across threads and forks.

    Args:
        pool: The store client's ``redis.ConnectionPool``: the line's connection is made with
            its settings (address, timeouts, no retries, decoding) but is not one of its own.
        redis: The ``redis`` module (optional dependency, imported by the store).
    """

    def __init__(self, pool: Any, redis: Any) -> None:
        self._pool = pool
        self._redis = redis
        self._lock = threading.Lock()
        self._connection: Any = None
        self._pid = os.getpid()

    def call(self, *command: Any) -> Any:
        """Send *command* and return its answer; redis-py's errors as redis-py raises them.

        A failure other than the server's own error answer drops the connection (its answer
        may still be on the way): the next call connects again.
        """
        with self._lock:
            connection = self._connection
            if connection is None or self._pid != os.getpid():  # none yet, or a forked child's
                connection = self._connection = self._pool.connection_class(
                    **self._pool.connection_kwargs
                )
                self._pid = os.getpid()
            else:
                self._check(connection)
            try:
                connection.send_command(*command)
                return connection.read_response()
            except self._redis.ResponseError:
                raise  # the server answered: the connection is in step
            except BaseException:
                connection.disconnect()
                raise

    def _check(self, connection: Any) -> None:
        """Drop *connection* if the server closed it, or sent it anything, while it was idle."""
        try:
            stale = connection.can_read(timeout=0)
        except (self._redis.ConnectionError, self._redis.TimeoutError, OSError):
            stale = True  # closed by the server: can_read dropped it already
        if stale:
            connection.disconnect()

    def free(self) -> bool:
        """Whether no call is on the line now (a call made next may still find it taken)."""
        return not self._lock.locked()

    def close(self) -> None:
        """Close the connection (a later call opens another)."""
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.disconnect()
            self._connection = None
