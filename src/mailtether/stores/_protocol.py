"""The ``Store`` protocol: where leases, duplicate-guard records and source status live.

A store offers two things with the same semantics on every backend:

**Records**: small JSON documents addressed by ``(namespace, key)``, each with a short
``state`` tag (indexed: counted, scanned and pruned by state) and a ``version`` that grows with
every write. Writes are compare-and-set on the version, so logic built on records (the
duplicate guard, the status board) is written once, above the stores, and is exactly as
atomic on SQLite as on PostgreSQL.

**Leases**: named, time-bounded claims with an owner and a fencing token that strictly
increases per name, expiring by the store's own clock.

Layout, for every backend (schema version :data:`SCHEMA_VERSION`):

- namespaces are short ASCII names, by convention ``<part>`` or ``<part>:<detail>``
  (``guard``, ``guard-content``, ``status``, ``backoff``); keys are any non-empty text;
- lease names are any non-empty text; a name's fencing counter is never deleted.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import socket
from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple, Protocol, runtime_checkable

import attrs

from mailtether._errors import ConfigError, LeaseLost

__all__ = [
    "SCHEMA_VERSION",
    "Lease",
    "Record",
    "Store",
    "Write",
    "default_owner",
]

SCHEMA_VERSION: Final = 1
"""The layout version every store writes; a store refuses data from a newer one."""

MAX_KEY_LENGTH: Final = 1024
_NAMESPACE: Final = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
_STATE: Final = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MIN_TTL: Final = 0.001
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


@attrs.frozen
class Record:
    """A stored document: what :meth:`Store.get` returns.

    Attributes:
        namespace: The record's namespace (``guard``, ``status``, ...).
        key: Its key within the namespace.
        state: A short tag the store indexes (``processing``, ``done``, ``held``, ...).
        data: The JSON document.
        version: Grows by one with every write; pass it as ``expect`` to write only if
            nobody else wrote meanwhile.
        updated_at: When it was last written, in store-clock seconds (:meth:`Store.now`).
    """

    namespace: str
    key: str
    state: str
    data: Mapping[str, Any]
    version: int
    updated_at: float


@attrs.frozen
class Write:
    """One write for :meth:`Store.put_many`: the arguments :meth:`Store.put` takes.

    Attributes:
        namespace: The record's namespace.
        key: Its key.
        state: Its new state tag.
        data: Its new JSON document.
        expect: ``None`` (write unconditionally), ``0`` (only if absent) or the version the
            record must still have.
    """

    namespace: str
    key: str
    state: str
    data: Mapping[str, Any]
    expect: int | None = None


@attrs.frozen
class Lease:
    """A held lease: what :meth:`Store.acquire` and :meth:`Store.renew` return.

    Attributes:
        name: What is leased (``"mailbox:support@example.com"``).
        owner: Who holds it; unique per holder (see :func:`default_owner`).
        token: The fencing token: strictly greater than every token given out before for
            this name, on this store. Pass it along with work the lease protects, so a
            downstream system that can compare tokens refuses a stale holder.
        expires_at: When it expires, in store-clock seconds.
        ttl: The time-to-live it was last granted for, in seconds.
    """

    name: str
    owner: str
    token: int
    expires_at: float
    ttl: float


@runtime_checkable
class Store(Protocol):
    """Where mailtether keeps state that must outlive a process or be shared between several.

    Backends: :class:`~mailtether.MemoryStore` (one process), :class:`~mailtether.SQLiteStore`
    (one host, the embedded default), :class:`~mailtether.RedisStore` and
    :class:`~mailtether.PostgresStore` (many hosts). All pass one conformance suite.
    Every method is safe to call from several threads.
    """

    def now(self) -> float:
        """The store's clock in seconds: lease expiry and ``updated_at`` are on this clock.

        For Redis and PostgreSQL it is the server's time, so client clocks that disagree
        cannot make two holders of one lease.
        """
        ...

    def get(self, namespace: str, key: str) -> Record | None:
        """Return the record, or ``None`` if there is none."""
        ...

    def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, Record]:
        """Return the records that exist among *keys*, by key (one round trip per batch)."""
        ...

    def put(
        self,
        namespace: str,
        key: str,
        state: str,
        data: Mapping[str, Any],
        *,
        expect: int | None = None,
    ) -> Record | None:
        """Write a record; with *expect*, only if its version is still *expect*.

        Args:
            namespace: The record's namespace.
            key: Its key.
            state: Its new state tag.
            data: Its new JSON document (replaces the old one).
            expect: ``None`` writes unconditionally; ``0`` writes only if the record does
                not exist; ``n`` writes only if the current version is ``n``.

        Returns:
            The new record, or ``None`` if *expect* did not match (nothing was written).
        """
        ...

    def put_many(self, writes: Iterable[Write]) -> list[Record | None]:
        """Apply several writes, each exactly as :meth:`put` would, in order.

        One transaction (SQLite, PostgreSQL) or one pipelined round trip (Redis) for the lot,
        which is what makes recording a batch of outcomes cheap. Each write's
        compare-and-set is decided on its own: one that does not match gives ``None`` in its
        place and the others still apply. Every write is checked before any is applied.

        Returns:
            The new record or ``None`` for each write, in the order given.
        """
        ...

    def delete(self, namespace: str, key: str, *, expect: int | None = None) -> bool:
        """Delete a record (only at version *expect*, if given); ``True`` if one was deleted."""
        ...

    def scan(
        self,
        namespace: str,
        *,
        state: str | None = None,
        updated_before: float | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        """Return records of *namespace*, oldest update first, filtered by state and age."""
        ...

    def count(self, namespace: str) -> dict[str, int]:
        """Return how many records of *namespace* are in each state."""
        ...

    def prune(self, namespace: str, *, state: str, updated_before: float) -> int:
        """Delete records in *state* last written before *updated_before*; return how many."""
        ...

    def acquire(self, name: str, owner: str, ttl: float) -> Lease | None:
        """Take the lease *name* for *ttl* seconds if it is free or expired; else ``None``.

        A released or expired lease is taken over with a new, greater fencing token.
        """
        ...

    def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Extend a held lease by *ttl* (default: its own) from now.

        Raises:
            LeaseLost: it expired, or another owner holds it now. Nothing is changed.
        """
        ...

    def release(self, lease: Lease) -> bool:
        """Let go of a held lease; ``False`` (and no change) if it is not held by *lease*."""
        ...

    def holder(self, name: str) -> Lease | None:
        """Return the current unexpired holder of *name*, or ``None``."""
        ...

    def close(self) -> None:
        """Release the store's connections. Using it afterwards raises StoreError."""
        ...


