"""``PostgresStore``: leases and records in plain PostgreSQL tables, for many hosts."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from mailtether._errors import ConfigError, SchemaError, StoreError
from mailtether._store import (
    SCHEMA_VERSION,
    Lease,
    Record,
    check_expect,
    check_key,
    check_lease,
    check_limit,
    check_namespace,
    check_put,
    check_state,
    check_time,
    check_ttl,
    decode_data,
    encode_data,
    lease_lost,
    redact_url,
    require,
)

__all__ = ["PostgresStore"]

_T = TypeVar("_T")
_PREFIX: Final = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")
_BATCH: Final = 1000
_POOL: Final = 8
_NOW: Final = "extract(epoch from clock_timestamp())::float8"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS {p}_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS {p}_records (
    namespace text NOT NULL,
    key text NOT NULL,
    state text NOT NULL,
    data text NOT NULL,
    version bigint NOT NULL,
    updated_at float8 NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX IF NOT EXISTS {p}_records_by_state ON {p}_records (namespace, state, updated_at);
CREATE TABLE IF NOT EXISTS {p}_leases (
    name text PRIMARY KEY,
    owner text,
    token bigint NOT NULL,
    expires_at float8 NOT NULL,
    ttl float8 NOT NULL
);
INSERT INTO {p}_meta (key, value) VALUES ('schema_version', '{version}')
    ON CONFLICT (key) DO NOTHING;
"""


