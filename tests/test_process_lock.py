"""ProcessLock and acquire_lease, driven step by step on a manual FakeClock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from mailtether import (
    Lease,
    LeaseLost,
    LeaseUnavailable,
    MemoryStore,
    ProcessLock,
    StoreError,
    acquire_lease,
)
from mailtether.testing import FakeClock


def eventually(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait (in real time) for a background thread to get somewhere; not a schedule."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.002)


class FlakyStore(MemoryStore):
    """A MemoryStore whose renewals can be made to fail or hang."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.renewals = 0
        self.fail_with: BaseException | None = None
        self.hang = threading.Event()
        self.release_hang = threading.Event()
        self.clock_during_renew: Callable[[], None] | None = None

    def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        self.renewals += 1
        if self.hang.is_set():
            self.release_hang.wait(10)
        if self.clock_during_renew is not None:
            self.clock_during_renew()
        if self.fail_with is not None:
            raise self.fail_with
        return super().renew(lease, ttl)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(auto_advance=False)


@pytest.fixture
def store(clock: FakeClock) -> FlakyStore:
    return FlakyStore(clock)


def test_heartbeat_renews_at_its_interval(clock, store):
    with ProcessLock(store, "run", ttl=30, clock=clock) as lock:
        first = lock.lease
        clock.wait_for_sleepers(1)
        assert clock.sleeps == [10.0]
        for beat in range(1, 4):
            clock.advance(10)
            # The store counts a renewal before the lock takes the new lease in: wait for
            # the lease itself (the last beat's lease is later than the first one too).
            eventually(
                lambda beat=beat: (
                    store.renewals == beat and lock.lease.expires_at == first.expires_at + 10 * beat
                )
            )
            eventually(lambda: clock.sleepers == 1)
        assert not lock.lost
        lock.check()
        assert lock.token == first.token
    assert store.holder("run") is None


def test_lock_is_lost_when_a_renewal_is_refused(clock, store):
    called: list[LeaseLost] = []
    with ProcessLock(store, "run", ttl=30, clock=clock, on_lost=called.append) as lock:
        clock.wait_for_sleepers(1)
        store.release(lock.lease)  # e.g. a person broke the lock, or the store lost it
        clock.advance(10)
        assert lock.lost_event.wait(5)
        assert lock.lost
        assert len(called) == 1
        with pytest.raises(LeaseLost, match="no longer held"):
            lock.check()
    assert store.holder("run") is None, "a lost lock is never silently re-acquired"


def test_lock_is_lost_when_the_store_fails_during_renewal(clock, store):
    called: list[LeaseLost] = []
    with ProcessLock(store, "run", ttl=30, clock=clock, on_lost=called.append) as lock:
        clock.wait_for_sleepers(1)
        store.fail_with = StoreError("connection refused")
        clock.advance(10)
        assert lock.lost_event.wait(5)
        with pytest.raises(LeaseLost, match="renewal failed: connection refused"):
            lock.check()
    assert called
    assert "connection refused" in str(called[0])


def test_lock_is_lost_when_a_renewal_hangs_past_expiry(clock, store):
    with ProcessLock(store, "run", ttl=30, clock=clock) as lock:
        clock.wait_for_sleepers(1)
        store.hang.set()
        clock.advance(10)
        eventually(lambda: store.renewals == 1)
        assert not lock.lost
        clock.advance(19.9)
        assert not lock.lost_event.wait(0.05)
        clock.advance(0.1)
        assert lock.lost_event.wait(5), "a hung renewal is noticed at the lease's expiry"
        with pytest.raises(LeaseLost, match="got no answer"):
            lock.check()
        store.release_hang.set()


def test_lock_is_lost_when_a_renewal_arrives_late(clock, store):
    with ProcessLock(store, "run", ttl=30, heartbeat=29, clock=clock) as lock:
        clock.wait_for_sleepers(1)
        store.clock_during_renew = lambda: clock.advance(5)
        clock.advance(29)
        assert lock.lost_event.wait(5)
        with pytest.raises(LeaseLost):
            lock.check()


def test_check_notices_expiry_even_without_a_heartbeat(clock, store):
    lock = ProcessLock(store, "run", ttl=30, heartbeat=20, clock=clock)
    with lock:
        clock.wait_for_sleepers(1)
        store.hang.set()
        clock.advance(30)
        with pytest.raises(LeaseLost):
            lock.check()
        store.release_hang.set()


def test_leaving_the_block_releases_also_on_exception(clock, store):
    held = []

    def work() -> None:
        with ProcessLock(store, "run", ttl=30, clock=clock):
            held.append(store.holder("run"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        work()
    assert held[0] is not None
    assert store.holder("run") is None


def test_a_held_lock_is_unavailable(clock, store):
    store.acquire("run", "someone-else", 30)
    with pytest.raises(LeaseUnavailable, match="held by 'someone-else'"):
        ProcessLock(store, "run", ttl=30, clock=clock).__enter__()


def test_entry_waits_up_to_the_timeout():
    clock = FakeClock()  # auto-advancing: the waits pass instantly
    store = MemoryStore(clock=clock)
    store.acquire("run", "crashed", 5)
    with ProcessLock(store, "run", ttl=30, timeout=10, clock=clock) as lock:
        assert lock.lease.owner == lock.owner
        assert sum(clock.sleeps) >= 5
    store.acquire("run", "crashed-again", 50)
    with pytest.raises(LeaseUnavailable, match="waited 10 s"):
        ProcessLock(store, "run", ttl=30, timeout=10, clock=clock).__enter__()


def test_a_lock_object_cannot_be_entered_twice(clock, store):
    lock = ProcessLock(store, "run", ttl=30, clock=clock)
    with lock, pytest.raises(RuntimeError, match="already held"):
        lock.__enter__()


def test_a_lock_object_can_be_reused_after_release(clock, store):
    lock = ProcessLock(store, "run", ttl=30, clock=clock)
    with lock:
        first = lock.token
    with lock:
        assert lock.token > first


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"ttl": 0}, "ttl must be"),
        ({"ttl": 10, "heartbeat": 10}, "heartbeat must be"),
        ({"ttl": 10, "heartbeat": 0}, "heartbeat must be"),
        ({"ttl": 10, "timeout": -1}, "timeout must be"),
    ],
)
def test_bad_lock_arguments(store, kwargs, words):
    with pytest.raises(ValueError, match=words):
        ProcessLock(store, "run", **kwargs)


def test_repr_shows_state_but_no_secrets(clock, store):
    lock = ProcessLock(store, "run", ttl=30, clock=clock)
    assert repr(lock) == "ProcessLock('run', ttl=30, not held)"
    with lock:
        assert "token=" in repr(lock)


# -- acquire_lease -----------------------------------------------------------------------------


def test_acquire_lease_non_blocking():
    store = MemoryStore(clock=FakeClock())
    first = acquire_lease(store, "poll", ttl=60, owner="a")
    assert first is not None
    assert acquire_lease(store, "poll", ttl=60, owner="b") is None


def test_acquire_lease_waits_for_expiry():
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    store.acquire("poll", "a", 60)
    lease = acquire_lease(store, "poll", ttl=60, owner="b", timeout=120, clock=clock)
    assert lease is not None
    assert lease.owner == "b"
    assert 60 <= clock.monotonic() <= 60 + 6


def test_acquire_lease_gives_up_at_the_timeout():
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    store.acquire("poll", "a", 600)
    assert acquire_lease(store, "poll", ttl=60, owner="b", timeout=30, clock=clock) is None
    assert clock.monotonic() == pytest.approx(30)


def test_acquire_lease_stops_on_request():
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    store.acquire("poll", "a", 600)
    stop = threading.Event()
    stop.set()
    assert acquire_lease(store, "poll", ttl=60, timeout=30, clock=clock, stop=stop) is None
