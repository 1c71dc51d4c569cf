"""Reading the guard's records, and a person's decisions about held mail.

The half of :class:`~mailtether.DuplicateGuard` that does not claim: batch look-ups for a
catch-up (:meth:`~GuardViews.triage`, :meth:`~GuardViews.retryable`,
:meth:`~GuardViews.filter_new`), inspection (:meth:`~GuardViews.counts`,
:meth:`~GuardViews.lookup`, :meth:`~GuardViews.held`), pruning, and
:meth:`~GuardViews.release` / :meth:`~GuardViews.drop`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from mailtether._guard_states import (
    DONE,
    DROPPED,
    FAILED,
    HELD,
    PROCESSING,
    GuardEntry,
    GuardState,
    Triage,
    add_event,
    claimed_at,
    entry_of,
    history_of,
    key_id,
)
from mailtether._message_key import MessageKey
from mailtether._redaction import redacting_logger
from mailtether.stores._protocol import KeyLookup, Store
from mailtether.stores._shared import existing_keys

__all__ = ["GuardViews"]

log = redacting_logger("mailtether.guard")
_RETRIES: Final = 32


class GuardViews:
    """Look-ups and a person's decisions over the guard's records (a base of the guard)."""

    store: Store
    """Where the records live."""
    namespace: str
    """The namespace of the position records."""
    content_namespace: str
    """The namespace of the content records."""

    def filter_new(self, keys: Iterable[MessageKey]) -> list[MessageKey]:
        """Return the keys the guard has never seen, by position or by content, in order.

        One batched look-up per 500 keys, of the keys alone (no record is read: see
        :class:`~mailtether.stores._protocol.KeyLookup`): for the first sync of a large
        mailbox, call this before claiming, so only new mail is fetched in full.
        """
        keys = list(keys)
        known = existing_keys(self.store, self.namespace, [key.id for key in keys])
        unseen = [key for key in keys if key.id not in known] if known else keys
        content_ids = [key.content_id for key in unseen if key.content_id is not None]
        if not content_ids:
            return unseen
        done_content = existing_keys(self.store, self.content_namespace, content_ids)
        return [key for key in unseen if key.content_id not in done_content]

    def triage(self, keys: Iterable[MessageKey]) -> Triage:
        """Sort listed mail by what it needs, in one batched look-up (no record changes).

        For a catch-up: :attr:`Triage.new` is claimed (:meth:`claim_many`),
        :attr:`Triage.retry` claimed one by one (:meth:`claim`), :attr:`Triage.done` only
        needs its post-action finished (handled, but still in the mailbox), and
        :attr:`Triage.waiting` is left alone.

        The look-up is of the keys alone; only the records of mail the guard knows are read
        (for the first sync of a mailbox: none).
        """
        keys = list(keys)
        ids = [key.id for key in keys]
        if isinstance(self.store, KeyLookup):
            known = self.store.existing(self.namespace, ids)
            if not known:
                return Triage(tuple(keys), (), (), ())
            ids = [id_ for id_ in ids if id_ in known]
        records = self.store.get_many(self.namespace, ids)  # without existing(): one look-up
        running = any(record.state == PROCESSING for record in records.values())
        now = self.store.now() if running else 0.0
        new: list[MessageKey] = []
        retry: list[MessageKey] = []
        done: list[MessageKey] = []
        waiting: list[MessageKey] = []
        busy: list[MessageKey] = []
        for key in keys:
            record = records.get(key.id)  # None: never seen (or deleted meanwhile)
            if record is None:
                new.append(key)
            elif record.state == DONE:
                done.append(key)
            elif record.state == FAILED or (
                record.state == PROCESSING and not claimed_at(record, now)
            ):
                retry.append(key)
            else:
                waiting.append(key)
                if record.state == PROCESSING:
                    busy.append(key)
        return Triage(tuple(new), tuple(retry), tuple(done), tuple(waiting), tuple(busy))

    def retryable(self, scope: str) -> list[MessageKey]:
        """Keys under *scope* (a :attr:`MessageKey.scope`) due another attempt.

        Those whose last attempt failed, and those whose claim expired (its worker died).
        """
        now = self.store.now()
        return [
            MessageKey.from_id(record.key)
            for state in (FAILED, PROCESSING)
            for record in self.store.scan(self.namespace, state=state)
            if record.key.startswith(scope) and not claimed_at(record, now)
        ]

    def prune(self, older_than: float) -> int:
        """Forget done and dropped messages last changed more than *older_than* seconds ago.

        Held, failed and in-progress records are never pruned: a person must decide about
        them. Return how many records were deleted.
        """
        if not isinstance(older_than, int | float) or not 0 <= older_than < float("inf"):
            raise ValueError(
                f"older_than must be a finite number of seconds >= 0, got {older_than!r}"
            )
        cutoff = self.store.now() - older_than
        removed = 0
        for state in (DONE, DROPPED):
            removed += self.store.prune(self.namespace, state=state, updated_before=cutoff)
        removed += self.store.prune(self.content_namespace, state=DONE, updated_before=cutoff)
        return removed

    # -- inspection ------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Messages by state: ``processing``, ``done``, ``failed``, ``held``, ``dropped``."""
        counts = {state.value: 0 for state in GuardState}
        counts.update(self.store.count(self.namespace))
        return counts

    def lookup(self, key: MessageKey | str) -> GuardEntry | None:
        """Return what the guard knows about *key* (a key or its :attr:`~MessageKey.id`)."""
        record = self.store.get(self.namespace, key_id(key))
        return None if record is None else entry_of(record)

    def held(self, limit: int | None = None) -> list[GuardEntry]:
        """Return the held (poisoned) messages, oldest first, with their history."""
        return [
            entry_of(record) for record in self.store.scan(self.namespace, state=HELD, limit=limit)
        ]

    def release(self, key: MessageKey | str, *, by: str = "a person") -> bool:
        """Let a held (or dropped) message be processed again, with a fresh count of attempts.

        Returns ``False`` if it is not held or dropped.
        """
        return self._person(key, (HELD, DROPPED), FAILED, "released", by, reset=True)

    def drop(self, key: MessageKey | str, *, by: str = "a person") -> bool:
        """Mark a held or failed message as never to be processed. ``False`` if not found."""
        return self._person(key, (HELD, FAILED), DROPPED, "dropped", by, reset=False)

    def _person(
        self,
        key: MessageKey | str,
        from_states: tuple[str, ...],
        to_state: str,
        event: str,
        by: str,
        *,
        reset: bool,
    ) -> bool:
        for _ in range(_RETRIES):
            record = self.store.get(self.namespace, key_id(key))
            if record is None or record.state not in from_states:
                return False
            data = dict(record.data)
            if reset:
                data["attempts"] = 0
            data["history"] = add_event(history_of(data), self.store.now(), event, by)
            if self.store.put(self.namespace, record.key, to_state, data, expect=record.version):
                log.info("%s %s by %s", record.key, event, by)
                return True
        return False
