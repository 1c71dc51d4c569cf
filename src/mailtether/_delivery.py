"""``Delivery``: one mail as a handler receives it, from any kind of source."""

from __future__ import annotations

import email
import email.policy
import functools
from collections.abc import Iterable
from email.message import EmailMessage
from typing import Literal, TypeAlias

import attrs

from mailtether._message_key import MessageKey

__all__ = ["DeliverMode", "Delivery", "DeliveryKind"]

DeliverMode: TypeAlias = (
    Literal["message", "attachments", "body"]
    | str
    | Iterable[Literal["message", "attachments", "body"]]
)
"""What a handler is given of each mail: ``"message"`` (the whole mail), ``"body"`` (its
body), ``"attachments"`` (one delivery per attachment), or a combination of them, written
``"body+attachments"`` or as a sequence: each mail is then handed over as its body first and
then each attachment (the order is always message, body, attachments)."""

DeliveryKind = Literal["message", "body", "attachment", "empty"]
"""What one :class:`Delivery` carries: the whole mail, its body, one attachment, or nothing
(a mail with nothing to deliver in the chosen mode: no attachments)."""


@attrs.frozen
class Delivery:
    r"""One mail, or one part of it, as the handler receives it.

    Attributes:
        key: Its :class:`~mailtether.MessageKey` (position and content).
        uid: Its IMAP UID (``0`` for POP3: the UIDL is in ``key.uidl``).
        flags: Its flags when fetched (``\Seen`` is never set by fetching; POP3 has none).
        raw: The message as the server sent it (whatever part is delivered).
        attempt: Which attempt this is (1 the first; more after failures).

    What it carries is :attr:`kind`: with ``deliver="body"`` the listener fills
    :attr:`content` (the body); with ``"attachments"``, :attr:`part`, :attr:`filename` and
    :attr:`content` (one attachment); :attr:`message` parses :attr:`raw` in every kind.
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
    kind: DeliveryKind = "message"
    """What this delivery carries (see :data:`~mailtether.DeliveryKind`): ``"empty"`` for a
    mail with nothing to deliver in the chosen mode (``deliver="attachments"`` and no
    attachment), handed over so it is not marked done unseen."""
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
