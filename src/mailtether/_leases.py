"""Taking leases with a timeout, and ``ProcessLock``: a lease held for a whole unit of work."""

from __future__ import annotations

import threading
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
    taken again. Leaving the block stops the heartbeat and releases the lease, also on an
    exception.

    The holder's own view of expiry is conservative: it counts the TTL from the moment each
    renewal was *sent*, so it believes the lease lost no later than the store does.

    Args:
        store: Where the lease lives.
        name: What to lock.
        ttl: Lease time-to-live in seconds; a crashed holder blocks others this long at most.
        heartbeat: Seconds between renewals; less than *ttl* (default ``ttl / 3``).
        timeout: Seconds to wait for the lock on entry (0: try once).
        owner: Who holds it; default :func:`~mailtether.default_owner`.
        on_lost: Called (from the heartbeat thread) with the LeaseLost when the lock is lost.
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
        >>> with ProcessLock(store, "run:support", ttl=30) as lock:
        ...     lock.check()        # call between steps: raises LeaseLost if it was lost
        ...     token = lock.token  # the fencing token of this run
        >>> store.holder("run:support") is None
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
        self._lease: Lease | None = None
        self._valid_until = 0.0
        self._reason: LeaseLost | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()

    @property
    def lease(self) -> Lease:
        """The lease currently held (its token and expiry); raises if the lock is not held."""
        if self._lease is None:
            raise LeaseLost(f"process lock {self.name!r} is not held")
        return self._lease

    @property
    def token(self) -> int:
        """The fencing token of this hold."""
        return self.lease.token

    @property
    def lost(self) -> bool:
        """``True`` once the lease is lost, or past its expiry without a renewal."""
        if self._reason is not None:
            return True
        return self._lease is not None and self.clock.monotonic() >= self._valid_until

    def check(self) -> None:
        """Raise :class:`~mailtether.LeaseLost` if the lock was lost; call it between steps."""
        if self._lease is None:
            raise LeaseLost(f"process lock {self.name!r} is not held")
        if self._reason is not None:
            raise self._reason
        if self.clock.monotonic() >= self._valid_until:
            self._mark_lost("its lease expired before the heartbeat could renew it")
            raise self._reason or LeaseLost(f"process lock {self.name!r} was lost")

    def __enter__(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"process lock {self.name!r} is already held by this object")
        lease, sent = _acquire(
            self.store, self.name, self.ttl, self.owner, self.timeout, None, self.clock, None
        )
        if lease is None:
            holder = self.store.holder(self.name)
            who = f" by {holder.owner!r}" if holder is not None else ""
            raise LeaseUnavailable(
                f"process lock {self.name!r} is held{who}; waited {self.timeout:g} s. Another "
                "worker is running this unit of work: try again later"
            )
        self._lease = lease
        self._valid_until = sent + self.ttl
        self._reason = None
        self.lost_event.clear()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, name=f"mailtether-lock-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        lease, self._lease = self._lease, None
        if lease is not None and self._reason is None:
            try:
                self.store.release(lease)
            except StoreError as error:
                log.warning(
                    "could not release process lock %r (it will expire): %s", self.name, error
                )

    def _beat(self) -> None:
        while not self.clock.sleep(self.heartbeat, self._stop):
            lease = self._lease
            if lease is None:
                return
            sent = self.clock.monotonic()
            done, outcome = self._renew_in_background(lease)
            remaining = self._valid_until - self.clock.monotonic()
            if remaining <= 0 or not self.clock.sleep(remaining, done):
                if self._stop.is_set() and not done.is_set():
                    return
                self._mark_lost("the renewal got no answer before the lease expired")
                return
            result = outcome[0]
            if isinstance(result, BaseException):
                if isinstance(result, LeaseLost):
                    self._mark_lost(str(result), result)
                else:
                    self._mark_lost(f"the renewal failed: {result}")
                return
            if self.clock.monotonic() >= sent + self.ttl:
                self._mark_lost("the renewal arrived after the lease had expired")
                return
            self._lease = result
            self._valid_until = sent + result.ttl

    def _renew_in_background(
        self, lease: Lease
    ) -> tuple[threading.Event, list[Lease | BaseException]]:
        """Start a renewal in its own thread, so a hung store cannot stall the heartbeat."""
        done = threading.Event()
        outcome: list[Lease | BaseException] = []

        def renew() -> None:
            try:
                outcome.append(self.store.renew(lease))
            except BaseException as error:  # reported to the holder, not lost in a thread
                outcome.append(error)
            finally:
                done.set()

        threading.Thread(target=renew, name=f"mailtether-renew-{self.name}", daemon=True).start()
        return done, outcome

    def _mark_lost(self, why: str, error: LeaseLost | None = None) -> None:
        with self._state_lock:
            if self._reason is not None:
                return
            token = self._lease.token if self._lease is not None else "?"
            reason = self._reason = error or LeaseLost(
                f"process lock {self.name!r} (token {token}) was lost: {why}; stop the work "
                "it protected"
            )
        log.error("%s", reason)
        try:
            if self.on_lost is not None:
                try:
                    self.on_lost(reason)
                except Exception:
                    log.exception("the on_lost callback of process lock %r raised", self.name)
        finally:
            self.lost_event.set()  # last: whoever waits on it sees the callback done

    def __repr__(self) -> str:
        held = f"token={self._lease.token}" if self._lease is not None else "not held"
        return (
            f"ProcessLock({self.name!r}, ttl={self.ttl:g}, {held}{', LOST' if self.lost else ''})"
        )
