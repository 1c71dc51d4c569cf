"""The e-mail that tells a person of a status change: what every mailing notifier sends.

:class:`~mailtether.SmtpNotifier` sends it at once, :class:`~mailtether.OutboxNotifier`
queues it in an outbox; both say the same thing in the same words.
"""

from __future__ import annotations

from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from mailtether._errors import one_line
from mailtether._status import StatusChange

__all__ = ["status_mail"]


def status_mail(
    change: StatusChange,
    sender: str,
    recipients: Sequence[str],
    *,
    message_id: str | None = None,
) -> EmailMessage:
    """The mail about *change*, from *sender* to *recipients*.

    The subject names the source and its new state (or the notice); the body is the
    change's sentence and the source's counters, and for a BLOCKED source the command that
    resumes it. *message_id* defaults to a new, unique one.
    """
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = (
        f"[mailtether] {change.source}: {one_line(change.event, 80)}"
        if change.event
        else f"[mailtether] {change.source} is {change.current.state.value}"
    )
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = message_id or make_msgid(domain="mailtether.invalid")
    status = change.current
    lines = [
        change.sentence(),
        "",
        f"source:        {status.source}",
        f"state:         {status.state.value}",
        f"attempts:      {status.attempts}",
        f"processed:     {status.processed}",
        f"failed:        {status.failed}",
    ]
    if status.state.value == "blocked":
        lines += [
            "",
            f"Nothing is retried until a person resumes it: mailtether resume {status.source!r}",
        ]
    elif status.state.value == "paused":
        lines += [
            "",
            "Paused on purpose: no mail is handed out until a person resumes it:",
            f"mailtether resume {status.source!r}",
        ]
    message.set_content("\n".join(lines) + "\n")
    return message
