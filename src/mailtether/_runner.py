"""The run loop around a mail source: lease, session, and on faults a state and a wait.

:class:`~mailtether.ImapListener` and :class:`~mailtether.Pop3Poller` are both a
:class:`SourceRunner`: they differ only in how one connected session opens its mailbox
(their :class:`~mailtether._mailbox_port.MailboxPort`); the mail itself goes through the
one :class:`~mailtether._pipeline.Pipeline`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Final

from mailtether._backoff import Backoff, BackoffState
from mailtether._clock import Clock
from mailtether._delivery import DeliverMode, Delivery
from mailtether._durations import MINUTE
from mailtether._errors import (
    AuthenticationFailed,
    CommandFailed,
    ConnectionLost,
    FolderMissing,
    LeaseLost,
    LeaseUnavailable,
    MailboxUnchangeable,
    RepeatedMessage,
    StoreError,
    TLSFailure,
)
from mailtether._guard import DuplicateGuard
from mailtether._handover import Handover
from mailtether._leases import ProcessLock
from mailtether._mailbox_port import MailboxPort, PostAction
from mailtether._pipeline import Pipeline
from mailtether._status import SourceState, StatusBoard
from mailtether._strategies import Exponential, ReconnectStrategy
from mailtether.stores._memory import MemoryStore
from mailtether.stores._protocol import Store

__all__ = ["SourceRunner", "either"]

log = logging.getLogger("mailtether.listener")

BACKOFFS: Final = "backoff"


class SourceRunner:
    """The loop around sessions: lease, session, and on faults retry, or block for a person."""

    #: Errors that need a person: the source becomes BLOCKED until resumed.
    blocking_errors: ClassVar[tuple[type[BaseException], ...]] = (
        AuthenticationFailed,
        TLSFailure,
        FolderMissing,
        RepeatedMessage,
        MailboxUnchangeable,
    )
    #: Errors a reconnect may cure: retried by the reconnect strategy.
    retry_errors: ClassVar[tuple[type[BaseException], ...]] = (
        ConnectionLost,
        CommandFailed,
        LeaseLost,
        StoreError,
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
        if not 0 < poll_interval < float("inf"):
            raise ValueError(f"poll_interval must be > 0, got {poll_interval!r}")
        self.poll_interval = float(poll_interval)
        """Seconds between polls (and catch-ups)."""
        self.lease_ttl = lease_ttl
        """The mailbox lease's TTL, or ``None`` for no lease."""
        self.name = name
        """The source's name."""
        self.clock = clock
        """The clock for reconnect waits."""
        if (
            isinstance(commit_window, bool)
            or not isinstance(commit_window, int | float)
            or not 0 <= commit_window < float("inf")
        ):
            raise ValueError(
                f"commit_window must be a finite number of seconds >= 0, got {commit_window!r}"
            )
        self.commit_window = float(commit_window)
        """Seconds of handler work whose outcomes may wait to be recorded together."""
        self.pipeline = Pipeline(
            name=name,
            store=self.store,
            guard=self.guard,
            status=self.status,
            clock=clock,
            after=after,
            on_poison=on_poison,
            handover=Handover(handler, deliver, self.store),
            commit_window=self.commit_window,
        )
        """The mail pipeline every catch-up runs through."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._catch_ups = 0
        self._caught_up = threading.Condition()
        record = self.store.get(BACKOFFS, self.name)
        state = BackoffState.from_dict(dict(record.data)) if record is not None else None
        self._backoff = Backoff(self.reconnect, clock=clock, state=state)

    # -- to be provided by each kind of source -----------------------------------------------------

    def _session(self, stop: threading.Event) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _drop_connection(self) -> None:
        """Break the current connection (the lease was lost)."""

    @property
    def handler(self) -> Callable[[Delivery], object]:
        """Called per mail (may be replaced; the next mail goes to the new one)."""
        return self.pipeline.handover.handler

    @handler.setter
    def handler(self, handler: Callable[[Delivery], object]) -> None:
        if not callable(handler):
            raise TypeError("handler must be callable with a Delivery")
        self.pipeline.handover.handler = handler

    def _catch_up(self, port: MailboxPort, check: Callable[[], None] = lambda: None) -> int:
        """One pass of the pipeline over the mailbox (see :meth:`wait_for_catch_ups`)."""
        handled = self.pipeline.catch_up(port, check)
        with self._caught_up:
            self._catch_ups += 1
            self._caught_up.notify_all()
        return handled

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
        """Run until *stop* (or :meth:`stop`) — blocking; never raises for mail faults."""
        stop = stop or self._stop
        while not stop.is_set() and not self._stop.is_set():
            status = self.status.get(self.name)
            if status is not None and status.state is SourceState.BLOCKED:
                if not status.resume_requested:
                    self.clock.sleep(min(self.poll_interval, 1.0), stop)
                    continue
                log.info("%s: resumed by a person", self.name)
                self._backoff.reset()
                self._save_backoff()
                self.status.set(self.name, SourceState.RETRYING, resume_requested=False, reason="")
            self._run_once(stop)

    def _run_once(self, stop: threading.Event) -> None:
        try:
            self._session(stop)
        except LeaseUnavailable:
            log.info("%s: another %s works this mailbox; standing by", self.name, self.kind)
            # Look again about once per lease TTL: a crashed holder is taken over promptly.
            self.clock.sleep(min(self.poll_interval, self.lease_ttl or self.poll_interval), stop)
        except self.blocking_errors as error:
            self._block(str(error))
        except self.retry_errors as error:
            self._retry(error, stop)

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
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def resume(self) -> bool:
        """Clear BLOCKED and reconnect now (see :meth:`StatusBoard.resume`)."""
        return self.status.resume(self.name)

    def _lease(self) -> Any:
        if self.lease_ttl is None:
            return _NoLease()
        return ProcessLock(
            self.store,
            f"listener:{self.name}",
            ttl=self.lease_ttl,
            on_lost=lambda _: self._drop_connection(),
        )

    def _online(self) -> None:
        self._backoff.succeeded()
        self._save_backoff()
        self.status.set(self.name, SourceState.ONLINE, reason="", attempts=0, next_attempt_at=None)

    def _save_backoff(self) -> None:
        self.store.put(BACKOFFS, self.name, "state", self._backoff.state.to_dict())

    def _block(self, reason: str) -> None:
        log.error("%s: BLOCKED: %s", self.name, reason)
        self.status.set(self.name, SourceState.BLOCKED, reason=reason, next_attempt_at=None)

    def _retry(self, error: BaseException, stop: threading.Event) -> None:
        delay = self._backoff.failed()
        self._save_backoff()
        state = self._backoff.state
        if delay is None:
            self._block(f"gave up after {state.attempt} reconnect attempts; last error: {error}")
            return
        log.info("%s: reconnect attempt %d in %.2f s (%s)", self.name, state.attempt, delay, error)
        offline = self._backoff.offline_for >= self.status.offline_after
        self.status.set(
            self.name,
            SourceState.OFFLINE if offline else SourceState.RETRYING,
            reason=str(error),
            attempts=state.attempt,
            next_attempt_at=state.next_attempt_at,
        )
        self.clock.sleep(delay, either(stop, self._stop))


class _NoLease:
    def __enter__(self) -> _NoLease:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

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
