"""``ImapListener``: one mailbox listened to for weeks, every mail handled once."""

from __future__ import annotations

import email
import email.policy
import functools
import logging
import threading
from collections.abc import Callable, Iterable
from email.message import EmailMessage
from typing import Final, Literal

import attrs

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._errors import (
    CommandFailed,
    MailServerError,
)
from mailtether._guard import Claim, ClaimStatus, DuplicateGuard
from mailtether._keepalive import Keepalive
from mailtether._message_key import MessageKey, content_digest, message_id_of
from mailtether._runner import _SourceRunner, either
from mailtether._settings import ImapSettings
from mailtether._status import StatusBoard
from mailtether._strategies import ReconnectStrategy
from mailtether.imap._connection import ImapConnection
from mailtether.imap._fetch import FetchedMail, send_fetch
from mailtether.stores._protocol import Store

__all__ = ["Delivery", "ImapListener"]

log = logging.getLogger("mailtether.listener")

# Mails per FETCH: up to _FETCH_MOST, fewer when they are big (about _FETCH_BYTES per batch,
# by the average size of the last batch), so a mailbox of large mail cannot fill memory.
_FETCH_FIRST: Final = 50
_FETCH_LEAST: Final = 5
_FETCH_MOST: Final = 500
_FETCH_BYTES: Final = 16 * 2**20
# Seconds of handling a batch should take at most: batches of slow mail are made smaller, and
# the next batch is asked for ahead only when handling this one should take less than this.
_BATCH_SECONDS: Final = 60.0
_CURSORS: Final = "cursor"
_BACKOFFS: Final = "backoff"
_OUTBOX: Final = "outbox"
_PARTS: Final = "parts"


