"""``MemoryStore``: the store for one process, and for tests."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._errors import StoreError
from mailtether.stores._protocol import Lease, Record, Row, Write
from mailtether.stores._shared import (
    PutFromPutMany,
    check_expect,
    check_key,
    check_keys,
    check_lease,
    check_limit,
    check_namespace,
    check_put,
    check_rows,
    check_state,
    check_time,
    check_ttl,
    check_writes,
    decode_data,
    encode_data,
    lease_lost,
    written,
)

__all__ = ["MemoryStore"]


_SCALARS: Final = (str, int, bool, type(None))
_INF: Final = float("inf")


_EMPTY: Final = "{}"
"""What an empty document is kept as: one shared text, not a dict each (a done record has
one; text is no work for the garbage collector, which visits every dict a store keeps)."""


def _payload(data: Mapping[str, Any]) -> str | dict[str, Any]:
    """What the store keeps of *data*: a private copy if flat, else its JSON (checked)."""
    if type(data) is dict:
        if not data:
            return _EMPTY
        flat = _flat_copy(data)
        if flat is not None:
            return flat
    return encode_data(data)


def _flat_copy(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """A copy of *data* if it is a flat dict of JSON scalars (the common case), else None."""
    copy: dict[str, Any] = {}
    for name, value in data.items():
        if type(name) is not str:
            return None
        if type(value) is float:
            if value != value or value in (_INF, -_INF):
                return None
        elif type(value) not in _SCALARS:
            return None
        copy[name] = value
    return copy


_Stored = tuple[str, "str | dict[str, Any]", int, float]
"""A record as the store keeps it: ``(state, payload, version, updated_at)``; the payload is
JSON text, or a private copy of a flat document (cheaper, and as safe).

