"""``PostgresStore``: leases and records in plain PostgreSQL tables, for many hosts.

About 600 lines, as one backend's SQL: its schema, its calls (pool, deadline, errors
without the password), its multi-row writes and its leases. The records' statements it shares
with SQLiteStore are in ``_sql_records``; the watchdog of its calls is ``_postgres_watchdog``;
the writes it sends now and answers later (the outbox's) use ``_postgres_started``.
"""

from __future__ import annotations

import json
import math
import re
import select
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlunsplit

from mailtether._durations import check_seconds
from mailtether._errors import ConfigError, SchemaError, StoreError
from mailtether._redaction import remember_secret
from mailtether._url_errors import split_url
from mailtether._yes_no import YES_NO
from mailtether.stores._pool import Pool
from mailtether.stores._postgres_started import (
    dollar_marks,
    read_rows,
    send_prepared,
    send_statement,
)
from mailtether.stores._postgres_watchdog import WATCHDOG
from mailtether.stores._protocol import SCHEMA_VERSION, Lease, Record, Write
from mailtether.stores._shared import (
    PutFromPutMany,
    WriteRun,
    check_key,
    check_keys,
    check_lease,
    check_namespace,
    check_prefix,
    check_ttl,
    lease_lost,
    plan_writes,
    redact_url,
    require,
    written_records,
)
from mailtether.stores._sql_records import COLUMNS, SQLRecords, Statement, record_from_row

__all__ = ["PostgresStore"]

_T = TypeVar("_T")
_PREFIX: Final = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")
_BATCH: Final = 1000
_POOL: Final = 8
_GROUP_ROWS: Final = 500  # writes of put_many in one statement, at most
# The float8 of date_part: the same value as extract's numeric made float8 (both the exact
# quotient rounded once), without the numeric (a single-row update ~4% less server CPU).
_NOW: Final = "date_part('epoch', clock_timestamp())"
_SEP: Final = "\x1f"
"""Between the texts of a column of put_many's rows: never in a document (JSON escapes
control characters), in a key hardly ever (such a batch travels as JSON instead)."""
_SPLIT: Final = "string_to_array(%s, E'\\x1f')"


def _joined(texts: list[str]) -> str | None:
    """*texts* as one text for ``_SPLIT``, or ``None`` if one holds ``_SEP``.

    No document can hold it, a key hardly ever: such a batch goes as JSON.
    """
    joined = _SEP.join(texts)
    return joined if joined.count(_SEP) == len(texts) - 1 else None


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"))
_SLACK: Final = 1.0
"""Seconds past ``statement_timeout`` after which an unanswered call is given up."""

