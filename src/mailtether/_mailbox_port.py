"""The mailbox port: the little the mail pipeline needs of a mail source.

An IMAP folder and a POP3 mailbox look alike from here: a listing of positions (UIDs,
message numbers), each with its :class:`~mailtether.MessageKey`; whole mails fetched by
position; and post-actions (mark seen, move, delete) applied to positions. A new kind of
source implements :class:`MailboxPort` and gets the whole pipeline — claims, the commit
window, post-actions after the outcome is recorded, recovery after a crash — for free.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal, Protocol, overload

import attrs

from mailtether._message_key import MessageKey

__all__ = [
    "LEAVE",
    "SIZE_UNKNOWN",
    "FetchedMail",
    "Listed",
    "Listing",
    "MailboxPort",
    "PostAction",
    "made",
]

FetchedMail = tuple[bytes, tuple[bytes, ...]]
"""A fetched mail: its raw bytes and its flags (none for POP3)."""

ActionKind = Literal["seen", "flag", "delete", "move", "leave", "forward"]


@attrs.frozen
class PostAction:
    """What is done to a mail in the mailbox once its outcome is recorded."""

    kind: ActionKind
    folder: str | None = None
    """The target folder of ``move``."""
    address: str | None = None
    """The reviewer's address of ``forward`` (a held mail sent for review)."""

    @classmethod
    def parse(cls, value: str, what: str, allowed: Sequence[ActionKind]) -> PostAction:
        """Read ``"seen"``, ``"move:Archive"``, ...; a :class:`ValueError` names *what*."""
        kind, _, target = value.partition(":")
        needs_target = kind in ("move", "forward")
        if kind not in allowed or needs_target != bool(target):
            choices = ", ".join(_CHOICE.get(k, k) for k in allowed)
            raise ValueError(f"{what} must be one of {choices}; got {value!r}")
        if kind == "forward":
            address = target.strip()
            if address.count("@") != 1 or address.startswith("@") or address.endswith("@"):
                raise ValueError(f"{what}: forward needs an e-mail address; got {target!r}")
            return cls("forward", address=address)
        return cls(kind, target or None)  # type: ignore[arg-type]  # checked: in allowed

    @classmethod
    def from_record(cls, data: Mapping[str, object]) -> PostAction:
        """The action saved with :meth:`to_record` (the pipeline's outbox)."""
        kind, folder, address = data.get("action"), data.get("folder"), data.get("address")
        return cls(
            kind,  # type: ignore[arg-type]  # written by to_record
            folder if isinstance(folder, str) else None,
            address if isinstance(address, str) else None,
        )

    def to_record(self) -> dict[str, object]:
        """The action as a store record's data."""
        data: dict[str, object] = {"action": self.kind, "folder": self.folder}
        if self.address is not None:
            data["address"] = self.address
        return data

    def __str__(self) -> str:
        if self.kind == "forward":
            return f"forward:{self.address}"
        return f"move:{self.folder}" if self.kind == "move" else self.kind


_CHOICE: Final = {"move": "move:<folder>", "forward": "forward:<address>"}

LEAVE: Final = PostAction("leave")

SIZE_UNKNOWN: Final = 64 * 2**10
"""The bytes a mail the server gave no size for counts as (byte budgets, deadlines)."""


@attrs.frozen
class Listed:
    """One mail in a listing: where it is, and its key (without content yet)."""

    position: int
    """Its UID (IMAP) or message number (POP3): what :meth:`MailboxPort.fetch` takes."""
    key: MessageKey


class Listing(Sequence[Listed]):
    """Positions listed, whose :class:`Listed` (and key) are made only when read.

    A folder of 100,000 mails is 100,000 integers here, not 100,000 keys: the pipeline
    reads it a window at a time.
    """

    __slots__ = ("_key_of", "_positions")

    def __init__(self, positions: Sequence[int], key_of: Callable[[int], MessageKey]) -> None:
        self._positions = positions
        self._key_of = key_of

    def __len__(self) -> int:
        return len(self._positions)

    @overload
    def __getitem__(self, index: int) -> Listed: ...
    @overload
    def __getitem__(self, index: slice) -> list[Listed]: ...
    def __getitem__(self, index: int | slice) -> Listed | list[Listed]:
        if isinstance(index, slice):
            return [Listed(p, self._key_of(p)) for p in self._positions[index]]
        position = self._positions[index]
        return Listed(position, self._key_of(position))


def made() -> None:
    """The confirmation of a mailbox change made at once: there is nothing left to read."""


class MailboxPort(Protocol):
    """A mailbox as the pipeline drives it, for the length of one connected session.

    Every method may raise the :class:`~mailtether.MailServerError` family; the run loop
    turns those into reconnects or BLOCKED.
    """

    @property
    def scope(self) -> str:
        """The :attr:`~mailtether.MessageKey.scope` of this mailbox's keys."""

    @property
    def uses_cursor(self) -> bool:
        """``True`` if positions only grow (IMAP UIDs), so the pipeline keeps a cursor.

        :meth:`list_new` then lists past it only; ``False``: every listing is the whole
        mailbox.
        """

    def list_new(self, after: int) -> Sequence[Listed]:
        """List the mails past position *after* (0: all), in ascending position."""

    def locate(self, key: MessageKey) -> int | None:
        """The position of a mail the guard knows, or ``None`` if it cannot be found now."""

    def fetch(self, positions: Sequence[int]) -> Callable[[], Mapping[int, FetchedMail]]:
        """Ask for whole mails now; the returned function reads them (once).

        A source that can pipeline sends its request here and reads the answer later. A
        position missing from the answer was not delivered (gone, or left out): the pipeline
        asks for it again alone, then :meth:`present`.

        Raises:
            CommandFailed: the server refused the request or its answer could not be read,
                and the connection can go on: the pipeline splits the request to find the
                mail at fault. Anything that breaks the connection is a ``ConnectionLost``.
        """

    def sizes(self, positions: Sequence[int]) -> Callable[[], Mapping[int, int]]:
        """Ask for these mails' sizes in bytes now; the returned function reads them (once).

        The sizes are the server's (``RFC822.SIZE``, ``LIST``), asked for before the mails are
        fetched, so batches keep to a byte budget and mail larger than the pipeline takes is
        never fetched. A position left out has no known size. Errors as :meth:`fetch`'s.
        """

    def present(self, positions: Sequence[int]) -> set[int]:
        """Which of *positions* are in the mailbox now (asked of the server, not remembered).

        The pipeline asks this about mail an answer left out, before it lets the cursor
        pass it: gone mail is passed, mail still there counts a failed attempt.
        """

    def describe(self, position: int) -> str:
        """A position as a person reads it in a status: ``"UID 17"``, ``"message 3"``."""

    def apply(self, positions: Sequence[int], action: PostAction) -> Callable[[], None]:
        """Apply *action* to these mails, whose outcomes are recorded; return its confirmation.

        A source that can pipeline sends the change here and reads the server's answer when
        the returned function is called (once); others make the change here and return
        :func:`made`. Until it is confirmed, the pipeline counts the change as not made.

        Raises:
            MailboxUnchangeable: the mailbox refused the change (from this method, or from
                the returned function).
        """
