"""``Delivery``: one mail as a handler receives it, from any kind of source."""

from __future__ import annotations

import email
import email.policy
import functools
from email.message import EmailMessage
from typing import Literal

import attrs

from mailtether._message_key import MessageKey

__all__ = ["DeliverMode", "Delivery"]

DeliverMode = Literal["message", "attachments", "body"]
"""What a handler is given: each mail, each attachment of a mail, or each mail's body."""


@attrs.frozen
class Delivery:
    r"""One mail, as the handler receives it.

    Attributes:
        key: Its :class:`~mailtether.MessageKey` (position and content).
        uid: Its IMAP UID (``0`` for POP3: the UIDL is in ``key.uidl``).
        flags: Its flags when fetched (``\\Seen`` is never set by fetching; POP3 has none).
        raw: The message as the server sent it.
        attempt: Which attempt this is (1 the first; more after failures).

    With ``deliver="attachments"`` or ``"body"`` the listener also fills :attr:`part`,
    :attr:`filename` and :attr:`content`.
    """

    key: MessageKey
    uid: int
    flags: tuple[bytes, ...]
    raw: bytes = attrs.field(repr=False)
    attempt: int = 1
    part: int | None = None
    """With ``deliver="attachments"``: which attachment (0, 1, ...); else ``None``."""
    filename: str | None = None
    """With ``deliver="attachments"``: the attachment's file name, if it has one."""
    content: bytes | None = attrs.field(default=None, repr=False)
    """With ``deliver="attachments"``: the attachment's decoded bytes; with
    ``deliver="body"``: the message body (plain text preferred), UTF-8 encoded."""
    token: int | None = None
    """The fencing token of the mailbox lease under which it is handed out (``None``
    without a lease): strictly greater for each new holder of the mailbox. A handler that
    writes to a system able to compare it can refuse work from a holder that lost the lease
    (a paused process waking up after another took over)."""

    @functools.cached_property
    def message(self) -> EmailMessage:
        """The parsed message (``email.policy.default``); parsed on first use."""
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed
