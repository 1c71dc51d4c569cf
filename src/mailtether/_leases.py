"""Taking leases with a timeout, and ``ProcessLock``: a lease held for a whole unit of work."""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Self

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._durations import Duration, check_seconds
from mailtether._errors import ConfigError, LeaseLost, LeaseUnavailable, StoreError
from mailtether._redaction import redacting_logger
from mailtether.stores._protocol import Lease, Store, default_owner
from mailtether.stores._shared import MIN_TTL, check_key

__all__ = ["ProcessLock", "acquire_lease"]

log = redacting_logger("mailtether.leases")


def acquire_lease(
    store: Store,
    name: str,
    ttl: Duration | str,
    *,
    owner: str | None = None,
    timeout: Duration | str = 0.0,
    poll: Duration | str | None = None,
    clock: Clock = SYSTEM_CLOCK,
    stop: threading.Event | None = None,
) -> Lease | None:
    """Take the lease *name*, waiting up to *timeout* seconds for its holder to let go.

    Seed 001's pattern, "a lease equal to the poll interval so only one worker polls", is
    ``acquire_lease(store, "poll:" + mailbox, ttl=poll_interval)``: the worker that gets it
    polls, and does not release it, so no other worker polls again before the interval is up.

    Args:
        store: Where the lease lives.
        name: What to lease.
        ttl: How long the lease lasts unless renewed, in seconds.
        owner: Who takes it; default :func:`~mailtether.default_owner`.
        timeout: How long to keep trying; 0 tries once.
        poll: Seconds between tries; default a tenth of *ttl*, between 10 ms and 1 s.
        clock: The clock to wait on.
        stop: An event that ends the wait early.

    Durations are seconds, a :class:`~datetime.timedelta` or a string such as ``"30s"``.

    Returns:
        The lease, or ``None`` if it was still held by another owner at the timeout.

    Raises:
        ConfigError: *ttl* is under 1 ms, *timeout* negative, *poll* not positive, or one
            of them NaN, infinite or no duration at all; the message names it.

    Example:
        >>> from mailtether import MemoryStore, acquire_lease
        >>> store = MemoryStore()
        >>> first = acquire_lease(store, "poll:support", ttl=60)
        >>> acquire_lease(store, "poll:support", ttl=60) is None
        True
        >>> store.release(first)
        True
        >>> acquire_lease(store, "poll:support", ttl=60).token
        2
    """
    check_key(name, "name")
    owner = default_owner() if owner is None else check_key(owner, "owner")
    seconds = check_seconds(ttl, "ttl", minimum=MIN_TTL)
    waited = check_seconds(timeout, "timeout", allow_zero=True)
    interval = check_seconds(poll, "poll", allow_none=True)
    return _acquire(store, name, seconds, owner, waited, interval, clock, stop)[0]


def _acquire(
    store: Store,
    name: str,
    ttl: float,
    owner: str,
    timeout: float,
    poll: float | None,
    clock: Clock,
    stop: threading.Event | None,
) -> tuple[Lease | None, float]:
    """Try until *timeout*; return the lease and the monotonic time its request was sent.

    The arguments are checked already.
    """
    interval = poll if poll is not None else min(1.0, max(0.01, ttl / 10))
    deadline = clock.monotonic() + timeout
    while True:
        sent = clock.monotonic()
        lease = store.acquire(name, owner, ttl)
        if lease is not None:
            return lease, sent
        remaining = deadline - clock.monotonic()
        if remaining <= 0 or clock.sleep(min(interval, remaining), stop):
            return None, sent


