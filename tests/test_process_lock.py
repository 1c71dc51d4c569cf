"""ProcessLock and acquire_lease, driven step by step on a manual FakeClock.

The thread tests count threads by name: a lock's heartbeat thread is
``mailtether-lock-<name>``, the shared watch ``mailtether-lease-watch``; each test uses its
own lock name so threads of other tests (ending in the background) are not counted.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import warnings
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
        self.renewed_on: list[threading.Thread] = []
        self.fail_with: BaseException | None = None
        self.hang = threading.Event()
        self.release_hang = threading.Event()
        self.clock_during_renew: Callable[[], None] | None = None

    def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        self.renewals += 1
        self.renewed_on.append(threading.current_thread())
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


def test_entry_waits_for_a_crashed_holder_within_the_timeout():
    clock = FakeClock()  # auto-advancing: the waits pass instantly
    store = MemoryStore(clock=clock)
    store.acquire("run", "crashed", 5)
    lock = ProcessLock(store, "run", ttl=30, timeout=10, clock=clock)
    try:
        with lock:
            assert lock.lease.owner == lock.owner
            assert sum(clock.sleeps) >= 5
    finally:
        assert lock.close()


def test_entry_gives_up_at_the_timeout():
    # A clock of its own: no heartbeat or lease-watch thread of another lock sleeps on it.
    # (On an auto-advancing clock such a thread moves time on while the entry waits, and
    # the holder's 50 s could pass within the entry's 10 s.)
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    store.acquire("run", "crashed-again", 50)
    with pytest.raises(LeaseUnavailable, match="waited 10 s"):
        ProcessLock(store, "run", ttl=30, timeout=10, clock=clock).__enter__()
    assert clock.monotonic() == pytest.approx(10, abs=1)


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


# -- the heartbeat thread: one per lock, kept across holds --------------------------------------


def heartbeat_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"mailtether-lock-{name}"]


def watch_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "mailtether-lease-watch"}


def test_one_heartbeat_thread_serves_a_hundred_holds(clock, store):
    lock = ProcessLock(store, "hundred", ttl=30, clock=clock)
    seen = set()
    tokens = []
    for _ in range(100):
        with lock:
            threads = heartbeat_threads("hundred")
            assert len(threads) == 1
            seen.add(threads[0].ident)
            tokens.append(lock.token)
        assert store.holder("hundred") is None, "released on every exit"
    assert len(seen) == 1, "the same thread for every hold"
    assert tokens == sorted(set(tokens)), "a new fencing token for every hold"
    assert len(heartbeat_threads("hundred")) == 1, "kept (parked) after the last hold"
    assert store.renewals == 0, "no renewal: the clock never moved"
    assert lock.close()
    assert heartbeat_threads("hundred") == []


def test_after_many_holds_renewals_still_come_on_schedule_on_the_heartbeat_thread(clock, store):
    lock = ProcessLock(store, "renews", ttl=30, clock=clock)
    for _ in range(100):
        with lock:
            pass
    [thread] = heartbeat_threads("renews")
    with lock:
        first = lock.lease
        for beat in range(1, 4):
            clock.advance(10)  # the schedule is absolute: no need to wait for the sleeper
            eventually(
                lambda beat=beat: (
                    store.renewals == beat and lock.lease.expires_at == first.expires_at + 10 * beat
                )
            )
        assert not lock.lost
        lock.check()
    assert store.renewed_on == [thread] * 3, "every renewal ran on the one heartbeat thread"
    assert heartbeat_threads("renews") == [thread]
    lock.close()


def test_after_many_holds_a_lost_lease_is_still_noticed(clock, store):
    called: list[LeaseLost] = []
    lock = ProcessLock(store, "noticed", ttl=30, clock=clock, on_lost=called.append)
    for _ in range(100):
        with lock:
            pass
    with lock:
        store.release(lock.lease)  # someone broke the lock
        clock.advance(10)
        assert lock.lost_event.wait(5)
        assert lock.lost
        with pytest.raises(LeaseLost, match="no longer held"):
            lock.check()
    assert len(called) == 1
    assert lock.lost, "still tells the last hold was lost"
    with lock:  # a new hold starts clean, on the same thread
        assert not lock.lost
        assert not lock.lost_event.is_set()
        assert len(heartbeat_threads("noticed")) == 1
    lock.close()


def test_between_holds_the_thread_is_parked_and_renews_nothing(clock, store):
    lock = ProcessLock(store, "parked", ttl=30, clock=clock)
    with lock:
        clock.wait_for_sleepers(1)
    clock.advance(10)  # the held lease's beat comes: the thread wakes, finds no hold
    eventually(lambda: clock.sleepers == 0)
    clock.advance(1000)
    assert store.renewals == 0
    assert len(heartbeat_threads("parked")) == 1
    with lock:  # unparked: it sleeps until this hold's first beat
        clock.wait_for_sleepers(1)
        assert clock.sleeps[-1] == 10.0
        clock.advance(10)
        eventually(lambda: store.renewals == 1)
    lock.close()


def test_a_renewal_in_flight_does_not_hold_up_leaving_the_block(clock, store):
    called: list[LeaseLost] = []
    lock = ProcessLock(store, "leaving", ttl=30, clock=clock, on_lost=called.append)
    with lock:
        clock.wait_for_sleepers(1)
        store.hang.set()
        clock.advance(10)
        eventually(lambda: store.renewals == 1)
    assert store.holder("leaving") is None, "released while the renewal hangs"
    store.hang.clear()
    store.release_hang.set()  # the renewal is answered (refused: the lease was released)
    eventually(lambda: store.renewed_on and clock.sleepers == 0)
    assert not called, "the refusal of an ended hold is nobody's loss"
    assert not lock.lost
    lock.close()


def test_a_hold_taken_while_a_renewal_hangs_still_has_its_expiry_watched(clock, store):
    lock = ProcessLock(store, "stuck", ttl=30, clock=clock)
    with lock:
        clock.wait_for_sleepers(1)
        store.hang.set()
        clock.advance(10)
        eventually(lambda: store.renewals == 1)  # the heartbeat thread is stuck in it
    with lock:  # at 10: valid until 40, and the thread cannot get to it
        clock.advance(29.9)
        assert not lock.lost_event.wait(0.05)
        clock.advance(0.1)
        assert lock.lost_event.wait(5), "noticed at this hold's expiry"
        with pytest.raises(LeaseLost, match="got no answer"):
            lock.check()
        store.release_hang.set()
    lock.close()


def test_close_ends_the_thread_and_the_lock_can_be_held_again(clock, store):
    lock = ProcessLock(store, "closed", ttl=30, clock=clock)
    assert lock.close(), "closing a lock never held"
    with lock:
        [first] = heartbeat_threads("closed")
    assert lock.close()
    assert not first.is_alive()
    assert heartbeat_threads("closed") == []
    with lock:
        [second] = heartbeat_threads("closed")
        assert second is not first
        assert lock.close(), "closing a held lock releases it"
        assert store.holder("closed") is None
    assert heartbeat_threads("closed") == []


def test_close_from_on_lost_on_the_heartbeat_thread(clock, store):
    lock = ProcessLock(store, "self-closing", ttl=30, clock=clock)
    closed: list[bool] = []
    lock.on_lost = lambda _: closed.append(lock.close())
    with lock:
        clock.wait_for_sleepers(1)
        store.fail_with = StoreError("connection refused")
        clock.advance(10)
        assert lock.lost_event.wait(5)
    assert closed == [True]
    eventually(lambda: heartbeat_threads("self-closing") == [])


def _refers_to(lock: ProcessLock) -> Callable[[LeaseLost], None]:
    return lambda _: lock.check()


@pytest.mark.parametrize("state", ["sleeping", "parked"])
@pytest.mark.parametrize("cycle", [False, True], ids=["plain", "in-a-cycle"])
def test_a_dropped_lock_ends_its_thread(clock, store, state, cycle):
    name = f"dropped-{state}-{cycle}"
    lock = ProcessLock(store, name, ttl=30, clock=clock)
    if cycle:  # the thread must not keep a lock alive that only a cycle refers to
        lock.on_lost = _refers_to(lock)
    with lock:
        clock.wait_for_sleepers(1)
    if state == "parked":
        clock.advance(10)
        eventually(lambda: clock.sleepers == 0)
    [thread] = heartbeat_threads(name)
    del lock
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()


def test_the_watch_thread_ends_with_the_last_lock_on_its_clock(clock, store):
    before = watch_threads()
    locks = [ProcessLock(store, f"watched-{n}", ttl=30, clock=clock) for n in range(3)]
    for lock in locks:
        lock.__enter__()
    clock.wait_for_sleepers(3)
    clock.advance(10)  # three renewals: the watch thread starts for them
    eventually(lambda: store.renewals == 3)
    ours = watch_threads() - before
    assert len(ours) == 1, "one watch thread for all the locks on one clock"
    for lock in locks[:2]:
        lock.__exit__(None, None, None)
        assert lock.close()
    [watch] = ours
    assert watch.is_alive(), "still serving the third lock"
    locks[2].__exit__(None, None, None)
    assert locks[2].close()
    watch.join(5)
    assert not watch.is_alive()


def test_no_thread_is_left_after_a_lost_hold_and_close(clock, store):
    lock = ProcessLock(store, "leftover", ttl=30, clock=clock)
    before = set(threading.enumerate())
    with lock:
        clock.wait_for_sleepers(1)
        store.hang.set()
        clock.advance(10)
        eventually(lambda: store.renewals == 1)
        clock.advance(20)
        assert lock.lost_event.wait(5)
        store.release_hang.set()
    assert lock.close()
    eventually(lambda: set(threading.enumerate()) <= before)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_heartbeat_thread():
    store = MemoryStore()
    lock = ProcessLock(store, "forked", ttl=60)  # the system clock: nothing held at the fork
    with lock:
        pass
    [parent_thread] = heartbeat_threads("forked")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: on purpose
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            with lock:
                lock.check()
                threads = heartbeat_threads("forked")
                alive = len(threads) == 1 and threads[0].is_alive()
            released = store.holder("forked") is None
            code = 0 if alive and lock.close() and released else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:  # a hung child fails the test, not the whole run
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child did not finish")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert heartbeat_threads("forked") == [parent_thread], "the parent's thread lives on"
    with lock:
        assert heartbeat_threads("forked") == [parent_thread]
    assert lock.close()
