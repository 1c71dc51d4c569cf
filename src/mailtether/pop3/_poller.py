"""``Pop3Poller``: the listener's guarantees for POP3 mailboxes.

The poller is the POP3 adapter of the mail pipeline: :class:`_Pop3Mailbox` is one POP3
session as a :class:`~mailtether._mailbox_port.MailboxPort` (UIDL or digests, RETR, DELE);
the poller logs in every poll interval, runs a catch-up, and QUITs (only then does the
server delete).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._delivery import DeliverMode, Delivery
from mailtether._durations import check_seconds
from mailtether._errors import ConnectionLost, MalformedReply
from mailtether._guard import DuplicateGuard
from mailtether._mailbox_port import LEAVE, SIZE_UNKNOWN, FetchedMail, Listed, PostAction, made
from mailtether._message_key import MessageKey, content_digest
from mailtether._outbox import Outbox
from mailtether._runner import SourceRunner, either
from mailtether._settings import ImapSettings
from mailtether._status import StatusBoard
from mailtether._strategies import ReconnectStrategy
from mailtether.pop3._connection import Pop3Connection
from mailtether.stores._protocol import Store

__all__ = ["Pop3Poller"]

_SLACK: Final = 2**20  # bytes past max_message_bytes a RETR may bring (a size given short)


class Pop3Poller(SourceRunner):
    """Polls a POP3 mailbox and hands every new mail to *handler*, exactly once.

    POP3 has no flags and no push: the poller logs in every *poll_interval*, lists the mailbox
    by UIDL (a content digest where the server has no UIDL), skips what the duplicate guard
    has done, hands new mail to the handler, and only after the handler's success is recorded
    sends ``DELE`` and ``QUIT`` (POP3 deletes at ``QUIT``; a dropped session deletes nothing,
    and the guard remembers the UIDL, so the next poll deletes those mails without handing them
    out again). Failed mail stays on the server and is retried; after the guard's
    ``max_failures`` it is held and reported, never deleted unseen.

    The same status board, reconnect strategy and blocking rules as
    :class:`~mailtether.ImapListener`: credentials rejected or untrusted TLS → BLOCKED; a
    mailbox locked by another session (``[IN-USE]``) → retried later.

    Args:
        source: ``pop3s://user:password@host[:port]/`` (implicit TLS, port 995), or
            ``pop3://…`` (STLS required; ``?security=plain`` for plaintext), or
            :class:`~mailtether.ImapSettings` (its folder is ignored).
        handler: Called with a :class:`~mailtether.Delivery` per mail (``uid`` is 0;
            the UIDL is in ``delivery.key.uidl``).
        delete: Delete handled mail (``DELE``); POP3 cannot mark mail read.
        poll_interval: Seconds between polls; also the default lease TTL (seed 001).
        timeout: Seconds for connecting and for each command.
        on_poison: ``"leave"`` (a held mail stays on the server), or
            ``"forward:<address>"``: the whole mail is sent to that person for review
            through *outbox*, then deleted if *delete* is set (if it cannot be queued, it
            stays and the source is BLOCKED with the reason).
        outbox: The :class:`~mailtether.Outbox` review mails go through.
        Other arguments: as for :class:`~mailtether.ImapListener` (``deliver``,
            ``deliver_empty``, ``commit_window`` and ``max_message_bytes`` included; sizes
            come from ``LIST``).
    """

    kind = "poller"

    def __init__(
        self,
        source: str | ImapSettings,
        handler: Callable[[Delivery], object],
        *,
        reconnect: ReconnectStrategy | None = None,
        store: Store | None = None,
        guard: DuplicateGuard | None = None,
        status: StatusBoard | None = None,
        delete: bool = True,
        on_poison: str = "leave",
        deliver: DeliverMode = "message",
        deliver_empty: bool = True,
        poll_interval: float = 60.0,
        lease_ttl: float | None = None,
        timeout: float = 30.0,
        commit_window: float = 0.01,
        heartbeat: float | None = 10.0,
        max_message_bytes: int = 64 * 2**20,
        name: str | None = None,
        outbox: Outbox | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        settings = (
            source if isinstance(source, ImapSettings) else ImapSettings.from_pop3_url(source)
        )
        super().__init__(
            name=name or f"{settings.username}@{settings.host}/pop3",
            handler=handler,
            reconnect=reconnect,
            store=store,
            guard=guard,
            status=status,
            poll_interval=poll_interval,
            lease_ttl=poll_interval if lease_ttl is None else lease_ttl,
            clock=clock,
            after=PostAction("delete") if delete else LEAVE,
            # POP3 can only delete: a held mail stays on the server, or goes to a reviewer
            on_poison=PostAction.parse(on_poison, "on_poison", ("leave", "forward")),
            deliver=deliver,
            deliver_empty=deliver_empty,
            commit_window=commit_window,
            heartbeat=heartbeat,
            max_message_bytes=max_message_bytes,
            outbox=outbox,
            review_sender=settings.username if "@" in settings.username else "",
        )
        self.settings = settings
        """Where the mailbox is."""
        self.delete = delete
        """Whether handled mail is deleted."""
        self.timeout = check_seconds(timeout, "Pop3Poller.timeout")
        """Seconds for connecting and each command."""
        self._connection: Pop3Connection | None = None

    # -- sessions ----------------------------------------------------------------------------------

    def _session(self, stop: threading.Event) -> None:
        while not stop.is_set() and not self._stop.is_set():
            self.poll_once()
            self.clock.sleep(self.poll_interval, either(stop, self._stop))

    def poll_once(self) -> int:
        """Log in, handle everything new, delete what is done, QUIT; return how many handled."""
        with self._lease() as lease:
            connection = self._connection = Pop3Connection.open(self.settings, self.timeout)
            try:
                self._online()
                most = self.pipeline.max_message_bytes + _SLACK
                mailbox = _Pop3Mailbox(connection, most)
                handled = self._catch_up(mailbox, lease)
                connection.quit()  # only now does the server delete
                if self.delete:  # so a deleted mail listed again is known as found again
                    self.pipeline.committed(mailbox, mailbox.deleted, set(mailbox.listed_ids))
                return handled
            finally:
                self._connection = None
                connection.close()

    def _drop_connection(self) -> None:
        connection = self._connection
        if connection is not None:
            connection.abort()

    def __repr__(self) -> str:
        return f"Pop3Poller({self.name!r}, delete={self.delete!r})"


class _Pop3Mailbox:
    """One POP3 session as the pipeline's mailbox port: positions are message numbers."""

    uses_cursor = False  # message numbers start at 1 in every session

    def __init__(self, connection: Pop3Connection, most: int) -> None:
        self._connection = connection
        self._most = most  # bytes a RETR may bring: past it, the connection is given up
        self._account = connection.settings.username
        self.scope = MessageKey.pop3(self._account, "-").scope
        self._numbers: dict[str, int] = {}
        self._known: dict[int, int] = {}  # the sizes LIST gave
        self.deleted: list[str] = []  # the key ids DELE'd in this session

    def list_new(self, after: int) -> list[Listed]:
        connection = self._connection
        try:
            _, lines, _ = connection.call("UIDL", connection.pop.uidl)
        except ConnectionLost as error:
            if type(error) is not ConnectionLost or not str(error).startswith("UIDL: the server"):
                raise  # a broken connection, not a server without UIDL
            numbered = self._digests()  # the server answered -ERR: key by content
        else:
            numbered = [_numbered(line, "UIDL") for line in lines]
        listed = [Listed(number, MessageKey.pop3(self._account, uidl)) for number, uidl in numbered]
        self._numbers = {item.key.id: item.position for item in listed}
        return listed

    def _digests(self) -> list[tuple[int, str]]:
        connection = self._connection
        _, lines, _ = connection.call("LIST", connection.pop.list)
        numbered = []
        for line in lines:
            number, _ = _numbered(line, "LIST")
            _, top, _ = connection.call("TOP", connection.pop.top, number, 0)
            numbered.append((number, content_digest(b"\r\n".join(top))[:64]))
        return numbered

    def locate(self, key: MessageKey) -> int | None:
        return self._numbers.get(key.id)

    @property
    def listed_ids(self) -> list[str]:
        """The key ids of the last listing."""
        return list(self._numbers)

    def sizes(self, positions: Sequence[int]) -> Callable[[], Mapping[int, int]]:
        found = self._sizes(positions)  # POP3 has no pipelining here: asked and read now
        self._known = found  # RETR's deadline follows the size
        return lambda: found

    def _sizes(self, positions: Sequence[int]) -> dict[int, int]:
        connection = self._connection
        _, lines, _ = connection.call("LIST", connection.pop.list)
        wanted = set(positions)
        sizes = {}
        for line in lines:
            number, octets = _numbered(line, "LIST")
            if number in wanted and octets.isdigit():
                sizes[number] = int(octets)
        return sizes

    def present(self, positions: Sequence[int]) -> set[int]:
        # A POP3 session's message numbers stay put until QUIT: listed is present.
        return set(positions) & set(self._numbers.values())

    def describe(self, position: int) -> str:
        return f"message {position}"

    def fetch(self, positions: Sequence[int]) -> Callable[[], Mapping[int, FetchedMail]]:
        def retrieve() -> dict[int, FetchedMail]:
            connection = self._connection
            fetched: dict[int, FetchedMail] = {}
            for number in positions:
                raw = connection.retr(
                    number,
                    expected_bytes=self._known.get(number, SIZE_UNKNOWN),
                    most=self._most,
                )
                fetched[number] = (raw, ())
            return fetched

        return retrieve

    def apply(self, positions: Sequence[int], action: PostAction) -> Callable[[], None]:
        assert action.kind == "delete", f"POP3 cannot {action}"
        connection = self._connection
        ids = {number: key_id for key_id, number in self._numbers.items()}
        for number in positions:
            connection.call("DELE", connection.pop.dele, number)
            if number in ids:
                self.deleted.append(ids[number])
        return made


def _numbered(line: bytes, command: str) -> tuple[int, str]:
    """Read one "number value" line of a UIDL or LIST answer (RFC 1939), or raise."""
    number, _, value = line.decode("ascii", "replace").strip().partition(" ")
    value = value.strip()
    if not number.isdigit() or int(number) < 1 or not value or len(value) > 512:
        shown = line[:80].decode("ascii", "replace")
        raise MalformedReply(f"the server's {command} answer has a malformed line {shown!r}")
    return int(number), value