# -- argument checks shared by every backend ----------------------------------------------------


_SEEN_NAMESPACES: set[str] = set()
_SEEN_STATES: set[str] = set()


def check_namespace(namespace: object) -> str:
    """Return *namespace* if it is a valid namespace, else raise ValueError/TypeError."""
    if namespace in _SEEN_NAMESPACES:  # a handful of names, checked millions of times
        return namespace
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
    if not _NAMESPACE.match(namespace):
        raise ValueError(
            f"namespace {namespace!r} is not valid: use 1-64 characters of a-z, 0-9, _ . : - "
            "starting with a letter or digit"
        )
    if len(_SEEN_NAMESPACES) < 1024:
        _SEEN_NAMESPACES.add(namespace)
    return namespace


def check_key(key: object, what: str = "key") -> str:
    """Return *key* if it is non-empty text without NUL, at most 1024 characters."""
    if not isinstance(key, str):
        raise TypeError(f"{what} must be a str, not {type(key).__name__}")
    if not key or len(key) > MAX_KEY_LENGTH or "\x00" in key:
        raise ValueError(
            f"{what} must be 1-{MAX_KEY_LENGTH} characters without NUL, got {key[:80]!r}"
        )
    return key


def check_state(state: object) -> str:
    """Return *state* if it is a valid state tag (a-z, 0-9, _ -; up to 32 characters)."""
    if state in _SEEN_STATES:
        return state
    if not isinstance(state, str):
        raise TypeError(f"state must be a str, not {type(state).__name__}")
    if not _STATE.match(state):
        raise ValueError(
            f"state {state!r} is not valid: use 1-32 characters of a-z, 0-9, _ - "
            "starting with a letter"
        )
    if len(_SEEN_STATES) < 1024:
        _SEEN_STATES.add(state)
    return state


def check_expect(expect: object) -> int | None:
    """Return *expect* if it is ``None`` or an int >= 0."""
    if expect is None:
        return None
    if isinstance(expect, bool) or not isinstance(expect, int) or expect < 0:
        raise ValueError(f"expect must be None or an int >= 0, got {expect!r}")
    return expect


def check_ttl(ttl: object) -> float:
    """Return *ttl* as float seconds if it is finite and at least 1 ms."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    ttl = float(ttl)
    if not math.isfinite(ttl) or ttl < MIN_TTL:
        raise ValueError(f"ttl must be finite and at least {MIN_TTL} s, got {ttl!r}")
    return ttl


def check_put(namespace: object, key: object, state: object, expect: object) -> None:
    """Check the arguments every backend's ``put`` takes."""
    check_namespace(namespace)
    check_key(key)
    check_state(state)
    check_expect(expect)


def check_writes(writes: object) -> list[Write]:
    """Return *writes* as a list after checking every one as ``put`` checks its arguments."""
    if isinstance(writes, Write | str | bytes | Mapping) or not isinstance(writes, Iterable):
        raise TypeError(f"put_many takes an iterable of Write, not {type(writes).__name__}")
    checked: list[Write] = []
    namespaces, states = _SEEN_NAMESPACES, _SEEN_STATES
    for write in writes:
        if not isinstance(write, Write):
            raise TypeError(f"put_many takes Write objects, not {type(write).__name__}")
        key, expect = write.key, write.expect
        if not (  # the common case in one expression; anything else gets check_put's errors
            write.namespace in namespaces
            and write.state in states
            and type(key) is str
            and 0 < len(key) <= MAX_KEY_LENGTH
            and "\x00" not in key
            and (expect is None or (type(expect) is int and expect >= 0))
        ):
            check_put(write.namespace, key, write.state, expect)
        checked.append(write)
    return checked


