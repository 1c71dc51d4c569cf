"""``SQLRecords``: the records of SQLiteStore and PostgresStore, written once for both.

The two keep records in the same table layout, and their statements on it differ only in
the driver's placeholder (``?`` or ``%s``), the table's name and how keys sort. What differs
more stays in each store: the schema, the leases, ``get_many`` and the multi-row statements
of ``put_many``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Final, Protocol, TypeVar

from mailtether.stores._protocol import Record, Write
from mailtether.stores._shared import (
    WriteRun,
    check_expect,
    check_key,
    check_limit,
    check_namespace,
    check_state,
    check_time,
    decode_data,
    plan_writes,
    written_records,
)

__all__ = ["COLUMNS", "Run", "SQLRecords", "Statement", "record_from_row"]

_T = TypeVar("_T")

Statement = tuple[str, list[Any]]
"""SQL and its parameters."""

COLUMNS: Final = "key, state, data, version, updated_at"
"""What a statement selects or returns for :func:`record_from_row`."""


class Run(Protocol):
    """A store's ``_run``: *operation* on one of its connections, failures as StoreError."""

    def __call__(self, what: str, operation: Callable[[Any], _T], /) -> _T: ...


class SQLRecords:
    """``get``, ``put_many``, ``delete``, ``scan``, ``count`` and ``prune`` of a SQL store.

    Args:
        run: The store's ``_run``.
        table: The records table.
        mark: The driver's placeholder: ``?`` (sqlite3) or ``%s`` (psycopg).
        key_order: What sorts keys by byte, as ``scan`` must: ``key`` (SQLite) or
            ``key COLLATE "C"`` (PostgreSQL).
        most: How many writes of ``put_many`` one statement takes at most.
        statements: One statement per run of ``put_many``'s writes, in order, each returning
            ``key, version, updated_at`` for the rows it wrote; ``None`` for a store that
            writes its records itself (SQLite), whose ``put_many`` is not this one.
        transaction: Opens a transaction on a connection: for ``put_many``'s statements,
            when there is more than one.
    """

    def __init__(
        self,
        run: Run,
        *,
        table: str,
        mark: str,
        key_order: str,
        most: int,
        statements: Callable[[list[WriteRun]], list[Statement]] | None,
        transaction: Callable[[Any], AbstractContextManager[object]],
    ) -> None:
        self._run = run
        self._most = most
        self._statements = statements
        self._transaction = transaction
        where = f"FROM {table} WHERE namespace = {mark}"
        self._get = f"SELECT {COLUMNS} {where} AND key = {mark}"
        self._delete = f"DELETE {where} AND key = {mark}"
        self._version = f" AND version = {mark}"
        self._scan = f"SELECT {COLUMNS} {where}"
        self._state = f" AND state = {mark}"
        self._updated_before = f" AND updated_at < {mark}"
        self._order = f" ORDER BY updated_at, {key_order}"
        self._limit = f" LIMIT {mark}"
        self._count = f"SELECT state, count(*) {where} GROUP BY state"
        self._prune = f"DELETE {where} AND state = {mark} AND updated_at < {mark}"

    def get(self, namespace: str, key: str) -> Record | None:
        """Return the record, or ``None``."""
        check_namespace(namespace)
        check_key(key)
        row = self._run("get", lambda c: c.execute(self._get, (namespace, key)).fetchone())
        return None if row is None else record_from_row(namespace, row)

    def put_many(self, writes: Iterable[Write]) -> list[Record | None]:
        """Apply several writes as ``put`` would: one statement per run, in one transaction."""
        if self._statements is None:
            raise NotImplementedError("this store writes its records itself")
        runs = plan_writes(writes, self._most)
        if not runs:
            return []
        statements = self._statements(runs)

        def answer(connection: Any, sql: str, params: list[Any]) -> dict[str, tuple[Any, ...]]:
            # Rows of (key, version, updated_at): an int and a float from both drivers.
            return {row[0]: row for row in connection.execute(sql, params)}

        def apply(connection: Any) -> list[dict[str, tuple[Any, ...]]]:
            if len(statements) == 1:  # one statement is atomic on its own
                return [answer(connection, *statements[0])]
            with self._transaction(connection):
                return [answer(connection, *statement) for statement in statements]

        return written_records(runs, self._run("put" if len(runs) == 1 else "put_many", apply))

    def delete(self, namespace: str, key: str, expect: int | None) -> bool:
        """Delete a record (at version *expect*, if given)."""
        check_namespace(namespace)
        check_key(key)
        check_expect(expect)
        sql = self._delete
        params: tuple[Any, ...] = (namespace, key)
        if expect is not None:
            sql += self._version
            params += (expect,)
        return bool(self._run("delete", lambda c: c.execute(sql, params).rowcount) > 0)

    def scan(
        self, namespace: str, state: str | None, updated_before: float | None, limit: int | None
    ) -> list[Record]:
        """Return matching records, oldest update first."""
        check_namespace(namespace)
        sql = self._scan
        params: list[Any] = [namespace]
        if state is not None:
            sql += self._state
            params.append(check_state(state))
        if updated_before is not None:
            sql += self._updated_before
            params.append(check_time(updated_before, "updated_before"))
        sql += self._order
        if check_limit(limit) is not None:
            sql += self._limit
            params.append(limit)
        rows = self._run("scan", lambda c: c.execute(sql, params).fetchall())
        return [record_from_row(namespace, row) for row in rows]

    def count(self, namespace: str) -> dict[str, int]:
        """Return the number of records in each state."""
        check_namespace(namespace)
        rows = self._run("count", lambda c: c.execute(self._count, (namespace,)).fetchall())
        return {state: int(n) for state, n in rows}

    def prune(self, namespace: str, state: str, updated_before: float) -> int:
        """Delete records in *state* older than *updated_before*."""
        check_namespace(namespace)
        check_state(state)
        check_time(updated_before, "updated_before")
        params = (namespace, state, updated_before)
        return int(self._run("prune", lambda c: c.execute(self._prune, params).rowcount))


def record_from_row(namespace: str, row: tuple[Any, ...]) -> Record:
    """The record in a row of :data:`COLUMNS`."""
    key, state, data, version, updated_at = row
    return Record(namespace, key, state, decode_data(data), int(version), float(updated_at))
