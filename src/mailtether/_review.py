"""A held mail sent to a person for review (``on_poison="forward:ADDRESS"``; seed 000).

The help-desk write-up forwards a mail it cannot turn into a ticket to an administrator,
then removes it from the mailbox. The review mail carries the whole held mail, byte for
byte, as an attachment (``held-mail.eml``: a poison mail is often malformed, so it is not
re-encoded as a nested message), why it was held, and where it came from. Its Message-ID is
made from the mail's key, so forwarding the same mail again (after a crash, or when it is
found again) queues it once in the outbox.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
from email.message import EmailMessage
from email.utils import formatdate
from typing import Final

from mailtether._errors import one_line
from mailtether._message_key import MessageKey

__all__ = ["review_id", "review_mail"]

_HEADERS: Final = ("From", "To", "Subject", "Date", "Message-ID")


def review_id(key: MessageKey) -> str:
    """The review mail's Message-ID for the held mail *key* (the same every time)."""
    digest = hashlib.sha256(key.id.encode("utf-8")).hexdigest()[:32]
    return f"<review.{digest}@mailtether.invalid>"


def review_mail(
    *,
    source: str,
    key: MessageKey,
    where: str,
    reason: str,
    raw: bytes | None,
    sender: str,
    reviewer: str,
    then: str,
) -> EmailMessage:
    """The mail that tells *reviewer* about the held mail *key* of *source*.

    Args:
        source: The source's name.
        key: The held mail's key.
        where: Where it is, as a person reads it (``"UID 17"``).
        reason: Why it was held (the guard's words).
        raw: The whole mail, or ``None`` when it could not be fetched (too large, or the
            server would not give it): the review then says it is still in the mailbox.
        sender: The review mail's From.
        reviewer: Its To.
        then: What happens to the mail in the mailbox once the review is queued.
    """
    review = EmailMessage()
    review["From"] = sender
    review["To"] = reviewer
    review["Date"] = formatdate(localtime=True)
    review["Message-ID"] = review_id(key)
    review["X-Mailtether-Held"] = key.id
    headers = _original_headers(raw)
    subject = headers.get("Subject", "")
    review["Subject"] = one_line(
        f"[mailtether] held for review: {subject or where} ({source})", 200
    )
    lines = [
        f"A mail in {source} could not be processed and is held for review.",
        "",
        f"Why:   {one_line(reason, 1000)}",
        f"Where: {where} (key {key.id})",
    ]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append("")
    if raw is not None:
        lines.append("The whole mail is attached, byte for byte (held-mail.eml).")
        lines.append(f"In the mailbox it is {then}.")
    else:
        lines.append(
            "The mail could not be fetched to attach it (too large, or the server would not "
            f"give it): it is left in the mailbox, at {where}."
        )
    lines += [
        "",
        "Once its cause is fixed: if it is still in the mailbox, hand it to the listener",
        f"again with  mailtether release {key.id!r} --store <the store's URL>;",
        "if it was removed, put the attached mail back into the mailbox as a new mail.",
    ]
    review.set_content("\n".join(lines) + "\n")
    if raw is not None:
        review.add_attachment(
            raw, maintype="application", subtype="octet-stream", filename="held-mail.eml"
        )
    return review


def _original_headers(raw: bytes | None) -> dict[str, str]:
    """A few headers of the held mail, as one line each; none if they cannot be read."""
    if raw is None:
        return {}
    try:
        parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
        found = {name: parsed.get(name) for name in _HEADERS}
        return {name: one_line(str(value), 200) for name, value in found.items() if value}
    except Exception:  # a poison mail may be anything: the attachment still carries it
        return {}
