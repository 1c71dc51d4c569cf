"""The run loop around a mail source: lease, session, and on faults a state and a wait.

:class:`~mailtether.ImapListener` and :class:`~mailtether.Pop3Poller` are both a
:class:`SourceRunner`: they differ only in how one connected session opens its mailbox
(their :class:`~mailtether._mailbox_port.MailboxPort`); the mail itself goes through the
one :class:`~mailtether._pipeline.Pipeline`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ClassVar, Final

from mailtether._backoff import Backoff, BackoffState
from mailtether._clock import Clock
from mailtether._delivery import DeliverMode, Delivery
from mailtether._durations import MINUTE, check_count, check_seconds
from mailtether._errors import (
    AuthenticationFailed,
    ClaimLost,
    CommandFailed,
    ConnectionLost,
    FolderMissing,
    ForwardFailed,
    LeaseLost,
    LeaseUnavailable,
    MailboxUnchangeable,
    RepeatedMessage,
    StoreError,
    TLSFailure,
)
from mailtether._guard import DuplicateGuard
from mailtether._handover import Handover
from mailtether._heartbeat import Heartbeat
from mailtether._leases import ProcessLock
from mailtether._mailbox_port import MailboxPort, PostAction
from mailtether._outbox import Outbox
from mailtether._pipeline import NO_FENCE, Fence, Pipeline
from mailtether._redaction import redacting_logger
from mailtether._status import SourceState, SourceStatus, StatusBoard
from mailtether._strategies import Exponential, ReconnectStrategy
from mailtether.stores._memory import MemoryStore
from mailtether.stores._protocol import Store

__all__ = ["UNEXPECTED_LIMIT", "SourceRunner", "either"]

log = redacting_logger("mailtether.listener")

BACKOFFS: Final = "backoff"
UNEXPECTED_LIMIT: Final = 5
"""Unexpected errors in a row (no catch-up finished between them) that block a source."""
_TAKEOVER_MARGIN: Final = 0.05


class SourceRunner:
    """The loop around sessions: lease, session, and on faults retry, or block for a person."""

    #: Errors that need a person: the source becomes BLOCKED until resumed.
    blocking_errors: ClassVar[tuple[type[BaseException], ...]] = (
        AuthenticationFailed,
        TLSFailure,
        FolderMissing,
        RepeatedMessage,
        MailboxUnchangeable,
        ForwardFailed,
    )
    #: Errors a reconnect may cure: retried by the reconnect strategy.
    retry_errors: ClassVar[tuple[type[BaseException], ...]] = (
        ConnectionLost,
        CommandFailed,
        LeaseLost,
        StoreError,
        ClaimLost,
    )
    kind = "source"

    def __init__(
        self,
        *,
        name: str,
        handler: Callable[[Delivery], object],
        reconnect: ReconnectStrategy | None,
        store: Store | None,
        guard: DuplicateGuard | None,
        status: StatusBoard | None,
        poll_interval: float,
        lease_ttl: float | None,
        clock: Clock,
        after: PostAction,
        on_poison: PostAction,
        deliver: DeliverMode,
        commit_window: float,
        deliver_empty: bool = True,
        heartbeat: float | None,
        max_message_bytes: int = 64 * 2**20,
        outbox: Outbox | None = None,
        review_sender: str = "",
    ) -> None:
        self.reconnect = (
            reconnect or Exponential(1, growth=1, max_delay=5 * MINUTE).immediate_first()
        )
        """The reconnect strategy."""
        if store is None:
            log.warning("%s without a store keeps its state in memory only", type(self).__name__)
        self.store: Store = store if store is not None else MemoryStore()
        """Where state lives."""
        self.guard = guard or DuplicateGuard(self.store)
        """The duplicate guard."""
        self.status = status or StatusBoard(self.store, clock=clock)
        """The status board."""
        kind = type(self).__name__
        self.poll_interval = check_seconds(poll_interval, f"{kind}.poll_interval")
        """Seconds between polls (and catch-ups)."""
        self.lease_ttl = check_seconds(lease_ttl, f"{kind}.lease_ttl", allow_none=True)
        """The mailbox lease's TTL, or ``None`` for no lease."""
        self.name = name
        """The source's name."""
        self.clock = clock
        """The clock for reconnect waits."""
        self.commit_window = check_seconds(commit_window, f"{kind}.commit_window", allow_zero=True)
        """Seconds of handler work whose outcomes may wait to be recorded together."""
        self.pipeline = Pipeline(
            name=name,
            store=self.store,
            guard=self.guard,
            status=self.status,
            clock=clock,
            after=after,
            on_poison=on_poison,
            handover=Handover(handler, deliver, self.store, deliver_empty=deliver_empty),
            commit_window=self.commit_window,
            max_message_bytes=check_count(
                max_message_bytes, f"{kind}.max_message_bytes", minimum=1024
            ),
            outbox=outbox,
            review_sender=review_sender,
        )
        """The mail pipeline every catch-up runs through."""
        self.heartbeat = check_seconds(heartbeat, f"{kind}.heartbeat", allow_none=True)
        """Seconds between liveness beats while running (``None``: no beats)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._standby = False  # told the log it stands by (LeaseUnavailable)
        self._borrowed: Fence | None = None  # a lease held for it (a fleet worker's)
        self._slots: threading.Semaphore | None = None  # catch-ups at once, across sources
        self._catch_ups = 0
        self._caught_up = threading.Condition()
        self._unexpected = 0  # unexpected errors in a row (a finished catch-up resets it)
        self._last_unexpected = ""
        self._unwritten: tuple[float, str] | None = None  # a status the store did not take
        self._wanted: tuple[SourceState, dict[str, Any]] = (SourceState.RETRYING, {})
        # A pause: seen by the run loop, a heartbeat or a catch-up (any thread), under _pausing
        # with whether a catch-up is on (a pause waits for its end rather than break it).
        self._pausing = threading.Lock()
        self._pause_seen = False
        self._in_catch_up = False
        self._loop: threading.Thread | None = None  # the thread in run(): catch-ups look there
        self._said_paused = False
        record = self.store.get(BACKOFFS, self.name)
        state = BackoffState.from_dict(dict(record.data)) if record is not None else None
        self._backoff = Backoff(self.reconnect, clock=clock, state=state)

    # -- to be provided by each kind of source -----------------------------------------------------

    def _session(self, stop: threading.Event) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _drop_connection(self) -> None:
        """Break the current connection (the lease was lost)."""

    def _wake_connection(self) -> None:
        """Have a wait on the current connection look at the stop event now."""

    @property
    def handler(self) -> Callable[[Delivery], object]:
        """Called per mail (may be replaced; the next mail goes to the new one)."""
        return self.pipeline.handover.handler

    @handler.setter
    def handler(self, handler: Callable[[Delivery], object]) -> None:
        if not callable(handler):
            raise TypeError("handler must be callable with a Delivery")
        self.pipeline.handover.handler = handler

    def work_under(self, fence: Fence, slots: threading.Semaphore | None = None) -> None:
        """Work under a lease someone else holds and renews (a fleet worker), not its own.

        Called before :meth:`run`: the source then takes no lease of its own and runs no
        lease heartbeat; *fence*'s ``check()`` says when the lease is lost and its ``token``
        rides along with each mail. *slots*, shared by many sources, bounds how many of them
        hand mail over at once.
        """
        self._borrowed = fence
        self._slots = slots

    def _catch_up(self, port: MailboxPort, fence: Fence = NO_FENCE) -> int:
        """One pass of the pipeline over the mailbox (see :meth:`wait_for_catch_ups`).

        In the run loop, a paused source's catch-up hands nothing out: it ends the session
        (before the pass, or after it when the pause came during it).
        """
        looping = threading.current_thread() is self._loop
        if looping:
            self._look_for_a_pause()
        with self._pausing:
            if looping and self._pause_seen:
                raise _Paused
            self._in_catch_up = True
        try:
            if self._slots is not None:
                with self._slots:
                    handled = self.pipeline.catch_up(port, fence)
            else:
                handled = self.pipeline.catch_up(port, fence)
        finally:
            with self._pausing:
                self._in_catch_up = False
        self._unexpected = 0
        if self._backoff.state != BackoffState():
            # Only a session that got through a catch-up counts as a success: a server that
            # takes the login and then fails every time stays on the strategy's schedule.
            self._backoff.succeeded()
            self._save_backoff()
        if self._unwritten is not None:  # the store is back: the status it missed, now
            state, fields = self._wanted
            self._tell(state, **fields)
        self.status.caught_up(self.name)
        with self._caught_up:
            self._catch_ups += 1
            self._caught_up.notify_all()
        if looping and self._pause_seen:  # paused during the pass: disconnect now
            raise _Paused
        return handled

    def noticed(self, status: SourceStatus) -> None:
        """Act on this source's status as read elsewhere (its heartbeat, a fleet's round).

        A pause ends the connected session at once (or at the end of a catch-up in
        progress): the run loop then waits until the source is resumed.
        """
        if status.state is not SourceState.PAUSED:
            return
        with self._pausing:
            if self._pause_seen:
                return
            self._pause_seen = True
            if not self._in_catch_up:
                self._drop_connection()

    def _look_for_a_pause(self) -> None:
        """Read the status (before a catch-up): a pause is :meth:`noticed`."""
        try:
            status = self.status.get(self.name)
        except Exception as error:  # the store is down: the catch-up meets it itself
            log.debug("%s: status unread before a catch-up (%s)", self.name, error)
            return
        if status is not None:
            self.noticed(status)

    @property
    def max_message_bytes(self) -> int:
        """Mail larger than this is held without being fetched."""
        return self.pipeline.max_message_bytes

    @property
    def running(self) -> bool:
        """Whether its run loop is running in the thread :meth:`run_in_thread` started."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def catch_ups(self) -> int:
        """How many catch-ups (passes over the whole mailbox) have finished so far."""
        return self._catch_ups

    def wait_for_catch_ups(self, count: int = 1, timeout: float | None = None) -> bool:
        """Wait until *count* more catch-ups have finished; ``False`` at the timeout.

        Every mail that was in the mailbox when the first of them began has been handled (or
        recorded as failed) by then: tests and scripts wait on this instead of sleeping.
        """
        with self._caught_up:
            target = self._catch_ups + count
            return self._caught_up.wait_for(lambda: self._catch_ups >= target, timeout)

    # -- running -----------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Run until *stop* (or :meth:`stop`) — blocking; never raises for mail faults.

        Whatever goes wrong inside ends in a state, never in a dead loop: faults a reconnect
        may cure (the connection, the lease, the state store) are RETRYING on the reconnect
        strategy; faults that need a person are BLOCKED with a sentence; an unexpected
        exception is logged with its traceback, retried on the strategy, and BLOCKED once
        it has repeated ``UNEXPECTED_LIMIT`` times in a row. Only ``KeyboardInterrupt`` and
        ``SystemExit`` end it.
        """
        stop = stop or self._stop
        beats = None
        if self.heartbeat is not None:
            loop = threading.current_thread()
            beats = Heartbeat(
                self.status,
                self.name,
                every=self.heartbeat,
                clock=self.clock,
                alive=loop.is_alive,
                on_beat=self.noticed,  # a pause is seen within a beat, even in IDLE
            )
            beats.start()
        self._loop = threading.current_thread()
        try:
            self._wait_for_the_saved_attempt(stop)
            while not stop.is_set() and not self._stop.is_set():
                try:
                    if not self._waiting_for_a_person(stop):
                        self._run_once(stop)
                except Exception as error:  # only a fault in handling a fault gets here
                    log.critical(
                        "%s: the run loop itself failed; going on", self.name, exc_info=error
                    )
                    self.clock.sleep(min(self.poll_interval, 1.0), either(stop, self._stop))
        finally:
            if beats is not None:
                beats.stop(timeout=1.0)

    def _wait_for_the_saved_attempt(self, stop: threading.Event) -> None:
        """After a restart in an outage, keep to the schedule: the next attempt when it was due.

        A process restarted during a week-long outage on a 30-minute schedule does not try
        at once (and every restart again): it waits until the ``next_attempt_at`` saved before
        it stopped, RETRYING (or OFFLINE) with that time on the status board.
        """
        state = self._backoff.state
        due = state.next_attempt_at
        if due is None or state.gave_up:
            return
        wait = due - self.clock.time()
        if wait <= 0:
            return
        log.info(
            "%s: in an outage since before the restart; the next attempt (%d) is due in %.0f s",
            self.name,
            state.attempt,
            wait,
        )
        offline = self._backoff.offline_for >= self.status.offline_after
        try:
            current = self.status.get(self.name)
        except StoreError:
            current = None
        self._tell(
            SourceState.OFFLINE if offline else SourceState.RETRYING,
            reason=current.reason if current is not None else "",
            attempts=state.attempt,
            next_attempt_at=due,
        )
        self.clock.sleep(wait, either(stop, self._stop))

    def _run_once(self, stop: threading.Event) -> None:
        try:
            self._session(stop)
        except _Paused:
            pass  # the loop waits for the resume (_waiting_for_a_person)
        except LeaseUnavailable:
            if not self._standby:  # said once; the looks while standing by are DEBUG
                log.info(
                    "%s: another %s works this mailbox; standing by until its lease ends",
                    self.name,
                    self.kind,
                )
                self._standby = True
            else:
                log.debug("%s: still standing by: the mailbox's lease is held", self.name)
            self.clock.sleep(self._until_takeover(), either(stop, self._stop))
        except self.blocking_errors as error:
            if not self._pause_seen:  # (a session broken for a pause fails as it may)
                self._block(str(error))
        except self.retry_errors as error:
            if not self._pause_seen:
                self._retry(error, stop)
        except Exception as error:  # a bug, here or in a server's answer: never a dead loop
            if not self._pause_seen:
                self._unexpected_error(error, stop)

    def _waiting_for_a_person(self, stop: threading.Event) -> bool:
        """While BLOCKED or PAUSED, wait (a while) and return ``True``; on resume, clear it."""
        try:
            status = self.status.get(self.name)
        except StoreError as error:  # the store is down: a fault like any other
            self._retry(error, stop)
            return True
        if status is not None and status.state is SourceState.PAUSED:
            with self._pausing:
                self._pause_seen = True
            if not self._said_paused:
                log.info("%s: %s; disconnected until resumed", self.name, status.reason)
                self._said_paused = True
            self.clock.sleep(min(self.poll_interval, 1.0), stop)
            return True
        if self._pause_seen:  # no longer paused: resumed (StatusBoard.resume)
            log.info("%s: resumed by a person", self.name)
            with self._pausing:
                self._pause_seen = False
            self._said_paused = False
            self._backoff.reset()
            self._unexpected = 0
            self._save_backoff()
        if status is None or status.state is not SourceState.BLOCKED:
            return False
        if not status.resume_requested:
            self.clock.sleep(min(self.poll_interval, 1.0), stop)
            return True
        log.info("%s: resumed by a person", self.name)
        self._backoff.reset()
        self._unexpected = 0
        self._save_backoff()
        self._tell(SourceState.RETRYING, resume_requested=False, reason="")
        return False

    def _until_takeover(self) -> float:
        """Seconds until the holder's lease runs out (were it not renewed), and a little."""
        ttl = self.lease_ttl or self.poll_interval
        try:
            holder = self.store.holder(self._lease_name)
            left = 0.0 if holder is None else holder.expires_at - self.store.now()
        except StoreError:
            left = ttl
        # Asking again just after the expiry takes a dead holder's mailbox over within the
        # TTL and a moment; a live holder renews before that, and costs one more look.
        return min(ttl, max(0.0, left)) + min(_TAKEOVER_MARGIN, ttl / 10)

    def _unexpected_error(self, error: Exception, stop: threading.Event) -> None:
        self._unexpected += 1
        described = f"{type(error).__name__}: {error}"
        if described != self._last_unexpected:
            log.error("%s: unexpected error (retried): %s", self.name, described, exc_info=error)
            self._last_unexpected = described
        else:
            log.error(
                "%s: the same unexpected error, %d times in a row: %s",
                self.name,
                self._unexpected,
                described,
            )
        if self._unexpected >= UNEXPECTED_LIMIT:
            self._block(
                f"an unexpected error repeated {self._unexpected} times in a row ({described}); "
                "its traceback is in the log: fix the cause, then resume the source"
            )
            return
        self._retry(_Unexpected(f"unexpected error: {described}"), stop)

    def run_in_thread(self) -> threading.Thread:
        """Start :meth:`run` in a daemon thread; :meth:`stop` ends it."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"{self.kind} {self.name} is already running")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run, name=f"mailtether-{self.name}", daemon=True
        )
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        """Ask it to stop and wait (at most *timeout*) for its thread to end."""
        self._stop.set()
        self._wake_connection()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def resume(self) -> bool:
        """Clear BLOCKED and reconnect now (see :meth:`StatusBoard.resume`)."""
        return self.status.resume(self.name)

    @property
    def _lease_name(self) -> str:
        return f"listener:{self.name}"

    def _lease(self) -> Any:
        if self._borrowed is not None:
            self._borrowed.check()
            return _Borrowed(self._borrowed)
        if self.lease_ttl is None:
            return _NoLease()
        return ProcessLock(
            self.store,
            self._lease_name,
            ttl=self.lease_ttl,
            on_lost=lambda _: self._drop_connection(),
        )

    def _online(self) -> None:
        if self._standby:
            log.info("%s: active: took the mailbox over from the %s before", self.name, self.kind)
            self._standby = False
        self._tell(SourceState.ONLINE, reason="", attempts=0, next_attempt_at=None)

    def _save_backoff(self) -> None:
        """Write the backoff state; while the store is down it lives on in memory only."""
        try:
            self.store.put(BACKOFFS, self.name, "state", self._backoff.state.to_dict())
        except Exception as error:  # the store is down (or failing): kept in memory meanwhile
            log.debug("%s: backoff state kept in memory (%s)", self.name, error)

    def _tell(self, state: SourceState, **fields: Any) -> None:
        """Set the status; when the store cannot take it, say so in the log and next time.

        A state the store missed (RETRYING through a store outage) is written first, with
        the note, when the next state differs: the board and the notifiers hear of the
        outage, not only of its end.
        """
        missed = self._wanted
        self._wanted = (state, dict(fields))
        if self._unwritten is not None and missed[0] is not state:
            self._write(missed[0], **missed[1])
            if self._unwritten is not None:
                return  # still down: the log said so
        self._write(state, **fields)

    def _write(self, state: SourceState, **fields: Any) -> None:
        if self._unwritten is not None and fields.get("reason") is not None:
            since, cause = self._unwritten
            fields["reason"] = "; ".join(
                part
                for part in (
                    fields["reason"],
                    f"(status could not be saved for {self.clock.monotonic() - since:.0f} s: "
                    f"{cause})",
                )
                if part
            )
        try:
            self.status.set(self.name, state, **fields)
        except Exception as error:  # the store is down (or failing): said in the next write
            if self._unwritten is None:
                self._unwritten = (self.clock.monotonic(), f"{type(error).__name__}: {error}")
            log.warning(
                "%s: %s (not saved: %s)",
                self.name,
                state.name,
                error,
                exc_info=None if isinstance(error, StoreError) else error,
            )
            return
        self._unwritten = None

    def _block(self, reason: str) -> None:
        log.error("%s: BLOCKED: %s", self.name, reason)
        self._tell(SourceState.BLOCKED, reason=reason, next_attempt_at=None)

    def _retry(self, error: BaseException, stop: threading.Event) -> None:
        try:
            delay = self._backoff.failed()
        except Exception as broken:  # a strategy that answers NaN, or raises
            self._block(
                f"the reconnect strategy failed ({type(broken).__name__}: {broken}) after: "
                f"{_reason_of(error)}; fix the strategy, then resume the source"
            )
            return
        self._save_backoff()
        state = self._backoff.state
        reason = _reason_of(error)
        if delay is None:
            self._block(f"gave up after {state.attempt} reconnect attempts; last error: {reason}")
            return
        log.info("%s: reconnect attempt %d in %.2f s (%s)", self.name, state.attempt, delay, reason)
        try:
            self.status.count(self.name, reconnects=1)
        except Exception as error:  # the store is down: the state below says so
            log.debug("%s: reconnect not counted (%s)", self.name, error)
        offline = self._backoff.offline_for >= self.status.offline_after
        self._tell(
            SourceState.OFFLINE if offline else SourceState.RETRYING,
            reason=reason,
            attempts=state.attempt,
            next_attempt_at=state.next_attempt_at,
        )
        self.clock.sleep(delay, either(stop, self._stop))


def _reason_of(error: BaseException) -> str:
    """The sentence a status shows for *error*."""
    if isinstance(error, StoreError):
        return f"the state store is unreachable: {error}"
    return str(error)


class _Unexpected(Exception):
    """An unexpected error, as the reason of a retry."""


class _Paused(Exception):
    """A person paused the source: the session ends, and the run loop waits."""


class _Borrowed:
    """A lease held for the source by someone else: used, never taken or released here."""

    def __init__(self, fence: Fence) -> None:
        self._fence = fence

    def __enter__(self) -> Fence:
        return self._fence

    def __exit__(self, *exc: object) -> None:
        return None


class _NoLease:
    def __enter__(self) -> _NoLease:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    token = None

    def check(self) -> None:
        return None


def either(first: threading.Event, second: threading.Event) -> threading.Event:
    """An event that is set while either is (checked when waited on in slices)."""
    if first is second:
        return first
    return _Either(first, second)


class _Either(threading.Event):
    def __init__(self, first: threading.Event, second: threading.Event) -> None:
        super().__init__()
        self._pair = (first, second)

    def is_set(self) -> bool:
        return any(event.is_set() for event in self._pair)

    def wait(self, timeout: float | None = None) -> bool:
        step = 0.1
        waited = 0.0
        while not self.is_set():
            if timeout is not None and waited >= timeout:
                return False
            self._pair[0].wait(step if timeout is None else min(step, timeout - waited))
            waited += step
        return True