# Text columns compare in the "C" collation: byte order, as SQLite and Redis sort keys,
# whatever the database's default collation is.
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS {p}_meta (
    key text COLLATE "C" PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS {p}_records (
    namespace text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    state text COLLATE "C" NOT NULL,
    data text NOT NULL,
    version bigint NOT NULL,
    updated_at float8 NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX IF NOT EXISTS {p}_records_by_state ON {p}_records (namespace, state, updated_at);
CREATE TABLE IF NOT EXISTS {p}_leases (
    name text COLLATE "C" PRIMARY KEY,
    owner text,
    token bigint NOT NULL,
    expires_at float8 NOT NULL,
    ttl float8 NOT NULL
);
INSERT INTO {p}_meta (key, value) VALUES ('schema_version', '{version}')
    ON CONFLICT (key) DO NOTHING;
"""


def _read_url(
    url: str, table_prefix: str, prepared: bool, psycopg: Any
) -> tuple[str, str, str, str, bool]:
    """The URL read: (DSN for libpq, table prefix, ``options``, password, prepared statements).

    Raises:
        ConfigError: the URL cannot be read for sure, or libpq refuses it; the message names
            the part and never holds the password (see
            :func:`~mailtether._url_errors.split_url`, here with libpq's own rules).
    """
    if not isinstance(url, str):
        raise ConfigError(f"a PostgreSQL URL is text, not {type(url).__name__}")
    parts = split_url(url, libpq=True)  # the port too: a bad one fails here, not at connect
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    table_prefix = check_prefix(
        query.pop("table_prefix", table_prefix),
        _PREFIX,
        "table_prefix",
        "a lower-case SQL identifier of up to 40 characters",
    )
    options = query.pop("options", "")
    if "prepared_statements" in query:
        said = query.pop("prepared_statements").strip().lower()
        if said not in YES_NO:
            raise ConfigError(
                f"PostgreSQL URL {redact_url(url)!r}: prepared_statements must be true or "
                f"false (yes/no, on/off, 1/0), not {said!r}"
            )
        prepared = YES_NO[said]
    dsn = urlunsplit(parts._replace(query=urlencode(query)))
    problem = None
    try:
        conninfo = psycopg.conninfo.conninfo_to_dict(dsn)
    except (ValueError, psycopg.Error) as error:
        # libpq quotes what it refuses: the DSN, the password, a password= parameter.
        secrets = [parts.password or "", *(v for k, v in parse_qsl(parts.query) if k == "password")]
        text = str(error).replace(dsn, redact_url(url))
        for secret in sorted({*secrets, *map(unquote, secrets)}, key=len, reverse=True):
            text = text.replace(secret, "***") if secret else text
        problem = f"cannot use PostgreSQL URL {redact_url(url)!r}: {text}"
    if problem is not None:  # raised outside the except: libpq's error is not chained
        raise ConfigError(problem)
    password = str(conninfo.get("password") or "")
    remember_secret(password)  # a password= parameter too: from now on in no output
    return dsn, table_prefix, options, password, prepared


class PostgresStore(PutFromPutMany):
    """A :class:`~mailtether.Store` in PostgreSQL: for listeners on many hosts.

    Plain tables, and every compare-and-set is one ``INSERT … ON CONFLICT … WHERE …
    RETURNING`` or ``UPDATE … WHERE … RETURNING`` statement: row-level atomic, with no
    session-scoped advisory locks and (by default) no prepared statements, so it works behind
    a transaction-pooling PgBouncer (add ``options`` to its ``ignore_startup_parameters``, or
    PgBouncer refuses the ``statement_timeout`` this store asks for). Lease expiry uses the
    server's clock (``clock_timestamp()``). Needs ``pip install 'mailtether[postgres]'``.

    Args:
        url: ``postgresql://user:password@host[:port]/database[?table_prefix=name]``; other
            query parameters go to libpq.
        table_prefix: Prefix of the tables (``mailtether_records`` ...), overridden by the
            URL's ``table_prefix``.
        connect_timeout: Seconds to wait for a connection (whole seconds, at least 2: libpq's
            granularity).
        statement_timeout: Seconds any statement may run before the server cancels it. A call
            with no answer at all one second later (a frozen server, a black-holed network)
            drops its connection and raises StoreError instead of waiting forever.
        prepared_statements: Prepare each statement on a connection the first time it runs
            there (the URL's ``prepared_statements=true`` too): the server parses and plans
            it once, not on every call — less of its CPU a write (the outbox on PostgreSQL:
            see the performance page). For a direct connection, or a PgBouncer of 1.21 or
            later with ``max_prepared_statements`` set; a transaction-pooling PgBouncer
            without it fails with "prepared statement … does not exist".

    Raises:
        ConfigError: the URL or prefix is malformed, or psycopg is not installed.
        SchemaError: the tables hold data from a newer mailtether.
        StoreError: the server cannot be reached.

    Example:
        >>> from mailtether import store_from_url
        >>> store = store_from_url("postgresql://mail:pw@db.internal/mail")  # doctest: +SKIP
        >>> store  # doctest: +SKIP
        PostgresStore('postgresql://mail:***@db.internal/mail', table_prefix='mailtether')
    """

    # Writes from two threads run at once on the server (a connection each): the listener
    # records a batch's outcomes behind while it hands the next batch over (_write_behind).
    _parallel_writes = True

    def __init__(
        self,
        url: str,
        *,
        table_prefix: str = "mailtether",
        connect_timeout: float = 5.0,
        statement_timeout: float = 5.0,
        prepared_statements: bool = False,
    ) -> None:
        connect_timeout = check_seconds(connect_timeout, "PostgresStore.connect_timeout")
        statement_timeout = check_seconds(statement_timeout, "PostgresStore.statement_timeout")
        self._psycopg = require("psycopg", "postgres")
        self.url = redact_url(url)
        """The URL, password hidden."""
        if not isinstance(prepared_statements, bool):
            raise ConfigError(
                "PostgresStore.prepared_statements is True or False, "
                f"not {type(prepared_statements).__name__}"
            )
        self._dsn, table_prefix, options, self._password, prepared = _read_url(
            url, table_prefix, prepared_statements, self._psycopg
        )
        # Ours comes last, so it wins over a statement_timeout in the URL's own options.
        options = f"{options} -c statement_timeout={_ms(statement_timeout)}"
        self._options: dict[str, Any] = {
            "connect_timeout": max(2, math.ceil(connect_timeout)),
            "options": options.strip(),
            "autocommit": True,
            # Server-side prepared statements live in one server session, which a
            # transaction-pooling PgBouncer does not give us (before 1.21): asked for only.
            "prepare_threshold": 0 if prepared else None,
        }
        # The names _put_started prepared on each connection (None: no prepared statements).
        self._prepared: weakref.WeakKeyDictionary[Any, set[bytes]] | None = (
            weakref.WeakKeyDictionary() if prepared else None
        )
        self._limit = statement_timeout + _SLACK
        self._p = table_prefix
        self._pool: Pool[Any] = Pool(self._connect, size=_POOL, usable=_usable)
        table = f"{table_prefix}_records"
        # The rows travel as one text per column, the texts joined by _SEP and split by the
        # server; or, when a key holds _SEP, as one JSON array of [key, state, data(, version)]
        # arrays. A fixed statement per kind and form (see _many_statement).
        into = f"INSERT INTO {table} AS r (namespace, key, state, data, version, updated_at) "
        split = (
            f"{into}SELECT %s, k, s, d, 1, {_NOW} "  # noqa: S608
            f"FROM unnest({_SPLIT}, {_SPLIT}, {_SPLIT}) AS v (k, s, d) "
            "ON CONFLICT (namespace, key) "
        )
        insert = (
            f"{into}SELECT %s, w->>0, w->>1, w->>2, 1, {_NOW} "  # noqa: S608
            "FROM json_array_elements(%s::json) AS v (w) ON CONFLICT (namespace, key) "
        )
        returning = " RETURNING key, version, updated_at"
        replace = (
            "DO UPDATE SET state = excluded.state, data = excluded.data, "
            "version = r.version + 1, updated_at = excluded.updated_at"
        )
        self._create_split = split + "DO NOTHING" + returning
        self._upsert_split = split + replace + returning
        self._create_many = insert + "DO NOTHING" + returning
        self._upsert_many = insert + replace + returning
        # The last condition repeats the join's keys for the planner: the records to update
        # found through the primary key, not by hashing the whole namespace, which it does on
        # a table that grew since its statistics (a first sync: 500 updates in a new table of
        # 100 000 rows 24 ms, with it 6 ms, as after ANALYZE). Split, the keys are a constant
        # array the planner sees (one text sent twice: ~25 kB for 500 keys, a few µs).
        self._update_split = (
            f"UPDATE {table} AS r SET state = v.s, data = v.d, "  # noqa: S608
            f"version = r.version + 1, updated_at = {_NOW} "
            f"FROM unnest({_SPLIT}, {_SPLIT}, {_SPLIT}, %s::bigint[]) AS v (k, s, d, e) "
            "WHERE r.namespace = %s AND r.key = v.k AND r.version = v.e "
            f"AND r.key = ANY({_SPLIT}) RETURNING r.key, r.version, r.updated_at"
        )
        self._update_many = (
            f"UPDATE {table} AS r SET state = w->>1, data = w->>2, "  # noqa: S608
            f"version = r.version + 1, updated_at = {_NOW} FROM json_array_elements(%s::json) "
            "AS v (w) WHERE r.namespace = %s AND r.key = w->>0 AND r.version = (w->>3)::bigint "
            "AND r.key = ANY(ARRAY(SELECT k->>0 FROM json_array_elements(%s::json) AS j (k))) "
            "RETURNING r.key, r.version, r.updated_at"
        )
        # One write (a mail's outcome, a status change) in a plain one-row statement: the
        # JSON-array forms above cost the server 2-3 times more to plan and run for one row.
        one = f"{into}VALUES (%s, %s, %s, %s, 1, {_NOW}) ON CONFLICT (namespace, key) "
        self._create_one = one + "DO NOTHING" + returning
        self._upsert_one = one + replace + returning
        self._update_one = (
            f"UPDATE {table} SET state = %s, data = %s, version = version + 1, "  # noqa: S608
            f"updated_at = {_NOW} WHERE namespace = %s AND key = %s AND version = %s{returning}"
        )
        # The statements of put_many with libpq's marks, and a name each, for _put_started.
        self._numbered = {
            sql: dollar_marks(sql)
            for sql in (
                self._create_one,
                self._upsert_one,
                self._update_one,
                self._create_split,
                self._upsert_split,
                self._update_split,
                self._create_many,
                self._upsert_many,
                self._update_many,
            )
        }
        self._names = {sql: f"mailtether_put_{n}".encode() for n, sql in enumerate(self._numbered)}
        self._records = SQLRecords(
            self._run,
            table=table,
            mark="%s",
            key_order='key COLLATE "C"',
            most=_GROUP_ROWS,
            statements=self._statements,
            transaction=lambda connection: connection.transaction(),
        )
        self._run("open", self._initialise, seconds=2 * statement_timeout + _SLACK)

    # -- plumbing ----------------------------------------------------------------------------------

    def _connect(self) -> Any:
        return self._psycopg.connect(self._dsn, **self._options)

    def _hide(self, text: str) -> str:
        """*text* without the DSN or the password in it."""
        text = text.replace(self._dsn, self.url)
        return text.replace(self._password, "***") if self._password else text

    def _run(
        self, what: str, operation: Callable[[Any], _T], *, seconds: float | None = None
    ) -> _T:
        call = self._call(what, seconds)
        result = call.step(operation)
        call.end()
        return result

    def _call(self, what: str, seconds: float | None = None) -> _Call:
        """A connection from the pool, watched for *seconds* (``statement_timeout`` + slack)."""
        if self._pool.closed:
            raise StoreError(f"PostgresStore({self.url!r}) is closed")
        call = _Call(self, what, self._limit if seconds is None else seconds)
        call.step(call.take)
        return call

    def _initialise(self, connection: Any) -> None:
        # Tables, index and version row are created in one transaction, so the version row
        # stands for all of them: when it is there, no DDL (and no lock it would take) is run.
        if connection.execute("SELECT to_regclass(%s)", (f"{self._p}_meta",)).fetchone()[0] is None:
            with connection.transaction():
                # Serialise schema creation between processes starting at once; a
                # transaction lock, released at commit, so it is safe behind a pooler.
                connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._p,))
                for statement in _SCHEMA.format(p=self._p, version=SCHEMA_VERSION).split(";"):
                    if statement.strip():
                        connection.execute(statement)
        found = connection.execute(
            f"SELECT value FROM {self._p}_meta WHERE key = 'schema_version'"  # noqa: S608
        ).fetchone()
        if found is None:
            raise SchemaError(
                f"PostgreSQL {self.url} has a table {self._p}_meta without a schema_version: "
                "choose another table_prefix, or drop the tables that are not mailtether's"
            )
        if int(found[0]) > SCHEMA_VERSION:
            raise SchemaError(
                f"PostgreSQL {self.url} ({self._p}_* tables) was written by a newer mailtether "
                f"(schema {found[0]}, this one knows {SCHEMA_VERSION}): upgrade mailtether on "
                "every worker sharing it"
            )

    def _one(self, what: str, sql: str, params: tuple[Any, ...]) -> Any:
        return self._run(what, lambda c: c.execute(sql, params).fetchone())

    def now(self) -> float:
        """Return the PostgreSQL server's time."""
        return float(self._one("now", f"SELECT {_NOW}", ())[0])

    # -- records -----------------------------------------------------------------------------------

    def get(self, namespace: str, key: str) -> Record | None:
        """Return the record, or ``None``."""
        return self._records.get(namespace, key)

    def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, Record]:
        """Return the existing records among *keys*, 1 000 per query."""
        found: dict[str, Record] = {}
        for row in self._per_key("get_many", COLUMNS, namespace, keys):
            found[row[0]] = record_from_row(namespace, row)
        return found

    def existing(self, namespace: str, keys: Iterable[str]) -> set[str]:
        """Return the keys among *keys* that have a record, 1 000 per query."""
        return {row[0] for row in self._per_key("existing", "key", namespace, keys)}

    def _per_key(
        self, what: str, columns: str, namespace: str, keys: Iterable[str]
    ) -> Iterator[Any]:
        """The rows of *columns* of the existing records among *keys*, a query per 1 000."""
        check_namespace(namespace)
        wanted = list(dict.fromkeys(check_keys(keys)))
        # The keys as one text, joined by _SEP (as JSON if a key holds it): made in C, where
        # psycopg escapes a text array's elements one by one in Python (1 000 keys: 7.5 ms as
        # a list); each key one look-up in the primary key (LATERAL ... LIMIT 1, which the
        # planner cannot turn into a join), whatever the table's statistics say: on a new
        # table, "= ANY" of the array scanned the namespace row by row (1 000 keys of 1 500:
        # 12 ms), a join hashed it whole (100 keys of 20 000: 2.3 ms); this takes 1.9 and 0.3 ms.
        lookup = (
            f"CROSS JOIN LATERAL (SELECT {columns} FROM {self._p}_records "  # noqa: S608
            "WHERE namespace = %s AND key = k.wanted LIMIT 1) AS r"
        )
        split, json_ = (
            f"SELECT {columns} FROM {keys} AS k (wanted) {lookup}"  # noqa: S608
            for keys in (f"unnest({_SPLIT})", "json_array_elements_text(%s::json)")
        )

        def fetch(chunk: list[str]) -> Callable[[Any], list[Any]]:
            joined = _joined(chunk)
            keys, sql = (_ENCODER.encode(chunk), json_) if joined is None else (joined, split)
            return lambda connection: connection.execute(sql, (keys, namespace)).fetchall()

        for start in range(0, len(wanted), _BATCH):  # a call per batch, each with its deadline
            yield from self._run(what, fetch(wanted[start : start + _BATCH]))

    def put_many(self, writes: Iterable[Write]) -> list[Record | None]:
        """Apply several writes as :meth:`put` would, in one transaction.

        Runs of writes of one kind (unconditional, create-only, compare-and-set) to distinct
        keys of one namespace go in one multi-row statement each, up to 500 rows.
        """
        return self._records.put_many(writes)

    def _statements(self, runs: list[WriteRun]) -> list[Statement]:
        return [self._many_statement(run) for run in runs]

    def _many_statement(self, run: WriteRun) -> Statement:
        """The statement for a run of writes of one kind to distinct keys of one namespace.

        One fixed text per kind, a column of the rows in one text, joined by ``_SEP`` and
        split by ``string_to_array``: psycopg parses a statement with few parameters once and
        keeps it, where a multi-row ``VALUES`` list of up to 2 000 parameters was parsed again
        on every call (about 2.4 ms for 500 rows); ``str.join`` is the cheapest text to make,
        where text arrays are escaped element by element in Python (500 rows: 6.3 ms as arrays
        for ``unnest``, 10.1 ms as ``VALUES``); and the server cuts it at each separator, where
        it lexed a JSON array of the rows again for each ``->>`` of each row, unescaping each
        document (a first sync, claims, outcomes and content records: ~36 µs of server CPU
        per mail as JSON, ~30 split). A run with a key holding ``_SEP`` goes as JSON.
        """
        kind, writes, texts = run
        if len(writes) == 1:
            write, text = writes[0], texts[0]
            if kind == "update":
                params = [write.state, text, write.namespace, write.key, write.expect]
                return self._update_one, params
            sql = self._create_one if kind == "create" else self._upsert_one
            return sql, [write.namespace, write.key, write.state, text]
        keys = _joined([w.key for w in writes])
        if keys is not None:
            states = _SEP.join([w.state for w in writes])
            data = _SEP.join(texts)
            if kind == "update":
                versions = f"{{{','.join([str(w.expect) for w in writes])}}}"
                namespace = writes[0].namespace
                return self._update_split, [keys, states, data, versions, namespace, keys]
            sql = self._create_split if kind == "create" else self._upsert_split
            return sql, [writes[0].namespace, keys, states, data]
        if kind == "update":
            rows = _ENCODER.encode(
                [(w.key, w.state, t, w.expect) for w, t in zip(writes, texts, strict=True)]
            )
            return self._update_many, [rows, writes[0].namespace, rows]
        rows = _ENCODER.encode([(w.key, w.state, t) for w, t in zip(writes, texts, strict=True)])
        sql = self._create_many if kind == "create" else self._upsert_many
        return sql, [writes[0].namespace, rows]

    def _put_started(self, writes: list[Write]) -> Callable[[], list[Record | None]]:
        """Send *writes* as :meth:`put_many` would, and return the call that gives the result.

        When the writes make one statement (one kind, one namespace, distinct keys, up to
        500), it is on its way when this returns, and the server applies it while the
        caller does something else (the outbox: the next mail's first SMTP commands, or its
        next mails); the returned call waits for its answer. Other writes are applied now.
        The call must be made, once: it holds one of the pool's connections until then.
        Errors as :meth:`put_many` (the writes checked before anything is sent; the store's
        errors from either call).
        """
        runs = plan_writes(writes, _GROUP_ROWS)
        if len(runs) != 1:
            done = self._records.put_many(writes)
            return lambda: done
        sql, params = self._many_statement(runs[0])
        call = self._call("put" if len(writes) == 1 else "put_many")
        call.step(lambda connection: self._send(connection, sql, params))

        def answer() -> list[Record | None]:
            rows = call.step(lambda connection: read_rows(connection, self._psycopg))
            call.end()
            # (key, version, updated_at) of each record written; none for a refused one.
            found = {str(row[0]): (row[0], int(row[1] or 0), float(row[2] or 0)) for row in rows}
            return written_records(runs, [found])

        return answer

    def _send(self, connection: Any, sql: str, params: list[Any]) -> None:
        """Send one of put_many's statements for :meth:`_put_started` (prepared if asked)."""
        if self._prepared is None:
            send_statement(connection, self._numbered[sql], params)
            return
        names = self._prepared.setdefault(connection, set())
        send_prepared(
            connection, names, self._names[sql], self._numbered[sql], params, self._psycopg
        )

    def delete(self, namespace: str, key: str, *, expect: int | None = None) -> bool:
        """Delete a record (at version *expect*, if given)."""
        return self._records.delete(namespace, key, expect)

    def scan(
        self,
        namespace: str,
        *,
        state: str | None = None,
        updated_before: float | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        """Return matching records, oldest update first."""
        return self._records.scan(namespace, state, updated_before, limit)

    def count(self, namespace: str) -> dict[str, int]:
        """Return the number of records in each state."""
        return self._records.count(namespace)

    def prune(self, namespace: str, *, state: str, updated_before: float) -> int:
        """Delete records in *state* older than *updated_before*."""
        return self._records.prune(namespace, state, updated_before)

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
        self._pool.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r}, table_prefix={self._p!r})"


class _Call:
    """One call to the server on a connection of the pool, in one or more steps.

    Each :meth:`step` runs on the connection; an error in one closes the connection (the
    watchdog's shut-down, a broken socket, a failed statement) and is raised as StoreError,
    without psycopg's own error (it may quote the DSN) as its context. :meth:`end` puts the
    connection back once the call is over.
    """

    __slots__ = ("_connection", "_limit", "_store", "_watch", "_what")

    def __init__(self, store: PostgresStore, what: str, limit: float) -> None:
        self._store = store
        self._what = what
        self._limit = limit
        self._connection: Any = None
        self._watch = -1

    def take(self, _: object) -> None:
        self._connection = self._store._pool.take()
        self._watch = WATCHDOG.watch(self._connection, self._limit)

    def step(self, operation: Callable[[Any], _T]) -> _T:
        """Run *operation* on the connection; raise StoreError for a psycopg error."""
        try:
            return operation(self._connection)
        except BaseException as error:
            dropped = self._watch >= 0 and not WATCHDOG.unwatch(self._watch)
            self._watch = -1
            if self._connection is not None:
                self._connection.close()
            if not isinstance(error, self._store._psycopg.Error):
                raise
            if dropped:
                reason = (
                    f"no answer within {self._limit:g} s: the server or the network to it is down"
                )
            else:  # psycopg's messages can quote the DSN: say what failed without it.
                lines = self._store._hide(str(error)).strip().splitlines()
                reason = lines[0] if lines else type(error).__name__
            failed = StoreError(
                f"PostgresStore({self._store.url!r}): {self._what} failed: {reason}"
            )
        raise failed  # here: psycopg's error is not kept as its context

    def end(self) -> None:
        """Put the connection back (closed if the watchdog shut it down just as it answered)."""
        if WATCHDOG.unwatch(self._watch):
            self._store._pool.put_back(self._connection)
        else:
            self._connection.close()


def _usable(connection: Any) -> bool:
    """Whether an idle connection still looks alive.

    An idle connection has nothing to read unless the server closed it (a restart, an idle
    timeout, pg_terminate_backend): one that has is dropped before use, not in the caller's
    face.
    """
    if connection.closed:
        return False
    try:
        fd = connection.fileno()
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return not poller.poll(0)
        return not select.select([fd], [], [], 0)[0]
    except Exception:  # a connection we cannot even ask is not worth keeping
        return False


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))
