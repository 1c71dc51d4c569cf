"""``SQLiteStore``: the embedded default store, one file shared by the processes of one host."""

from __future__ import annotations

import functools
import operator
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import quote

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._durations import Duration, check_seconds
from mailtether._errors import ConfigError, SchemaError, StoreError
from mailtether.stores._pool import Pool
from mailtether.stores._protocol import SCHEMA_VERSION, Lease, Record, Row, Write
from mailtether.stores._shared import (
    _SEEN_NAMESPACES,
    _SEEN_STATES,
    MAX_KEY_LENGTH,
    PutFromPutMany,
    check_batch,
    check_key,
    check_keys,
    check_lease,
    check_namespace,
    check_put,
    check_ttl,
    encode_data,
    lease_lost,
)
from mailtether.stores._sql_records import COLUMNS, SQLRecords, record_from_row

__all__ = ["SQLiteStore"]

_T = TypeVar("_T")
_BATCH: Final = 500  # well under SQLite's 32 766 host parameters, and fast to plan
# The writes of put_many, a run of rows each (see _plan); only "?" placeholders are formatted in.
# Each without what it returns: a run of creates or updates that writes every row needs no
# answer (a create makes version 1, an update its expected version + 1), and rows read back
# cost a fifth of a batch's time. The count of rows it wrote tells: see _apply.
_INSERT: Final = (
    "INSERT INTO mailtether_records (namespace, key, state, data, version, updated_at) "
)
_UPSERT_MANY: Final = (
    _INSERT + "VALUES {rows} ON CONFLICT (namespace, key) DO UPDATE SET "
    "state = excluded.state, data = excluded.data, version = version + 1, "
    "updated_at = excluded.updated_at"
)
_CREATE_MANY: Final = _INSERT + "VALUES {rows} ON CONFLICT (namespace, key) DO NOTHING"
_UPDATE_MANY: Final = (
    "UPDATE mailtether_records SET state = v.column3, data = v.column4, "
    "version = mailtether_records.version + 1, updated_at = ? FROM (VALUES {rows}) AS v "
    "WHERE mailtether_records.namespace = ? AND mailtether_records.key = v.column1 "
    "AND mailtether_records.version = v.column2"
)
# One update (a mail's outcome, a status change): a plain one-row statement, cheaper to run
# than the multi-row form above for one row (no join with VALUES), its parameters numbered to
# take the same list: now, key, expect, state, data, namespace.
_UPDATE_ONE: Final = (
    "UPDATE mailtether_records SET state = ?4, data = ?5, version = version + 1, "
    "updated_at = ?1 WHERE namespace = ?6 AND key = ?2 AND version = ?3"
)
_RETURNING: Final = " RETURNING key, version"
_RETURNING_UPDATED: Final = " RETURNING mailtether_records.key, mailtether_records.version"
_SELECT_MANY: Final = (
    f"SELECT {COLUMNS} FROM mailtether_records "  # noqa: S608
    "WHERE namespace = ? AND key IN ({marks})"
)
_STATES_MANY: Final = (
    "SELECT key, state FROM mailtether_records WHERE namespace = ? AND key IN ({marks})"
)
# The leases: each call one statement, and each a compare-and-set on its own.
_ACQUIRE: Final = (
    "INSERT INTO mailtether_leases (name, owner, token, expires_at, ttl) "
    "VALUES (?, ?, 1, ?, ?) ON CONFLICT (name) DO UPDATE SET "
    "owner = excluded.owner, token = token + 1, expires_at = excluded.expires_at, "
    "ttl = excluded.ttl WHERE owner IS NULL OR expires_at <= ? RETURNING token"
)
_TAKE_OVER: Final = (
    "UPDATE mailtether_leases SET owner = ?, token = token + 1, expires_at = ?, ttl = ? "
    "WHERE name = ? AND (owner IS NULL OR expires_at <= ?) RETURNING token"
)
_RENEW: Final = (
    "UPDATE mailtether_leases SET expires_at = ?, ttl = ? WHERE name = ? "
    "AND owner = ? AND token = ? AND expires_at > ?"
)
_RELEASE: Final = (
    "UPDATE mailtether_leases SET owner = NULL, expires_at = 0 WHERE name = ? "
    "AND owner = ? AND token = ? AND expires_at > ?"
)
_HOLDER: Final = (
    "SELECT owner, token, expires_at, ttl FROM mailtether_leases WHERE name = ? "
    "AND owner IS NOT NULL AND expires_at > ?"
)
_first: Final = operator.itemgetter(0)
_POOL: Final = 8  # idle connections kept for reuse
_PAGE_SIZE: Final = 2048
"""Bytes a page of a new file. Every write transaction puts each page it changes into the WAL
whole, and a checkpoint writes them again: smaller pages than SQLite's 4096 make the small
transactions a listener lives on cheaper (one claim, one outcome: +16%; a lease's acquire and
release: -15%), for 3-5% more CPU in large batches. 1024 would halve a lease again but cost
batches a fifth."""
_GROUP_ROWS: Final = 100  # writes of put_many in one statement, at most
_UNANSWERED: Final = 8
"""Writes of one statement from which put_many runs it in a transaction of its own, unanswered:
fewer are cheaper answered (RETURNING) than with the transaction's BEGIN and COMMIT."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS mailtether_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mailtether_records (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    data TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS mailtether_records_by_state
    ON mailtether_records (namespace, state, updated_at);
CREATE TABLE IF NOT EXISTS mailtether_leases (
    name TEXT PRIMARY KEY,
    owner TEXT,
    token INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    ttl REAL NOT NULL
) WITHOUT ROWID;
"""


