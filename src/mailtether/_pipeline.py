"""The mail pipeline: every mail claimed, handed over, recorded, then changed in the mailbox.

One pipeline serves every kind of source (:mod:`mailtether._mailbox_port`). For each
catch-up it lists what is new, sorts it with the duplicate guard, fetches it in batches,
claims it, hands it to the handler, records the outcomes (grouped by the commit window),
and only then applies the post-action. What a crash left half done — an outcome recorded
but the mailbox not yet changed — is finished on the next catch-up. It owns the records
that make this restartable: the cursor (last position handled), the outbox (single
mailbox changes in flight) and the parts (attachments handed out of a mail not yet done).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol

import attrs

from mailtether._clock import Clock
from mailtether._delivery import Delivery
from mailtether._errors import (
    CommandFailed,
    ConfigError,
    ConnectionLost,
    ForwardFailed,
    RepeatedMessage,
    one_line,
)
from mailtether._guard import Claim, DuplicateGuard
from mailtether._guard_states import ClaimStatus
from mailtether._handover import Handover
from mailtether._mailbox_port import (
    SIZE_UNKNOWN,
    FetchedMail,
    Listed,
    MailboxPort,
    PostAction,
    made,
)
from mailtether._message_key import MessageKey
from mailtether._redaction import redacting_logger
from mailtether._review import review_mail
from mailtether._status import StatusBoard
from mailtether._write_behind import Behind, writes_in_parallel
from mailtether.stores._protocol import Store, Write

if TYPE_CHECKING:
    from mailtether._outbox import Outbox

__all__ = ["NO_FENCE", "Fence", "Pipeline"]

log = redacting_logger("mailtether.listener")

# Mails per fetch: up to _FETCH_MOST, fewer when they are big (about _FETCH_BYTES per batch,
# by the sizes the server gives first), so a mailbox of large mail cannot fill memory.
_FETCH_MOST: Final = 500
_FETCH_FIRST: Final = 50  # until the handling speed is known: the next batch comes sooner
_FETCH_BYTES: Final = 16 * 2**20
# Mails sorted, sized and fetched at a time: memory does not grow with the folder.
_WINDOW: Final = 2000
# Seconds of handling a batch should take at most: batches of slow mail are made smaller, and
# the next batch is asked for ahead only when handling this one should take less than this.
_BATCH_SECONDS: Final = 60.0
_CURSORS: Final = "cursor"
TOO_LARGE: Final = "larger than max_message_bytes"
# What the after action does to a mail, for the review mail of a forwarded one.
_DONE_TO: Final = {
    "seen": "marked seen",
    "flag": "flagged",
    "delete": "deleted",
    "move": "moved to {folder}",
}
_OUTBOX: Final = "outbox"
_APPLIED: Final = "applied"  # POP3: mail whose DELE a QUIT made, by source


class Fence(Protocol):
    """What guards a catch-up: the mailbox lease (a :class:`~mailtether.ProcessLock`)."""

    @property
    def token(self) -> int | None:
        """The lease's fencing token (``None`` without a lease)."""

    def check(self) -> None:
        """Raise :class:`~mailtether.LeaseLost` if the mailbox may no longer be worked."""


class _NoFence:
    token = None

    def check(self) -> None:
        return None


NO_FENCE: Final[Fence] = _NoFence()
"""No lease: the caller guarantees one worker per mailbox."""