class PostgresStore:
    """A :class:`~mailtether.Store` in PostgreSQL: for listeners on many hosts.

    Plain tables, and every compare-and-set is one ``INSERT … ON CONFLICT … WHERE …
    RETURNING`` or ``UPDATE … WHERE … RETURNING`` statement: row-level atomic, with no
    session-scoped advisory locks, so it works behind a transaction-pooling PgBouncer.
    Lease expiry uses the server's clock (``clock_timestamp()``). Needs
    ``pip install 'mailtether[postgres]'``.

    Args:
        url: ``postgresql://user:password@host[:port]/database[?table_prefix=name]``; other
            query parameters go to libpq.
        table_prefix: Prefix of the tables (``mailtether_records`` ...), overridden by the
            URL's ``table_prefix``.
        connect_timeout: Seconds to wait for a connection.
        statement_timeout: Seconds any statement may run before the server cancels it.

    Raises:
        ConfigError: the URL or prefix is malformed, or psycopg is not installed.
        SchemaError: the tables hold data from a newer mailtether.
    """

    def __init__(
        self,
        url: str,
        *,
        table_prefix: str = "mailtether",
        connect_timeout: float = 5.0,
        statement_timeout: float = 5.0,
    ) -> None:
        self._psycopg = require("psycopg", "postgres")
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        table_prefix = query.pop("table_prefix", table_prefix)
        if not _PREFIX.match(table_prefix):
            raise ConfigError(
                f"table_prefix {table_prefix!r} must be a lower-case SQL identifier of up to "
                "40 characters"
            )
        self.url = redact_url(url)
        """The URL, password hidden."""
        self._dsn = urlunsplit(parts._replace(query=urlencode(query)))
        self._options = {
            "connect_timeout": max(1, round(connect_timeout)),
            "options": f"-c statement_timeout={int(statement_timeout * 1000)}",
            "autocommit": True,
        }
        self._p = table_prefix
        self._idle: list[Any] = []
        self._registry = threading.Lock()
        self._closed = False
        self._run("open", self._initialise)

    # -- plumbing ----------------------------------------------------------------------------------

    def _connect(self) -> Any:
        return self._psycopg.connect(self._dsn, **self._options)

    def _run(self, what: str, operation: Callable[[Any], _T]) -> _T:
        if self._closed:
            raise StoreError(f"PostgresStore({self.url!r}) is closed")
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = None
        try:
            if connection is None:
                connection = self._connect()
            result = operation(connection)
        except BaseException as error:
            if connection is not None:
                connection.close()
            if not isinstance(error, self._psycopg.Error):
                raise
            # psycopg's messages can quote the DSN: say what failed without it.
            reason = str(error).replace(self._dsn, self.url).strip().splitlines()
            raise StoreError(
                f"PostgresStore({self.url!r}): {what} failed: {reason[0] if reason else error}"
            ) from None
        if len(self._idle) < _POOL and not self._closed:
            self._idle.append(connection)
        else:
            connection.close()
        return result

    def _initialise(self, connection: Any) -> None:
        with connection.transaction():
            # Serialise schema creation between processes starting at once; a transaction
            # lock, released at commit, so it is safe behind a transaction pooler.
            connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._p,))
            for statement in _SCHEMA.format(p=self._p, version=SCHEMA_VERSION).split(";"):
                if statement.strip():
                    connection.execute(statement)
        found = connection.execute(
            f"SELECT value FROM {self._p}_meta WHERE key = 'schema_version'"  # noqa: S608
        ).fetchone()[0]
        if int(found) > SCHEMA_VERSION:
            raise SchemaError(
                f"PostgreSQL {self.url} ({self._p}_* tables) was written by a newer mailtether "
                f"(schema {found}, this one knows {SCHEMA_VERSION}): upgrade mailtether on every "
                "worker sharing it"
            )

    def _one(self, what: str, sql: str, params: tuple[Any, ...]) -> Any:
        return self._run(what, lambda c: c.execute(sql, params).fetchone())

    def now(self) -> float:
        """Return the PostgreSQL server's time."""
        return float(self._one("now", f"SELECT {_NOW}", ())[0])

    # -- records -----------------------------------------------------------------------------------

    def get(self, namespace: str, key: str) -> Record | None:
        """Return the record, or ``None``."""
        check_namespace(namespace)
        check_key(key)
        row = self._one(
            "get",
            f"SELECT key, state, data, version, updated_at FROM {self._p}_records "  # noqa: S608
            "WHERE namespace = %s AND key = %s",
            (namespace, key),
        )
        return None if row is None else _record(namespace, row)

    def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, Record]:
        """Return the existing records among *keys*, 1 000 per query."""
        check_namespace(namespace)
        wanted = list(dict.fromkeys(check_key(key) for key in keys))
        sql = (
            f"SELECT key, state, data, version, updated_at FROM {self._p}_records "  # noqa: S608
            "WHERE namespace = %s AND key = ANY(%s)"
        )

        def fetch(connection: Any) -> dict[str, Record]:
            found: dict[str, Record] = {}
            for start in range(0, len(wanted), _BATCH):
                chunk = wanted[start : start + _BATCH]
                for row in connection.execute(sql, (namespace, chunk)):
                    found[row[0]] = _record(namespace, row)
            return found

        return self._run("get_many", fetch)

    def put(
        self,
        namespace: str,
        key: str,
        state: str,
        data: Mapping[str, Any],
        *,
        expect: int | None = None,
    ) -> Record | None:
        """Write a record, compare-and-set on its version if *expect* is given."""
        check_put(namespace, key, state, expect)
        text = encode_data(data)
        table = f"{self._p}_records"
        if expect is None:
            sql = (
                f"INSERT INTO {table} AS r (namespace, key, state, data, version, updated_at) "  # noqa: S608
                f"VALUES (%s, %s, %s, %s, 1, {_NOW}) ON CONFLICT (namespace, key) DO UPDATE SET "
                "state = excluded.state, data = excluded.data, version = r.version + 1, "
                "updated_at = excluded.updated_at RETURNING version, updated_at"
            )
            params: tuple[Any, ...] = (namespace, key, state, text)
        elif expect == 0:
            sql = (
                f"INSERT INTO {table} (namespace, key, state, data, version, updated_at) "  # noqa: S608
                f"VALUES (%s, %s, %s, %s, 1, {_NOW}) ON CONFLICT (namespace, key) DO NOTHING "
                "RETURNING version, updated_at"
            )
            params = (namespace, key, state, text)
        else:
            sql = (
                f"UPDATE {table} SET state = %s, data = %s, version = version + 1, "  # noqa: S608
                f"updated_at = {_NOW} WHERE namespace = %s AND key = %s AND version = %s "
                "RETURNING version, updated_at"
            )
            params = (state, text, namespace, key, expect)
        row = self._one("put", sql, params)
        if row is None:
            return None
        return Record(namespace, key, state, dict(data), int(row[0]), float(row[1]))

    def delete(self, namespace: str, key: str, *, expect: int | None = None) -> bool:
        """Delete a record (at version *expect*, if given)."""
        check_namespace(namespace)
        check_key(key)
        check_expect(expect)
        sql = f"DELETE FROM {self._p}_records WHERE namespace = %s AND key = %s"  # noqa: S608
        params: tuple[Any, ...] = (namespace, key)
        if expect is not None:
            sql += " AND version = %s"
            params += (expect,)
        return bool(self._run("delete", lambda c: c.execute(sql, params).rowcount) > 0)

    def scan(
        self,
        namespace: str,
        *,
        state: str | None = None,
        updated_before: float | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        """Return matching records, oldest update first."""
        check_namespace(namespace)
        sql = (
            f"SELECT key, state, data, version, updated_at FROM {self._p}_records "  # noqa: S608
            "WHERE namespace = %s"
        )
        params: list[Any] = [namespace]
        if state is not None:
            sql += " AND state = %s"
            params.append(check_state(state))
        if updated_before is not None:
            sql += " AND updated_at < %s"
            params.append(check_time(updated_before, "updated_before"))
        sql += " ORDER BY updated_at, key"
        if check_limit(limit) is not None:
            sql += " LIMIT %s"
            params.append(limit)
        rows = self._run("scan", lambda c: c.execute(sql, params).fetchall())
        return [_record(namespace, row) for row in rows]

    def count(self, namespace: str) -> dict[str, int]:
        """Return the number of records in each state."""
        check_namespace(namespace)
        rows = self._run(
            "count",
            lambda c: c.execute(
                f"SELECT state, count(*) FROM {self._p}_records WHERE namespace = %s "  # noqa: S608
                "GROUP BY state",
                (namespace,),
            ).fetchall(),
        )
        return {state: int(n) for state, n in rows}

    def prune(self, namespace: str, *, state: str, updated_before: float) -> int:
        """Delete records in *state* older than *updated_before*."""
        check_namespace(namespace)
        check_state(state)
        check_time(updated_before, "updated_before")
        return int(
            self._run(
                "prune",
                lambda c: (
                    c.execute(
                        f"DELETE FROM {self._p}_records WHERE namespace = %s AND state = %s "  # noqa: S608
                        "AND updated_at < %s",
                        (namespace, state, updated_before),
                    ).rowcount
                ),
            )
        )

    # -- leases ------------------------------------------------------------------------------------

    def acquire(self, name: str, owner: str, ttl: float) -> Lease | None:
        """Take the lease if free or expired, in one statement on the server's clock."""
        check_key(name, "name")
        check_key(owner, "owner")
        ttl = check_ttl(ttl)
        table = f"{self._p}_leases"
        row = self._one(
            "acquire",
            f"INSERT INTO {table} AS l (name, owner, token, expires_at, ttl) "  # noqa: S608
            f"VALUES (%s, %s, 1, {_NOW} + %s, %s) ON CONFLICT (name) DO UPDATE SET "
            "owner = excluded.owner, token = l.token + 1, expires_at = excluded.expires_at, "
            f"ttl = excluded.ttl WHERE l.owner IS NULL OR l.expires_at <= {_NOW} "
            "RETURNING token, expires_at",
            (name, owner, ttl, ttl),
        )
        return None if row is None else Lease(name, owner, int(row[0]), float(row[1]), ttl)

    def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Extend a held lease from now; raise LeaseLost if it is not held any more."""
        check_lease(lease)
        ttl = lease.ttl if ttl is None else check_ttl(ttl)
        row = self._one(
            "renew",
            f"UPDATE {self._p}_leases SET expires_at = {_NOW} + %s, ttl = %s "  # noqa: S608
            f"WHERE name = %s AND owner = %s AND token = %s AND expires_at > {_NOW} "
            "RETURNING expires_at",
            (ttl, ttl, lease.name, lease.owner, lease.token),
        )
        if row is None:
            raise lease_lost(lease)
        return Lease(lease.name, lease.owner, lease.token, float(row[0]), ttl)

    def release(self, lease: Lease) -> bool:
        """Let go of a held lease."""
        check_lease(lease)
        changed = self._run(
            "release",
            lambda c: (
                c.execute(
                    f"UPDATE {self._p}_leases SET owner = NULL, expires_at = 0 "  # noqa: S608
                    f"WHERE name = %s AND owner = %s AND token = %s AND expires_at > {_NOW}",
                    (lease.name, lease.owner, lease.token),
                ).rowcount
            ),
        )
        return bool(changed)

    def holder(self, name: str) -> Lease | None:
        """Return the current unexpired holder."""
        check_key(name, "name")
        row = self._one(
            "holder",
            f"SELECT owner, token, expires_at, ttl FROM {self._p}_leases "  # noqa: S608
            f"WHERE name = %s AND owner IS NOT NULL AND expires_at > {_NOW}",
            (name,),
        )
        return (
            None if row is None else Lease(name, row[0], int(row[1]), float(row[2]), float(row[3]))
        )

    def close(self) -> None:
        """Close every connection; later calls raise StoreError."""
        self._closed = True
        with self._registry:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r}, table_prefix={self._p!r})"


def _record(namespace: str, row: tuple[Any, ...]) -> Record:
    key, state, data, version, updated_at = row
    return Record(namespace, key, state, decode_data(data), int(version), float(updated_at))
