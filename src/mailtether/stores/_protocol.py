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

Optional methods: a store may offer more than the protocol asks, and mailtether uses it when
it is there. Each is a protocol of its own (so a store written before it still is a
:class:`Store`), with a fallback on the protocol's methods:

- :class:`KeyLookup`, ``existing(namespace, keys)``: which keys have a record, without
  reading the records (the duplicate guard's batch checks: ``filter_new``, ``triage``).
  Every built-in store has it; :func:`~mailtether.stores._shared.existing_keys` falls back
  to ``get_many`` for a store that has not.
- :class:`RowWrites`, ``put_rows(rows)``: ``put_many`` of writes given as plain tuples,
  answered with the new versions only (the duplicate guard's batches: claims and outcomes,
  where a :class:`Write` and a :class:`Record` per mail cost more than the SQL). SQLiteStore
  has it; :func:`~mailtether.stores._shared.put_rows` falls back to ``put_many``.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol, runtime_checkable

import attrs

__all__ = [
    "SCHEMA_VERSION",
    "KeyLookup",
    "Lease",
    "Record",
    "Row",
    "RowWrites",
    "Store",
    "Write",
    "default_owner",
]

SCHEMA_VERSION: Final = 1
"""The layout version every store writes; a store refuses data from a newer one."""


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

        One transaction (SQLite, PostgreSQL) or one script per 500 writes (Redis) for the
        lot, which is what makes recording a batch of outcomes cheap. Each write's
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


@runtime_checkable
class KeyLookup(Protocol):
    """A store that can say which keys have a record, without reading the records.

    Optional (see the module's docstring): every built-in store has it. A key-only look-up
    is 3-4 times cheaper than :meth:`Store.get_many` (no record is read or decoded), and it
    is all the duplicate guard's batch checks need for mail it has never seen.
    """

    def existing(self, namespace: str, keys: Iterable[str]) -> set[str]:
        """Return the keys among *keys* that have a record in *namespace*.

        The keys of what :meth:`Store.get_many` would return (checked the same way).
        """
        ...


Row = tuple[str, str, str, Mapping[str, Any], int | None]
"""One write as a plain tuple, for :meth:`RowWrites.put_rows`: the fields of a :class:`Write`
in their order, ``(namespace, key, state, data, expect)``."""


@runtime_checkable
class RowWrites(Protocol):
    """A store that applies writes given as plain tuples and answers with versions only.

    Optional (see the module's docstring): :meth:`Store.put_many` exactly, without a
    :class:`Write` to make per write nor a :class:`Record` per answer (about 1 µs each).
    """

    def put_rows(self, rows: Iterable[Row]) -> list[int | None]:
        """Apply each :data:`Row` as ``put_many`` applies its :class:`Write`, in one go.

        Returns:
            For each row, in order: the version its record has now, or ``None`` if its
            *expect* did not match (nothing was written for it).
        """
        ...


def default_owner() -> str:
    """Return a lease owner name unique to this process and call: ``host:pid:random``.

    The host and process id help a person reading ``mailtether status``; the random part
    keeps two owners apart even when a pid is reused.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
