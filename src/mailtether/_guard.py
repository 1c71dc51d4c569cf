"""``DuplicateGuard``: every mail handled once, failures retried, poison mail held aside.

Claiming and recording outcomes: :class:`Claim` and the guard's half that writes them live
together (about 450 lines) because a claim's methods are the guard's record transitions.
The look-ups and a person's decisions are in :mod:`mailtether._guard_views`, the values in
:mod:`mailtether._guard_states`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Final, Literal, Self

from mailtether._durations import Duration, check_count, check_seconds
from mailtether._errors import ClaimLost, MailtetherError, RepeatedMessage
from mailtether._guard_states import (
    DONE,
    DROPPED,
    ERROR_TEXT,
    FAILED,
    HELD,
    PROCESSING,
    ClaimStatus,
    add_event,
    claimed_at,
    content_fields,
    history_of,
)
from mailtether._guard_views import GuardViews
from mailtether._message_key import MessageKey
from mailtether._redaction import redacting_logger
from mailtether.stores._protocol import Record, Row, Store, default_owner
from mailtether.stores._shared import check_namespace, put_rows

__all__ = ["Claim", "DuplicateGuard", "RepeatPolicy"]

log = redacting_logger("mailtether.guard")

RepeatPolicy = Literal["block", "skip", "quarantine"]
_POLICIES: Final = ("block", "skip", "quarantine")
_RETRIES: Final = 32
_NEW: Final = ClaimStatus.NEW
# The states a batch writes, as plain text: a store binds a str subclass (an enum's member)
# several times slower.
_CLAIMED: Final = PROCESSING.value
_DONE: Final = DONE.value


class Claim:
    """The result of :meth:`DuplicateGuard.claim`; a context manager when :attr:`acquired`.

    Leaving the ``with`` block normally records the message as done; an exception records
    a failure (and re-raises it). After ``max_failures`` failures the message is held.
    """

    __slots__ = ("_data", "_finished", "_hold", "_version", "guard", "key", "status")

    def __init__(
        self,
        guard: DuplicateGuard,
        key: MessageKey,
        status: ClaimStatus,
        version: int = 0,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        self.guard = guard
        """The guard that decided."""
        self.key = key
        """The message."""
        self.status = status
        """What was decided."""
        # The claim's record, while it is yours: its version and document (never changed in
        # place: several claims of one batch share theirs). None: not yours.
        self._version = version
        self._data = data
        self._finished = False
        self._hold = False  # set by hold(): this failure puts it aside at once

    @property
    def acquired(self) -> bool:
        """``True`` if the message is yours to process (``status is ClaimStatus.NEW``)."""
        return self.status is _NEW

    @property
    def attempt(self) -> int:
        """Which attempt this is, from 1 (failed attempts before it plus one)."""
        if self._data is None:
            return 0
        return int(self._data.get("attempts", 0)) + 1

    def __bool__(self) -> bool:
        return self.acquired

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.status is not _NEW or self._finished:
            return
        if exc is None:
            self.done()
        elif isinstance(exc, Exception):
            self.fail(f"{type(exc).__name__}: {exc}")
        else:  # KeyboardInterrupt, SystemExit: not the message's fault
            self.abandon()

    def _require(self) -> Mapping[str, Any]:
        """The claim's document, if it is yours and not finished."""
        data = self._data
        if self.status is not _NEW or data is None:
            raise RuntimeError(f"claim of {self.key} is {self.status.value}, not yours")
        if self._finished:
            raise RuntimeError(f"claim of {self.key} is already finished")
        return data

    def done(self) -> None:
        """Record the message as processed (done automatically at the end of the block)."""
        data = self._data
        if self.key.digest is None and data is not None and not self._finished:
            self.guard._finish_one(self, data, None)  # one write: straight to it
        else:  # (and the errors of a claim that is not yours, or finished)
            self.guard.finish_many([(self, None)])

    def fail(self, reason: str) -> None:
        """Record a failed attempt (done automatically when the block raises)."""
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        self.guard.finish_many([(self, reason)])

    def hold(self, reason: str) -> None:
        """Put the message aside at once, with *reason*, without more attempts.

        For mail that no attempt can handle (larger than the listener takes, say): it is
        recorded as a failed attempt and held, as after ``max_failures``; a person can
        release or drop it like any held mail.
        """
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        self._hold = True
        self.guard.finish_many([(self, reason)])

    def abandon(self) -> None:
        """Give the message back untouched (not a failure), e.g. when shutting down."""
        data = self._require()
        self._finished = True
        self.guard._abandon(self.key, self._version, data)

    def give_back(self) -> None:
        """Undo a claim whose work was never started: as if it had not been made.

        Unlike :meth:`abandon`, nothing is recorded about this attempt: a record the claim
        created is removed, and a retry's record goes back to waiting for its next attempt.
        For claims from :meth:`DuplicateGuard.claim_many` that you will not start.
        """
        data = self._require()
        self._finished = True
        if self._version == 1:  # made by this claim: remove it
            self.guard.store.delete(self.guard.namespace, self.key.id, expect=1)
        else:
            self.guard._abandon(self.key, self._version, data)

    def extend(self) -> None:
        """Renew the claim for another ``claim_ttl``, for handlers that run long."""
        self._version, self._data = self.guard._extend(self.key, self._version, self._require())

    def __repr__(self) -> str:
        return f"Claim({self.key}, {self.status.value})"


