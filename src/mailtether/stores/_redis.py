"""``RedisStore``: leases and records shared by many hosts, atomic through Lua scripts."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from mailtether._durations import check_seconds
from mailtether._errors import ConfigError, SchemaError, StoreError
from mailtether._redaction import redacting_logger
from mailtether._url_errors import split_url
from mailtether.stores._protocol import SCHEMA_VERSION, Lease, Record, Row, Write
from mailtether.stores._redis_line import Line
from mailtether.stores._redis_scripts import SCRIPTS
from mailtether.stores._shared import (
    PutFromPutMany,
    check_batch,
    check_expect,
    check_key,
    check_keys,
    check_lease,
    check_limit,
    check_namespace,
    check_prefix,
    check_put,
    check_state,
    check_time,
    check_ttl,
    check_writes,
    decode_data,
    encode_all,
    encode_data,
    lease_lost,
    redact_url,
    require,
    written,
)

__all__ = ["RedisStore"]

_T = TypeVar("_T")
_PREFIX: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_BATCH: Final = 500


def _read_url(url: str, prefix: str) -> tuple[str, str]:
    """(the URL for redis-py, without our ``prefix``; the prefix), or a ConfigError.

    The error names the part that is wrong and never holds the password (see
    :func:`~mailtether._url_errors.split_url`).
    """
    if not isinstance(url, str):
        raise ConfigError(f"a Redis URL is text, not {type(url).__name__}")
    parts = split_url(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    prefix = check_prefix(
        query.pop("prefix", prefix),
        _PREFIX,
        "Redis prefix",
        "1-64 characters of A-Z a-z 0-9 _ . -",
    )
    return urlunsplit(parts._replace(query=urlencode(query))), prefix


def _hide(text: str, url: str) -> str:
    """*text* without the password of *url*, in the forms a library may quote it in."""
    password = urlsplit(url).password or ""
    for form in sorted({password, unquote(password)}, key=len, reverse=True):
        text = text.replace(form, "***") if form else text
    return text


def _packed(rows: list[Row], texts: list[str]) -> str:
    """Up to 500 checked rows (documents encoded in *texts*) as the put script's argument.

    Runs of writes sharing namespace, state and expect: the run's head (its count filled in
    after), then each write's key and document (see the script), each field ended by NUL.
    """
    fields: list[str] = []
    heads: list[int] = []
    last: tuple[Any, ...] = ()
    for (namespace, key, state, _, expect), text in zip(rows, texts, strict=True):
        if last != (namespace, state, expect):
            last = (namespace, state, expect)
            heads.append(len(fields))
            fields += (namespace, state, "" if expect is None else str(expect), "")
        fields += (key, text)
    heads.append(len(fields))
    for head, end in itertools.pairwise(heads):
        fields[head + 3] = str((end - head - 4) // 2)
    return "\x00".join(fields) + "\x00"


def _put_answer(answer: str, count: int) -> tuple[list[int | None], float]:
    """The put script's answer (the time stamp, then each write's version or 0): parsed."""
    parts = answer.split(" ")
    if len(parts) != count + 1:
        raise StoreError(f"the put script answered {len(parts) - 1} versions for {count} writes")
    return [None if version == "0" else int(version) for version in parts[1:]], float(parts[0])


def _loaded_and_run(command: Callable[..., Any], found: Any, rest: list[Any]) -> Any:
    """``NOSCRIPT``: load *found* (a registered script) and run it again with *rest*.

    The server said it did not run the script, so running it now cannot run it twice.
    """
    found.sha = command("SCRIPT", "LOAD", found.script)
    return command("EVALSHA", found.sha, *rest)


def _pool_connection(pool: Any) -> Any:
    """A connection of redis-py's pool (``get_connection``'s argument went in redis-py 5.3)."""
    try:
        return pool.get_connection()
    except TypeError:  # redis-py < 5.3 wants the command's name
        return pool.get_connection("EVALSHA")


class RedisStore(PutFromPutMany):
    """A :class:`~mailtether.Store` in Redis: for listeners on many hosts.

    Every operation that reads and writes is one Lua script, so it is atomic on the server;
    lease expiry uses the server's clock (``TIME``). Records are read and written in batches
    of 500 per script; the lease calls, and one-write puts when it is free, go over one
    connection of their own (see :mod:`~mailtether.stores._redis_line`), the rest over
    redis-py's pool. All keys start with
    ``{prefix}`` — in braces, a Redis Cluster hash tag, so they share one slot. Needs
    ``pip install 'mailtether[redis]'``.

    Args:
        url: ``redis://[:password@]host[:port][/db][?prefix=name]``, ``rediss://`` for TLS,
            or ``unix:///path/to/socket``.
        prefix: The key prefix (overridden by the URL's ``prefix``); separates several
            deployments in one database.
        socket_timeout: Seconds to wait for any answer: a hung server is a StoreError, not
            a hang. A command that timed out is not sent again (a retried script could run
            twice).
        connect_timeout: Seconds to wait for the connection.

    Raises:
        ConfigError: the URL or prefix is malformed, or redis-py is not installed.
        SchemaError: the database holds data from a newer mailtether.
        StoreError: the server cannot be reached.

    Example:
        >>> from mailtether import store_from_url
        >>> store = store_from_url("redis://:pw@redis.internal/0?prefix=mail")  # doctest: +SKIP
        >>> store  # doctest: +SKIP
        RedisStore('redis://:***@redis.internal/0?prefix=mail', prefix='mail')
    """

    # Writes from two threads run at once on the server (a connection each): the listener
    # records a batch's outcomes behind while it hands the next batch over (_write_behind).
    _parallel_writes = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "mailtether",
        socket_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        socket_timeout = check_seconds(socket_timeout, "RedisStore.socket_timeout")
        connect_timeout = check_seconds(connect_timeout, "RedisStore.connect_timeout")
        redis = require("redis", "redis")
        retry, backoff = require("redis.retry", "redis"), require("redis.backoff", "redis")
        self._redis = redis
        for name in ("redis", "redis.connection", "redis.client"):  # they quote replies
            redacting_logger(name)
        clean, prefix = _read_url(url, prefix)
        self.url = redact_url(url)
        """The URL, password hidden."""
        problem = None
        try:
            self._client = redis.Redis.from_url(
                clean,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                decode_responses=True,
                # No retries: a script whose answer was lost may have run; running it again
                # would turn a won compare-and-set into a reported loss, or write twice.
                retry=retry.Retry(backoff.NoBackoff(), 0),
            )
        except ValueError as error:
            problem = f"cannot use Redis URL {self.url!r}: {_hide(str(error), url)}"
        if problem is not None:  # raised outside the except: redis-py's error is not chained
            raise ConfigError(problem)
        self._base = "{" + prefix + "}"
        self._line = Line(self._client.connection_pool, redis)
        self._scripts = {
            name: self._client.register_script(source) for name, source in SCRIPTS.items()
        }
        self._closed = False
        try:
            self._run("open", self._initialise)
        except BaseException:
            self._client.close()
            raise

    # -- plumbing ----------------------------------------------------------------------------------

    def _run(self, what: str, operation: Callable[[], _T]) -> _T:
        if self._closed:
            raise StoreError(f"RedisStore({self.url!r}) is closed")
        try:
            return operation()
        except self._redis.RedisError as error:
            failed = self._failure(what, error)
        raise failed  # not from redis-py's error, which may quote what the server was sent

    def _failure(self, what: str, error: BaseException) -> StoreError:
        """The StoreError for redis-py's *error* (raised outside its handler: not chained)."""
        return StoreError(f"RedisStore({self.url!r}): {what} failed: {error}")

    def _eval(
        self,
        what: str,
        script: str,
        keys: list[str],
        args: list[Any],
        *,
        lease: bool = False,
        small: bool = False,
    ) -> Any:
        """Run one of :data:`SCRIPTS` by its SHA (loading it first if the server lost it).

        :meth:`_run` for scripts, without redis-py's ``Script`` wrapper (two imports and
        type checks a call). ``NOSCRIPT`` means the script did not run, so sending it again
        cannot run it twice. The *lease* calls go on the store's :class:`Line`, and so do
        *small* ones (a one-write put: half its client time is the pool's) when the line is
        free: a thread never waits behind another's call for it.
        """
        if self._closed:
            raise StoreError(f"RedisStore({self.url!r}) is closed")
        found = self._scripts[script]
        line = lease or (small and self._line.free())
        command = self._line.call if line else self._client.execute_command
        try:
            try:
                return command("EVALSHA", found.sha, len(keys), *keys, *args)
            except self._redis.exceptions.NoScriptError:
                return _loaded_and_run(command, found, [len(keys), *keys, *args])
        except self._redis.RedisError as error:
            failed = self._failure(what, error)
        raise failed  # not from redis-py's error, which may quote what the server was sent

    def _initialise(self) -> None:
        meta = f"{self._base}:meta"
        self._client.hsetnx(meta, "schema_version", SCHEMA_VERSION)
        found = int(self._client.hget(meta, "schema_version"))
        if found > SCHEMA_VERSION:
            raise SchemaError(
                f"Redis {self.url} (prefix {self._base}) was written by a newer mailtether "
                f"(schema {found}, this one knows {SCHEMA_VERSION}): upgrade mailtether on every "
                "worker sharing it"
            )

    def _record_key(self, namespace: str, key: str) -> str:
        return f"{self._base}:r:{namespace}|{key}"

    def _index(self, namespace: str) -> str:
        return f"{self._base}:i:{namespace}"

    def _state_prefix(self, namespace: str) -> str:
        return f"{self._base}:s:{namespace}|"

    def _states(self, namespace: str) -> str:
        return f"{self._base}:states:{namespace}"

    def now(self) -> float:
        """Return the Redis server's time."""
        seconds, micros = self._run("now", self._client.time)
        return float(f"{seconds}.{micros:06d}")  # parsed as the scripts parse it

    # -- records -----------------------------------------------------------------------------------

    def get(self, namespace: str, key: str) -> Record | None:
        """Return the record, or ``None``."""
        check_namespace(namespace)
        check_key(key)
        fields = self._run(
            "get",
            lambda: self._client.hmget(
                self._record_key(namespace, key), "state", "data", "version", "updated_at"
            ),
        )
        return _record(namespace, key, fields)

    def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, Record]:
        """Return the existing records among *keys*: one script per 500 keys."""
        check_namespace(namespace)
        wanted = list(dict.fromkeys(check_keys(keys)))
        prefix = f"{self._base}:r:{namespace}|"
        found: dict[str, Record] = {}
        for chunk, lines in self._per_key("get_many", prefix, wanted):
            for key, line in zip(chunk, lines, strict=True):
                if line:
                    state, version, updated_at, data = line.split(" ", 3)
                    found[key] = Record(
                        namespace, key, state, decode_data(data), int(version), float(updated_at)
                    )
        return found

    def existing(self, namespace: str, keys: Iterable[str]) -> set[str]:
        """Return the keys among *keys* that have a record: one script per 500 keys."""
        check_namespace(namespace)
        wanted = check_keys(keys)
        prefix = f"{self._base}:r:{namespace}|"
        found: set[str] = set()
        for chunk, marks in self._per_key("existing", prefix, wanted):
            found.update(key for key, mark in zip(chunk, marks, strict=True) if mark == "1")
        return found

    def _per_key(
        self, script: str, prefix: str, keys: list[str]
    ) -> Iterator[tuple[list[str], Sequence[str]]]:
        """Run *script* on *keys*, 500 at a time; yield each chunk with its answer.

        The answer of ``get_many`` as its lines, of ``existing`` as its text: one character
        a key.
        """
        separator = "\x00" + prefix
        for start in range(0, len(keys), _BATCH):
            chunk = keys[start : start + _BATCH]
            # the record keys whole, each ended by NUL: one join in C, no Python per key
            packed = prefix + separator.join(chunk) + "\x00"
            answer = self._eval(script, script, [], [packed])
            yield chunk, answer.split("\n") if script == "get_many" else answer

    def put_many(self, writes: Iterable[Write]) -> list[Record | None]:
        """Apply several writes as :meth:`put` would: one script per 500 writes.

        The script applies each write on its own (a compare-and-set that does not match
        writes nothing and the next write is still applied), in order, atomically on the
        server; the writes travel packed in one argument, the answer comes back as one text.
        """
        checked = check_writes(writes)
        rows = [(w.namespace, w.key, w.state, w.data, w.expect) for w in checked]
        versions, stamps = self._apply(rows, encode_all(checked))
        return [
            None if version is None else written(write, version, stamp)
            for write, version, stamp in zip(checked, versions, stamps, strict=True)
        ]

    def put_rows(self, rows: Iterable[Row]) -> list[int | None]:
        """:meth:`put_many` of ``(namespace, key, state, data, expect)`` tuples: new versions.

        See :class:`~mailtether.stores._protocol.RowWrites`: the duplicate guard's batches,
        without a :class:`~mailtether.Write` and a :class:`~mailtether.Record` per mail.
        """
        check_batch(rows, "put_rows")
        checked = list(rows)
        encoded: dict[int, str] = {}  # a document shared by several rows is encoded once
        texts = []
        for namespace, key, state, data, expect in checked:
            check_put(namespace, key, state, expect)
            text = encoded.get(id(data))
            if text is None:
                text = encoded[id(data)] = (
                    "{}" if type(data) is dict and not data else encode_data(data)
                )
            texts.append(text)
        return self._apply(checked, texts)[0]

    def _apply(self, rows: list[Row], texts: list[str]) -> tuple[list[int | None], list[float]]:
        """Apply checked *rows* (documents encoded in *texts*): versions and time stamps."""
        versions: list[int | None] = []
        stamps: list[float] = []
        for start in range(0, len(rows), _BATCH):
            batch = rows[start : start + _BATCH]
            packed = _packed(batch, texts[start : start + _BATCH])
            what = "put_many" if len(rows) > 1 else "put"
            answer = self._eval(
                what, "put_many", [], [self._base, packed, len(batch)], small=len(batch) == 1
            )
            more, stamp = _put_answer(answer, len(batch))
            versions += more
            stamps += [stamp] * len(batch)
        return versions, stamps

    def _put_started(self, writes: list[Write]) -> Callable[[], list[Record | None]]:
        """Send *writes* as :meth:`put_many` would, and return the call that gives the result.

        Up to 500 writes go in one script, sent when this returns: the server runs it while
        the caller does something else (the outbox: the next mail's first SMTP commands, or
        its next mails); the returned call waits for the answer. More writes are applied
        now. The call must be made, once: it holds a connection of the pool until then.
        Errors as :meth:`put_many` (the writes checked before anything is sent).
        """
        checked = check_writes(writes)
        if len(checked) > _BATCH:
            done = self.put_many(checked)
            return lambda: done
        rows = [(w.namespace, w.key, w.state, w.data, w.expect) for w in checked]
        packed = _packed(rows, encode_all(checked))
        what = "put_many" if len(rows) > 1 else "put"
        answer = self._eval_started(what, "put_many", [self._base, packed, len(rows)])

        def result() -> list[Record | None]:
            versions, stamp = _put_answer(answer(), len(rows))
            return [
                None if version is None else written(write, version, stamp)
                for write, version in zip(checked, versions, strict=True)
            ]

        return result

    def _eval_started(self, what: str, script: str, args: list[Any]) -> Callable[[], Any]:
        """:meth:`_eval` sent now on a connection of the pool; the call reads its answer.

        A script the server lost (``NOSCRIPT``: it did not run) is loaded and sent again
        when the answer is read. A failure other than the server's own error answer drops
        the connection (its answer may still be on the way).
        """
        if self._closed:
            raise StoreError(f"RedisStore({self.url!r}) is closed")
        found = self._scripts[script]
        pool = self._client.connection_pool
        redis = self._redis
        connection: Any = None
        failed: StoreError | None = None
        try:
            connection = _pool_connection(pool)
            connection.send_command("EVALSHA", found.sha, 0, *args)
        except redis.RedisError as error:
            if connection is not None:
                connection.disconnect()
                pool.release(connection)
            failed = self._failure(what, error)
        if failed is not None:
            raise failed  # not from redis-py's error, which may quote what was sent

        def answer() -> Any:
            problem: StoreError | None = None
            try:
                try:
                    return connection.read_response()
                except redis.exceptions.NoScriptError:

                    def command(*words: Any) -> Any:
                        connection.send_command(*words)
                        return connection.read_response()

                    return _loaded_and_run(command, found, [0, *args])
            except redis.ResponseError as error:  # the server answered: in step
                problem = self._failure(what, error)
            except BaseException as error:
                connection.disconnect()
                if not isinstance(error, redis.RedisError):
                    raise
                problem = self._failure(what, error)
            finally:
                pool.release(connection)
            raise problem

        return answer

    def delete(self, namespace: str, key: str, *, expect: int | None = None) -> bool:
        """Delete a record (at version *expect*, if given)."""
        check_namespace(namespace)
        check_key(key)
        check_expect(expect)
        deleted = self._eval(
            "delete",
            "delete",
            [self._record_key(namespace, key), self._index(namespace), self._states(namespace)],
            [self._state_prefix(namespace), "" if expect is None else expect, key],
        )
        return bool(deleted)

    def scan(
        self,
        namespace: str,
        *,
        state: str | None = None,
        updated_before: float | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        """Return matching records, oldest update first, in one script."""
        check_namespace(namespace)
        index = (
            self._index(namespace)
            if state is None
            else self._state_prefix(namespace) + check_state(state)
        )
        high = (
            "+inf"
            if updated_before is None
            else f"({check_time(updated_before, 'updated_before')!r}"
        )
        check_limit(limit)
        found = self._eval(
            "scan",
            "scan",
            [index],
            [f"{self._base}:r:{namespace}|", high, "" if limit is None else limit],
        )
        # Only records that exist, five fields each, oldest first.
        return [
            _existing(namespace, found[at], found[at + 1 : at + 5])
            for at in range(0, len(found), 5)
        ]

    def count(self, namespace: str) -> dict[str, int]:
        """Return the number of records in each state, in one script."""
        check_namespace(namespace)
        found = self._eval(
            "count", "count", [self._states(namespace)], [self._state_prefix(namespace)]
        )
        return {found[at]: int(found[at + 1]) for at in range(0, len(found), 2)}

    def prune(self, namespace: str, *, state: str, updated_before: float) -> int:
        """Delete records in *state* older than *updated_before*, 500 per script."""
        check_namespace(namespace)
        check_state(state)
        check_time(updated_before, "updated_before")
        removed = 0
        while True:
            batch = int(
                self._eval(
                    "prune",
                    "prune",
                    [
                        self._index(namespace),
                        self._state_prefix(namespace) + state,
                        self._states(namespace),
                    ],
                    [f"{self._base}:r:{namespace}|", repr(float(updated_before)), _BATCH, state],
                )
            )
            removed += batch
            if batch < _BATCH:
                return removed

    # -- leases ------------------------------------------------------------------------------------

    def acquire(self, name: str, owner: str, ttl: float) -> Lease | None:
        """Take the lease if free or expired, in one script on the server's clock."""
        check_key(name, "name")
        check_key(owner, "owner")
        ttl = check_ttl(ttl)
        base = self._base
        keys = [f"{base}:l:{name}", f"{base}:f:{name}"]
        result = self._eval("acquire", "acquire", keys, [owner, repr(ttl)], lease=True)
        if result is None:
            return None
        token, expires = result.split(" ")  # one bulk reply: cheaper than an array
        return Lease(name, owner, int(token), float(expires), ttl)

    def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Extend a held lease from now; raise LeaseLost if it is not held any more."""
        check_lease(lease)
        ttl = lease.ttl if ttl is None else check_ttl(ttl)
        expires = self._eval(
            "renew",
            "renew",
            [f"{self._base}:l:{lease.name}"],
            [lease.owner, lease.token, repr(ttl)],
            lease=True,
        )
        if expires is None:
            raise lease_lost(lease)
        return Lease(lease.name, lease.owner, lease.token, float(expires), ttl)

    def release(self, lease: Lease) -> bool:
        """Let go of a held lease."""
        check_lease(lease)
        released = self._eval(
            "release",
            "release",
            [f"{self._base}:l:{lease.name}"],
            [lease.owner, lease.token],
            lease=True,
        )
        return bool(released)

    def holder(self, name: str) -> Lease | None:
        """Return the current unexpired holder."""
        check_key(name, "name")
        held = self._eval("holder", "holder", [f"{self._base}:l:{name}"], [], lease=True)
        if held is None:
            return None
        owner, token, expires, ttl = held
        return Lease(name, owner, int(token), float(expires), float(ttl))

    def close(self) -> None:
        """Close the connection pool; later calls raise StoreError."""
        self._closed = True
        self._line.close()
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self._base[1:-1]!r})"


def _record(namespace: str, key: str, fields: list[Any]) -> Record | None:
    """The record in HMGET's answer (state, data, version, updated_at), or None if missing."""
    return None if fields[0] is None else _existing(namespace, key, fields)


def _existing(namespace: str, key: str, fields: list[Any]) -> Record:
    state, data, version, updated_at = fields
    return Record(namespace, key, state, decode_data(data), int(version), float(updated_at))
