"""Per-source status (ONLINE, RETRYING, OFFLINE, BLOCKED, PAUSED; STALE), kept, and told."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

import attrs

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._durations import HOUR, check_seconds
from mailtether._errors import one_line
from mailtether._redaction import redact, redacting_logger
from mailtether.stores._protocol import Store, Write

__all__ = [
    "LoggingNotifier",
    "Notifier",
    "SourceState",
    "SourceStatus",
    "StatusBoard",
    "StatusChange",
]

log = redacting_logger("mailtether.status")

REASON_MOST: Final = 500
"""The longest a status reason is kept (characters, on one line, printable)."""
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
    PAUSED = "paused"
    """Paused on purpose by a person (:meth:`StatusBoard.pause`): its run loop disconnects and
    hands out no mail until :meth:`StatusBoard.resume`. The reason says who paused it, the
    ``since`` when."""
    STALE = "stale"
    """No heartbeat since …: the process that ran it stopped, or hangs.

    Never stored: :meth:`StatusBoard.get` reads a source as STALE once the ``alive_until`` its
    heartbeat wrote has passed, and the record keeps its last real state, so a restarted source
    carries on from there. A stale BLOCKED or PAUSED source is still shown as it is (a person
    must act either way), its reason noting that it is not running."""


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
        heartbeat_at: When its run loop last said it was alive (wall-clock seconds), if ever.
        alive_until: Until when that heartbeat vouches for it; past this the source reads as
            :attr:`SourceState.STALE`. ``None``: no heartbeat was ever recorded (a record
            from an older version), and the stored state is shown as it is.
        held: Mails held (poisoned, or too large), in all.
        reconnects: Reconnect attempts, in all.
        caught_up_at: When it last finished a catch-up (wall-clock seconds): every mail in
            the mailbox then was handled or recorded as failed. ``None``: never.
        outage_since: When its current problem began (it left ONLINE), through RETRYING,
            OFFLINE and BLOCKED alike; ``None`` while online.
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
    heartbeat_at: float | None = None
    alive_until: float | None = None
    held: int = 0
    reconnects: int = 0
    caught_up_at: float | None = None
    outage_since: float | None = None

    def as_of(self, now: float) -> SourceStatus:
        """This status as a reader at *now* sees it: STALE once ``alive_until`` has passed.

        The stale view says since when no heartbeat came and what the last known state was,
        and has no next attempt (no process is there to make it). BLOCKED stays BLOCKED, and
        PAUSED stays PAUSED, with "not running" added to the reason. A status that is not
        stale is returned as it is.
        """
        if self.alive_until is None or now <= self.alive_until or self.state is SourceState.STALE:
            return self
        last_beat = self.alive_until if self.heartbeat_at is None else self.heartbeat_at
        silent = f"no heartbeat since {_utc(last_beat)}"
        if self.state in _A_PERSONS:
            reason = (
                f"{self.reason} (not running: {silent})"
                if self.reason
                else f"not running: {silent}"
            )
            return attrs.evolve(self, reason=reason)
        known = self.state.value + (f" ({self.reason})" if self.reason else "")
        return attrs.evolve(
            self,
            state=SourceState.STALE,
            since=last_beat,
            reason=f"{silent}; last known state: {known}",
            next_attempt_at=None,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict (for the store and ``--json``)."""
        data = attrs.asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceStatus:
        """Rebuild a status saved with :meth:`to_dict`."""
        # Keys a newer version added are left out, so an older reader does not fail on them.
        names = {field.name for field in attrs.fields(cls)}
        values = {name: value for name, value in data.items() if name in names}
        values["state"] = SourceState(values["state"])
        return cls(**values)


def _lasting(seconds: float) -> str:
    """A duration as a person says it: ``42 s``, ``3 min``, ``2.5 h``, ``3 days``."""
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h".replace(".0 h", " h")
    return f"{seconds / 86400:.1f} days".replace(".0 days", " days")