class Pipeline:
    """Claim → handler → commit window → post-action → recovery, for one source.

    Args:
        name: The source's name (status, logs, the cursor record).
        handler: Called with each :class:`~mailtether.Delivery`.
        store, guard, status, clock: The source's.
        after: The post-action of a handled mail.
        on_poison: The post-action of a mail the guard holds.
        handover: How mail is handed to *handler* (whole, by attachment, body only).
        commit_window: Seconds of handler work whose outcomes may be recorded together.
        max_message_bytes: Mail larger than this is held without being fetched.
        outbox: Where a held mail goes for review when *on_poison* is ``forward``.
        review_sender: The From of those review mails.
    """

    def __init__(
        self,
        *,
        name: str,
        store: Store,
        guard: DuplicateGuard,
        status: StatusBoard,
        clock: Clock,
        after: PostAction,
        on_poison: PostAction,
        handover: Handover,
        commit_window: float,
        max_message_bytes: int = 64 * 2**20,
        outbox: Outbox | None = None,
        review_sender: str = "",
    ) -> None:
        if on_poison.kind == "forward" and outbox is None:
            raise ConfigError(
                f"on_poison={str(on_poison)!r} needs an outbox: pass outbox=Outbox(...)"
            )
        self.name = name
        self.store = store
        self.guard = guard
        self.status = status
        self.clock = clock
        self.after = after
        self.on_poison = on_poison
        self.handover = handover
        self.commit_window = commit_window
        self.max_message_bytes = max_message_bytes
        self.outbox = outbox
        self.review_sender = review_sender or (on_poison.address or "")
        # Ids of mail whose fetch broke the connection (kept across reconnects): fetched one
        # at a time from then on, so a mail that breaks it every time is found and held.
        self._suspects: set[str] = set()
        self._sizes_broke = False  # asking for sizes broke the connection: fetch without
        self._per_mail: float | None = None  # handling seconds per mail, last measured
        self._applied_until = 0  # IMAP: mail at or below this had its change confirmed

    # -- recovery --------------------------------------------------------------------------------

    def recover(self, port: MailboxPort) -> set[str]:
        """Apply the mailbox changes left in the outbox (outcome recorded, change not made).

        Left by a crash between the two, by a fault in the middle of a batch, or by a holder
        that lost the lease. Returns the ids of the keys whose change was applied.
        """
        applied: set[str] = set()
        for record in self.store.scan(_OUTBOX):
            if not record.key.startswith(port.scope):
                continue
            key = MessageKey.from_id(record.key)
            action = PostAction.from_record(record.data)
            position = port.locate(key)
            if position is None:
                continue  # not here now: kept for a later session
            log.info("%s: finishing %s of %s left undone", self.name, action, key)
            self.apply_one(port, position, key, action)
            applied.add(key.id)
        return applied

    # -- catching up -----------------------------------------------------------------------------

    def catch_up(self, port: MailboxPort, fence: Fence = NO_FENCE) -> int:
        """Handle everything new in the mailbox; return how many mails were handled.

        The listing is worked through in windows of ``_WINDOW`` mails (sorted with the guard,
        sized, fetched in batches, handled, the cursor moved on), so memory does not grow
        with the size of the folder. The next window is sorted and sized, and its first
        batch asked for, before the last batch of a window is handed over, so the server is
        never left waiting at a window's edge. *fence* is checked before each fetch and
        before each mail is handed over: once the lease is lost, nothing more is handed
        out, the outcomes of what was handled are recorded, with their mailbox changes left
        in the outbox for the next holder.
        """
        recovered = self.recover(port)  # changes another holder (or a fault) left undone
        last, busy_before = self._cursor(port) if port.uses_cursor else (0, ())
        self._applied_until = last  # the cursor passes a mail once its change is confirmed
        listed = port.list_new(last)
        first: list[Listed] = self._again(port, last, busy_before) if port.uses_cursor else []
        windows = self._windows(port, listed, first, recovered, fence)
        fetches = _Fetches(port, windows, fence.check, self._per_mail)
        busy: tuple[str, ...] = ()
        handled = 0
        # The last batch's mailbox change, sent but not yet confirmed, and its last position:
        # the cursor passes the batch once the server has confirmed the change.
        unconfirmed: tuple[Callable[[], None], int] | None = None
        # Batches handled whose change is not sent yet, oldest first: on a store that writes
        # in parallel, the last one's outcomes are recorded behind while the next is handed
        # over, and it is settled (its change sent) after that one.
        unsettled: list[tuple[_Settle, int]] = []
        behind = writes_in_parallel(self.store)

        def settle() -> None:
            nonlocal handled, unconfirmed
            settlement, position = unsettled[0]
            done, failed, confirm = settlement()
            del unsettled[0]  # its change is sent: no longer the fault path's
            handled += done
            if done or failed:
                self.status.count(self.name, processed=done, failed=failed)
            unconfirmed = (confirm, position)

        def confirmed() -> None:
            nonlocal last, unconfirmed
            assert unconfirmed is not None
            confirm, position = unconfirmed
            unconfirmed = None
            confirm()
            if port.uses_cursor:
                last = self._advance(port, last, position, busy)

        try:
            for window, batch, fetched, unreadable in fetches:
                if not set(window.busy) <= set(busy):
                    busy = tuple(sorted({*busy, *window.busy}))
                if unconfirmed is not None:  # its answer is in by now: the server made the
                    confirmed()  # change while it sent this batch
                if not batch:  # the window is worked through: the cursor passes all of it
                    while unsettled:
                        settle()
                        confirmed()
                    if port.uses_cursor:
                        last = self._advance(port, last, window.newest, busy)
                    continue
                keys = window.keys
                self._suspects.difference_update(keys[p].id for p in fetched)
                mails = [(p, keys[p], *fetched[p]) for p in batch if p in fetched]  # else gone
                bad = [(p, keys[p], reason, False) for p, reason in unreadable.items()]
                began = self.clock.monotonic()
                before = unsettled[-1][0] if unsettled else None
                # Behind only while the next batch is on its way: with nothing to overlap
                # (one mail pushed in IDLE, the last batch) a thread would only cost.
                settlement = self._handle(
                    port,
                    mails,
                    window.fresh,
                    fence,
                    bad,
                    behind=behind and fetches.ahead,
                    before=before,
                )
                fetches.handled(len(mails), self.clock.monotonic() - began)
                unsettled.append((settlement, batch[-1]))
                while len(unsettled) > (1 if behind else 0):
                    settle()
            # (each window's end comes after its batches: nothing is left here but by a bug)
            while unconfirmed is not None or unsettled:
                if unconfirmed is not None:
                    confirmed()
                if unsettled:
                    settle()
        except BaseException as error:
            for settlement, _ in unsettled:  # recorded, or being recorded: changes for later
                settlement.after_fault()
            if isinstance(error, ConnectionLost) and fetches.reading:
                self._broke(port, fetches.reading, error)
            raise
        finally:
            self._per_mail = fetches.per_mail
        if port.uses_cursor and busy != busy_before:
            self._save_cursor(port, last, busy)
        self._sizes_broke = False
        return handled

    def _windows(
        self,
        port: MailboxPort,
        listed: Sequence[Listed],
        first: list[Listed],
        recovered: set[str],
        fence: Fence,
    ) -> Iterator[_Window]:
        """The listing, a window of ``_WINDOW`` mails at a time, sorted and sized.

        The sizes are asked for before the guard is asked (both answers on their way at
        once). Mail larger than ``max_message_bytes`` is held here, without being fetched.
        """
        for start in range(0, len(listed) or (1 if first else 0), _WINDOW):
            window = [*first, *listed[start : start + _WINDOW]] if start == 0 else None
            window = window if window is not None else list(listed[start : start + _WINDOW])
            sizes = self._ask_sizes(port, sorted({item.position for item in window}))
            keys, fresh, busy, unchanged = self._sort_out(window, recovered)
            known = self._read_sizes(sizes)
            if unchanged:  # done, and still listed: finished, or found again
                listed_keys = {item.position: item.key for item in window}
                unchanged = self._found_again(port, listed_keys, unchanged)
            if unchanged:  # handled, but a crash came before the mailbox was changed
                log.info(
                    "%s: %d handled mails were not yet marked or moved (a crash or a lost "
                    "connection came between their outcome and the change); changing them now",
                    self.name,
                    len(unchanged),
                )
                self.apply(port, unchanged, self.after)
            limit = self.max_message_bytes
            too_large = [
                (p, keys[p], f"{TOO_LARGE} ({known[p]} bytes)", True)
                for p in sorted(keys)
                if known.get(p, 0) > limit
            ]
            if too_large:
                done, failed, confirm = self._handle(port, [], fresh, fence, too_large)()
                confirm()
                self.status.count(self.name, processed=done, failed=failed)
            todo = sorted(p for p in keys if known.get(p, 0) <= limit)
            yield _Window(
                keys=keys,
                fresh=fresh,
                busy=busy,
                newest=max((item.position for item in window), default=0),
                todo=todo,
                sizes=known,
                alone={p for p in todo if keys[p].id in self._suspects},
            )

    def _again(self, port: MailboxPort, last: int, busy: tuple[str, ...]) -> list[Listed]:
        """Mail at or below the cursor to look at again.

        Due another attempt, or claimed elsewhere when the cursor passed it (that worker may
        have given it back untouched, as a holder that lost its lease does: a claim never
        makes a mail be skipped).
        """
        found: dict[str, Listed] = {}
        for key in (*self.guard.retryable(port.scope), *map(MessageKey.from_id, busy)):
            position = port.locate(key)
            if position is not None and position <= last and key.id not in found:
                found[key.id] = Listed(position, key)
        return list(found.values())

    def _sort_out(
        self, listed: list[Listed], recovered: set[str]
    ) -> tuple[dict[int, MessageKey], set[int], tuple[str, ...], list[int]]:
        """Sort listed mail with the guard, in one batched look-up.

        Returns the keys to fetch by position, the positions of the mail never seen, the
        ids of the mail another worker has claimed right now (kept in the cursor record, so
        the next catch-up looks at them again), and the positions of mail recorded done but
        still listed (a crash came in between: its post-action is due), but for the
        *recovered* ones (just finished from the outbox).
        """
        where = {item.key.id: item.position for item in listed}
        triage = self.guard.triage(item.key for item in listed)
        unchanged = [where[key.id] for key in triage.done if key.id not in recovered]
        keys = {where[key.id]: key for key in (*triage.new, *triage.retry)}
        busy = tuple(sorted(key.id for key in triage.busy))
        return keys, {where[key.id] for key in triage.new}, busy, unchanged

    def _ask_sizes(
        self, port: MailboxPort, positions: list[int]
    ) -> Callable[[], Mapping[int, int]] | None:
        """Ask for the sizes of these mails (``None``: not asked, see :meth:`_read_sizes`)."""
        if self._sizes_broke or not positions:
            return None
        try:
            return port.sizes(positions)
        except ConnectionLost:
            self._sizes_broke = True
            raise

    def _read_sizes(self, answer: Callable[[], Mapping[int, int]] | None) -> Mapping[int, int]:
        """The sizes asked for, or none known when the server will not say.

        A refusal (one unreadable mail can fail the whole request) leaves the sizes unknown
        for this window; a request that broke the connection is not made again until a
        catch-up gets through: the fetches then find the mail at fault, one at a time.
        """
        if answer is None:
            return {}
        try:
            return answer()
        except CommandFailed as error:
            log.warning("%s: the server gave no sizes (%s); fetching without", self.name, error)
            return {}
        except ConnectionLost:
            self._sizes_broke = True
            raise

    def _broke(
        self, port: MailboxPort, reading: list[tuple[int, MessageKey]], error: ConnectionLost
    ) -> None:
        """The connection broke while these mails' answer was being read.

        They are fetched one at a time from then on. A mail that breaks it again when
        fetched alone counts a failed attempt (held after ``max_failures``; its poison
        action waits in the outbox for the next session), so a mail that breaks the
        connection every time cannot stall the mailbox.
        """
        if len(reading) > 1 or reading[0][1].id not in self._suspects:
            self._suspects.update(key.id for _, key in reading)
            log.warning(
                "%s: the connection broke while %d mail(s) were being fetched; they are "
                "fetched one at a time next",
                self.name,
                len(reading),
            )
            return
        position, key = reading[0]
        reason = (
            f"the connection broke while {port.describe(position)} was being fetched, again: "
            f"{one_line(error.message)}"
        )
        try:
            claim = self.guard.claim(key)
            if not claim.acquired:
                return
            if self.guard.finish_many([(claim, reason)]):
                if self.on_poison.kind != "leave":
                    self.store.put(_OUTBOX, key.id, "pending", self.on_poison.to_record())
                self._tell_held(port, position, key)
            self.status.count(self.name, failed=1)
        except Exception as failure:  # the fault in hand is the connection's: keep it
            log.error("%s: could not record the failed fetch of %s: %s", self.name, key, failure)

    def _cursor(self, port: MailboxPort) -> tuple[int, tuple[str, ...]]:
        """The last position handed out, and the ids of mail claimed elsewhere back then."""
        record = self.store.get(_CURSORS, self.name)
        if record is None or record.data.get("scope") != port.scope:
            return 0, ()  # never ran, or the mailbox was recreated (a new UIDVALIDITY)
        return int(record.data.get("last", 0)), tuple(record.data.get("busy", ()))

    def _advance(self, port: MailboxPort, last: int, position: int, busy: tuple[str, ...]) -> int:
        if position > last:  # a retry of older mail never moves the cursor back
            self._save_cursor(port, position, busy)
            return position
        return last

    def _save_cursor(self, port: MailboxPort, last: int, busy: tuple[str, ...]) -> None:
        data: dict[str, object] = {"scope": port.scope, "last": last}
        if busy:
            data["busy"] = list(busy)
        self.store.put(_CURSORS, self.name, "active", data)

    def _handle(
        self,
        port: MailboxPort,
        mails: list[tuple[int, MessageKey, bytes, tuple[bytes, ...]]],
        fresh: set[int],
        fence: Fence,
        unreadable: Sequence[tuple[int, MessageKey, str, bool]] = (),
        *,
        behind: bool = False,
        before: _Settle | None = None,
    ) -> _Settle:
        """Hand one fetched batch over; record the outcomes; change the mailbox.

        Mail the server could not give (*unreadable*: position, key, reason, hold at once)
        is recorded as a failed attempt with the server's words, like a handler's failure:
        held after ``max_failures``, or at once when it says so (too large to fetch).

        Mail the guard has never seen is claimed in one store write and its outcomes are
        recorded in groups (see *commit_window*); mail it knows (a retry, a claim that
        expired in a crash) goes one at a time, each outcome recorded at once, so a mail
        that crashes the process is blamed alone. Returns the batch's settlement: called,
        it waits for the outcomes to be recorded (*behind*: they are written on a thread of
        their own meanwhile, see :mod:`mailtether._write_behind`), puts held mail aside, sends
        the mailbox change and returns how many were done and failed, and the change's
        confirmation (sent, its answer not yet read: see :meth:`MailboxPort.apply`).
        """
        keys = {position: key.with_content(raw) for position, key, raw, _ in mails}
        if before is not None and before.shares_content(keys.values()):
            before.written()  # a copy of mail the batch before records: decided after that
        # The same content twice in one batch: the second waits until the first is recorded,
        # and is then decided like any repeat (a duplicate of the first, if that was done).
        firsts, repeats = _first_of_each_content([p for p, _, _, _ in mails if p in fresh], keys)
        claims = {
            position: claim
            for position, claim in zip(
                firsts, self.guard.claim_many(keys[p] for p in firsts), strict=True
            )
        }
        batch = _Outcomes(self)
        claimed_at = self.clock.monotonic()
        later = [mail for mail in mails if mail[0] in repeats]
        try:
            for position, _, raw, flags in [m for m in mails if m[0] not in repeats] + later:
                fence.check()  # a lost lease hands out nothing more
                key = keys[position]
                claim = claims.pop(position, None)
                if position in repeats:
                    batch.record()  # the first of this content is recorded by now
                    claim = self.guard.claim(key)
                    self._one(port, batch, position, claim, raw, flags, fence.token)
                elif claim is None:  # known to the guard: one at a time, recorded at once
                    claim = self.guard.claim(key)
                    self._one(port, batch, position, claim, raw, flags, fence.token)
                elif not claim.acquired:
                    self._not_new(port, batch, position, claim, raw)
                else:
                    if self.clock.monotonic() - claimed_at > self.guard.claim_ttl / 2:
                        claim.extend()  # slow handlers: the batch's claims must not expire
                        for waiting in claims.values():
                            if waiting.acquired:
                                waiting.extend()
                        claimed_at = self.clock.monotonic()
                    began = self.clock.monotonic()
                    error = self._run_handler(claim, raw, flags, fence.token)
                    batch.add(position, claim, error, self.clock.monotonic() - began)
            for position, key, reason, hold in unreadable:
                claim = self.guard.claim(key)
                if claim.acquired and hold:  # no attempt can handle it: aside at once
                    claim.hold(reason)
                    self._put_aside(port, position, key)
                    batch.count(position, reason)
                elif claim.acquired:
                    batch.add(position, claim, reason, 0.0)
                else:
                    self._not_new(port, batch, position, claim)
        except BaseException:
            batch.record_after_fault()
            raise
        finally:
            for unstarted in claims.values():
                if unstarted.acquired:
                    unstarted.give_back()
        if behind and batch.pending:
            return _Settle(self, port, mails, batch, behind=True)
        batch.record()
        return _Settle(self, port, mails, batch, behind=False)

    def _settle(
        self,
        port: MailboxPort,
        mails: list[tuple[int, MessageKey, bytes, tuple[bytes, ...]]],
        batch: _Outcomes,
    ) -> tuple[int, int, Callable[[], None]]:
        """Put held mail aside, then change the mailbox: the outcomes are recorded by now."""
        if batch.poisoned:
            raw_of = {position: raw for position, _, raw, _ in mails}
            for key in batch.poisoned:
                position = batch.position_of[key.id]
                self._put_aside(port, position, key, raw_of.get(position))
        # The outcomes are recorded; now the mailbox changes, one command for the batch.
        if not batch.finished or self.after.kind == "leave":
            return batch.done, batch.failed, made
        return batch.done, batch.failed, port.apply(batch.finished, self.after)

    def _one(
        self,
        port: MailboxPort,
        batch: _Outcomes,
        position: int,
        claim: Claim,
        raw: bytes,
        flags: tuple[bytes, ...],
        token: int | None,
    ) -> None:
        """Handle one claimed mail, its outcome recorded at once."""
        if not claim.acquired:
            self._not_new(port, batch, position, claim, raw)
            return
        error = self._run_handler(claim, raw, flags, token)
        for held in self.guard.finish_many([(claim, error)]):
            self._put_aside(port, position, held, raw)
        batch.count(position, error)

    def _not_new(
        self,
        port: MailboxPort,
        batch: _Outcomes,
        position: int,
        claim: Claim,
        raw: bytes | None = None,
    ) -> None:
        """Do what a claim that is not ours to handle asks of the mailbox (*raw*: the mail)."""
        key = claim.key
        if claim.status is ClaimStatus.DUPLICATE:
            first = self._first_copy(key)
            if first is not None and self._applied(port, first):
                self._again_policy(port, batch, position, key, raw)  # the same bytes are back
            else:
                batch.finished.append(position)  # a copy of mail not yet changed: change it
        elif claim.status is ClaimStatus.DONE and self.store.get(_OUTBOX, key.id) is not None:
            batch.finished.append(position)  # handled before: only the post-action is due
        elif claim.status is ClaimStatus.QUARANTINE:
            self.apply_one(port, position, key, self.on_poison, raw)

    # -- mail found again ------------------------------------------------------------------------

    def _found_again(
        self, port: MailboxPort, keys: dict[int, MessageKey], unchanged: list[int]
    ) -> list[int]:
        """Sort listed done mail: the ones whose change is due (returned) or found again.

        A done mail whose mailbox change was never confirmed (a crash or a lost connection
        came in between) is finished: returned. One whose change was recorded as made, but
        which is listed again (the server did not apply it, or it was put back), gets the
        guard's repeat policy: ``block`` raises :class:`~mailtether.RepeatedMessage`, ``skip``
        changes it again (returned), ``quarantine`` applies ``on_poison``.
        """
        due = []
        for position in unchanged:
            key = keys[position]
            if not self._applied(port, key.id) or self.guard.repeat == "skip":
                due.append(position)
            elif self.guard.repeat == "quarantine":
                self.apply_one(port, position, key, self.on_poison)
            else:
                self._block_repeat(key)
        return due

    def _again_policy(
        self,
        port: MailboxPort,
        batch: _Outcomes,
        position: int,
        key: MessageKey,
        raw: bytes | None,
    ) -> None:
        """The repeat policy for the same bytes back in the mailbox under a new position."""
        if self.guard.repeat == "skip":
            batch.finished.append(position)
        elif self.guard.repeat == "quarantine":
            self.apply_one(port, position, key, self.on_poison, raw)
        else:
            self._block_repeat(key)

    def _block_repeat(self, key: MessageKey) -> None:
        record = self.store.get(self.guard.namespace, key.id)
        raise RepeatedMessage(key, record.updated_at if record is not None else 0.0)

    def _first_copy(self, key: MessageKey) -> str | None:
        """The id of the mail *key* is a byte-for-byte copy of (the guard recorded it)."""
        record = self.store.get(self.guard.namespace, key.id)
        first = record.data.get("duplicate_of") if record is not None else None
        return first if isinstance(first, str) else None

    def _applied(self, port: MailboxPort, key_id: str) -> bool:
        """Whether the mailbox change of the done mail *key_id* was recorded as made.

        IMAP: the cursor passes a mail only once its change is confirmed. POP3: the
        ``DELE`` of a session is made at its ``QUIT``, which the poller records
        (:meth:`committed`).
        """
        if self.after.kind == "leave" or self.store.get(_OUTBOX, key_id) is not None:
            return False  # no change to make; or one still due
        key = MessageKey.from_id(key_id)
        if port.uses_cursor:
            return key.scope == port.scope and (key.uid or 0) <= self._applied_until
        record = self.store.get(_APPLIED, self.name)
        return record is not None and key_id in record.data.get("ids", ())

    def committed(self, port: MailboxPort, key_ids: Sequence[str], listed: set[str]) -> None:
        """Record that the changes of *key_ids* were made (a POP3 session's ``QUIT``).

        Kept: those, and the ones recorded before that are still *listed* (found again).
        """
        record = self.store.get(_APPLIED, self.name)
        before = record.data.get("ids", ()) if record is not None else ()
        ids = sorted({*key_ids, *(i for i in before if i in listed)})
        if ids or record is not None:
            self.store.put(_APPLIED, self.name, "applied", {"scope": port.scope, "ids": ids})

    def _run_handler(
        self, claim: Claim, raw: bytes, flags: tuple[bytes, ...], token: int | None
    ) -> str | None:
        """Run the handler; return ``None`` or the error as text (a failed attempt)."""
        key = claim.key
        delivery = Delivery(key, key.uid or 0, flags, raw, claim.attempt, token=token)
        try:
            self.handover.hand_over(delivery)
        except Exception as error:
            log.warning("%s: handler failed on %s: %s", self.name, key, error)
            return f"{type(error).__name__}: {error}"
        except BaseException:  # KeyboardInterrupt, SystemExit: not the mail's fault
            claim.abandon()
            raise
        return None

    # -- changing the mailbox --------------------------------------------------------------------

    def _put_aside(
        self, port: MailboxPort, position: int, key: MessageKey, raw: bytes | None = None
    ) -> None:
        """A mail the guard has just held: a person is told, then ``on_poison`` is applied."""
        self._tell_held(port, position, key)
        self.apply_one(port, position, key, self.on_poison, raw)

    def _tell_held(self, port: MailboxPort, position: int, key: MessageKey) -> None:
        """Count a held mail on the status board and tell the notifiers (never raises)."""
        try:
            entry = self.guard.lookup(key)
            why = entry.reason if entry is not None and entry.reason else "held"
            self.status.count(self.name, held=1)
            self.status.notice(
                self.name,
                "held",
                f"mail at {port.describe(position)} held ({why}); {self._held_then()}; "
                f"release it with: mailtether release {key.id!r}",
            )
        except Exception as error:  # telling must not cost the mail its post-action
            log.warning("%s: could not report the held mail %s: %s", self.name, key, error)

    def _held_then(self) -> str:
        action = self.on_poison
        if action.kind == "forward":
            return f"sent to {action.address} for review"
        if action.kind == "leave":
            return "left in the mailbox"
        return "flagged" if action.kind == "flag" else f"moved to {action.folder}"

    def apply(self, port: MailboxPort, positions: Sequence[int], action: PostAction) -> None:
        """Change the mailbox for many mails in one go (their outcomes are recorded)."""
        if positions and action.kind != "leave":
            port.apply(positions, action)()

    def apply_one(
        self,
        port: MailboxPort,
        position: int,
        key: MessageKey,
        action: PostAction,
        raw: bytes | None = None,
    ) -> None:
        """Change the mailbox for one mail, with an outbox record in case we crash meanwhile.

        A ``forward`` queues the held mail (*raw*, fetched again if not given) for review,
        then applies the ``after`` action to it.
        """
        if action.kind == "leave":
            return
        self.store.put(_OUTBOX, key.id, "pending", action.to_record())
        if action.kind == "forward":
            self._forward(port, position, key, action, raw)
        else:
            port.apply([position], action)()
        self.store.delete(_OUTBOX, key.id)

    def _forward(
        self,
        port: MailboxPort,
        position: int,
        key: MessageKey,
        action: PostAction,
        raw: bytes | None,
    ) -> None:
        """Queue the held mail for review in the outbox, then remove it as ``after`` says.

        A mail that cannot be fetched (too large, refused) is reported without its bytes and
        stays in the mailbox. The review mail's Message-ID comes from the key, so queuing it
        again (after a crash) queues it once.

        Raises:
            ForwardFailed: the outbox would not take it (the source is BLOCKED; the mail
                stays, and the forward is tried again on resume).
        """
        where = port.describe(position)
        if self.outbox is None or action.address is None:  # left by an earlier configuration
            raise ForwardFailed(
                f"the held mail at {where} is to be forwarded for review (an earlier run "
                "decided so), but this source has no outbox: pass outbox=, then resume"
            )
        entry = self.guard.lookup(key)
        reason = entry.reason if entry is not None and entry.reason else "held"
        if raw is None and not reason.startswith(TOO_LARGE):  # (a too large one stays)
            raw = self._fetch_alone(port, position)
        then = "left as it is" if self.after.kind == "leave" else _DONE_TO[self.after.kind]
        review = review_mail(
            source=self.name,
            key=key,
            where=where,
            reason=reason,
            raw=raw,
            sender=self.review_sender,
            reviewer=action.address,
            then=then.format(folder=self.after.folder),
        )
        try:
            queued = self.outbox.send(review)
        except Exception as error:
            raise ForwardFailed(
                f"the held mail at {where} could not be queued for review by "
                f"{action.address} ({one_line(str(error))}); it stays in the mailbox: fix "
                "the outbox, then resume the source"
            ) from error
        log.warning(
            "%s: held mail at %s sent for review to %s (%s, %s)",
            self.name,
            where,
            action.address,
            queued.message_id,
            queued.state,
        )
        if raw is not None and self.after.kind != "leave":
            port.apply([position], self.after)()

    def _fetch_alone(self, port: MailboxPort, position: int) -> bytes | None:
        """One mail's bytes, or ``None`` if the server will not give them."""
        try:
            fetched = port.fetch([position])()
        except CommandFailed as error:
            log.warning("%s: %s could not be fetched for review: %s", self.name, position, error)
            return None
        found = fetched.get(position)
        return None if found is None else found[0]


