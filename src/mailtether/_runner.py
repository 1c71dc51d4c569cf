"""What every mail source runner shares: the run loop, reconnects, blocking, status, leases.

:class:`~mailtether.ImapListener` and :class:`~mailtether.Pop3Poller` are both a
``_SourceRunner``: they differ only in what one connected session does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Final

from mailtether._backoff import Backoff, BackoffState
from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._durations import MINUTE
from mailtether._errors import (
    AuthenticationFailed,
    CommandFailed,
    ConnectionLost,
    FolderMissing,
    LeaseLost,
    LeaseUnavailable,
    StoreError,
    TLSFailure,
)
from mailtether._guard import DuplicateGuard, RepeatedMessage
from mailtether._leases import ProcessLock
from mailtether._status import SourceState, StatusBoard
from mailtether._strategies import Exponential, ReconnectStrategy
from mailtether.stores._memory import MemoryStore
from mailtether.stores._protocol import Store

__all__: list[str] = []

log = logging.getLogger("mailtether.listener")

BACKOFFS: Final = "backoff"


class _SourceRunner:
    """The loop around sessions: lease, session, and on faults retry, or block for a person."""

    #: Errors that need a person: the source becomes BLOCKED until resumed.
    blocking_errors: ClassVar[tuple[type[BaseException], ...]] = (
        AuthenticationFailed,
        TLSFailure,
        FolderMissing,
        RepeatedMessage,
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
        handler: Callable[..., object],
        reconnect: ReconnectStrategy | None,
        store: Store | None,
        guard: DuplicateGuard | None,
        status: StatusBoard | None,
        poll_interval: float,
        lease_ttl: float | None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not callable(handler):
            raise TypeError("handler must be callable with a Delivery")
        self.handler = handler
        """Called per mail."""
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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        record = self.store.get(BACKOFFS, self.name)
        state = BackoffState.from_dict(dict(record.data)) if record is not None else None
        self._backoff = Backoff(self.reconnect, clock=clock, state=state)

    # -- to be provided by each kind of source -----------------------------------------------------

    def _session(self, stop: threading.Event) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _drop_connection(self) -> None:
        """Break the current connection (the lease was lost)."""

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