class ProcessLock:
    """A lease held for a whole unit of work, renewed by a heartbeat (seed 001's process lock).

    Entering the block takes the lease (waiting up to *timeout*); a background heartbeat
    renews it every *heartbeat* seconds (default a third of *ttl*). If a renewal fails, or
    does not come back before the lease would expire, the holder is told at once:
    :attr:`lost` becomes true, *on_lost* is called with the
    :class:`~mailtether.LeaseLost`, and :meth:`check` raises it. The lock is never silently
    taken again. Leaving the block releases the lease, also on an exception.

    The holder's own view of expiry is conservative: it counts the TTL from the moment each
    renewal was *sent*, so it believes the lease lost no later than the store does.

    **Threads.** Each lock object has one heartbeat thread (a daemon, named
    ``mailtether-lock-<name>``): started by the first hold, kept between holds (parked, doing
    nothing, until the next one), so a lock held again and again costs no thread per hold.
    Renewals run on it. While one is in flight, a single watch thread shared by every lock on
    the same clock (``mailtether-lease-watch``) notices a lease that expires before the store
    answers; it ends with the last heartbeat thread. The heartbeat thread ends when
    :meth:`close` is called, when the lock object is garbage (the thread holds no reference
    to it), or with the interpreter. A forked child starts its own heartbeat thread at its
    first hold; do not fork while the lock is held.

    Args:
        store: Where the lease lives.
        name: What to lock.
        ttl: Lease time-to-live in seconds; a crashed holder blocks others this long at most.
        heartbeat: Seconds between renewals; less than *ttl* (default ``ttl / 3``).
        timeout: Seconds to wait for the lock on entry (0: try once).
        owner: Who holds it; default :func:`~mailtether.default_owner`.
        on_lost: Called with the LeaseLost when the lock is lost: from the heartbeat thread,
            from :meth:`check`'s caller when it finds the lease expired, or from a short-lived
            thread of its own when a renewal hangs past the lease's expiry.
        clock: The clock for the heartbeat and the expiry estimate.

    Durations are seconds, a :class:`~datetime.timedelta` or a string such as ``"30s"``.

    Raises:
        ConfigError: at construction, if *ttl* is under 1 ms, *heartbeat* not in
            (0, *ttl*), *timeout* negative, or one of them NaN, infinite or no duration; the
            message names it.
        LeaseUnavailable: on entry, if another owner held the lock for all of *timeout*.

    Example:
        >>> from mailtether import MemoryStore, ProcessLock
        >>> store = MemoryStore()
        >>> lock = ProcessLock(store, "run:support", ttl=30)
        >>> with lock:
        ...     lock.check()        # call between steps: raises LeaseLost if it was lost
        ...     token = lock.token  # the fencing token of this run
        >>> store.holder("run:support") is None
        True
        >>> with lock:              # held again: the same heartbeat thread serves it
        ...     lock.token > token
        True
        >>> lock.close()            # ends the heartbeat thread (dropping the lock does too)
        True
    """

    def __init__(
        self,
        store: Store,
        name: str,
        *,
        ttl: Duration | str,
        heartbeat: Duration | str | None = None,
        timeout: Duration | str = 0.0,
        owner: str | None = None,
        on_lost: Callable[[LeaseLost], object] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        """The store the lease lives in."""
        self.name = check_key(name, "name")
        """The lock's name."""
        self.ttl = check_seconds(ttl, "ProcessLock.ttl", minimum=MIN_TTL)
        """The lease time-to-live."""
        beat = check_seconds(heartbeat, "ProcessLock.heartbeat", allow_none=True)
        if beat is not None and beat >= self.ttl:
            raise ConfigError(
                f"ProcessLock.heartbeat must be shorter than ttl ({self.ttl:g} s) so the lease "
                f"is renewed before it expires, got {heartbeat!r}"
            )
        self.heartbeat = self.ttl / 3 if beat is None else beat
        """Seconds between renewals."""
        self.timeout = check_seconds(timeout, "ProcessLock.timeout", allow_zero=True)
        """Seconds to wait for the lock on entry."""
        self.owner = default_owner() if owner is None else check_key(owner, "owner")
        """Who holds it."""
        self.on_lost = on_lost
        """Called with the LeaseLost when the lock is lost."""
        self.clock = clock
        """The clock for the heartbeat."""
        self.lost_event = threading.Event()
        """Set once the lock is known lost and *on_lost* has returned (so a thread that waits
        on it sees the callback's work done); :attr:`lost` and :meth:`check` tell at once."""
        self._hold: _Hold | None = None  # the hold in progress
        self._last: _Hold | None = None  # the latest hold, in progress or ended
        self._state_lock = threading.Lock()
        # The heartbeat thread and what it waits on; replaced when a new thread starts.
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()  # set to unpark the thread
        self._parked = False  # the thread waits on _wake for a hold (under _state_lock)
        self._renewing: _Hold | None = None  # the hold whose renewal is in flight
        self._watch: _ExpiryWatch | None = None
        self._finalizer: (
            weakref.finalize[[threading.Event, threading.Event], ProcessLock] | None
        ) = None
        self._forks = _FORKS[0]

    @property
    def lease(self) -> Lease:
        """The lease currently held (its token and expiry); raises if the lock is not held."""
        hold = self._hold
        if hold is None:
            raise LeaseLost(f"process lock {self.name!r} is not held")
        return hold.lease

    @property
    def token(self) -> int:
        """The fencing token of this hold."""
        return self.lease.token

    @property
    def lost(self) -> bool:
        """``True`` once the lease is lost, or past its expiry without a renewal.

        After the block it tells whether the last hold was lost.
        """
        hold = self._hold
        if hold is None:
            last = self._last
            return last is not None and last.reason is not None
        return hold.reason is not None or self.clock.monotonic() >= hold.valid_until

    def check(self) -> None:
        """Raise :class:`~mailtether.LeaseLost` if the lock was lost; call it between steps."""
        hold = self._hold
        if hold is None:
            raise LeaseLost(f"process lock {self.name!r} is not held")
        if hold.reason is None and self.clock.monotonic() >= hold.valid_until:
            self._lose(hold, "its lease expired before the heartbeat could renew it")
        if hold.reason is not None:
            raise hold.reason
        if self.clock.monotonic() >= hold.valid_until:  # let go meanwhile, by another thread
            raise LeaseLost(f"process lock {self.name!r} was lost")

    def __enter__(self) -> Self:
        if self._forks != _FORKS[0]:
            self._forget_threads()
        if self._hold is not None:
            raise RuntimeError(f"process lock {self.name!r} is already held by this object")
        if self.timeout > 0:
            lease, sent = _acquire(
                self.store, self.name, self.ttl, self.owner, self.timeout, None, self.clock, None
            )
        else:
            sent = self.clock.monotonic()
            lease = self.store.acquire(self.name, self.owner, self.ttl)
        if lease is None:
            holder = self.store.holder(self.name)
            who = f" by {holder.owner!r}" if holder is not None else ""
            raise LeaseUnavailable(
                f"process lock {self.name!r} is held{who}; waited {self.timeout:g} s. Another "
                "worker is running this unit of work: try again later"
            )
        hold = _Hold(lease, sent + self.ttl, sent + self.heartbeat)
        with self._state_lock:
            if self.lost_event.is_set():
                self.lost_event.clear()
            self._hold = self._last = hold
            if self._renewing is not None and self._watch is not None:
                # The heartbeat thread is stuck in an earlier hold's renewal: have this
                # hold's expiry watched until the thread gets to it.
                hold.entry = self._watch.arm(self, hold)
            parked = self._parked
        if parked:
            self._wake.set()
        elif self._thread is None:
            try:
                self._start()
            except BaseException:
                self.__exit__(None, None, None)
                raise
        # Otherwise the thread sleeps until an earlier hold's next beat, which comes before
        # this hold's: it finds this hold then, and sleeps on to its beat.
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._state_lock:
            hold, self._hold = self._hold, None
            if hold is None:
                return
            entry, hold.entry = hold.entry, None
        if entry is not None and self._watch is not None:
            self._watch.disarm(entry)
        # No wait for the heartbeat thread: it finds the hold gone and parks. A renewal in
        # flight meanwhile is refused by the store once the lease is released (or comes
        # before it), and its answer is dropped: this hold is over.
        if hold.reason is None:
            try:
                self.store.release(hold.lease)
            except StoreError as error:
                log.warning(
                    "could not release process lock %r (it will expire): %s", self.name, error
                )

    def close(self, timeout: float | None = 5.0) -> bool:
        """End the heartbeat thread; release the lock first if it is held.

        Not needed when the lock object is dropped (its thread then ends by itself), but
        immediate. The lock can be entered again afterwards: that starts a new thread.

        Args:
            timeout: Seconds to wait for the thread to end (``None``: as long as it takes).

        Returns:
            ``True`` if the thread has ended (or never ran, or this is called from *on_lost*
            on the heartbeat thread itself, which ends when the callback returns);
            ``False`` if it is still stuck in a renewal the store has not answered after
            *timeout* (it ends once the store answers).
        """
        if self._hold is not None:
            self.__exit__(None, None, None)
        with self._state_lock:
            thread, self._thread = self._thread, None
            self._wake, self._parked = threading.Event(), False  # no thread's: a new one starts
            finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer()  # stops the thread: sets its stop and wake events
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _start(self) -> None:
        """Start the heartbeat thread; it holds only a weak reference to the lock."""
        wake, stop = threading.Event(), threading.Event()
        watch = _join_watch(self.clock)
        thread = threading.Thread(
            target=_heartbeat,
            args=(weakref.ref(self), wake, stop, self.clock, watch),
            name=f"mailtether-lock-{self.name}",
            daemon=True,
        )
        self._wake, self._watch, self._parked = wake, watch, False
        self._finalizer = weakref.finalize(self, _end_heartbeat, wake, stop)
        self._thread = thread
        try:
            thread.start()
        except BaseException:
            self._thread = None
            self._finalizer.detach()
            _leave_watch(watch)
            raise

    def _forget_threads(self) -> None:
        """In a forked child: the parent's threads are not here; the next hold starts one."""
        self._state_lock = threading.Lock()
        self._thread = None
        self._parked = False
        self._renewing = None
        self._watch = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._forks = _FORKS[0]

    # -- called on the heartbeat thread ----------------------------------------------------------

    def _next_hold(self, wake: threading.Event) -> _Hold | None:
        """The hold to beat for, or ``None`` after marking the thread parked.

        *wake* tells the threads apart: a thread that was told to stop (its *wake* is no
        longer the lock's) gets ``None`` and changes nothing.
        """
        with self._state_lock:
            if wake is not self._wake:
                return None
            hold = self._hold
            if hold is not None and hold.reason is None:
                self._parked = False
                return hold
            self._parked = True
            wake.clear()
            return None

    def _beat(self, hold: _Hold, watch: _ExpiryWatch) -> None:
        """Renew *hold*'s lease, on this (the heartbeat) thread, with its expiry watched."""
        with self._state_lock:
            if self._hold is not hold or hold.reason is not None:
                return
            self._renewing = hold
            earlier, hold.entry = hold.entry, None
        if earlier is not None:
            watch.disarm(earlier)
        entry = watch.arm(self, hold)
        sent = self.clock.monotonic()
        try:
            result: Lease | BaseException = self.store.renew(hold.lease)
        except BaseException as error:  # reported to the holder, not lost in a thread
            result = error
        watch.disarm(entry)
        with self._state_lock:
            if self._renewing is hold:
                self._renewing = None
        if isinstance(result, BaseException):
            if isinstance(result, LeaseLost):
                self._lose(hold, str(result), result)
            else:
                self._lose(hold, f"the renewal failed: {result}")
            return
        if self.clock.monotonic() >= hold.valid_until:
            self._lose(hold, "the renewal arrived after the lease had expired")
            return
        hold.lease = result
        hold.valid_until = sent + result.ttl
        hold.next_beat = sent + self.heartbeat

    def _expire(self, hold: _Hold) -> None:
        """The watch's call: *hold*'s lease expired while its renewal was in flight."""
        if self.clock.monotonic() >= hold.valid_until:
            self._lose(hold, "the renewal got no answer before the lease expired", elsewhere=True)

    def _lose(
        self, hold: _Hold, why: str, error: LeaseLost | None = None, *, elsewhere: bool = False
    ) -> None:
        """Mark *hold* lost (if it is still the one in progress) and tell the holder."""
        with self._state_lock:
            if hold.reason is not None or self._hold is not hold:
                return
            reason = hold.reason = error or LeaseLost(
                f"process lock {self.name!r} (token {hold.lease.token}) was lost: {why}; stop "
                "the work it protected"
            )
        log.error("%s", reason)
        if elsewhere:  # not on the shared watch thread: a slow on_lost must not delay others
            threading.Thread(
                target=self._tell,
                args=(hold, reason),
                name=f"mailtether-lock-lost-{self.name}",
                daemon=True,
            ).start()
        else:
            self._tell(hold, reason)

    def _tell(self, hold: _Hold, reason: LeaseLost) -> None:
        try:
            on_lost = self.on_lost
            if on_lost is not None:
                try:
                    on_lost(reason)
                except Exception:
                    log.exception("the on_lost callback of process lock %r raised", self.name)
        finally:
            with self._state_lock:
                if self._last is hold:  # not once a new hold has begun
                    self.lost_event.set()  # last: whoever waits on it sees the callback done

    def __repr__(self) -> str:
        hold = self._hold
        held = f"token={hold.lease.token}" if hold is not None else "not held"
        return (
            f"ProcessLock({self.name!r}, ttl={self.ttl:g}, {held}{', LOST' if self.lost else ''})"
        )


class _Hold:
    """One hold of a :class:`ProcessLock`: its lease and schedule.

    Written by the heartbeat thread (the renewals) and under the lock's state lock (the
    reason it was lost, the watch entry).
    """

    __slots__ = ("entry", "lease", "next_beat", "reason", "valid_until")

    def __init__(self, lease: Lease, valid_until: float, next_beat: float) -> None:
        self.lease = lease
        self.valid_until = valid_until  # the holder's (conservative) view of its expiry
        self.next_beat = next_beat
        self.reason: LeaseLost | None = None
        self.entry: _Entry | None = None  # armed by __enter__ while the thread is busy


def _heartbeat(
    ref: weakref.ref[ProcessLock],
    wake: threading.Event,
    stop: threading.Event,
    clock: Clock,
    watch: _ExpiryWatch,
) -> None:
    """A lock's heartbeat thread: beat for each hold in turn; park between holds.

    It keeps no reference to the lock while it waits, so a dropped lock is collected; its
    finalizer sets *stop* and *wake*, and the thread ends.
    """
    try:
        while not stop.is_set():
            lock = ref()
            if lock is None:
                return
            hold = lock._next_hold(wake)
            del lock
            if hold is None:
                if not stop.is_set():  # checked after wake was cleared: a stop is not missed
                    wake.wait()
                continue
            if clock.sleep(hold.next_beat - clock.monotonic(), stop):
                return
            lock = ref()
            if lock is None:
                return
            lock._beat(hold, watch)
            del lock, hold
    except BaseException:  # a bug here must not leave the holder believing it is renewed
        log.critical("the heartbeat thread of a process lock failed", exc_info=True)
        raise
    finally:
        _leave_watch(watch)
        lock = ref()
        if lock is not None:
            with lock._state_lock:
                if lock._thread is threading.current_thread():  # ended by a bug: start anew
                    lock._thread, lock._wake, lock._parked = None, threading.Event(), False


def _end_heartbeat(wake: threading.Event, stop: threading.Event) -> None:
    """A lock's finalizer (also :meth:`ProcessLock.close`): its heartbeat thread ends."""
    stop.set()
    wake.set()


class _Entry:
    """A hold's expiry, watched while its heartbeat thread cannot watch it."""

    __slots__ = ("done", "due", "hold", "lock")

    def __init__(self, due: float, lock: ProcessLock, hold: _Hold) -> None:
        self.due = due
        self.lock = lock
        self.hold = hold
        self.done = False


class _ExpiryWatch:
    """The thread that notices a lease expiring while its renewal is in flight (a hung store).

    One per clock, shared by every lock whose heartbeat thread runs on that clock; it lives
    as long as one of those threads does (:func:`_join_watch`, :func:`_leave_watch`). Arming
    costs a heap push; the thread is woken only when an entry comes before the earliest it
    waits for, or when the earliest is disarmed (so it sleeps on the clock only while a
    renewal is in flight).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._heap: list[tuple[float, int, _Entry]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self.users = 0  # heartbeat threads on this clock; changed under _WATCHES_LOCK too

    def arm(self, lock: ProcessLock, hold: _Hold) -> _Entry:
        """Watch *hold*'s expiry (its ``valid_until`` now) until :meth:`disarm`."""
        entry = _Entry(hold.valid_until, lock, hold)
        with self._lock:
            earliest = not self._heap or entry.due < self._heap[0][0]
            heapq.heappush(self._heap, (entry.due, next(self._order), entry))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="mailtether-lease-watch", daemon=True
                )
                self._thread.start()
            elif earliest:
                self._wake.set()
        return entry

    def disarm(self, entry: _Entry) -> None:
        """Stop watching *entry*."""
        with self._lock:
            entry.done = True
            if self._heap and self._heap[0][2] is entry:
                self._wake.set()

    def _run(self) -> None:
        clock = self.clock
        while True:
            with _WATCHES_LOCK, self._lock:
                self._drop_done()
                if not self._heap and self.users == 0:
                    if _WATCHES.get(id(clock)) is self:
                        del _WATCHES[id(clock)]
                    self._thread = None
                    return
                self._wake.clear()
                due = self._heap[0][0] if self._heap else None
            if due is None:
                self._wake.wait()
                continue
            if clock.sleep(due - clock.monotonic(), self._wake):
                continue
            expired = []
            with self._lock:
                now = clock.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    entry = heapq.heappop(self._heap)[2]
                    if not entry.done:
                        expired.append(entry)
            for entry in expired:
                try:
                    entry.lock._expire(entry.hold)
                except Exception:  # the watch serves every lock: it must not die of one
                    log.exception("the lease watch failed on process lock %r", entry.lock.name)

    def _drop_done(self) -> None:
        heap = self._heap
        while heap and heap[0][2].done:
            heapq.heappop(heap)


_WATCHES: dict[int, _ExpiryWatch] = {}  # by id() of the clock, which each watch holds
_WATCHES_LOCK = threading.Lock()
_FORKS = [0]  # forks seen in this process: objects made before one lost their threads


def _join_watch(clock: Clock) -> _ExpiryWatch:
    with _WATCHES_LOCK:
        watch = _WATCHES.get(id(clock))
        if watch is None:
            watch = _WATCHES[id(clock)] = _ExpiryWatch(clock)
        with watch._lock:
            watch.users += 1
    return watch


def _leave_watch(watch: _ExpiryWatch) -> None:
    with watch._lock:
        watch.users -= 1
        if watch.users == 0:
            watch._wake.set()


def _after_fork_in_child() -> None:
    global _WATCHES_LOCK
    _FORKS[0] += 1
    _WATCHES.clear()
    _WATCHES_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
