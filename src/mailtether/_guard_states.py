"""What the duplicate guard says about a message: its state, a claim's decision, its history.

The values users read (:class:`GuardState`, :class:`ClaimStatus`, :class:`GuardEntry`,
:class:`HistoryEntry`, :class:`Triage`) and the helpers that read and write the history and
content fields of a guard record in the store.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Final

import attrs

from mailtether._message_key import MessageKey
from mailtether.stores._protocol import Record

__all__ = [
    "DONE",
    "DROPPED",
    "ERROR_TEXT",
    "FAILED",
    "HELD",
    "PROCESSING",
    "ClaimStatus",
    "GuardEntry",
    "GuardState",
    "HistoryEntry",
    "Triage",
    "add_event",
    "claimed_at",
    "content_fields",
    "entry_of",
    "history_of",
    "key_id",
]

_HISTORY: Final = 20
ERROR_TEXT: Final = 500
"""Characters of an error kept in a record."""


class GuardState(enum.StrEnum):
    """Where a message stands in the guard: the state of its record in the store.

    A :class:`str` enum, so ``entry.state == "held"`` holds too. Not to be confused with
    :class:`ClaimStatus`, which is what one :meth:`DuplicateGuard.claim` *decided*.
    """

    PROCESSING = "processing"
    """Claimed by a worker until its claim expires."""
    DONE = "done"
    """Handled (or the same content was handled under another position)."""
    FAILED = "failed"
    """Its last attempt failed (or was abandoned); it is retried."""
    HELD = "held"
    """Failed ``max_failures`` times: waits for a person to release or drop it."""
    DROPPED = "dropped"
    """A person decided it must never be handled."""


PROCESSING: Final = GuardState.PROCESSING
DONE: Final = GuardState.DONE
FAILED: Final = GuardState.FAILED
HELD: Final = GuardState.HELD
DROPPED: Final = GuardState.DROPPED


class ClaimStatus(enum.Enum):
    """What :meth:`DuplicateGuard.claim` decided about a message."""

    NEW = "new"
    """Yours to process: the block's outcome is recorded when it ends."""
    DONE = "done"
    """Processed before (repeat policy ``skip``): leave it."""
    DUPLICATE = "duplicate"
    """A new position, but the same content was processed before (e.g. a new UIDVALIDITY)."""
    HELD = "held"
    """Poisoned: failed too often, waiting for a person to release or drop it."""
    DROPPED = "dropped"
    """A person decided it must not be processed."""
    BUSY = "busy"
    """Another worker is processing it right now."""
    QUARANTINE = "quarantine"
    """Processed before and back again (repeat policy ``quarantine``): move it aside."""


@attrs.frozen
class HistoryEntry:
    """One event in a message's life in the guard."""

    at: float
    """When (store clock)."""
    event: str
    """``claimed``, ``done``, ``failed``, ``expired``, ``held``, ``released``, ``dropped``."""
    detail: str = ""
    """The error, or who acted."""


@attrs.frozen
class Triage:
    """Listed mail sorted by :meth:`DuplicateGuard.triage`, each group in listing order."""

    new: tuple[MessageKey, ...]
    """Never seen: to be claimed and handled."""
    retry: tuple[MessageKey, ...]
    """Failed before, or claimed by a worker whose claim expired: due another attempt."""
    done: tuple[MessageKey, ...]
    """Handled before and still listed: only the post-action may be due."""
    waiting: tuple[MessageKey, ...]
    """Held, dropped, or being handled by another worker right now: leave them."""
    busy: tuple[MessageKey, ...] = ()
    """The part of :attr:`waiting` claimed by another worker right now: it may give them
    back untouched (a holder that lost its lease does), so a catch-up must list them again."""


@attrs.frozen
class GuardEntry:
    """What the guard knows about one message (for inspection and ``mailtether status``)."""

    key: MessageKey
    state: GuardState
    """Where it stands (a :class:`str` enum: ``"held"`` compares equal to ``HELD``)."""
    attempts: int
    """Failed attempts so far."""
    reason: str
    """The last error, or why it is held."""
    since: float
    """When the state last changed (store clock)."""
    history: tuple[HistoryEntry, ...]


def history_of(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    value = data.get("history", [])
    return list(value) if isinstance(value, list) else []


def add_event(history: list[dict[str, Any]], at: float, event: str, detail: str = "") -> list[Any]:
    history.append({"at": at, "event": event, "detail": detail[:ERROR_TEXT]})
    return history[-_HISTORY:]


def claimed_at(record: Record, now: float) -> bool:
    """Whether *record* is a claim still running at *now* (store clock)."""
    return record.state == PROCESSING and float(record.data.get("expires_at", 0)) > now


def content_fields(key: MessageKey) -> dict[str, Any]:
    """The content fields a record keeps so the key can be rebuilt for a person."""
    fields: dict[str, Any] = {}
    if key.message_id is not None:
        fields["message_id"] = key.message_id
    if key.digest is not None:
        fields["digest"] = key.digest
    return fields


def key_id(key: MessageKey | str) -> str:
    return key.id if isinstance(key, MessageKey) else str(key)


def entry_of(record: Record) -> GuardEntry:
    data = record.data
    history = tuple(
        HistoryEntry(
            float(item.get("at", 0)), str(item.get("event", "")), str(item.get("detail", ""))
        )
        for item in history_of(data)
        if isinstance(item, dict)
    )
    message_id, digest = data.get("message_id"), data.get("digest")
    return GuardEntry(
        key=MessageKey.from_id(
            record.key,
            message_id=message_id if isinstance(message_id, str) else None,
            digest=digest if isinstance(digest, str) else None,
        ),
        state=GuardState(record.state),
        attempts=int(data.get("attempts", 0)),
        reason=str(data.get("reason", "")),
        since=record.updated_at,
        history=history,
    )