def _unclaimed(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a claim's document without the claim (its owner and expiry)."""
    document = dict(data)
    document.pop("owner", None)
    document.pop("expires_at", None)
    return document


class DuplicateGuard(GuardViews):
    """Decides, atomically and on any store, whether a mail is handled, skipped or held.

    ::

        with guard.claim(key) as claim:
            if claim.acquired:
                handle(message)      # an exception here is recorded as a failed attempt

    Exactly one of several concurrent claimers (threads, processes, hosts) gets
    :attr:`ClaimStatus.NEW` for a key. A claim whose worker crashed expires after
    *claim_ttl* and is taken again, counting as a failed attempt. After *max_failures*
    failed attempts the message is **held**: never handed out again until a person
    releases it (:meth:`release`) or drops it (:meth:`drop`). A message claimed again
    *after* it was done gets the *repeat* policy: ``"block"`` raises
    :class:`RepeatedMessage` (the listener blocks the source), ``"skip"`` skips it,
    ``"quarantine"`` reports it for moving aside.

    Args:
        store: Where the records live (shared by every worker of the mailbox).
        max_failures: Failed attempts before a message is held.
        claim_ttl: Seconds a claim lasts before another worker may take it over (a number,
            a :class:`~datetime.timedelta` or a string such as ``"10m"``).
        repeat: The repeat policy.
        name: Separates several guards in one store (records go to namespace
            ``guard`` or ``guard:<name>``).
        owner: Who claims; default :func:`~mailtether.default_owner`.

    Example:
        >>> from mailtether import DuplicateGuard, MemoryStore, MessageKey
        >>> guard = DuplicateGuard(MemoryStore(), repeat="skip")
        >>> key = MessageKey.imap("support@example.com", "INBOX", 7, 42)
        >>> with guard.claim(key) as claim:
        ...     print(claim.status.name)
        NEW
        >>> guard.claim(key).status.name
        'DONE'
    """

    def __init__(
        self,
        store: Store,
        *,
        max_failures: int = 3,
        claim_ttl: Duration | str = 600.0,
        repeat: RepeatPolicy = "block",
        name: str | None = None,
        owner: str | None = None,
    ) -> None:
        failures = check_count(max_failures, "DuplicateGuard.max_failures")
        claim_seconds = check_seconds(claim_ttl, "DuplicateGuard.claim_ttl")
        if repeat not in _POLICIES:
            raise ValueError(f"repeat must be one of {', '.join(_POLICIES)}, got {repeat!r}")
        self.store = store
        """Where the records live."""
        self.max_failures = failures
        """Failed attempts before a message is held."""
        self.claim_ttl = claim_seconds
        """Seconds a claim lasts."""
        self.repeat: RepeatPolicy = repeat
        """The repeat policy."""
        self.namespace = check_namespace("guard" if name is None else f"guard:{name}")
        """The namespace of the position records."""
        self.content_namespace = check_namespace(
            "guard-content" if name is None else f"guard-content:{name}"
        )
        """The namespace of the content records."""
        self.owner = owner if owner is not None else default_owner()
        """Who claims."""

    # -- claiming --------------------------------------------------------------------------------

    def claim(self, key: MessageKey) -> Claim:
        """Decide about *key*; if it is new, it is claimed for you until the block ends.

        Raises:
            RepeatedMessage: it was done before and the repeat policy is ``"block"``.
        """
        if not isinstance(key, MessageKey):
            raise TypeError(f"claim needs a MessageKey, not {type(key).__name__}")
        store, namespace = self.store, self.namespace
        for _ in range(_RETRIES):
            now = store.now()
            # Optimistic: most keys are new, so try to create the record first and look at
            # what is there only when that fails.
            duplicate_of = None if key.content_id is None else self._done_content(key)
            if duplicate_of is None:
                # The happy path writes as little as possible: the key is the record's key,
                # and history starts with the first thing worth a person's attention.
                data: dict[str, Any] = {"owner": self.owner, "expires_at": now + self.claim_ttl}
                written = store.put(namespace, key.id, PROCESSING, data, expect=0)
                if written is not None:
                    return Claim(self, key, _NEW, written.version, data)
            else:
                data = {"duplicate_of": duplicate_of, **content_fields(key)}
                if store.put(namespace, key.id, DONE, data, expect=0) is not None:
                    log.info("%s: same content already processed; skipped", key)
                    return Claim(self, key, ClaimStatus.DUPLICATE)
            record = store.get(namespace, key.id)
            if record is None:
                continue  # deleted meanwhile (pruned, or a person): start over
            decided = self._decide(key, record, now)
            if decided is not None:
                return decided
        raise MailtetherError(f"could not claim {key}: the record kept changing under us")

    def claim_many(self, keys: Iterable[MessageKey]) -> list[Claim]:
        """Decide about many keys at once; the new ones are claimed in one store write.

        The same decisions as :meth:`claim`, in order, for a fraction of the store round trips:
        one look-up of the content records and one write claim every key the guard has never
        seen (or marks it :attr:`~ClaimStatus.DUPLICATE`). Keys it knows are decided one by
        one. Record the outcomes with :meth:`finish_many` (or each claim's ``done``/``fail``),
        and give back claims you will not start (:meth:`Claim.give_back`): a claim left
        unfinished expires after ``claim_ttl`` and counts as a failed attempt.

        Raises:
            RepeatedMessage: a key was done before and the repeat policy is ``"block"``; the
                claims this call made are given back first.
        """
        keys = list(keys)
        for key in keys:
            if not isinstance(key, MessageKey):
                raise TypeError(f"claim_many needs MessageKeys, not {type(key).__name__}")
        if len({key.id for key in keys}) != len(keys):
            raise ValueError("claim_many was given the same key twice")
        store, namespace = self.store, self.namespace
        now = store.now()
        # (A key has a content id when it has a digest: asked so, a key without one does not
        # work its cached property out.)
        content_ids = [c for key in keys if key.digest is not None and (c := key.content_id)]
        done_content = store.get_many(self.content_namespace, content_ids) if content_ids else {}
        claimed = {"owner": self.owner, "expires_at": now + self.claim_ttl}  # one for all
        rows: list[Row]
        if not done_content:  # nothing of theirs handled before (as good as always)
            rows = [(namespace, key.id, _CLAIMED, claimed, 0) for key in keys]
        else:
            rows = []
            for key in keys:
                content_id = key.content_id
                content = done_content.get(content_id) if content_id is not None else None
                first = str(content.data.get("id", "")) if content is not None else ""
                if first and first != key.id:
                    data: dict[str, Any] = {"duplicate_of": first, **content_fields(key)}
                    rows.append((namespace, key.id, DONE, data, 0))
                else:
                    rows.append((namespace, key.id, _CLAIMED, claimed, 0))
        # Every claim the write made is in hand before any known key is decided (a repeat
        # that blocks raises there, and the claims made are given back first).
        claims: list[Claim | None] = [
            None
            if version is None
            else Claim(self, key, _NEW, version, claimed)
            if row[3] is claimed
            else Claim(self, key, ClaimStatus.DUPLICATE)
            for key, row, version in zip(keys, rows, put_rows(store, rows), strict=True)
        ]
        try:
            for index, claim in enumerate(claims):
                if claim is None:  # known already: decided one by one
                    claims[index] = self.claim(keys[index])
                elif claim.status is ClaimStatus.DUPLICATE:
                    log.info("%s: same content already processed; skipped", claim.key)
        except BaseException:
            for claim in claims:
                if claim is not None and claim.acquired:
                    claim.give_back()
            raise
        return [claim for claim in claims if claim is not None]  # none is left

    def _done_content(self, key: MessageKey) -> str | None:
        content_id = key.content_id
        if content_id is None:
            return None
        content = self.store.get(self.content_namespace, content_id)
        if content is None:
            return None
        first = str(content.data.get("id", ""))
        return first if first and first != key.id else None

    def _decide(self, key: MessageKey, record: Record, now: float) -> Claim | None:
        data = dict(record.data)
        attempts = int(data.get("attempts", 0))
        state = record.state
        if state == PROCESSING:
            if claimed_at(record, now):
                return Claim(self, key, ClaimStatus.BUSY)
            attempts += 1
            history = add_event(
                history_of(data), now, "expired", f"claim by {data.get('owner')} expired"
            )
            return self._retry(key, record, data, attempts, history, now)
        if state == FAILED:
            return self._retry(key, record, data, attempts, history_of(data), now)
        if state == HELD:
            return Claim(self, key, ClaimStatus.HELD)
        if state == DROPPED:
            return Claim(self, key, ClaimStatus.DROPPED)
        if state == DONE:
            if data.get("duplicate_of"):
                return Claim(self, key, ClaimStatus.DUPLICATE)
            if self.repeat == "block":
                raise RepeatedMessage(key, record.updated_at)
            if self.repeat == "quarantine":
                return Claim(self, key, ClaimStatus.QUARANTINE)
            return Claim(self, key, ClaimStatus.DONE)
        raise MailtetherError(f"unknown guard state {state!r} for {key}")

    def _retry(
        self,
        key: MessageKey,
        record: Record,
        data: dict[str, Any],
        attempts: int,
        history: list[Any],
        now: float,
    ) -> Claim | None:
        if attempts >= self.max_failures:
            data.update(
                attempts=attempts,
                history=add_event(history, now, "held", f"{attempts} failed attempts"),
            )
            data.pop("owner", None)
            data.pop("expires_at", None)
            if self.store.put(self.namespace, key.id, HELD, data, expect=record.version) is None:
                return None
            log.warning("%s: held after %d failed attempts", key, attempts)
            return Claim(self, key, ClaimStatus.HELD)
        data.update(
            attempts=attempts,
            owner=self.owner,
            expires_at=now + self.claim_ttl,
            history=add_event(history, now, "claimed", self.owner),
        )
        written = self.store.put(self.namespace, key.id, PROCESSING, data, expect=record.version)
        return None if written is None else Claim(self, key, _NEW, written.version, data)

    def finish_many(self, outcomes: Iterable[tuple[Claim, str | None]]) -> list[MessageKey]:
        """Record the outcomes of several claims at once; return the keys now held.

        Each outcome is ``(claim, None)`` for done or ``(claim, "error text")`` for a failed
        attempt. One store write for the lot (the content of the done ones included), which is
        what makes a batch of fast handlers cheap. Record each outcome as soon as you can: a
        process killed before its outcomes are recorded gets those mails handed out again.

        Returns:
            The keys whose failure was their ``max_failures``-th: held from now on (put them
            aside, e.g. flag or move the mail).

        Raises:
            ClaimLost: a claim expired and was taken over before its outcome was recorded
                (the other outcomes are recorded).
            RuntimeError: a claim is not yours or already finished; nothing is recorded.
        """
        finishing = [(claim, claim._require(), reason) for claim, reason in outcomes]
        if len(finishing) == 1 and (
            finishing[0][2] is not None or finishing[0][0].key.digest is None
        ):
            return self._finish_one(*finishing[0])  # one write: no content record to add
        if len({id(claim) for claim, _, _ in finishing}) != len(finishing):
            raise RuntimeError("finish_many was given the same claim twice")
        store, namespace = self.store, self.namespace
        # The time goes into history events only: a plain done has none to add.
        needs_time = any(reason is not None or "history" in data for _, data, reason in finishing)
        now = store.now() if needs_time else 0.0
        rows: list[Row] = []
        contents: list[Row] = []
        done_of: dict[int, dict[str, Any]] = {}  # claims of one batch share their document
        state: str
        for claim, data, reason in finishing:
            claim._finished = True
            key = claim.key
            if reason is None and "history" not in data:  # a plain done: no event, no time
                state, document = _DONE, done_of.get(id(data))
                if document is None:
                    document = done_of[id(data)] = _unclaimed(data)
            else:
                state, document = self._outcome(key, data, reason, now, hold=claim._hold)
            rows.append((namespace, key.id, state, document, claim._version))
            # The content is recorded in the same write: handled is handled, even when the
            # claim turns out to be lost (the mail may then have been handled twice, not never).
            if state == DONE and key.digest is not None and (content := key.content_id):
                contents.append((self.content_namespace, content, _DONE, {"id": key.id}, None))
        results = put_rows(store, rows + contents if contents else rows)
        held: list[MessageKey] = []
        lost: list[MessageKey] = []
        for (claim, _, _), row, result in zip(finishing, rows, results, strict=False):
            if result is None:
                lost.append(claim.key)
            elif row[2] == HELD:
                held.append(claim.key)
                log.warning(
                    "%s: held after %d failed attempt(s): %s",
                    row[1],
                    row[3]["attempts"],
                    row[3].get("reason", ""),
                )
        if lost:
            raise ClaimLost(
                f"the claim of {lost[0]}{f' and {len(lost) - 1} more' if len(lost) > 1 else ''} "
                "expired and was taken over before its outcome was recorded: it may have been "
                "handled twice; raise claim_ttl"
            )
        return held

    def _finish_one(
        self, claim: Claim, data: Mapping[str, Any], reason: str | None
    ) -> list[MessageKey]:
        """:meth:`finish_many` of one outcome that is one write (no content record): one put."""
        key = claim.key
        claim._finished = True
        state: str
        document: dict[str, Any]
        if reason is None and "history" not in data:  # a plain done: no event, no time
            state, document = DONE, _unclaimed(data)
        else:
            state, document = self._outcome(key, data, reason, self.store.now(), hold=claim._hold)
        # put: one write, which a store may apply faster than a batch of one.
        if self.store.put(self.namespace, key.id, state, document, expect=claim._version) is None:
            raise ClaimLost(
                f"the claim of {key} expired and was taken over before its outcome was "
                "recorded: it may have been handled twice; raise claim_ttl"
            )
        if state != HELD:
            return []
        log.warning(
            "%s: held after %d failed attempt(s): %s",
            key.id,
            document["attempts"],
            document["reason"],
        )
        return [key]

    def _outcome(
        self,
        key: MessageKey,
        data: Mapping[str, Any],
        reason: str | None,
        now: float,
        *,
        hold: bool,
    ) -> tuple[str, dict[str, Any]]:
        """The state and document that record a claim's outcome (*data*: the claim's).

        Done if *reason* is ``None``, else failed: held after ``max_failures`` attempts, or at
        once if *hold*.
        """
        data = _unclaimed(data)
        if reason is None:
            if "history" in data:  # it failed before: finish its story
                data["history"] = add_event(history_of(data), now, "done", "")
            return DONE, data
        state = FAILED
        data.update(content_fields(key))
        history = add_event(history_of(data), now, "failed", reason)
        data["attempts"] = int(data.get("attempts", 0)) + 1
        data["reason"] = reason[:ERROR_TEXT]
        if hold or data["attempts"] >= self.max_failures:
            state = HELD
            why = reason[:ERROR_TEXT] if hold else f"{data['attempts']} failed attempts"
            history = add_event(history, now, "held", why)
        data["history"] = history
        return state, data

    def _abandon(self, key: MessageKey, version: int, data: Mapping[str, Any]) -> None:
        document = _unclaimed(data)
        document["history"] = add_event(history_of(document), self.store.now(), "abandoned")
        self.store.put(self.namespace, key.id, FAILED, document, expect=version)

    def _extend(
        self, key: MessageKey, version: int, data: Mapping[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """Renew a claim at *version* with document *data*: its new version and document."""
        document = dict(data)
        document["expires_at"] = self.store.now() + self.claim_ttl
        written = self.store.put(self.namespace, key.id, PROCESSING, document, expect=version)
        if written is None:
            raise ClaimLost(f"the claim of {key} was lost before it could be extended")
        return written.version, document

    # -- batches and housekeeping ----------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"DuplicateGuard({self.store!r}, max_failures={self.max_failures}, "
            f"repeat={self.repeat!r}, namespace={self.namespace!r})"
        )