def group_writes(writes: list[Write], most: int) -> list[tuple[str, list[int]]]:
    """Split *writes* into runs for multi-row statements: ``(kind, indexes)`` in order.

    A run holds writes of one kind (``upsert``: no *expect*; ``create``: *expect* 0;
    ``update``: *expect* a version), to one namespace, to distinct keys, at most *most* of
    them; so running the runs in order applies every write as ``put`` would, in order.
    """
    groups: list[tuple[str, list[int]]] = []
    keys: set[str] = set()
    current: tuple[str, str] | None = None
    for index, write in enumerate(writes):
        kind = "upsert" if write.expect is None else "create" if write.expect == 0 else "update"
        if current != (kind, write.namespace) or write.key in keys or len(groups[-1][1]) >= most:
            groups.append((kind, []))
            keys = set()
            current = (kind, write.namespace)
        groups[-1][1].append(index)
        keys.add(write.key)
    return groups


def encode_all(writes: list[Write]) -> list[str]:
    """Each write's document as JSON; a document shared by several writes is encoded once."""
    encoded: dict[int, str] = {}
    texts = []
    for write in writes:
        data = write.data
        text = encoded.get(id(data))
        if text is None:
            text = encoded[id(data)] = (
                "{}" if type(data) is dict and not data else encode_data(data)
            )
        texts.append(text)
    return texts


class WriteRun(NamedTuple):
    """Writes that one multi-row statement applies (see :func:`plan_writes`)."""

    kind: str
    """``upsert`` (no *expect*), ``create`` (*expect* 0) or ``update`` (*expect* a version)."""
    writes: list[Write]
    texts: list[str]
    """Each write's document as JSON."""


def plan_writes(writes: Iterable[Write], most: int) -> list[WriteRun]:
    """Check *writes* and split them into runs of at most *most*, in order (see put_many)."""
    checked = check_writes(writes)
    texts = encode_all(checked)
    return [
        WriteRun(kind, [checked[i] for i in indexes], [texts[i] for i in indexes])
        for kind, indexes in group_writes(checked, most)
    ]


def written_records(
    runs: list[WriteRun], answers: list[dict[str, tuple[int, float]]]
) -> list[Record | None]:
    """Return put_many's result: per write, in order, its new record or ``None``.

    Each run's answer maps the keys it wrote to their version and ``updated_at``; a key
    missing from it is a write the compare-and-set refused.
    """
    records: list[Record | None] = []
    for run, answer in zip(runs, answers, strict=True):
        for write in run.writes:
            stamp = answer.get(write.key)
            records.append(
                None
                if stamp is None
                else Record(write.namespace, write.key, write.state, dict(write.data), *stamp)
            )
    return records


def lease_lost(lease: Lease) -> LeaseLost:
    """The error every backend raises when a renewal finds the lease no longer held."""
    return LeaseLost(
        f"lease {lease.name!r} (token {lease.token}) is no longer held by {lease.owner!r}: "
        "it expired or was taken over; stop the work it protected"
    )


def check_limit(limit: object) -> int | None:
    """Return *limit* if it is ``None`` or an int >= 0."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")
    return limit


def check_time(value: object, what: str) -> float:
    """Return *value* as float if it is a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of seconds, got {value!r}")
    return float(value)


def check_lease(lease: object) -> Lease:
    """Return *lease* if it is a :class:`Lease`."""
    if not isinstance(lease, Lease):
        raise TypeError(f"expected a Lease, not {type(lease).__name__}")
    return lease


def encode_data(data: object) -> str:
    """Serialise a record's document to compact JSON; refuse what JSON cannot hold."""
    if not isinstance(data, Mapping):
        raise TypeError(f"data must be a mapping, not {type(data).__name__}")
    try:
        return _ENCODER.encode(data)
    except (TypeError, ValueError) as error:
        raise ValueError(f"data must be JSON-serialisable: {error}") from None


def decode_data(text: str | bytes) -> dict[str, Any]:
    """Parse a record's JSON document."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("stored record data is not a JSON object")
    return value


def default_owner() -> str:
    """Return a lease owner name unique to this process and call: ``host:pid:random``.

    The host and process id help a person reading ``mailtether status``; the random part
    keeps two owners apart even when a pid is reused.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


_QUERY_PASSWORD: Final = re.compile(r"(?i)(password=)[^&#\s]*")


def redact_url(url: str) -> str:
    """Return *url* with any password replaced by ``***``, for repr and messages.

    Both places a password can hide are covered: before the host (``user:pw@``) and as a
    ``password=`` parameter (a URL query, or a libpq ``key=value`` connection string).
    """
    return _QUERY_PASSWORD.sub(r"\1***", re.sub(r"(?<=://)([^:/@]*):[^@/]*@", r"\1:***@", url))


def require(module: str, extra: str) -> Any:
    """Import an optional dependency, or explain which extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(
            f"this store needs {module!r}: install it with pip install 'mailtether[{extra}]'"
        ) from error
