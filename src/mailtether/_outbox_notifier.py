"""``OutboxNotifier``: status changes e-mailed through an outbox, kept until they are sent."""

from __future__ import annotations

from collections.abc import Iterable
from email.utils import make_msgid
from typing import Final

from mailtether._errors import ConfigError
from mailtether._outbox import Outbox
from mailtether._redaction import redacting_logger
from mailtether._state_filter import StateFilter
from mailtether._status import StatusChange
from mailtether._status_mail import status_mail

__all__ = ["OutboxNotifier"]

log = redacting_logger("mailtether.status")

_MARK: Final = "mailtether-status"
"""In the Message-ID of every mail this notifier queues: how it knows its own mail again."""
_DOMAIN: Final = "mailtether.invalid"


class OutboxNotifier:
    """E-mails every status change it is given to *recipients*, through an :class:`Outbox`.

    The mail (the same as :class:`~mailtether.SmtpNotifier`'s) is recorded in the outbox's
    store before the call returns, and sent by the outbox's sender on its schedule: a change
    told while the relay is down — often in the same outage — is sent once it is back, and
    survives a restart. Each change gets a Message-ID of its own, so two alike (the same
    notice an hour apart) are two mails.

    The call writes to the outbox's store in the caller's thread (a listener's): one record,
    as quick as the store. If the store refuses it, the change is logged at ERROR with its
    sentence and the listener goes on.

    A notice that one of this notifier's own mails went to the error queue is logged at
    ERROR and not mailed: that mail would likely fail the same way, and tell of itself again.

    Args:
        outbox: Where the mail is queued; its sender (:meth:`Outbox.run_in_thread`,
            :meth:`Outbox.deliver_due`, ``mailtether queue run``) sends it.
        sender: The From address.
        recipients: Who is told.
        only: Send only changes into these states (default: all), e.g. ``{"blocked",
            "offline"}``. Notices (:meth:`StatusBoard.notice`: a mail in an error queue, a
            held mail) are sent whatever *only* says.
        relay: The outbox's relay to send through, by name (default: its first).

    Raises:
        ConfigError: no recipient, *only* names no state, or *relay* is not the outbox's.
    """

    def __init__(
        self,
        outbox: Outbox,
        sender: str,
        recipients: Iterable[str],
        *,
        only: Iterable[str] | None = None,
        relay: str | None = None,
    ) -> None:
        self.outbox = outbox
        """Where the mail is queued."""
        self.sender = sender
        """The From address."""
        self.recipients = list(recipients)
        """Who is told."""
        if not self.recipients:
            raise ConfigError("OutboxNotifier needs at least one recipient")
        if relay is not None and relay not in outbox.relays:
            raise ConfigError(
                f"OutboxNotifier.relay: no relay named {relay!r}; the outbox has "
                f"{sorted(outbox.relays)}"
            )
        self.relay = relay
        """The relay by name, or ``None`` for the outbox's first."""
        self.only = StateFilter.of(only, "OutboxNotifier.only")
        """Which changes are mailed."""

    def __call__(self, change: StatusChange) -> None:
        """Queue one e-mail about *change* in the outbox (unless *only* filters it out)."""
        if not self.only.passes(change):
            return
        if change.event and f"{_MARK}@{_DOMAIN}>" in change.event:
            log.error(
                "outbox notifier: a status mail failed, not mailed again: %s", change.sentence()
            )
            return
        message_id = make_msgid(idstring=_MARK, domain=_DOMAIN)
        mail = status_mail(change, self.sender, self.recipients, message_id=message_id)
        try:
            self.outbox.send(mail, relay=self.relay)
        except Exception as error:
            log.error(
                "outbox notifier: could not queue the mail (%s); not told: %s",
                error,
                change.sentence(),
            )

    def __repr__(self) -> str:
        return (
            f"OutboxNotifier({self.outbox!r}, to={self.recipients!r}, only={self.only!r}"
            f"{f', relay={self.relay!r}' if self.relay is not None else ''})"
        )
