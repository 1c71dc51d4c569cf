"""Every store backend behind one test interface, for the conformance suite."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from mailtether import Lease, MemoryStore, SQLiteStore, Store, store_from_url
from mailtether.testing import FakeClock

BACKENDS = ["memory", "sqlite", "redis", "postgres"]


@attrs.define
class Backend:
    """A fresh, empty store of one kind, and what a test needs to drive it."""

    name: str
    store: Store
    make: Callable[[], Store]
    """Another client of the same data (another process would see the same)."""
    url: str | None
    """For other processes; None where the store lives only in this process."""
    clock: FakeClock | None
    """The store's clock when it can be injected; None when it is the server's."""
    opened: list[Store] = attrs.field(factory=list)

    def other(self) -> Store:
        store = self.make()
        self.opened.append(store)
        return store

    def pass_time(self, seconds: float) -> None:
        """Let *seconds* pass on the store's clock."""
        if self.clock is not None:
            self.clock.advance(seconds)
            return
        target = self.store.now() + seconds
        deadline = time.monotonic() + seconds + 10
        while self.store.now() < target:
            if time.monotonic() > deadline:
                raise AssertionError("the store clock did not advance")
            time.sleep(min(0.05, max(0.001, target - self.store.now())))

    def expire(self, lease: Lease) -> None:
        """Let the lease's TTL run out on the store's clock."""
        self.pass_time(max(0.0, lease.expires_at - self.store.now()) + 0.01)

    def close(self) -> None:
        for store in [*self.opened, self.store]:
            store.close()


def make_backend(
    name: str, request: pytest.FixtureRequest, tmp_path: Path, *, real_clock: bool = False
) -> Backend:
    """A fresh store of kind *name*; *real_clock* when other processes share it."""
    if name == "memory":
        clock = FakeClock()
        store = MemoryStore(clock=clock)
        return Backend(name, store, lambda: store, None, clock)
    if name == "sqlite":
        path = tmp_path / "state.db"
        if real_clock:
            return Backend(
                name, SQLiteStore(path), lambda: SQLiteStore(path), f"sqlite://{path}", None
            )
        clock = FakeClock()
        return Backend(
            name,
            SQLiteStore(path, clock=clock),
            lambda: SQLiteStore(path, clock=clock),
            f"sqlite://{path}",
            clock,
        )
    if name == "redis":
        server = request.getfixturevalue("redis_server")
        url = f"{server.url}?prefix=t{uuid.uuid4().hex[:10]}"
        return Backend(name, store_from_url(url), lambda: store_from_url(url), url, None)
    if name in ("postgres", "postgres-prepared"):
        server = request.getfixturevalue("postgres_server")
        url = f"{server.dsn}?table_prefix=t{uuid.uuid4().hex[:10]}"
        if name == "postgres-prepared":  # the server parses and plans each statement once
            url += "&prepared_statements=true"
        return Backend(name, store_from_url(url), lambda: store_from_url(url), url, None)
    raise AssertionError(f"unknown backend {name}")
