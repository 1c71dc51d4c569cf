"""The outbox's records: what a mail looks like, reading them, and a person's decisions.

Read by :class:`~mailtether.Outbox` and by ``mailtether queue``, which needs no relay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether.stores._protocol import Record, Store

__all__ = [
    "OUTGOING",
    "OutboundMail",
    "OutboxQueue",
    "QueueLine",
    "SendTry",
    "copy_data",
    "view",
]

OUTGOING: Final = "outgoing"
"""The store namespace of outgoing mail."""


@attrs.frozen
class SendTry:
    """One try at sending a mail: when, through which relay, what the server said."""

    at: float
    """Wall-clock time of the try."""
    relay: str
    """The relay's name."""
    outcome: str
    """``sent``, ``delayed`` or ``failed`` (for the recipients it concerned)."""
    reply: str
    """The server's words (code and text), or what went wrong with the connection."""
    recipients: tuple[str, ...]
    """The recipients this try concerned."""

    def to_dict(self) -> dict[str, Any]:
        """The try as a JSON-able dict."""
        return {
            "at": self.at,
            "relay": self.relay,
            "outcome": self.outcome,
            "reply": self.reply,
            "recipients": list(self.recipients),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SendTry:
        """The try from :meth:`to_dict`'s output."""
        return cls(
            float(data["at"]),
            str(data["relay"]),
            str(data["outcome"]),
            str(data["reply"]),
            tuple(str(r) for r in data["recipients"]),
        )


@attrs.frozen
class OutboundMail:
    """What the outbox knows about one mail (a snapshot; see :meth:`Outbox.get`)."""

    message_id: str
    """Its Message-ID: the key of its record."""
    state: str
    """``queued``, ``sending``, ``sent``, ``failed`` or ``held``."""
    sender: str
    """The envelope sender (``MAIL FROM``)."""
    recipients: Mapping[str, str]
    """Each envelope recipient and where it stands: ``pending``, ``sent`` or ``failed``."""
    relay: str
    """The name of the relay it goes through."""
    queued_at: float
    """When :meth:`Outbox.send` recorded it (wall clock)."""
    next_at: float | None
    """When it is tried next (``queued`` only)."""
    attempts: int
    """How many tries were made."""
    reason: str
    """Why it is failed or held (empty otherwise)."""
    history: tuple[SendTry, ...]
    """Its tries, oldest first."""

    @property
    def pending(self) -> tuple[str, ...]:
        """The recipients still to be sent to."""
        return tuple(r for r, state in self.recipients.items() if state == "pending")


@attrs.frozen
class QueueLine:
    """One line of :meth:`OutboxQueue.summary`: a relay's or a recipient domain's mail."""

    active: int
    """Due now, or being sent."""
    delayed: int
    """Waiting for their next try."""
    failed: int
    """In the error queue."""
    held: int
    """Held (a mail loop)."""
    oldest: float | None
    """When the oldest of them was queued."""
    next_at: float | None
    """The next try among the delayed ones."""

    def to_dict(self) -> dict[str, Any]:
        """The line as a JSON-able dict."""
        return attrs.asdict(self)


@attrs.define
class _Tally:
    counts: dict[str, int] = attrs.Factory(dict)
    oldest: float | None = None
    next_at: float | None = None

    def add(self, kind: str, mail: OutboundMail) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.oldest = mail.queued_at if self.oldest is None else min(self.oldest, mail.queued_at)
        if kind == "delayed" and mail.next_at is not None:
            self.next_at = mail.next_at if self.next_at is None else min(self.next_at, mail.next_at)

    def line(self) -> QueueLine:
        count = self.counts.get
        return QueueLine(
            count("active", 0),
            count("delayed", 0),
            count("failed", 0),
            count("held", 0),
            self.oldest,
            self.next_at,
        )


class OutboxQueue:
    """The outgoing mail in a store: look-ups, a summary, and a person's decisions."""

    def __init__(self, store: Store, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.clock = clock

    def get(self, message_id: str) -> OutboundMail | None:
        """The mail with this Message-ID, or ``None``."""
        record = self.store.get(OUTGOING, message_id)
        return None if record is None else view(record)

    def mails(self, state: str | None = None) -> list[OutboundMail]:
        """The mails (in *state*, if given), least recently changed first."""
        return [view(record) for record in self.store.scan(OUTGOING, state=state)]

    def counts(self) -> dict[str, int]:
        """How many mails are in each state."""
        return dict(self.store.count(OUTGOING))

    def summary(self) -> dict[str, dict[str, QueueLine]]:
        """The queue by relay and by recipient domain (``{"relays": …, "domains": …}``).

        A mail counts once per relay, and once per domain of its recipients that are still
        pending (failed and held mail: of every recipient).
        """
        now = self.clock.time()
        relays: dict[str, _Tally] = {}
        domains: dict[str, _Tally] = {}
        for mail in self.mails():
            if mail.state == "sent":
                continue
            kind = mail.state
            if kind == "queued":
                kind = "delayed" if (mail.next_at or 0.0) > now else "active"
            elif kind == "sending":
                kind = "active"
            relays.setdefault(mail.relay, _Tally()).add(kind, mail)
            wanted = mail.pending if kind in ("active", "delayed") else tuple(mail.recipients)
            for domain in sorted({r.rpartition("@")[2].lower() for r in wanted}):
                domains.setdefault(domain, _Tally()).add(kind, mail)
        return {
            "relays": {name: tally.line() for name, tally in sorted(relays.items())},
            "domains": {name: tally.line() for name, tally in sorted(domains.items())},
        }

    def release(self, message_id: str) -> bool:
        """Send a failed or held mail again: its failed recipients become pending, due now.

        Returns ``False`` if there is no such mail, or it is not failed or held.
        """

        def change(data: dict[str, Any]) -> str:
            recipients = data["recipients"]
            for recipient, state in recipients.items():
                if state == "failed":
                    recipients[recipient] = "pending"
            data.update(next_at=self.clock.time(), reason="", queued_at=self.clock.time())
            data["attempts"] = 0
            return "queued"

        return self._change(message_id, ("failed", "held"), change)

    def drop(self, message_id: str) -> bool:
        """Delete a failed or held mail for good; ``False`` if there is none such."""
        record = self.store.get(OUTGOING, message_id)
        if record is None or record.state not in ("failed", "held"):
            return False
        return self.store.delete(OUTGOING, message_id, expect=record.version)

    def _change(
        self, message_id: str, states: tuple[str, ...], change: Any, attempts: int = 5
    ) -> bool:
        for _ in range(attempts):
            record = self.store.get(OUTGOING, message_id)
            if record is None or record.state not in states:
                return False
            data = copy_data(record.data)
            state = change(data)
            if self.store.put(OUTGOING, message_id, state, data, expect=record.version):
                return True
        return False


def copy_data(data: Mapping[str, Any]) -> dict[str, Any]:
    copied = dict(data)
    copied["recipients"] = dict(data.get("recipients") or {})
    copied["history"] = list(data.get("history") or [])
    return copied


def view(record: Record) -> OutboundMail:
    data = record.data
    next_at = data.get("next_at")
    return OutboundMail(
        message_id=record.key,
        state=record.state,
        sender=str(data.get("sender", "")),
        recipients=dict(data.get("recipients") or {}),
        relay=str(data.get("relay", "")),
        queued_at=float(data.get("queued_at") or 0.0),
        next_at=None if next_at is None else float(next_at),
        attempts=int(data.get("attempts") or 0),
        reason=str(data.get("reason", "")),
        history=tuple(SendTry.from_dict(t) for t in data.get("history") or ()),
    )