_PROBLEMS: Final = frozenset({"retrying", "offline", "blocked"})
_A_PERSONS: Final = frozenset({SourceState.BLOCKED, SourceState.PAUSED})
"""The states only a person ends: shown as they are when the source's process stopped."""
_TOLD: Final = "notified"  # the store namespace of what each source's notifiers were told
_NOTICES: Final = "notified-notice"  # and of each kind of notice, keyed "kind:source"
_FOREVER: Final = float("inf")


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


@attrs.frozen
class StatusChange:
    """What a notifier is told: a source moved from one state to another."""

    source: str
    previous: SourceState | None
    current: SourceStatus
    suppressed: int = 0
    """How many similar changes were held back since the last notification (flapping)."""
    event: str = ""
    """Not a change of state but something that happened to the source (a mail sent to
    the error queue, a mail held): what, as a sentence. The state is the source's current one
    (``previous`` is the same); see :meth:`StatusBoard.notice`."""
    lasted: float | None = None
    """For a recovery (back ONLINE after a problem a person was told of): how many seconds
    the problem lasted. For a problem told late (see :class:`StatusBoard`): how long it has
    lasted so far."""

    def sentence(self) -> str:
        """The change as one line for a person."""
        if self.event:
            more = f" [{self.suppressed} similar not sent]" if self.suppressed else ""
            return f"{self.source}: {self.event}{more}"
        if self.lasted is not None and self.current.state is SourceState.ONLINE:
            was = f" (was {self.previous.value})" if self.previous else ""
            more = f" [{self.suppressed} similar changes not sent]" if self.suppressed else ""
            return f"{self.source} is online again after {_lasting(self.lasted)}{was}{more}"
        if self.lasted is not None and self.previous is self.current.state:
            why = f": {self.current.reason}" if self.current.reason else ""
            more = f" [{self.suppressed} similar changes not sent]" if self.suppressed else ""
            state = self.current.state.value
            return f"{self.source} is still {state}, for {_lasting(self.lasted)}{why}{more}"
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

    What the notifiers are told keeps a person's picture true without flooding it:

    - a problem (RETRYING, OFFLINE) is told, unless the person was told of that same problem
      of that source within *quiet_period* (a flapping connection): then it is counted, and
      told after all if it lasts a tenth of *quiet_period* (``still retrying, for 6 min``);
    - a recovery (back ONLINE) is told whenever its problem was — ``online again after
      42 s`` — and counted with it when the problem was not;
    - BLOCKED and PAUSED are always told, and so is the resume of a pause; notices
      (:meth:`notice`) are folded per kind;
    - each message says how many were held back since the last one.

    What was told is kept in the store (namespace ``notified``), so processes sharing it —
    and a process restarted — decide alike and do not each tell.

    Args:
        store: Where statuses live (so ``mailtether status`` in another process sees them).
        notifiers: Who is told; default a :class:`LoggingNotifier`. They run in the thread that
            changes the state (a listener, before it reconnects): keep them quick, or hand the
            work to a thread as :class:`~mailtether.SmtpNotifier` does.
        offline_after: A source retrying for longer than this is OFFLINE.
        quiet_period: Seconds in which a problem told once is not told again (counted).
        clock: Wall-clock time for ``since`` and the heartbeat's ``alive_until``, and for
            deciding, when reading, whether a heartbeat has expired. The default, the system
            clock, is what ``mailtether status`` reads with: hosts that share a store need
            clocks that agree to well within a heartbeat's ``alive_for``.
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
        self.offline_after = check_seconds(
            offline_after, "StatusBoard.offline_after", allow_zero=True
        )
        """Retrying longer than this is OFFLINE."""
        self.quiet_period = check_seconds(quiet_period, "StatusBoard.quiet_period", allow_zero=True)
        """Repeated notifications are held back this long."""
        self.clock = clock
        """The clock."""

    def get(self, source: str) -> SourceStatus | None:
        """The source's status as of now, or ``None`` if it never reported.

        A source whose heartbeat expired reads as STALE (see :meth:`SourceStatus.as_of`).
        """
        record = self.store.get(_NAMESPACE, source)
        if record is None:
            return None
        return SourceStatus.from_dict(dict(record.data)).as_of(self.clock.time())

    def snapshot(self) -> list[SourceStatus]:
        """Every source's status as of now, by name."""
        records = self.store.scan(_NAMESPACE)
        now = self.clock.time()
        return sorted(
            (SourceStatus.from_dict(dict(record.data)).as_of(now) for record in records),
            key=lambda status: status.source,
        )

    def set(self, source: str, state: SourceState, **fields: Any) -> SourceStatus:
        """Record the source's state (and fields), notifying if the state changed.

        A PAUSED source stays PAUSED: another state is not recorded over it (its run loop may
        write one before it notices the pause), and the stored status is returned; only
        :meth:`resume` ends a pause.

        Raises:
            ValueError: for :attr:`SourceState.STALE`, which is read, never recorded.
        """
        return self._record(source, state, fields, by_a_person=False)

    def _record(
        self, source: str, state: SourceState, fields: dict[str, Any], *, by_a_person: bool
    ) -> SourceStatus:
        """:meth:`set`; *by_a_person* (pause, resume) may record over a pause."""
        if state is SourceState.STALE:
            raise ValueError("STALE is derived from an expired heartbeat and is never recorded")
        if isinstance(fields.get("reason"), str):  # what a person reads, and gets by mail
            fields["reason"] = one_line(redact(fields["reason"]), REASON_MOST)

        problem = state.value in _PROBLEMS

        def change(previous: SourceStatus | None, now: float) -> SourceStatus | None:
            if (
                not by_a_person
                and previous is not None
                and previous.state is SourceState.PAUSED
                and state is not SourceState.PAUSED
            ):
                return None  # paused by a person: only resume() ends it
            outage = None
            if problem:
                began = previous.outage_since if previous is not None else None
                outage = began if began is not None else now
            if previous is None:
                return SourceStatus(source, state, now, **fields, outage_since=outage)
            since = previous.since if previous.state is state else now
            return attrs.evolve(previous, state=state, since=since, outage_since=outage, **fields)

        previous, status = self._update(source, change)
        if status is None:  # a pause kept
            assert previous is not None
            return previous
        if previous is None or previous.state is not state:
            change_ = StatusChange(source, previous.state if previous else None, status)
            if state is SourceState.ONLINE and previous is not None:
                began = previous.outage_since
                if began is not None:
                    change_ = attrs.evolve(change_, lasted=max(0.0, status.since - began))
            self._notify(change_)
        elif problem:
            self._overdue(status)
        return status

    def heartbeat(self, source: str, alive_for: float) -> SourceStatus | None:
        """Say the source's run loop is alive for *alive_for* more seconds.

        Writes ``heartbeat_at`` and ``alive_until`` only: the state stays as it is and nobody
        is notified. A source that never reported a state is left alone (there is nothing to
        vouch for yet). :class:`~mailtether.Heartbeat` calls this on a schedule.

        Returns:
            The status as written (a run loop learns of a pause from it), or ``None`` for a
            source that never reported.

        Raises:
            ConfigError: *alive_for* is not a positive duration.
        """
        alive_for = check_seconds(alive_for, "StatusBoard.heartbeat(alive_for)")

        def change(previous: SourceStatus | None, now: float) -> SourceStatus | None:
            if previous is None:
                return None
            return attrs.evolve(previous, heartbeat_at=now, alive_until=now + alive_for)

        return self._update(source, change)[1]

    def heartbeat_many(self, sources: Iterable[str], alive_for: float) -> list[SourceStatus]:
        """:meth:`heartbeat` for many sources in one read and one write (a fleet worker's).

        A source whose status changed meanwhile is left for the next beat. Returns the
        statuses read (with the new heartbeat), of every source that ever reported.
        """
        alive_for = check_seconds(alive_for, "StatusBoard.heartbeat_many(alive_for)")
        records = self.store.get_many(_NAMESPACE, sources)
        now = self.clock.time()
        writes = []
        statuses = []
        for source, record in records.items():
            status = SourceStatus.from_dict(dict(record.data))
            status = attrs.evolve(status, heartbeat_at=now, alive_until=now + alive_for)
            statuses.append(status)
            writes.append(
                Write(
                    _NAMESPACE,
                    source,
                    status.state.value,
                    status.to_dict(),
                    expect=record.version,
                )
            )
        if writes:
            self.store.put_many(writes)
        return statuses

    def count(
        self,
        source: str,
        *,
        processed: int = 0,
        failed: int = 0,
        held: int = 0,
        reconnects: int = 0,
    ) -> None:
        """Add to the source's counters."""

        def change(previous: SourceStatus | None, now: float) -> SourceStatus | None:
            if previous is None:
                return None
            return attrs.evolve(
                previous,
                processed=previous.processed + processed,
                failed=previous.failed + failed,
                held=previous.held + held,
                reconnects=previous.reconnects + reconnects,
            )

        self._update(source, change)

    def caught_up(self, source: str) -> None:
        """Record that the source finished a catch-up now (:attr:`SourceStatus.caught_up_at`)."""

        def change(previous: SourceStatus | None, now: float) -> SourceStatus | None:
            return None if previous is None else attrs.evolve(previous, caught_up_at=now)

        self._update(source, change)

    def notice(self, source: str, kind: str, event: str) -> None:
        """Tell the notifiers that *event* happened to *source*, with no change of state.

        For what a person must hear of though the source is fine: a mail sent to the error
        queue, a mail held. Folded like state changes: notices of the same *kind* for the
        same source within *quiet_period* are counted, and the next one sent says how many
        were not. *event* is redacted and cut to one line like a reason.
        """
        event = one_line(redact(event), REASON_MOST)
        current = self.get(source) or SourceStatus(source, SourceState.ONLINE, self.clock.time())
        self._notify(StatusChange(source, current.state, current, event=event), kind)

    def pause(self, source: str, *, by: str = "") -> bool:
        """Pause the source on purpose (a person's decision) until :meth:`resume`.

        The source is PAUSED at once, with *by* (who paused it) in the reason; its run loop,
        wherever it runs, notices within a heartbeat or at its next catch-up, disconnects,
        and hands out no mail until resumed. The notifiers are told. Pausing a paused source
        changes nothing.

        Returns ``False`` if the source is unknown (it never reported).
        """
        status = self.get(source)
        if status is None:
            return False
        if status.state is SourceState.PAUSED:
            return True
        reason = f"paused by {by}" if by else "paused by a person"
        self._record(
            source,
            SourceState.PAUSED,
            {"reason": reason, "next_attempt_at": None, "resume_requested": False},
            by_a_person=True,
        )
        return True

    def resume(self, source: str, *, by: str = "") -> bool:
        """Let a BLOCKED or PAUSED source try again now (a person's decision).

        A BLOCKED source is asked to (its listener clears the request as it reconnects); a
        PAUSED one is RETRYING at once, with *by* in the reason, and its run loop connects
        when it next looks (within a second). The notifiers are told of a resumed pause.

        Returns ``False`` if the source is unknown, or neither blocked nor paused.
        """
        status = self.get(source)
        if status is None:
            return False
        if status.state is SourceState.PAUSED:
            reason = f"resumed by {by}" if by else "resumed by a person"
            self._record(
                source,
                SourceState.RETRYING,
                {"reason": f"{reason}; connecting", "attempts": 0, "next_attempt_at": None},
                by_a_person=True,
            )
            return True
        if status.state is not SourceState.BLOCKED:
            return False
        self.set(source, SourceState.BLOCKED, resume_requested=True)
        return True

    def _update(
        self,
        source: str,
        change: Callable[[SourceStatus | None, float], SourceStatus | None],
    ) -> tuple[SourceStatus | None, SourceStatus | None]:
        """Write ``change(stored status, now)``, compare-and-set; (stored before, written).

        Tried again if someone wrote meanwhile; ``None`` from *change* writes nothing. It works
        on the stored status, never on the STALE view of it.
        """
        for _ in range(16):
            record = self.store.get(_NAMESPACE, source)
            previous = None if record is None else SourceStatus.from_dict(dict(record.data))
            status = change(previous, self.clock.time())
            if status is None:
                return previous, None
            written = self.store.put(
                _NAMESPACE,
                source,
                status.state.value,
                status.to_dict(),
                expect=0 if record is None else record.version,
            )
            if written is not None:
                return previous, status
        raise RuntimeError(f"could not record the status of {source}: it kept changing")

    def _notify(self, change: StatusChange, kind: str | None = None) -> None:
        """Tell the notifiers, or count the change, as the class docstring says."""
        try:
            suppressed = self._decide(change, kind)
        except Exception as error:  # the store is down: tell rather than stay silent
            log.warning("notifications: what was told could not be read (%s)", error)
            suppressed = 0
        if suppressed is None:
            return
        self._tell(attrs.evolve(change, suppressed=suppressed))

    def _decide(self, change: StatusChange, kind: str | None) -> int | None:
        """Record the decision in the store; the count held back to tell, or ``None``."""
        namespace, key = (
            (_TOLD, change.source) if kind is None else (_NOTICES, f"{kind}:{change.source}")
        )
        state = change.current.state.value
        for _ in range(16):
            record = self.store.get(namespace, key)
            told: dict[str, Any] = dict(record.data) if record is not None else {}
            now = self.clock.time()
            sent: dict[str, float] = dict(told.get("sent", {}))
            last_told = told.get("state")
            if kind is not None:
                tell = now - sent.get("notice", -_FOREVER) >= self.quiet_period
                told_as = "notice"
            elif state in ("blocked", "paused") or change.previous is SourceState.PAUSED:
                tell, told_as = True, state  # a person must know, or did it: always told
            elif state == "online":  # a recovery: told when its problem was
                tell, told_as = last_told != "online", state
            else:
                recently = now - sent.get(state, -_FOREVER) < self.quiet_period
                tell, told_as = last_told != state and not recently, state
            if tell:
                sent[told_as] = now
                data = {"state": told_as, "at": now, "sent": sent, "folded": 0}
            else:
                data = {**told, "folded": int(told.get("folded", 0)) + 1}
                if kind is None and state != "online" and last_told != state:
                    data["waiting"] = {"state": state, "since": now}  # told if it lasts
                elif kind is None and state == "online":
                    data.pop("waiting", None)
            expect = 0 if record is None else record.version
            if self.store.put(namespace, key, "told", data, expect=expect) is not None:
                return int(told.get("folded", 0)) if tell else None
        raise RuntimeError(f"could not record what was told of {change.source}: it kept changing")

    def _overdue(self, status: SourceStatus) -> None:
        """A problem held back as a repeat, still there a tenth of the quiet period on: tell it."""
        try:
            folded = self._claim_overdue(status)
        except Exception as error:
            log.warning("notifications: %s's held-back problem unread: %s", status.source, error)
            return
        if folded is None:
            return
        began = status.outage_since if status.outage_since is not None else status.since
        lasted = self.clock.time() - began
        suppressed = max(0, folded - 1)  # (this one was counted when it was held back)
        self._tell(StatusChange(status.source, status.state, status, suppressed, lasted=lasted))

    def _claim_overdue(self, status: SourceStatus) -> int | None:
        """Record an overdue problem as told; the count held back, or ``None`` (not due)."""
        record = self.store.get(_TOLD, status.source)
        if record is None:
            return None
        data = dict(record.data)
        waiting = data.get("waiting")
        now = self.clock.time()
        if not isinstance(waiting, dict) or waiting.get("state") != status.state.value:
            return None
        if now - float(waiting["since"]) < self.quiet_period / 10:
            return None
        del data["waiting"]
        folded = int(data.get("folded", 0))
        sent = {**data.get("sent", {}), status.state.value: now}
        data.update(state=status.state.value, at=now, sent=sent, folded=0)
        if self.store.put(_TOLD, status.source, "told", data, expect=record.version) is None:
            return None  # another process told it
        return folded

    def _tell(self, change: StatusChange) -> None:
        for notifier in self.notifiers:
            try:
                notifier(change)
            except Exception:
                log.exception("notifier %r failed", notifier)