A plain tuple, not a named one: the garbage collector stops tracking an exact tuple of atoms
(a done record's: its payload is text) the first time it sees it, so a store of a million
done records adds nothing to each full collection — which a tuple subclass, always tracked,
did (about 10% of single claims at 300,000 records)."""
_STATE: Final = 0
_VERSION: Final = 2
_UPDATED_AT: Final = 3


_PLAIN_STATES: dict[str, str] = {}
"""Each ``str`` subclass state written so far (a ``StrEnum`` member: a finite set), as a plain
``str``. A member kept in a record would keep its tuple tracked by the garbage collector (an
enum member has a ``__dict__``)."""


def _plain(state: str) -> str:
    """*state* as a plain ``str`` (the same text)."""
    if type(state) is str:
        return state
    plain = _PLAIN_STATES.get(state)
    if plain is None:
        plain = _PLAIN_STATES[state] = "".join((state,))
    return plain


def _record(namespace: str, key: str, stored: _Stored) -> Record:
    """The record *stored* holds, with a fresh copy of the document for every reader.

    Nobody can change the stored document by mutating what they were given.
    """
    state, payload, version, updated_at = stored
    if payload is _EMPTY:
        data: dict[str, Any] = {}
    else:
        data = dict(payload) if isinstance(payload, dict) else decode_data(payload)
    return Record(namespace, key, state, data, version, updated_at)


@attrs.define
class _Slot:
    owner: str | None
    token: int
    expires_at: float
    ttl: float


class MemoryStore(PutFromPutMany):
    """A :class:`~mailtether.Store` in this process's memory: fast, and gone at exit.

    For one listener in one process, and for tests (pass a
    :class:`~mailtether.testing.FakeClock` to drive lease expiry). The store clock is
    ``clock.time()``.

    Example:
        >>> from mailtether import MemoryStore
        >>> store = MemoryStore()
        >>> lease = store.acquire("mailbox:support", "worker-1", ttl=60)
        >>> lease.token, store.acquire("mailbox:support", "worker-2", ttl=60)
        (1, None)
    """

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._time = clock.time
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, _Stored]] = {}
        self._leases: dict[str, _Slot] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("MemoryStore is closed")

    def now(self) -> float:
        """Return ``clock.time()``."""
        return self._time()

    # -- records -------------------------------------------------------------------------------

    def get(self, namespace: str, key: str) -> Record | None:
        """Return the record, or ``None``."""
        check_namespace(namespace)
        check_key(key)
        with self._lock:
            self._check_open()
            stored = self._records.get(namespace, {}).get(key)
        return None if stored is None else _record(namespace, key, stored)

    def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, Record]:
        """Return the existing records among *keys*."""
        check_namespace(namespace)
        wanted = [check_key(key) for key in keys]
        with self._lock:
            self._check_open()
            space = self._records.get(namespace, {})
            found = {key: space[key] for key in wanted if key in space}
        return {key: _record(namespace, key, stored) for key, stored in found.items()}

    def existing(self, namespace: str, keys: Iterable[str]) -> set[str]:
        """Return the keys among *keys* that have a record."""
        check_namespace(namespace)
        wanted = check_keys(keys)
        with self._lock:
            self._check_open()
            return self._records.get(namespace, {}).keys() & wanted

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

        What :meth:`put_many` of one write does, without the batch around it: the duplicate
        guard's claims and outcomes, one mail at a time.
        """
        check_put(namespace, key, state, expect)
        payload = _payload(data)
        now = self._time()
        with self._lock:
            if self._closed:
                raise StoreError("MemoryStore is closed")
            space = self._records.get(namespace)
            if space is None:
                space = self._records[namespace] = {}
            current = space.get(key)
            version = current[_VERSION] if current is not None else 0
            if expect is not None and expect != version:
                return None
            space[key] = (_plain(state), payload, version + 1, now)
        return Record(namespace, key, state, dict(data), version + 1, now)

    def put_many(self, writes: Iterable[Write]) -> list[Record | None]:
        """Apply several writes as :meth:`put` would, under one lock."""
        checked = check_writes(writes)
        rows = [(w.namespace, w.key, w.state, w.data, w.expect) for w in checked]
        versions, now = self._apply(rows)
        return [
            None if version is None else written(write, version, now)
            for write, version in zip(checked, versions, strict=True)
        ]

    def put_rows(self, rows: Iterable[Row]) -> list[int | None]:
        """:meth:`put_many` of ``(namespace, key, state, data, expect)`` tuples: new versions.

        See :class:`~mailtether.stores._protocol.RowWrites`: the duplicate guard's batches,
        without a :class:`~mailtether.Write` and a :class:`~mailtether.Record` per mail.
        """
        return self._apply(check_rows(rows))[0]

    def _apply(self, rows: list[Row]) -> tuple[list[int | None], float]:
        """Apply checked *rows* in order, under one lock: each one's new version (or None)."""
        # Validated and copied exactly as a backend that serialises would keep them; a
        # document several rows share (a batch's claims, its dones) once: payloads are
        # never changed in place (a read copies), so records may share one.
        kept: dict[int, str | dict[str, Any]] = {}
        payloads = []
        for row in rows:
            data = row[3]
            payload = kept.get(id(data))
            if payload is None:
                payload = kept[id(data)] = _payload(data)
            payloads.append(payload)
        now = self._clock.time()
        versions: list[int | None] = []
        append = versions.append
        with self._lock:
            if self._closed:
                raise StoreError("MemoryStore is closed")
            records = self._records
            for (namespace, key, state, _, expect), payload in zip(rows, payloads, strict=True):
                space = records.get(namespace)
                if space is None:
                    space = records[namespace] = {}
                current = space.get(key)
                version = current[_VERSION] if current is not None else 0
                if expect is not None and expect != version:
                    append(None)
                    continue
                space[key] = (_plain(state), payload, version + 1, now)
                append(version + 1)
        return versions, now

    def delete(self, namespace: str, key: str, *, expect: int | None = None) -> bool:
        """Delete a record (at version *expect*, if given)."""
        check_namespace(namespace)
        check_key(key)
        check_expect(expect)
        with self._lock:
            self._check_open()
            space = self._records.get(namespace, {})
            current = space.get(key)
            if current is None or (expect is not None and current[_VERSION] != expect):
                return False
            del space[key]
            return True

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
        if state is not None:
            check_state(state)
        if updated_before is not None:
            check_time(updated_before, "updated_before")
        check_limit(limit)
        with self._lock:
            self._check_open()
            found = [
                _record(namespace, key, stored)
                for key, stored in self._records.get(namespace, {}).items()
                if (state is None or stored[_STATE] == state)
                and (updated_before is None or stored[_UPDATED_AT] < updated_before)
            ]
        found.sort(key=lambda record: (record.updated_at, record.key))
        return found if limit is None else found[:limit]

    def count(self, namespace: str) -> dict[str, int]:
        """Return the number of records in each state."""
        check_namespace(namespace)
        counts: dict[str, int] = {}
        with self._lock:
            self._check_open()
            for record in self._records.get(namespace, {}).values():
                counts[record[_STATE]] = counts.get(record[_STATE], 0) + 1
        return counts

    def prune(self, namespace: str, *, state: str, updated_before: float) -> int:
        """Delete records in *state* older than *updated_before*."""
        check_namespace(namespace)
        check_state(state)
        check_time(updated_before, "updated_before")
        with self._lock:
            self._check_open()
            space = self._records.get(namespace, {})
            doomed = [
                key
                for key, record in space.items()
                if record[_STATE] == state and record[_UPDATED_AT] < updated_before
            ]
            for key in doomed:
                del space[key]
            return len(doomed)

    # -- leases --------------------------------------------------------------------------------

    def acquire(self, name: str, owner: str, ttl: float) -> Lease | None:
        """Take the lease if free or expired."""
        check_key(name, "name")
        check_key(owner, "owner")
        ttl = check_ttl(ttl)
        now = self._clock.time()
        with self._lock:
            self._check_open()
            slot = self._leases.get(name)
            if slot is None:
                slot = self._leases[name] = _Slot(None, 0, 0.0, ttl)
            elif slot.owner is not None and slot.expires_at > now:
                return None
            slot.owner, slot.token, slot.expires_at, slot.ttl = (
                owner,
                slot.token + 1,
                now + ttl,
                ttl,
            )
            return Lease(name, owner, slot.token, slot.expires_at, ttl)

    def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Extend a held lease from now; raise LeaseLost if it is not held any more."""
        check_lease(lease)
        ttl = lease.ttl if ttl is None else check_ttl(ttl)
        now = self._clock.time()
        with self._lock:
            self._check_open()
            slot = self._leases.get(lease.name)
            if not _holds(slot, lease, now):
                raise lease_lost(lease)
            assert slot is not None
            slot.expires_at, slot.ttl = now + ttl, ttl
            return Lease(lease.name, lease.owner, lease.token, slot.expires_at, ttl)

    def release(self, lease: Lease) -> bool:
        """Let go of a held lease."""
        check_lease(lease)
        now = self._clock.time()
        with self._lock:
            self._check_open()
            slot = self._leases.get(lease.name)
            if not _holds(slot, lease, now):
                return False
            assert slot is not None
            slot.owner, slot.expires_at = None, 0.0
            return True

    def holder(self, name: str) -> Lease | None:
        """Return the current unexpired holder."""
        check_key(name, "name")
        now = self._clock.time()
        with self._lock:
            self._check_open()
            slot = self._leases.get(name)
            if slot is None or slot.owner is None or slot.expires_at <= now:
                return None
            return Lease(name, slot.owner, slot.token, slot.expires_at, slot.ttl)

    def close(self) -> None:
        """Forget everything; later calls raise StoreError."""
        with self._lock:
            self._closed = True
            self._records.clear()
            self._leases.clear()

    def __repr__(self) -> str:
        return "MemoryStore()"


def _holds(slot: _Slot | None, lease: Lease, now: float) -> bool:
    return (
        slot is not None
        and slot.owner == lease.owner
        and slot.token == lease.token
        and slot.expires_at > now
    )
