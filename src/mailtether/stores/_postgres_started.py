"""One statement sent now and its answer read later, on one psycopg connection.

The outbox records a mail's outcome while the relay answers the next mail's first commands
(see ``mailtether._outbox_handoff``): the statement goes out once ``MAIL FROM`` is sent and
its answer is read while ``DATA`` is answered, so the server writes while three SMTP commands
go back and forth instead of one; the next mails' claims go the same way. psycopg's
``execute`` sends and waits in one call; this sends with libpq (``psycopg.pq``, the documented
low-level interface psycopg is built on) and waits later. The connection is left as
``execute`` leaves it: every result read, idle. With the store's ``prepared_statements``, the
statement is prepared on the connection the first time (:func:`send_prepared`).
"""

from __future__ import annotations

import re
import select
from typing import Any, Final

__all__ = ["dollar_marks", "read_rows", "send_prepared", "send_statement"]

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
    pgconn = connection.pgconn
    pgconn.send_query_params(sql, _values(connection, params))
    _flush(pgconn)


def send_prepared(
    connection: Any,
    prepared: set[bytes],
    name: bytes,
    sql: bytes,
    params: list[str | int],
    psycopg: Any,
) -> None:
    """:func:`send_statement` as the statement *name* prepared on *connection*.

    The statement is prepared first (and waited for) unless *name* is in *prepared*, the
    names this connection has prepared, which it is added to.
    """
    pgconn = connection.pgconn
    if name not in prepared:
        pgconn.send_prepare(name, sql)
        _flush(pgconn)
        result = _one_result(connection, psycopg)
        if result.status != psycopg.pq.ExecStatus.COMMAND_OK:
            raise _failure(result, connection, psycopg)
        prepared.add(name)
    pgconn.send_query_prepared(name, _values(connection, params))
    _flush(pgconn)


def read_rows(connection: Any, psycopg: Any) -> list[tuple[str | None, ...]]:
    """Wait for the answer to the statement sent; return its rows (as texts).

    Raises:
        psycopg.Error: the statement failed (its message), or the connection broke (or was
            shut down by the watchdog).
    """
    result = _one_result(connection, psycopg)
    if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
        raise _failure(result, connection, psycopg)
    encoding = connection.info.encoding
    columns = range(result.nfields)
    return [
        tuple(_text(result.get_value(row, column), encoding) for column in columns)
        for row in range(result.ntuples)
    ]


def _values(connection: Any, params: list[str | int]) -> list[bytes]:
    encoding = connection.info.encoding
    return [p.encode(encoding) if isinstance(p, str) else str(p).encode() for p in params]


def _flush(pgconn: Any) -> None:
    while pgconn.flush():  # a non-blocking connection: the rest once the socket takes it
        select.select([], [pgconn.socket], [])


def _one_result(connection: Any, psycopg: Any) -> Any:
    """The result of the one command sent, once it is complete (every result read)."""
    pgconn = connection.pgconn
    results: list[Any] = []
    while True:
        pgconn.consume_input()
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                if len(results) != 1:
                    raise psycopg.OperationalError(f"{len(results)} results for one statement")
                return results[0]
            results.append(result)
        select.select([pgconn.socket], [], [])


def _failure(result: Any, connection: Any, psycopg: Any) -> Exception:
    message = (result.error_message or b"").decode(connection.info.encoding, "replace")
    error: Exception = psycopg.DatabaseError(
        message.strip() or f"the statement ended {result.status}"
    )
    return error


def _text(value: bytes | None, encoding: str) -> str | None:
    return None if value is None else value.decode(encoding)