def _first_of_each_content(
    positions: list[int], keys: Mapping[int, MessageKey]
) -> tuple[list[int], set[int]]:
    """Split *positions* into the first of each content and the repeats after it."""
    contents: set[str] = set()
    firsts: list[int] = []
    repeats: set[int] = set()
    for position in positions:
        content = keys[position].content_id
        if content is not None and content in contents:
            repeats.add(position)
        else:
            firsts.append(position)
            if content is not None:
                contents.add(content)
    return firsts, repeats


@attrs.frozen
class _Window:
    """Up to ``_WINDOW`` listed mails, sorted with the guard and sized."""

    keys: dict[int, MessageKey]  # the mail to fetch, by position
    fresh: set[int]  # the positions the guard has never seen
    busy: tuple[str, ...]  # the ids of mail claimed elsewhere right now
    newest: int  # the last position listed in the window (the cursor passes it at the end)
    todo: list[int]  # the positions to fetch, in order
    sizes: Mapping[int, int]  # the sizes the server gave
    alone: set[int]  # the positions to fetch one at a time (their fetch broke a connection)


_Batch = tuple[_Window, list[int], Mapping[int, FetchedMail], dict[int, str]]


class _Fetches:
    """The fetches of a catch-up, in batches, window after window.

    Iterate for ``(window, positions, fetched, unreadable)``; empty positions end a window.
    Batches hold up to ``_FETCH_MOST`` mails of one window and about ``_FETCH_BYTES`` by the
    sizes the server gave (the first batch too; a mail alone may be larger, up to the
    pipeline's ``max_message_bytes``), and fewer when they are slow to handle (about
    ``_BATCH_SECONDS`` of handling, by :meth:`handled`). The next batch is asked for before
    the current one is handed over — once handling is known to be quick — so the server
    reads and sends it meanwhile; at a window's last batch, that is the next window's first.
    """

    def __init__(
        self,
        port: MailboxPort,
        windows: Iterator[_Window],
        check: Callable[[], None],
        per_mail: float | None = None,
    ) -> None:
        self._port = port
        self._windows = windows
        self._check = check
        self.reading: list[tuple[int, MessageKey]] | None = None
        """The mails whose answer is being read (still set if reading it failed)."""
        self.ahead = False
        """Whether the next batch was asked for before the one just yielded."""
        self._per_mail = per_mail  # seconds of handling per mail, once measured

    @property
    def per_mail(self) -> float | None:
        """Seconds of handling per mail, as last measured (``None``: not yet)."""
        return self._per_mail

    def handled(self, mails: int, seconds: float) -> None:
        """Report how long the last batch's *mails* took to handle."""
        if mails:
            self._per_mail = seconds / mails

    def _ask(self, batch: list[int]) -> Callable[[], Mapping[int, FetchedMail]]:
        self._check()  # the lease may have been lost during the last batch
        return self._port.fetch(batch)

    def _next(self, window: _Window, start: int) -> list[int]:
        """The batch that starts at *start* in the window's to-do list."""
        most = _FETCH_MOST if self._per_mail is not None else min(_FETCH_FIRST, _FETCH_MOST)
        if self._per_mail:  # and about a minute of handling at most: a server that hears
            # nothing from its client for long logs it out (RFC 9051: 30 minutes at least)
            most = max(1, min(most, int(_BATCH_SECONDS / self._per_mail)))
        batch: list[int] = []
        total = 0
        for position in window.todo[start : start + most]:
            if position in window.alone:  # its fetch broke the connection once: by itself
                return batch or [position]
            size = window.sizes.get(position, SIZE_UNKNOWN)
            if batch and total + size > _FETCH_BYTES:
                break
            batch.append(position)
            total += size
        return batch

    def __iter__(self) -> Iterator[_Batch]:
        """Yield each batch: its window and positions, the mails fetched, the unreadable ones.

        Every position of a batch ends up fetched, unreadable (with the server's words, a
        failed attempt), or confirmed gone: none is passed over unasked.
        """
        window = next(self._windows, None)
        start = 0
        batch = self._next(window, start) if window is not None else []
        answer = self._ask(batch) if batch else None
        while window is not None:
            if answer is None:  # nothing (more) to fetch in this window
                yield window, [], {}, {}
                window, start = next(self._windows, None), 0
                batch = self._next(window, start) if window is not None else []
                answer = self._ask(batch) if batch else None
                continue
            fetched, unreadable = self._read(window, batch, answer)
            self._left_out(window, batch, fetched, unreadable)
            current, start = batch, start + len(batch)
            batch = self._next(window, start)
            following: _Window | None = window
            if not batch:  # the next window is sorted and sized while nothing is on the way
                upcoming = next(self._windows, None)
                following, start = upcoming, 0
                batch = self._next(upcoming, start) if upcoming is not None else []
            answer = None
            # Ask ahead only when handling is known to be quick: a server drops a client that
            # leaves its answer unread for long (Dovecot: after 5 minutes).
            per_mail = self._per_mail
            if batch and per_mail is not None and per_mail * len(current) < _BATCH_SECONDS:
                answer = self._ask(batch)
            self.ahead = answer is not None
            yield window, current, fetched, unreadable
            if following is not window:
                yield window, [], {}, {}
                window = following
            if window is not None and batch and answer is None:
                batch = self._next(window, start)  # by the handling time just measured
                answer = self._ask(batch)

    def _read(
        self, window: _Window, batch: list[int], answer: Callable[[], Mapping[int, FetchedMail]]
    ) -> tuple[dict[int, FetchedMail], dict[int, str]]:
        """Read an answer; one the server refused or garbled is asked for again in halves.

        Split until the mail at fault is alone, so one bad mail costs itself a failed
        attempt, not the batch (nor the connection).
        """
        self.reading = [(position, window.keys[position]) for position in batch]
        try:
            fetched = dict(answer())
            self.reading = None
            return fetched, {}
        except CommandFailed as error:  # the connection goes on; the answer is no good
            self.reading = None
            if len(batch) == 1:
                words = one_line(error.message)
                return {}, {batch[0]: f"the server could not give {self._name(batch[0])}: {words}"}
            log.info("a fetch of %d mails failed (%s); asking in halves", len(batch), error)
            half = len(batch) // 2
            fetched, unreadable = self._read(window, batch[:half], self._ask(batch[:half]))
            more, more_unreadable = self._read(window, batch[half:], self._ask(batch[half:]))
            return fetched | more, unreadable | more_unreadable

    def _left_out(
        self,
        window: _Window,
        batch: list[int],
        fetched: dict[int, FetchedMail],
        unreadable: dict[int, str],
    ) -> None:
        """Ask again, alone, for mail the answer left out.

        What is still missing but still in the mailbox is unreadable; only mail the server
        confirms gone is passed over.
        """
        missing = [p for p in batch if p not in fetched and p not in unreadable]
        if not missing:
            return
        if len(batch) > 1:
            for position in missing:
                again, failed = self._read(window, [position], self._ask([position]))
                fetched.update(again)
                unreadable.update(failed)
            missing = [p for p in missing if p not in fetched and p not in unreadable]
            if not missing:
                return
        present = self._port.present(missing)
        for position in missing:
            if position in present:
                log.warning("the server left %s out of its answer", self._name(position))
                unreadable[position] = (
                    f"the server left {self._name(position)} out of its answer, though it is "
                    "still in the mailbox"
                )

    def _name(self, position: int) -> str:
        return self._port.describe(position)


