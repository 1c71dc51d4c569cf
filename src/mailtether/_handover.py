"""Handing a mail to the user's handler: whole, its body, each attachment, or a combination."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from email.message import EmailMessage
from typing import Final

import attrs

from mailtether._delivery import DeliverMode, Delivery
from mailtether.stores._protocol import Store

__all__ = ["Handover", "parse_deliver"]

_PARTS: Final = "parts"
_MODES: Final = ("message", "body", "attachments")


def parse_deliver(deliver: DeliverMode) -> tuple[str, ...]:
    """The delivery modes *deliver* names, in the order they are handed over.

    ``"message"``, ``"body"``, ``"attachments"``, a combination joined by ``+`` (or ``,``),
    or a sequence of them.

    Raises:
        ValueError: a name is not one of the three, or none is given.
    """
    if isinstance(deliver, str):
        names = [name.strip() for name in deliver.replace(",", "+").split("+")]
    else:
        names = [str(name).strip() for name in deliver]
    wrong = [name for name in names if name not in _MODES]
    if wrong or not names:
        raise ValueError(
            "deliver must be message, body or attachments, or a combination such as "
            f"'body+attachments'; got {deliver!r}"
        )
    return tuple(mode for mode in _MODES if mode in names)


class Handover:
    """Calls the handler for one mail as *deliver* asks.

    Each mail is handed over as one delivery per unit the modes name: the whole mail
    (``message``), its body (``body``), each attachment (``attachments``). A mail with none
    of them (``attachments`` alone, and no attachment) is handed over once as an ``"empty"``
    delivery, unless *deliver_empty* is false: then it is done without calling the handler.

    When a mail is more than one delivery, those already handed out are remembered in the
    store (namespace ``parts``), so a retry after a later one failed hands out only what is
    left; the marks are removed once the whole mail is through.
    """

    def __init__(
        self,
        handler: Callable[[Delivery], object],
        deliver: DeliverMode,
        store: Store,
        *,
        deliver_empty: bool = True,
    ) -> None:
        if not callable(handler):
            raise TypeError("handler must be callable with a Delivery")
        self.modes = parse_deliver(deliver)
        """The delivery modes, in order."""
        self.handler = handler
        self.deliver = "+".join(self.modes)
        """The modes as text (``"body+attachments"``)."""
        self.deliver_empty = deliver_empty
        """Whether a mail with nothing to deliver is handed over as an empty delivery."""
        self.store = store

    def hand_over(self, delivery: Delivery) -> None:
        """Call the handler once per unit of the mail; its exceptions pass through."""
        if self.modes == ("message",):  # the usual case: nothing to parse or remember
            self.handler(delivery)
            return
        units = list(self._units(delivery))
        if not units:
            if self.deliver_empty:
                self.handler(attrs.evolve(delivery, kind="empty"))
            return
        if len(units) == 1:
            self.handler(units[0][1])
            return
        key_id = delivery.key.id
        for label, unit in units:
            done_key = f"{key_id}#{label}"
            if self.store.get(_PARTS, done_key) is not None:
                continue
            self.handler(unit)
            self.store.put(_PARTS, done_key, "done", {})
        for stale in self.store.scan(_PARTS):
            if stale.key.startswith(f"{key_id}#"):
                self.store.delete(_PARTS, stale.key)

    def _units(self, delivery: Delivery) -> Iterator[tuple[str, Delivery]]:
        """Each delivery of the mail, with a label that stays the same across retries."""
        if "message" in self.modes:
            yield "message", delivery
        if "body" not in self.modes and "attachments" not in self.modes:
            return
        message = delivery.message
        if "body" in self.modes:
            yield "body", attrs.evolve(delivery, kind="body", content=_body(message))
        if "attachments" in self.modes:
            for index, part in enumerate(message.iter_attachments()):
                payload = part.get_payload(decode=True)
                yield (
                    str(index),
                    attrs.evolve(
                        delivery,
                        kind="attachment",
                        part=index,
                        filename=part.get_filename(),
                        content=payload if isinstance(payload, bytes) else b"",
                    ),
                )


def _body(message: EmailMessage) -> bytes:
    body = message.get_body(preferencelist=("plain", "html"))
    text = body.get_content() if body is not None else ""
    return text.encode("utf-8") if isinstance(text, str) else bytes(text)
