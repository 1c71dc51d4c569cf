"""Handing a mail to the user's handler: whole, one delivery per attachment, or the body only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import attrs

from mailtether._delivery import DeliverMode, Delivery
from mailtether.stores._protocol import Store

__all__ = ["Handover"]

_PARTS: Final = "parts"
_MODES: Final = ("message", "attachments", "body")


class Handover:
    """Calls the handler for one mail as *deliver* asks.

    With ``"attachments"`` the attachments already handed out are remembered in the store
    (namespace ``parts``), so a retry after a later attachment failed hands out only what
    is left; the marks are removed once the whole mail is through.
    """

    def __init__(
        self, handler: Callable[[Delivery], object], deliver: DeliverMode, store: Store
    ) -> None:
        if not callable(handler):
            raise TypeError("handler must be callable with a Delivery")
        if deliver not in _MODES:
            raise ValueError(f"deliver must be message, attachments or body, got {deliver!r}")
        self.handler = handler
        self.deliver: DeliverMode = deliver
        self.store = store

    def hand_over(self, delivery: Delivery) -> None:
        """Call the handler (once, or once per attachment); its exceptions pass through."""
        if self.deliver == "message":
            self.handler(delivery)
            return
        message = delivery.message
        if self.deliver == "body":
            body = message.get_body(preferencelist=("plain", "html"))
            text = body.get_content() if body is not None else ""
            content = text.encode("utf-8") if isinstance(text, str) else bytes(text)
            self.handler(attrs.evolve(delivery, content=content))
            return
        key_id = delivery.key.id
        for index, part in enumerate(message.iter_attachments()):
            done_key = f"{key_id}#{index}"
            if self.store.get(_PARTS, done_key) is not None:
                continue
            payload = part.get_payload(decode=True)
            self.handler(
                attrs.evolve(
                    delivery,
                    part=index,
                    filename=part.get_filename(),
                    content=payload if isinstance(payload, bytes) else b"",
                )
            )
            self.store.put(_PARTS, done_key, "done", {})
        for stale in self.store.scan(_PARTS):
            if stale.key.startswith(f"{key_id}#"):
                self.store.delete(_PARTS, stale.key)
