"""One statement sent now and its answer read later, on one psycopg connection.

The outbox records a mail's outcome while the relay answers the next mail's first commands
(see ``mailtether._outbox_handoff``): the statement goes out before ``MAIL FROM`` and its answer
is read just before that mail's content, so the server writes while three SMTP commands go
back and forth instead of one. psycopg's ``execute`` sends and waits in one call; this sends
with libpq (``psycopg.pq``, the documented low-level interface psycopg is built on) and waits
later. The connection is left as ``execute`` leaves it: every result read, idle.
"""

from __future__ import annotations

import re
import select
from typing import Any, Final

__all__ = ["dollar_marks", "read_rows", "send_statement"]

_MARK: Final = re.compile(r"%s")


def dollar_marks(sql: str) -> bytes:
    """*sql* with its ``%s`` marks numbered as libpq wants them (``$1``, ``$2``, ...)."""
    if "%" in _MARK.sub("", sql):
        raise ValueError("only %s marks can be numbered")  # a literal % would be misread
    numbers = iter(range(1, 1000))
    return _MARK.sub(lambda _: f"${next(numbers)}", sql).encode()


def send_statement(connection: Any, sql: bytes, params: list[str | int]) -> None:
    """Send *sql* with *params* (texts and integers, as text) on *connection*; don't wait.

    Raises:
        psycopg.Error: the connection is broken.
        UnicodeEncodeError: a text the connection's encoding cannot hold (as psycopg).
    """
    encoding = connection.info.encoding
    values = [p.encode(encoding) if isinstance(p, str) else str(p).encode() for p in params]
    pgconn = connection.pgconn
    pgconn.send_query_params(sql, values)
    while pgconn.flush():  # a non-blocking connection: the rest once the socket takes it
        select.select([], [pgconn.socket], [])


def read_rows(connection: Any, psycopg: Any) -> list[tuple[str | None, ...]]:
    """Wait for the answer to the statement sent; return its rows (as texts).

    Raises:
        psycopg.Error: the statement failed (its message), or the connection broke (or was
            shut down by the watchdog).
    """
    pgconn = connection.pgconn
    results: list[Any] = []
    while True:
        pgconn.consume_input()
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                return _rows(results, connection, psycopg)
            results.append(result)
        select.select([pgconn.socket], [], [])


def _rows(results: list[Any], connection: Any, psycopg: Any) -> list[tuple[str | None, ...]]:
    if len(results) != 1:
        raise psycopg.OperationalError(f"{len(results)} results for one statement")
    result = results[0]
    encoding = connection.info.encoding
    if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
        message = (result.error_message or b"").decode(encoding, "replace")
        raise psycopg.DatabaseError(message.strip() or f"the statement ended {result.status}")
    columns = range(result.nfields)
    return [
        tuple(_text(result.get_value(row, column), encoding) for column in columns)
        for row in range(result.ntuples)
    ]


def _text(value: bytes | None, encoding: str) -> str | None:
    return None if value is None else value.decode(encoding)
