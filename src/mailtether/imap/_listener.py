"""``ImapListener``: one IMAP folder listened to for weeks, every mail handled once.

The listener is the IMAP adapter of the mail pipeline: :class:`_ImapMailbox` is the
folder as a :class:`~mailtether._mailbox_port.MailboxPort` (UID SEARCH, bulk FETCH, flag,
move, expunge); the session around it selects the folder, waits with IDLE or polling, and
runs a catch-up after every change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._delivery import DeliverMode, Delivery
from mailtether._errors import CommandFailed, MailboxUnchangeable
from mailtether._guard import DuplicateGuard
from mailtether._keepalive import Keepalive
from mailtether._mailbox_port import SIZE_UNKNOWN, FetchedMail, Listing, PostAction, made
from mailtether._message_key import MessageKey
from mailtether._outbox import Outbox
from mailtether._redaction import redacting_logger
from mailtether._runner import SourceRunner, either
from mailtether._settings import ImapSettings
from mailtether._status import StatusBoard
from mailtether._strategies import ReconnectStrategy
from mailtether.imap._connection import ImapConnection
from mailtether.imap._fetch import message_set, search_uids, send_fetch, send_sizes
from mailtether.imap._flags import send_add_flag
from mailtether.stores._protocol import Store

__all__ = ["ImapListener"]

# A body may come a little larger than the RFC822.SIZE the server gave (line endings): room.
_LITERAL_SLACK = 2**20

log = redacting_logger("mailtether.listener")


class ImapListener(SourceRunner):
    """Listens to one IMAP folder and hands every new mail to *handler*, exactly once.

    The loop: take the mailbox lease (only one listener of a group works a mailbox); connect
    (TLS by default); catch up on every mail that arrived since the last run, by UID; then
    wait for new mail (IDLE, or polling) and catch up again; on any connection fault,
    reconnect by the *reconnect* strategy. Each mail is fetched with ``BODY.PEEK[]`` (nothing
    is marked seen by fetching), claimed through the duplicate guard, handed to the handler,
    its outcome recorded in the store, and only then is the mailbox changed (*after*).

    The source becomes BLOCKED — nothing retried until :meth:`resume` — when credentials are
    rejected, TLS cannot be trusted, the folder is missing, the reconnect strategy gives up,
    the guard reports a mail that keeps coming back, or a processed mail cannot be removed.

    Args:
        source: An ``imaps://`` URL or :class:`~mailtether.ImapSettings`.
        handler: Called with a :class:`Delivery` per mail; an exception is a failed
            attempt (retried; after the guard's ``max_failures``, the mail is held).
        reconnect: The reconnect strategy; default: at once, then 1 s, 2 s, 4 s … up to
            5 minutes, forever.
        keepalive: The connection's deadlines.
        store: Where the guard, cursor, backoff, lease and status live (default: a
            :class:`~mailtether.MemoryStore`, which forgets everything at exit; use SQLite
            or a server store in production).
        guard: The duplicate guard; default ``DuplicateGuard(store)``.
        status: The status board; default ``StatusBoard(store)`` (logging notifier).
        after: What to do with a processed mail: ``"seen"``, ``"delete"``,
            ``"move:<folder>"`` or ``"leave"``.
        on_poison: What to do with a held (poisoned) mail: ``"leave"``, ``"flag"``,
            ``"move:<folder>"``, or ``"forward:<address>"``: the whole mail is sent to that
            person for review through *outbox* (then removed as *after* says; if it cannot
            be queued, it stays and the source is BLOCKED with the reason).
        deliver: ``"message"`` (the handler gets each mail), ``"body"`` (the body only),
            ``"attachments"`` (each attachment as a separate delivery, as an integration
            platform's adapter does), or a combination such as ``"body+attachments"`` (the
            body, then each attachment: both of the adapter's switches on). A mail with
            nothing to deliver (no attachment) reaches the handler once as a delivery of
            kind ``"empty"``, unless *deliver_empty* is false. A part already handled is not
            handed out again when a later part fails and the mail is retried.
        deliver_empty: Hand a mail with nothing to deliver to the handler as an ``"empty"``
            delivery (default), or mark it done without calling it (``False``).
        mode: ``"auto"`` (IDLE when offered), or ``"poll"``.
        poll_interval: Seconds between catch-ups when polling (and at most between them in
            IDLE, as a safety net).
        lease_ttl: The mailbox lease's TTL, renewed by a heartbeat; ``None`` disables the
            lease (one listener per mailbox guaranteed by you).
        commit_window: Outcomes of fast handlers are recorded together, in one store write,
            once the handlers behind them have run this many seconds in all (and always
            before the mailbox is changed); a handler that runs longer has its outcome
            recorded at once. A hard crash (``kill -9``, power loss) can therefore hand out
            again at most this much handler work. ``0`` records every outcome on its own.
        heartbeat: Seconds between liveness beats while it runs: its status record says it
            is alive for three beats, after which ``mailtether status`` shows it STALE (its
            process stopped or hangs). ``None``: no beats.
        max_message_bytes: Mail larger than this (by the size the server gives) is never
            fetched: it is held at once with "larger than max_message_bytes (N bytes)",
            for a person to release or drop. Default 64 MiB. Fetches keep to about 16 MiB
            a batch (a larger mail goes alone), so memory stays bounded.
        name: The source's name in status and logs; default ``user@host/folder``.
        outbox: The :class:`~mailtether.Outbox` review mails go through
            (``on_poison="forward:…"``). Their From is the login user when it is an
            address, else the reviewer's.
        clock: The clock for reconnect waits.
    """

    kind = "listener"

    def __init__(
        self,
        source: str | ImapSettings,
        handler: Callable[[Delivery], object],
        *,
        reconnect: ReconnectStrategy | None = None,
        keepalive: Keepalive | None = None,
        store: Store | None = None,
        guard: DuplicateGuard | None = None,
        status: StatusBoard | None = None,
        after: str = "seen",
        on_poison: str = "leave",
        deliver: DeliverMode = "message",
        deliver_empty: bool = True,
        mode: Literal["auto", "poll"] = "auto",
        poll_interval: float = 60.0,
        lease_ttl: float | None = 60.0,
        commit_window: float = 0.01,
        heartbeat: float | None = 10.0,
        max_message_bytes: int = 64 * 2**20,
        name: str | None = None,
        outbox: Outbox | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        settings = source if isinstance(source, ImapSettings) else ImapSettings.from_url(source)
        if mode not in ("auto", "poll"):
            raise ValueError(f"mode must be 'auto' or 'poll', got {mode!r}")
        super().__init__(
            name=name or f"{settings.username}@{settings.host}/{settings.folder}",
            handler=handler,
            reconnect=reconnect,
            store=store,
            guard=guard,
            status=status,
            poll_interval=poll_interval,
            lease_ttl=lease_ttl,
            clock=clock,
            after=PostAction.parse(after, "after", ("seen", "delete", "move", "leave")),
            on_poison=PostAction.parse(
                on_poison, "on_poison", ("leave", "flag", "move", "forward")
            ),
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
        self.keepalive = keepalive or Keepalive()
        """The connection's deadlines."""
        self.mode = mode
        """``"auto"`` (IDLE when offered) or ``"poll"``."""
        self._connection: ImapConnection | None = None

    @property
    def detection_bound(self) -> float:
        """The longest a dead connection can go unnoticed by this listener, in seconds.

        The keepalive's bound counts what this listener's waits add: in IDLE the wait ends
        every ``idle_renewal`` and at the ``poll_interval`` catch-up, whichever comes first;
        polling (``mode="poll"``, or a server without IDLE) it sends NOOP every
        ``noop_interval`` and catches up every ``poll_interval``; ``noop_interval=0``
        leaves the catch-up alone. Then ``response_timeout`` for the answer that does not
        come. In ``"auto"`` mode, before the server says whether it has IDLE, the larger of
        the two.
        """
        keepalive = self.keepalive
        noop = keepalive.noop_interval
        polling = min(noop, self.poll_interval) if noop > 0 else self.poll_interval
        idling = min(keepalive.idle_renewal, self.poll_interval)
        connection = self._connection
        if self.mode == "poll" or (connection is not None and not connection.has_idle):
            waits = polling
        elif connection is not None:
            waits = idling
        else:
            waits = max(polling, idling)
        return waits + keepalive.response_timeout

    # -- running ---------------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Connect, handle everything new, disconnect; return how many mails were handled.

        For cron-style use. Raises the connection's errors instead of retrying.
        """
        with self._lease() as lease:
            connection = self._open()
            try:
                return self._catch_up(_ImapMailbox(connection, self.settings), lease)
            finally:
                self._connection = None
                connection.close()

    # -- one connected session ---------------------------------------------------------------------

    def _open(self) -> ImapConnection:
        connection = ImapConnection.open(
            self.settings,
            keepalive=self.keepalive,
            clock=self.clock,
            max_literal=self.pipeline.max_message_bytes + _LITERAL_SLACK,
        )
        self._connection = connection
        return connection

    def _drop_connection(self) -> None:
        connection = self._connection
        if connection is not None:
            connection.abort("the mailbox lease was lost")

    def _wake_connection(self) -> None:
        connection = self._connection
        if connection is not None:
            connection.wake()

    def _session(self, stop: threading.Event) -> None:
        with self._lease() as lease:
            connection = self._open()
            try:
                after = self.pipeline.after
                if connection.read_only and after.kind != "leave":
                    raise MailboxUnchangeable(
                        f"folder {self.settings.folder!r} is read-only, so mail cannot be "
                        f"{after.kind} after it is handled; nothing was handled"
                    )
                mailbox = _ImapMailbox(connection, self.settings)
                self._online()
                self._catch_up(mailbox, lease)
                use_idle = self.mode == "auto"
                while not stop.is_set() and not self._stop.is_set():
                    lease.check()
                    connection.wait(
                        self.poll_interval,
                        either(stop, self._stop),
                        use_idle=use_idle,
                        stop_rings=stop is self._stop,  # stop() wakes the connection
                    )
                    lease.check()
                    self._catch_up(mailbox, lease)
            finally:
                self._connection = None
                connection.close()

    def __repr__(self) -> str:
        return f"ImapListener({self.name!r}, after={str(self.pipeline.after)!r})"


class _ImapMailbox:
    """The selected folder of an open connection, as the pipeline's mailbox port."""

    uses_cursor = True  # UIDs only grow (within one UIDVALIDITY)

    def __init__(self, connection: ImapConnection, settings: ImapSettings) -> None:
        uidvalidity = connection.uidvalidity
        assert uidvalidity is not None, "the folder is selected"
        self._connection = connection
        self._base = MessageKey.imap(settings.username, settings.folder, uidvalidity, 1)
        self.scope = self._base.scope
        self._sizes: Mapping[int, int] = {}  # the last sizes the server gave

    def list_new(self, after: int) -> Listing:
        connection = self._connection
        found = connection.call("searching for new mail", search_uids, connection.client, after)
        return Listing(found, self._base.with_uid)

    def sizes(self, positions: Sequence[int]) -> Callable[[], Mapping[int, int]]:
        connection = self._connection
        answer = connection.call_ahead(
            "asking for mail sizes", send_sizes, connection.client, list(positions)
        )

        def read() -> Mapping[int, int]:
            self._sizes = answer()  # the fetches' deadlines follow them
            return self._sizes

        return read

    def locate(self, key: MessageKey) -> int | None:
        return key.uid if key.id.startswith(self.scope) else None

    def present(self, positions: Sequence[int]) -> set[int]:
        connection = self._connection
        wanted = set(positions)
        criteria = ["UID", message_set(wanted)]
        found = connection.call("looking for mail", connection.client.search, criteria)
        return set(found) & wanted

    def describe(self, position: int) -> str:
        return f"UID {position}"

    def fetch(self, positions: Sequence[int]) -> Callable[[], Mapping[int, FetchedMail]]:
        connection = self._connection
        expected = sum(self._sizes.get(position, SIZE_UNKNOWN) for position in positions)
        return connection.call_ahead(
            "fetching new mail",
            send_fetch,
            connection.client,
            list(positions),
            expected_bytes=expected,
            interleaves=True,
        )

    def apply(self, positions: Sequence[int], action: PostAction) -> Callable[[], None]:
        connection = self._connection
        client = connection.client
        uids = list(positions)

        def refused(error: CommandFailed) -> MailboxUnchangeable:
            return MailboxUnchangeable(f"{len(uids)} mail(s) from UID {uids[0]}: {error}")

        if action.kind in ("seen", "flag"):
            # Sent now, behind the next batch's FETCH; the answer is read before the batch
            # after. STORE ... FLAGS.SILENT: the server answers OK alone, not one FETCH per
            # mail (imapclient would parse them, for nothing: a third of a first sync's time).
            doing, flag = ("marking mail seen", b"\\Seen")
            if action.kind == "flag":
                doing, flag = ("flagging mail", b"\\Flagged")
            answer = connection.call_ahead(
                doing, send_add_flag, client, uids, flag, interleaves=True
            )

            def confirm() -> None:
                try:
                    answer()
                except CommandFailed as error:
                    raise refused(error) from None

            return confirm
        try:
            if action.kind == "delete":
                connection.call("deleting mail", client.delete_messages, uids, silent=True)
                connection.call("expunging mail", client.uid_expunge, uids)
            elif action.kind == "move":
                connection.call(f"moving mail to {action.folder}", client.move, uids, action.folder)
        except CommandFailed as error:
            raise refused(error) from None
        return made