@attrs.frozen
class Delivery:
    r"""One mail, as the handler receives it.

    Attributes:
        key: Its :class:`~mailtether.MessageKey` (position and content).
        uid: Its IMAP UID.
        flags: Its flags when fetched (``\\Seen`` is never set by fetching).
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

    @functools.cached_property
    def message(self) -> EmailMessage:
        """The parsed message (``email.policy.default``); parsed on first use."""
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class _MailboxUnchangeable(MailServerError):
    """The post-action failed: the mail stays, and would be seen again and again."""

    default_hint = (
        "the mail could not be marked or moved (is the mailbox read-only?); fix the mailbox "
        "permissions or remove the mail by hand, then resume the source"
    )


def _parse_action(value: str, what: str) -> tuple[str, str | None]:
    kind, _, folder = value.partition(":")
    allowed = ("seen", "delete", "move", "leave") if what == "after" else ("leave", "flag", "move")
    if kind not in allowed or (kind == "move") != bool(folder):
        choices = ", ".join("move:<folder>" if k == "move" else k for k in allowed)
        raise ValueError(f"{what} must be one of {choices}; got {value!r}")
    return kind, folder or None


class ImapListener(_SourceRunner):
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
        on_poison: What to do with a held (poisoned) mail: ``"leave"``, ``"flag"`` or
            ``"move:<folder>"``.
        deliver: ``"message"`` (the handler gets each mail), ``"attachments"`` (each
            attachment as a separate delivery, as an integration platform's adapter does;
            a mail without attachments calls nothing), or ``"body"`` (the body only). A part
            already handled is not handed out again when a later part fails and the mail
            is retried.
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
        name: The source's name in status and logs; default ``user@host/folder``.
        clock: The clock for reconnect waits.
    """

    blocking_errors = (*_SourceRunner.blocking_errors, _MailboxUnchangeable)
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
        deliver: Literal["message", "attachments", "body"] = "message",
        mode: Literal["auto", "poll"] = "auto",
        poll_interval: float = 60.0,
        lease_ttl: float | None = 60.0,
        commit_window: float = 0.01,
        name: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = (
            source if isinstance(source, ImapSettings) else ImapSettings.from_url(source)
        )
        """Where the mailbox is."""
        settings = self.settings
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
        )
        self.keepalive = keepalive or Keepalive()
        """The connection's deadlines."""
        self.after = _parse_action(after, "after")
        self.on_poison = _parse_action(on_poison, "on_poison")
        if deliver not in ("message", "attachments", "body"):
            raise ValueError(f"deliver must be message, attachments or body, got {deliver!r}")
        self.deliver = deliver
        if mode not in ("auto", "poll"):
            raise ValueError(f"mode must be 'auto' or 'poll', got {mode!r}")
        self.mode = mode
        if (
            isinstance(commit_window, bool)
            or not isinstance(commit_window, int | float)
            or not 0 <= commit_window < float("inf")
        ):
            raise ValueError(
                f"commit_window must be a finite number of seconds >= 0, got {commit_window!r}"
            )
        self.commit_window = float(commit_window)
        """Seconds of handler work whose outcomes may wait to be recorded together."""
        self._connection: ImapConnection | None = None

    # -- running ---------------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Connect, handle everything new, disconnect; return how many mails were handled.

        For cron-style use. Raises the connection's errors instead of retrying.
        """
        with self._lease():
            connection = self._open()
            try:
                return self._catch_up(connection)
            finally:
                connection.close()

    # -- one connected session ---------------------------------------------------------------------

    def _open(self) -> ImapConnection:
        connection = ImapConnection.open(self.settings, keepalive=self.keepalive, clock=self.clock)
        self._connection = connection
        return connection

    def _drop_connection(self) -> None:
        connection = self._connection
        if connection is not None:
            connection.abort("the mailbox lease was lost")

    def _session(self, stop: threading.Event) -> None:
        with self._lease() as lease:
            connection = self._open()
            try:
                if connection.read_only and self.after[0] != "leave":
                    raise _MailboxUnchangeable(
                        f"folder {self.settings.folder!r} is read-only, so mail cannot be "
                        f"{self.after[0]} after it is handled; nothing was handled"
                    )
                self._online()
                self._reconcile(connection)
                self._catch_up(connection, lease.check)
                use_idle = self.mode == "auto"
                while not stop.is_set() and not self._stop.is_set():
                    lease.check()
                    connection.wait(self.poll_interval, either(stop, self._stop), use_idle=use_idle)
                    lease.check()
                    self._catch_up(connection, lease.check)
            finally:
                self._connection = None
                connection.close()

    def _catch_up(
        self, connection: ImapConnection, check: Callable[[], None] = lambda: None
    ) -> int:
        """Handle everything new in the folder; *check* raises if we may no longer work it."""
        client = connection.client
        uidvalidity = connection.uidvalidity
        assert uidvalidity is not None
        cursor = self.store.get(_CURSORS, self.name)
        last_uid = 0
        if cursor is not None and cursor.data.get("uidvalidity") == uidvalidity:
            last_uid = int(cursor.data.get("last_uid", 0))
        criteria = ["UID", f"{last_uid + 1}:*"] if last_uid else ["ALL"]
        found = connection.call("searching for new mail", client.search, criteria)
        # "UID n:*" always matches the newest mail, even when n is past the end.
        uids = sorted(uid for uid in found if uid > last_uid)
        base = MessageKey.imap(self.settings.username, self.settings.folder, uidvalidity, 1)
        keys = {uid: base._derive(uid) for uid in uids}
        fresh = {key.uid for key in self.guard.filter_new(keys.values()) if key.uid is not None}
        # Mail the guard already finished but that is still here past the cursor: a crash came
        # between recording the outcome and changing the mailbox. Finish the change.
        known = self.store.get_many(
            self.guard.namespace, (key.id for uid, key in keys.items() if uid not in fresh)
        )
        unfinished = [
            key for key in keys.values() if key.id in known and known[key.id].state == "done"
        ]
        if unfinished:
            log.info("%s: finishing %d mailbox changes after a restart", self.name, len(unfinished))
            self._apply_many(connection, unfinished, self.after)
        todo = sorted(fresh | set(self._retryable_uids(uidvalidity)))
        handled = 0
        size = _FETCH_FIRST
        start = 0

        def ask(batch: list[int]) -> Callable[[], dict[int, FetchedMail]]:
            check()  # the lease may have been lost during the last batch
            return connection.call_ahead("fetching new mail", send_fetch, client, batch)

        batch = todo[:size]
        answer = ask(batch) if batch else None
        per_mail: float | None = None  # seconds of handling per mail, once measured
        while answer is not None:
            fetched = answer()
            mails = [(uid, *fetched[uid]) for uid in batch if uid in fetched]  # else expunged
            if mails:
                average = sum(len(raw) for _, raw, _ in mails) // len(mails) or 1
                size = max(_FETCH_LEAST, min(_FETCH_MOST, _FETCH_BYTES // average))
            if per_mail:  # and about a minute of handling at most: a server that hears
                # nothing from its client for long logs it out (RFC 9051: 30 minutes at least)
                size = max(1, min(size, int(_BATCH_SECONDS / per_mail)))
            current, start = batch, start + len(batch)
            batch = todo[start : start + size]
            answer = None
            # Ask for the next batch before handling this one, so the server reads and sends
            # it meanwhile — when handling is known to be quick: a server drops a client that
            # leaves its answer unread for long (Dovecot: after 5 minutes).
            if batch and per_mail is not None and per_mail * len(mails) < _BATCH_SECONDS:
                answer = ask(batch)
            began = self.clock.monotonic()
            done, failed = self._handle(connection, base, mails, fresh)
            if mails:
                per_mail = (self.clock.monotonic() - began) / len(mails)
            handled += done
            if done or failed:
                self.status.count(self.name, processed=done, failed=failed)
            self.store.put(
                _CURSORS,
                self.name,
                "active",
                {"uidvalidity": uidvalidity, "last_uid": current[-1]},
            )
            if batch and answer is None:
                answer = ask(batch)
        if uids:
            self.store.put(
                _CURSORS, self.name, "active", {"uidvalidity": uidvalidity, "last_uid": uids[-1]}
            )
        return handled

    def _handle(
        self,
        connection: ImapConnection,
        base: MessageKey,
        mails: list[tuple[int, bytes, tuple[bytes, ...]]],
        fresh: set[int],
    ) -> tuple[int, int]:
        """Hand one fetched batch over; record the outcomes; change the mailbox.

        Mail the guard has never seen is claimed in one store write and its outcomes are
        recorded in groups (see *commit_window*); mail it knows (a retry, a claim that
        expired in a crash) goes one at a time, each outcome recorded at once, so a mail
        that crashes the process is blamed alone. Returns how many were done and failed.
        """
        keys = {
            uid: base._derive(uid, message_id=message_id_of(raw), digest=content_digest(raw))
            for uid, raw, _ in mails
        }
        claims = {
            claim.key.uid: claim
            for claim in self.guard.claim_many(keys[uid] for uid, _, _ in mails if uid in fresh)
        }
        finished: list[MessageKey] = []  # recorded as done: the post-action is due
        poisoned: list[MessageKey] = []
        pending: list[tuple[Claim, str | None]] = []
        work = 0.0  # handler seconds behind the pending outcomes
        claimed_at = self.clock.monotonic()
        done = failed = 0

        def record() -> None:
            nonlocal work, done, failed
            if not pending:
                return
            outcomes = pending[:]
            pending.clear()
            work = 0.0
            poisoned.extend(self.guard.finish_many(outcomes))
            for claim, error in outcomes:
                if error is None:
                    finished.append(claim.key)
                    done += 1
                else:
                    failed += 1

        try:
            for uid, raw, flags in mails:
                key = keys[uid]
                claim = claims.pop(uid, None)
                if claim is None:  # known to the guard: one at a time, recorded at once
                    claim = self.guard.claim(key)
                    outcome = self._after_claim(connection, claim, uid, flags, raw)
                elif claim.acquired:
                    if self.clock.monotonic() - claimed_at > self.guard.claim_ttl / 2:
                        claim.extend()  # slow handlers: the batch's claims must not expire
                        for waiting in claims.values():
                            if waiting.acquired:
                                waiting.extend()
                        claimed_at = self.clock.monotonic()
                    began = self.clock.monotonic()
                    error = self._run_handler(Delivery(key, uid, flags, raw, claim.attempt), claim)
                    pending.append((claim, error))
                    work += self.clock.monotonic() - began
                    if work >= self.commit_window:
                        record()
                    continue
                else:
                    outcome = self._not_new(connection, claim)
                if outcome == "done":
                    finished.append(key)
                    done += 1
                elif outcome == "finish":
                    finished.append(key)
                elif outcome == "failed":
                    failed += 1
        except BaseException:
            try:
                record()  # whatever went wrong, what was handled is recorded
            except Exception as error:  # do not hide the first fault behind this one
                log.error("%s: could not record the outcomes of handled mail: %s", self.name, error)
            raise
        finally:
            for unstarted in claims.values():
                if unstarted.acquired:
                    unstarted._give_back()
        record()
        for key in poisoned:
            self._apply(connection, key, self.on_poison)
        # The outcomes are recorded; now the mailbox changes, one command for the batch.
        self._apply_many(connection, finished, self.after)
        return done, failed

    def _run_handler(self, delivery: Delivery, claim: Claim) -> str | None:
        """Run the handler; return ``None`` or the error as text (a failed attempt)."""
        try:
            self._hand_over(delivery)
        except Exception as error:
            log.warning("%s: handler failed on %s: %s", self.name, delivery.key, error)
            return f"{type(error).__name__}: {error}"
        except BaseException:  # KeyboardInterrupt, SystemExit: not the mail's fault
            claim.abandon()
            raise
        return None

    def _retryable_uids(self, uidvalidity: int) -> Iterable[int]:
        """UIDs of this folder whose last attempt failed, or whose claim expired."""
        prefix = MessageKey.imap(self.settings.username, self.settings.folder, uidvalidity, 1).id
        prefix = prefix[:-2]
        now = self.store.now()
        for state in ("failed", "processing"):
            for record in self.store.scan(self.guard.namespace, state=state):
                if not record.key.startswith(prefix):
                    continue
                if state == "processing" and float(record.data.get("expires_at", 0)) > now:
                    continue  # another worker is on it
                yield MessageKey.from_id(record.key).uid or 0

    def _after_claim(
        self,
        connection: ImapConnection,
        claim: Claim,
        uid: int,
        flags: tuple[bytes, ...],
        raw: bytes,
    ) -> str:
        """Handle one claimed mail, its outcome recorded at once.

        Returns ``"done"`` (handled now; post-action due), ``"finish"`` (handled before; only
        the post-action is due), ``"failed"`` or ``"skip"``.
        """
        if not claim.acquired:
            return self._not_new(connection, claim)
        error = self._run_handler(Delivery(claim.key, uid, flags, raw, claim.attempt), claim)
        for held in self.guard.finish_many([(claim, error)]):
            self._apply(connection, held, self.on_poison)
        return "done" if error is None else "failed"

    def _not_new(self, connection: ImapConnection, claim: Claim) -> str:
        """What a claim that is not ours to handle asks of the mailbox."""
        key = claim.key
        if claim.status in (ClaimStatus.DONE, ClaimStatus.DUPLICATE):
            if self.store.get(_OUTBOX, key.id) is not None or claim.status is ClaimStatus.DUPLICATE:
                return "finish"
        elif claim.status is ClaimStatus.QUARANTINE:
            self._apply(connection, key, self.on_poison)
        return "skip"

    def _hand_over(self, delivery: Delivery) -> None:
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
        # One delivery per attachment; parts already handled are remembered, so a retry
        # after a later part failed hands out only what is left.
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

    def _apply_many(
        self, connection: ImapConnection, keys: list[MessageKey], action: tuple[str, str | None]
    ) -> None:
        """Change the mailbox for many mails in one command (their outcomes are recorded)."""
        kind, folder = action
        uids = [key.uid for key in keys if key.uid is not None]
        if kind == "leave" or not uids:
            return
        client = connection.client
        try:
            if kind == "seen":
                connection.call("marking mail seen", client.add_flags, uids, [b"\\Seen"])
            elif kind == "flag":
                connection.call("flagging mail", client.add_flags, uids, [b"\\Flagged"])
            elif kind == "delete":
                connection.call("deleting mail", client.delete_messages, uids)
                connection.call("expunging mail", client.uid_expunge, uids)
            elif kind == "move":
                connection.call(f"moving mail to {folder}", client.move, uids, folder)
        except CommandFailed as error:
            raise _MailboxUnchangeable(f"{len(uids)} mail(s) from UID {uids[0]}: {error}") from None

    def _apply(
        self, connection: ImapConnection, key: MessageKey, action: tuple[str, str | None]
    ) -> None:
        """Change the mailbox for one mail, with an outbox entry in case we crash meanwhile."""
        if action[0] == "leave":
            return
        self.store.put(_OUTBOX, key.id, "pending", {"action": action[0], "folder": action[1]})
        self._apply_many(connection, [key], action)
        self.store.delete(_OUTBOX, key.id)

    def _reconcile(self, connection: ImapConnection) -> None:
        """Finish mailbox changes a crash interrupted (recorded as done, not yet applied)."""
        assert connection.uidvalidity is not None
        prefix = MessageKey.imap(
            self.settings.username, self.settings.folder, connection.uidvalidity, 1
        ).id[:-2]
        for record in self.store.scan(_OUTBOX):
            if record.key.startswith(prefix):
                key = MessageKey.from_id(record.key)
                kind, folder = str(record.data.get("action")), record.data.get("folder")
                log.info("%s: finishing %s of %s after a restart", self.name, kind, key)
                self._apply(connection, key, (kind, folder))

    # -- faults ------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"ImapListener({self.name!r}, after={self.after[0]!r})"