class _Outcomes:
    """The outcomes of one batch: waiting for the commit window, then recorded together."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._guard = pipeline.guard
        self._store = pipeline.store
        self._after = pipeline.after
        self._window = pipeline.commit_window
        self._name = pipeline.name
        self._pending: list[tuple[int, Claim, str | None]] = []
        self._work = 0.0  # handler seconds behind the pending outcomes
        self.finished: list[int] = []
        """Positions recorded as done: their post-action is due."""
        self.finished_keys: list[MessageKey] = []
        self.poisoned: list[MessageKey] = []
        """Keys held by the outcomes just recorded."""
        self.position_of: dict[str, int] = {}
        self.done = 0
        self.failed = 0
        self.failing: set[int] = set()
        """Positions whose failed attempt is recorded."""

    @property
    def pending(self) -> bool:
        """Whether outcomes wait to be recorded."""
        return bool(self._pending)

    @property
    def content_ids(self) -> frozenset[str]:
        """The content ids of the mail whose outcomes are queued."""
        return frozenset(c.key.content_id for _, c, _ in self._pending if c.key.content_id)

    def add(self, position: int, claim: Claim, error: str | None, seconds: float) -> None:
        """Queue an outcome; record the queue once *seconds* of work add up to the window."""
        self._pending.append((position, claim, error))
        self._work += seconds
        if self._work >= self._window:
            self.record()

    def count(self, position: int, error: str | None, key: MessageKey | None = None) -> None:
        """Count an outcome recorded elsewhere (*key*: the mail's, when it is done)."""
        if error is None:
            self.finished.append(position)
            if key is not None:
                self.finished_keys.append(key)
            self.done += 1
        else:
            self.failed += 1
            self.failing.add(position)

    def failing_now(self) -> frozenset[int]:
        """Positions whose outcome is a failure, queued or recorded: only these can be held."""
        return frozenset(self.failing).union(p for p, _, error in self._pending if error)

    def record(self) -> None:
        """Record every queued outcome in one write."""
        if not self._pending:
            return
        pending, self._pending, self._work = self._pending, [], 0.0
        self.position_of.update((claim.key.id, position) for position, claim, _ in pending)
        self.poisoned.extend(self._guard.finish_many((c, e) for _, c, e in pending))
        for position, claim, error in pending:
            self.count(position, error, claim.key)

    def record_after_fault(self) -> None:
        """Record what was handled before a fault, without hiding the fault behind another.

        Their mailbox changes go to the outbox: whoever works the mailbox next (this source
        after a reconnect, or another holder of the lease) applies them.
        """
        try:
            self.record()
            self.leave_changes()
        except Exception as error:
            log.error("%s: could not record the outcomes of handled mail: %s", self._name, error)

    def leave_changes(self) -> None:
        """Leave the mailbox changes of the mail recorded done in the outbox (see above)."""
        action = self._after
        if self.finished_keys and action.kind != "leave":
            data = action.to_record()
            self._store.put_many(
                [Write(_OUTBOX, key.id, "pending", data) for key in self.finished_keys]
            )


class _Settle:
    """A handled batch, its outcomes recorded (or being recorded): settled when called.

    Calling it waits for the outcome write (*behind*: started here, on a thread of its own),
    puts held mail aside and sends the batch's mailbox change: see :meth:`Pipeline._handle`.
    """

    __slots__ = ("_batch", "_behind", "_called", "_contents", "_mails", "_pipeline", "_port")

    def __init__(
        self,
        pipeline: Pipeline,
        port: MailboxPort,
        mails: list[tuple[int, MessageKey, bytes, tuple[bytes, ...]]],
        batch: _Outcomes,
        *,
        behind: bool,
    ) -> None:
        self._pipeline = pipeline
        self._port = port
        # Only a mail that failed can be held, and only a held one needs its bytes (to put it
        # aside, forwarded for review): the rest are let go now, not a batch later.
        failing = batch.failing_now()
        self._mails = [mail for mail in mails if mail[0] in failing]
        self._batch = batch
        # Read before the write starts (its thread changes the batch): copies of this mail
        # in the next batch are decided once these outcomes are recorded.
        self._contents = batch.content_ids if behind else frozenset()
        self._behind = Behind(batch.record, pipeline.name) if behind else None
        self._called = False

    def written(self) -> None:
        """Wait until the outcomes are recorded (raise the write's error)."""
        behind, self._behind = self._behind, None
        if behind is not None:
            behind.wait()

    def shares_content(self, keys: Iterable[MessageKey]) -> bool:
        """Whether mail being recorded behind has the content of one of *keys* (a copy)."""
        return not self._contents.isdisjoint(key.content_id for key in keys)

    def __call__(self) -> tuple[int, int, Callable[[], None]]:
        self._called = True
        self.written()
        return self._pipeline._settle(self._port, self._mails, self._batch)

    def after_fault(self) -> None:
        """A fault came first: leave the mailbox changes of what was recorded in the outbox.

        Only for a batch whose settling never began (it was being recorded behind when the
        fault came elsewhere): one that failed in its own settling is left as it always
        was — recorded done but unchanged, which the next catch-up finds and changes in one
        command. Never raises: the fault is what the caller reports.
        """
        behind, self._behind = self._behind, None
        try:
            if behind is not None:
                behind.wait()
            if not self._called:
                self._batch.leave_changes()
        except Exception as error:
            log.error(
                "%s: could not record the outcomes of handled mail: %s", self._pipeline.name, error
            )