class SQLiteStore(PutFromPutMany):
    """A :class:`~mailtether.Store` in one SQLite file: the embedded default.

    Many processes on one host may share the file: it runs in WAL mode, and every
    compare-and-set is a single SQL statement, so concurrent writers cannot interleave.
    (Do not put the file on a network file system: SQLite's locking is not reliable there;
    use :class:`~mailtether.RedisStore` or :class:`~mailtether.PostgresStore` across hosts.)
    The store clock is ``clock.time()``, the host's wall clock, which all processes share.

    The store remembers which file it opened: if that file is deleted or replaced while the
    store is open, every later call raises :class:`~mailtether.StoreError` instead of writing
    into a file nobody will read again (the check, one ``stat`` per call, costs a few
    microseconds: about 2% of a guard's claim). Every file system error is a
    :class:`~mailtether.StoreError` naming the path.

    Args:
        path: The database file; created with its directory if missing (unless *create* is
            false).
        clock: The clock for lease expiry and ``updated_at``.
        timeout: Seconds to wait for another process's write lock before failing.
        create: Whether to create a missing file. ``False`` for tools that only look at or
            steer a store that must exist (``mailtether status``): a missing file, or one
            that is not a mailtether store, raises :class:`~mailtether.StoreError`.

    Example:
        >>> import tempfile, pathlib
        >>> from mailtether import SQLiteStore
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     store = SQLiteStore(pathlib.Path(tmp) / "state.db")
        ...     record = store.put("status", "support@example.com", "online", {"attempts": 0})
        ...     print(record.version, store.get("status", "support@example.com").state)
        ...     store.close()
        1 online
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = SYSTEM_CLOCK,
        timeout: Duration | str = 30.0,
        create: bool = True,
    ) -> None:
        text = os.fspath(path)
        if not text or text == ":memory:" or text.startswith("file::memory:"):
            raise ConfigError(
                "SQLiteStore needs a file (each thread has its own connection); use MemoryStore "
                "for an in-memory store"
            )
        if "\x00" in text:
            raise ConfigError(f"SQLiteStore's path must not contain NUL, got {text!r}")
        self.path = Path(text)
        """The database file."""
        self._clock = clock
        self._timeout = check_seconds(timeout, "SQLiteStore.timeout", allow_zero=True)
        self._create = create
        # Absolute: a later chdir must not send new connections to another file.
        self._file = os.path.abspath(text)
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._pool = Pool(self._connect, size=_POOL)
        self._records = SQLRecords(
            self._run,
            table="mailtether_records",
            mark="?",
            key_order="key",
            most=_GROUP_ROWS,
            statements=None,  # put_many is this store's own
            transaction=_transaction,
        )
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                what = f"cannot create its directory {self.path.parent}"
                raise self._file_error(what, error) from error
        elif not os.path.exists(self._file):
            raise StoreError(
                f"the SQLiteStore file {self.path} does not exist: check the path, or start a "
                "listener on it first"
            )
        try:
            self._run("open", self._initialise)
            self._identity = self._stat()
        except BaseException:
            self._pool.close()
            raise

    # -- the file ------------------------------------------------------------------------------

    def _stat(self) -> tuple[int, int]:
        """The (device, inode) of the file at :attr:`path` now."""
        try:
            found = os.stat(self._file)
        except FileNotFoundError:
            raise StoreError(
                f"the SQLiteStore file {self.path} was deleted while in use (nothing more is "
                "written to it): restore the file and restart, or restart with a new store"
            ) from None
        except OSError as error:
            raise self._file_error("cannot look at the file", error) from error
        return found.st_dev, found.st_ino

    def _check_file(self) -> None:
        """Raise StoreError if the file opened is not at :attr:`path` any more."""
        try:
            found = os.stat(self._file)  # the common case first: one call, no tuple
        except OSError:
            found = None
        if (
            found is None
            or self._identity is None
            or found.st_ino != self._identity[1]
            or found.st_dev != self._identity[0]
        ) and self._stat() != self._identity:
            raise StoreError(
                f"the SQLiteStore file {self.path} was replaced by another file while in use "
                "(nothing more is written to either): restore the file and restart, or restart "
                "with a new store"
            )

    def _file_error(self, what: str, error: OSError) -> StoreError:
        return StoreError(f"{self!r}: {what}: {error.strerror or error}")

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # Only the first connection may create the file: a later one that found it gone
        # would start an empty store in its place.
        mode = "rwc" if self._create and self._identity is None else "rw"
        connection = sqlite3.connect(
            f"file:{quote(self._file)}?mode={mode}",
            uri=True,
            timeout=self._timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        connection.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
        connection.execute("PRAGMA synchronous = NORMAL")
        return connection

    def _run(self, what: str, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._pool.closed:
            raise StoreError(f"{self!r} is closed")
        if self._identity is not None:  # before taking a connection: it may open the file
            self._check_file()
        connection: sqlite3.Connection | None = None
        try:
            connection = self._pool.take()
            result = operation(connection)
        except BaseException as error:
            if connection is not None:
                connection.close()
            if not isinstance(error, sqlite3.Error | OSError):
                raise
            raise StoreError(f"{self!r}: {what} failed: {error}") from error
        self._pool.put_back(connection)
        return result

    def _execute(self, what: str, sql: str, params: tuple[Any, ...], *, row: bool) -> Any:
        """One statement: its first row (``row``), else how many rows it changed.

        :meth:`_run` for the calls that are one statement (leases), without the closure:
        a lease's acquire and release are each a few microseconds of Python around SQLite.
        """
        pool = self._pool
        if pool.closed:
            raise StoreError(f"{self!r} is closed")
        if self._identity is not None:  # before taking a connection: it may open the file
            self._check_file()
        connection: sqlite3.Connection | None = None
        try:
            connection = pool.take()
            cursor = connection.execute(sql, params)
            result = cursor.fetchone() if row else cursor.rowcount
        except BaseException as error:
            if connection is not None:
                connection.close()
            if not isinstance(error, sqlite3.Error | OSError):
                raise
            raise StoreError(f"{self!r}: {what} failed: {error}") from error
        pool.put_back(connection)
        return result

    def _initialise(self, connection: sqlite3.Connection) -> None:
        if (
            not self._create
            and not connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mailtether_meta'"
            ).fetchone()
        ):
            raise StoreError(
                f"the SQLiteStore file {self.path} is not a mailtether store: check the path"
            )
        # A new file only (before WAL, which fixes it); an existing file keeps its own.
        connection.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{self!r}: cannot switch to WAL ({mode})")
        with _transaction(connection):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute(
                "INSERT OR IGNORE INTO mailtether_meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            found = connection.execute(
                "SELECT value FROM mailtether_meta WHERE key = 'schema_version'"
            ).fetchone()[0]
        if int(found) > SCHEMA_VERSION:
            raise SchemaError(
                f"{self.path} was written by a newer mailtether (schema {found}, this one knows "
                f"{SCHEMA_VERSION}): upgrade mailtether on every worker sharing it"
            )

    def now(self) -> float:
        """Return ``clock.time()``."""
        return self._clock.time()

    # -- records -------------------------------------------------------------------------------

    def get(self, namespace: str, key: str) -> Record | None:
        """Return the record, or ``None``."""
        return self._records.get(namespace, key)

    def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, Record]:
        """Return the existing records among *keys*, in batches of 500 per query."""
        found: dict[str, Record] = {}

        def take(rows: Iterable[tuple[Any, ...]]) -> None:
            for row in rows:
                found[row[0]] = record_from_row(namespace, row)

        self._per_key("get_many", COLUMNS, namespace, keys, take)
        return found

    def existing(self, namespace: str, keys: Iterable[str]) -> set[str]:
        """Return the keys among *keys* that have a record, in batches of 500 per query.

        Reads keys only, never a record: see :class:`~mailtether.stores._protocol.KeyLookup`.
        """
        found: set[str] = set()
        self._per_key(
            "existing", "key", namespace, keys, lambda rows: found.update(map(_first, rows))
        )
        return found

    def _per_key(
        self,
        what: str,
        columns: str,
        namespace: str,
        keys: Iterable[str],
        take: Callable[[Iterable[Any]], None],
    ) -> None:
        """Hand *take* the rows of *columns* of the existing records among *keys*, 500 a query."""
        check_namespace(namespace)
        wanted = check_keys(keys)
        # Only "?" placeholders are formatted in; the keys travel as parameters.
        select = f"SELECT {columns} FROM mailtether_records WHERE namespace = ? AND key IN "  # noqa: S608
        full = f"{select}({','.join('?' * _BATCH)})"

        def query(connection: sqlite3.Connection) -> None:
            for start in range(0, len(wanted), _BATCH):
                chunk = wanted[start : start + _BATCH]
                sql = full if len(chunk) == _BATCH else f"{select}({','.join('?' * len(chunk))})"
                take(connection.execute(sql, (namespace, *chunk)))

        self._run(what, query)

    def put_many(self, writes: Iterable[Write]) -> list[Record | None]:
        """Apply several writes as :meth:`put` would, in one transaction.

        Runs of writes of one kind (unconditional, create-only, compare-and-set) to distinct
        keys of one namespace go in one multi-row statement each, up to 100 rows.
        """
        check_batch(writes, "put_many")
        rows: list[Row] = []
        for write in writes:
            if type(write) is not Write and not isinstance(write, Write):
                raise TypeError(f"put_many takes Write objects, not {type(write).__name__}")
            rows.append((write.namespace, write.key, write.state, write.data, write.expect))
        versions, now = self._put(rows)
        return [
            None if version is None else Record(namespace, key, state, dict(data), version, now)
            for (namespace, key, state, data, _), version in zip(rows, versions, strict=True)
        ]

    def put(
        self,
        namespace: str,
        key: str,
        state: str,
        data: Mapping[str, Any],
        *,
        expect: int | None = None,
    ) -> Record | None:
        """Write a record, compare-and-set on its version if *expect* is given.

        :meth:`put_many` of one write, without the :class:`~mailtether.Write` around it.
        """
        versions, now = self._put([(namespace, key, state, data, expect)])
        version = versions[0]
        return None if version is None else Record(namespace, key, state, dict(data), version, now)

    def put_rows(self, rows: Iterable[Row]) -> list[int | None]:
        """:meth:`put_many` of ``(namespace, key, state, data, expect)`` tuples: new versions.

        See :class:`~mailtether.stores._protocol.RowWrites`: the duplicate guard's batches,
        without a :class:`~mailtether.Write` and a :class:`~mailtether.Record` per mail.
        """
        check_batch(rows, "put_rows")
        return self._put(list(rows))[0]

    def _put(self, rows: list[Row]) -> tuple[list[int | None], float]:
        """Apply *rows* in order: each one's new version (or ``None``), and their updated_at."""
        now = self._clock.time()
        runs = _plan(rows, now)
        if not runs:
            return [], now
        what = "put" if len(runs) == 1 else "put_many"
        return self._run(what, lambda connection: _apply(connection, rows, runs)), now

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

    # -- leases --------------------------------------------------------------------------------

    def acquire(self, name: str, owner: str, ttl: float) -> Lease | None:
        """Take the lease if free or expired: one statement, or two for a name's first time.

        A name taken before is taken over by an update; only when that changes nothing (the
        lease is held, or the name is new) does an insert-or-update decide, atomically.
        """
        check_key(name, "name")
        check_key(owner, "owner")
        ttl = check_ttl(ttl)
        now = self._clock.time()
        row = self._execute("acquire", _TAKE_OVER, (owner, now + ttl, ttl, name, now), row=True)
        if row is None:
            params = (name, owner, now + ttl, ttl, now)
            row = self._execute("acquire", _ACQUIRE, params, row=True)
        return None if row is None else Lease(name, owner, row[0], now + ttl, ttl)

    def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Extend a held lease from now; raise LeaseLost if it is not held any more."""
        check_lease(lease)
        ttl = lease.ttl if ttl is None else check_ttl(ttl)
        now = self._clock.time()
        params = (now + ttl, ttl, lease.name, lease.owner, lease.token, now)
        if not self._execute("renew", _RENEW, params, row=False):
            raise lease_lost(lease)
        return Lease(lease.name, lease.owner, lease.token, now + ttl, ttl)

    def release(self, lease: Lease) -> bool:
        """Let go of a held lease."""
        check_lease(lease)
        params = (lease.name, lease.owner, lease.token, self._clock.time())
        return bool(self._execute("release", _RELEASE, params, row=False))

    def holder(self, name: str) -> Lease | None:
        """Return the current unexpired holder."""
        check_key(name, "name")
        row = self._execute("holder", _HOLDER, (name, self._clock.time()), row=True)
        return (
            None if row is None else Lease(name, row[0], int(row[1]), float(row[2]), float(row[3]))
        )

    def close(self) -> None:
        """Close every connection; later calls raise StoreError."""
        self._pool.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"


class _Refused(Exception):
    """A statement run unanswered did not write all its rows: ask again, answered."""


class _Run:
    """Writes that one statement applies: of one kind, to distinct keys of one namespace.

    *start* is the index of its first write in ``put_many``'s, the others follow it; *params*
    the statement's parameters (see the statements above).
    """

    __slots__ = ("count", "kind", "params", "start")

    def __init__(self, kind: str, start: int, params: list[Any]) -> None:
        self.kind = kind
        self.start = start
        self.params = params
        self.count = 0


def _plan(rows: list[Row], now: float) -> list[_Run]:
    """Check *rows*, encode their documents and split them into runs, in order.

    A run holds writes of one kind (``upsert``: no *expect*; ``create``: *expect* 0;
    ``update``: *expect* a version), to one namespace, to distinct keys, at most _GROUP_ROWS
    of them; so running the runs in order applies every write as ``put`` would, in order.
    Every write is checked, and every document encoded, before this returns: a bad one raises
    before anything is applied. One pass: each run's parameters are made as it is planned.
    """
    runs: list[_Run] = []
    encoded: dict[int, str] = {}  # a document shared by several writes is encoded once
    keys: set[str] = set()
    params: list[Any] = []
    run = _Run("", 0, params)  # none yet: the first write starts one
    kind = namespace = ""
    namespaces, states = _SEEN_NAMESPACES, _SEEN_STATES
    for index, (namespace_, key, state, data, expect) in enumerate(rows):
        if not (  # check_put's checks, the common case in one expression
            namespace_ in namespaces
            and state in states
            and type(key) is str
            and 0 < len(key) <= MAX_KEY_LENGTH
            and "\x00" not in key
            and (expect is None or (type(expect) is int and expect >= 0))
        ):
            check_put(namespace_, key, state, expect)
        text = encoded.get(id(data))
        if text is None:
            text = encoded[id(data)] = (
                "{}" if type(data) is dict and not data else encode_data(data)
            )
        if type(state) is not str:  # an enum's member: binds several times slower than text
            state = str.__str__(state)
        this = "upsert" if expect is None else "create" if expect == 0 else "update"
        if this != kind or namespace_ != namespace or key in keys or len(keys) >= _GROUP_ROWS:
            if kind == "update":
                params.append(namespace)
            run.count = len(keys)
            kind, namespace, keys = this, namespace_, set()
            params = [now] if this == "update" else []
            run = _Run(this, index, params)
            runs.append(run)
        if this == "update":
            params += (key, expect, state, text)
        else:
            params += (namespace, key, state, text, now)
        keys.add(key)
    if kind == "update":
        params.append(namespace)
    run.count = len(keys)  # (a run's keys are distinct: one a write)
    return runs


@functools.lru_cache(maxsize=1024)  # 3 kinds x 100 sizes x answered or not, at most
def _sql(kind: str, count: int, answered: bool) -> str:
    """The statement of a run of *count* writes of *kind*, returning ``key, version`` or not."""
    if kind == "update" and count == 1:
        return _UPDATE_ONE + (_RETURNING if answered else "")
    if kind == "update":
        sql = _UPDATE_MANY.format(rows=",".join(["(?, ?, ?, ?)"] * count))
        return sql + (_RETURNING_UPDATED if answered else "")
    rows = ",".join(["(?, ?, ?, ?, 1, ?)"] * count)
    return (_UPSERT_MANY if kind == "upsert" else _CREATE_MANY).format(rows=rows) + (
        _RETURNING if answered else ""
    )


def _apply(connection: sqlite3.Connection, rows: list[Row], runs: list[_Run]) -> list[int | None]:
    """Run *runs*' statements in one transaction: each write's new version, or ``None``.

    Optimistic: creates and updates (most of a batch, all of a guard's) go unanswered, and
    a statement whose count of rows written is short of its writes (a key created already,
    a version moved on) rolls the transaction back; then it is run again with every
    statement answered (``RETURNING``), which says what each write did. One short statement
    of few writes, atomic on its own, is answered at once, without a transaction.
    """
    if len(runs) > 1 or runs[0].count >= _UNANSWERED:
        try:
            with _transaction(connection):
                return _unanswered(connection, runs)
        except _Refused:
            pass  # rolled back; the lock was let go, so it is all decided again
    if len(runs) == 1:
        return _answered(connection, rows, runs)
    with _transaction(connection):
        return _answered(connection, rows, runs)


def _unanswered(connection: sqlite3.Connection, runs: list[_Run]) -> list[int | None]:
    versions: list[int | None] = []
    for run in runs:
        if run.kind == "upsert":  # the version is the record's own: answered
            answer = dict(connection.execute(_sql("upsert", run.count, True), run.params))
            versions += [answer[key] for key in run.params[1::5]]
        elif connection.execute(_sql(run.kind, run.count, False), run.params).rowcount != (
            run.count
        ):
            raise _Refused
        elif run.kind == "create":
            versions += [1] * run.count
        else:  # the expected versions, every fourth parameter from the third
            versions += [expect + 1 for expect in run.params[2:-1:4]]
    return versions


def _answered(
    connection: sqlite3.Connection, rows: list[Row], runs: list[_Run]
) -> list[int | None]:
    versions: list[int | None] = []
    for run in runs:
        get = dict(connection.execute(_sql(run.kind, run.count, True), run.params)).get
        versions += [get(row[1]) for row in rows[run.start : run.start + run.count]]
    return versions


@contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
