"""Per-source status (ONLINE, RETRYING, OFFLINE, BLOCKED), persisted, and notifications."""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

import attrs

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._durations import HOUR
from mailtether.stores._protocol import Store

__all__ = [
    "LoggingNotifier",
    "Notifier",
    "SourceState",
    "SourceStatus",
    "StatusBoard",
    "StatusChange",
]

log = logging.getLogger("mailtether.status")
_NAMESPACE: Final = "status"


class SourceState(enum.Enum):
    """Where a mail source stands."""

    ONLINE = "online"
    """Connected and listening."""
    RETRYING = "retrying"
    """Lost; reconnecting on its schedule."""
    OFFLINE = "offline"
    """Lost for longer than ``offline_after``; still retrying, on the slow tier."""
    BLOCKED = "blocked"
    """Needs a person: credentials rejected, attempts exhausted, a mail that keeps coming back.
    Nothing is retried until :meth:`StatusBoard.resume`."""


@attrs.frozen
class SourceStatus:
    """A snapshot of one source: what ``mailtether status`` prints.

    Attributes:
        source: The source's name (``user@host/folder``).
        state: Its state.
        since: When it entered that state (wall-clock seconds).
        reason: The last error or the reason it is blocked, as one human sentence.
        attempts: Reconnect attempts in the current outage.
        next_attempt_at: When the next attempt is due, if retrying.
        processed: Mails handled successfully, in all.
        failed: Failed handler runs, in all.
        resume_requested: A person asked to resume it; the listener clears this.
    """

    source: str
    state: SourceState
    since: float
    reason: str = ""
    attempts: int = 0
    next_attempt_at: float | None = None
    processed: int = 0
    failed: int = 0
    resume_requested: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict (for the store and ``--json``)."""
        data = attrs.asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceStatus:
        """Rebuild a status saved with :meth:`to_dict`."""
        values = dict(data)
        values["state"] = SourceState(values["state"])
        return cls(**values)


@attrs.frozen
class StatusChange:
    """What a notifier is told: a source moved from one state to another."""

    source: str
    previous: SourceState | None
    current: SourceStatus
    suppressed: int = 0
    """How many similar changes were held back since the last notification (flapping)."""

    def sentence(self) -> str:
        """The change as one line for a person."""
        was = f" (was {self.previous.value})" if self.previous else ""
        why = f": {self.current.reason}" if self.current.reason else ""
        more = f" [{self.suppressed} similar changes not sent]" if self.suppressed else ""
        return f"{self.source} is {self.current.state.value}{was}{why}{more}"


class Notifier(Protocol):
    """Anything that can be told about a status change: a callable taking a StatusChange."""

    def __call__(self, change: StatusChange) -> object:
        """Tell someone; exceptions are logged and do not stop the listener."""
        ...


class LoggingNotifier:
    """Logs every status change: BLOCKED and OFFLINE as errors/warnings, others as info."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or log
        """Where it logs."""

    def __call__(self, change: StatusChange) -> None:
        """Log the change."""
        level = {
            SourceState.BLOCKED: logging.ERROR,
            SourceState.OFFLINE: logging.WARNING,
            SourceState.RETRYING: logging.WARNING,
        }.get(change.current.state, logging.INFO)
        self.logger.log(level, "%s", change.sentence())

    def __repr__(self) -> str:
        return f"LoggingNotifier({self.logger.name!r})"


class StatusBoard:
    """The status of every source, kept in a store, with notifications on every change.

    Notifications are de-duplicated: the same source entering the same state again within
    *quiet_period* is not sent again (a flapping connection does not flood anyone); the next
    notification that is sent says how many were held back. BLOCKED is always sent.

    Args:
        store: Where statuses live (so ``mailtether status`` in another process sees them).
        notifiers: Who is told; default a :class:`LoggingNotifier`. They run in the thread that
            changes the state (a listener, before it reconnects): keep them quick, or hand the
            work to a thread as :class:`~mailtether.SmtpNotifier` does.
        offline_after: A source retrying for longer than this is OFFLINE.
        quiet_period: Seconds in which a repeated (source, state) notification is held back.
        clock: Wall-clock time for ``since``.
    """

    def __init__(
        self,
        store: Store,
        *,
        notifiers: Iterable[Callable[[StatusChange], object]] | None = None,
        offline_after: float = HOUR,
        quiet_period: float = HOUR,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        """Where statuses live."""
        self.notifiers = list(notifiers) if notifiers is not None else [LoggingNotifier()]
        """Who is told."""
        self.offline_after = float(offline_after)
        """Retrying longer than this is OFFLINE."""
        self.quiet_period = float(quiet_period)
        """Repeated notifications are held back this long."""
        self.clock = clock
        """The clock."""
        self._sent: dict[tuple[str, SourceState], float] = {}
        self._held_back: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, source: str) -> SourceStatus | None:
        """The source's status, or ``None`` if it never reported."""
        record = self.store.get(_NAMESPACE, source)
        return None if record is None else SourceStatus.from_dict(dict(record.data))

    def snapshot(self) -> list[SourceStatus]:
        """Every source's status, by name."""
        records = self.store.scan(_NAMESPACE)
        return sorted(
            (SourceStatus.from_dict(dict(record.data)) for record in records),
            key=lambda status: status.source,
        )

    def set(self, source: str, state: SourceState, **fields: Any) -> SourceStatus:
        """Record the source's state (and fields), notifying if the state changed."""
        for _ in range(16):
            record = self.store.get(_NAMESPACE, source)
            previous = None if record is None else SourceStatus.from_dict(dict(record.data))
            now = self.clock.time()
            if previous is None:
                status = SourceStatus(source, state, now, **fields)
            else:
                since = previous.since if previous.state is state else now
                status = attrs.evolve(previous, state=state, since=since, **fields)
            written = self.store.put(
                _NAMESPACE,
                source,
                state.value,
                status.to_dict(),
                expect=0 if record is None else record.version,
            )
            if written is not None:
                if previous is None or previous.state is not state:
                    self._notify(StatusChange(source, previous.state if previous else None, status))
                return status
        raise RuntimeError(f"could not record the status of {source}: it kept changing")

    def count(self, source: str, *, processed: int = 0, failed: int = 0) -> None:
        """Add to the source's counters."""
        status = self.get(source)
        if status is None:
            return
        self.set(
            source,
            status.state,
            processed=status.processed + processed,
            failed=status.failed + failed,
        )

    def resume(self, source: str) -> bool:
        """Ask a BLOCKED source's listener to try again now (a person's decision).

        Returns ``False`` if the source is unknown or not blocked.
        """
        status = self.get(source)
        if status is None or status.state is not SourceState.BLOCKED:
            return False
        self.set(source, SourceState.BLOCKED, resume_requested=True)
        return True

    def _notify(self, change: StatusChange) -> None:
        key = (change.source, change.current.state)
        now = self.clock.monotonic()
        with self._lock:
            last = self._sent.get(key)
            if (
                change.current.state is not SourceState.BLOCKED
                and last is not None
                and now - last < self.quiet_period
            ):
                self._held_back[change.source] = self._held_back.get(change.source, 0) + 1
                return
            self._sent[key] = now
            suppressed = self._held_back.pop(change.source, 0)
        change = attrs.evolve(change, suppressed=suppressed)
        for notifier in self.notifiers:
            try:
                notifier(change)
            except Exception:
                log.exception("notifier %r failed", notifier)
