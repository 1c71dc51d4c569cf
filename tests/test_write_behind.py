"""Outcomes recorded behind: on a store that writes in parallel, a batch's outcome write runs
on a thread of its own while the next batch is handed over (mailtether._write_behind).

The promise holds all the same: no mail is marked before its outcome is recorded, a failed
write marks nothing, and a fault while a batch is being recorded leaves its changes for later.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TypeVar

import pytest

from helpers import eventually, flags_of, settings_for
from mailtether import (
    Delivery,
    DuplicateGuard,
    ImapListener,
    ImapSettings,
    MemoryStore,
    Pop3Poller,
    StoreError,
    Write,
)
from mailtether._guard_states import GuardState
from mailtether._write_behind import Behind, writes_in_parallel
from mailtether.stores._protocol import Row
from mailtether.testing import FakeClock, ScriptedImapServer
from test_listener_batches import fill, mail, reconnecting, subject

_T = TypeVar("_T")


class BehindStore(MemoryStore):
    """A MemoryStore the listener treats as one that writes in parallel (Redis, PostgreSQL).

    Each write of done outcomes is held up a little, on the thread that makes it, so the
    listener is well into the next batch by then; after the write the mailbox is looked at:
    none of those mails may be marked yet. *fail_on*: the numbers of the done-outcome writes
    (1, 2, ...) that fail instead, before anything is written.
    """

    _parallel_writes = True

    def __init__(self, mailbox, *, fail_on: Iterable[int] = (), clock=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**({} if clock is None else {"clock": clock}))
        self.mailbox = mailbox  # a Dovecot mailbox, or a ScriptedImapServer
        self.fail_on = set(fail_on)
        self.done_writes = 0
        self.lock = threading.Lock()
        self.threads: set[str] = set()
        self.marked_too_early: list[int] = []
        self.uid_of: dict[str, int] = {}

    def put_many(self, writes: Iterable[Write]) -> list:  # type: ignore[override,type-arg]
        writes = list(writes)
        done = [w.key for w in writes if w.namespace == "guard" and w.state == GuardState.DONE]
        return self._held_up(done, lambda: super(BehindStore, self).put_many(writes))

    def put_rows(self, rows: Iterable[Row]) -> list[int | None]:
        """The guard's batches come this way (see RowWrites): held up as put_many."""
        rows = list(rows)
        done = [key for ns, key, state, _, _ in rows if ns == "guard" and state == GuardState.DONE]
        return self._held_up(done, lambda: super(BehindStore, self).put_rows(rows))

    def _held_up(self, done: list[str], write: Callable[[], _T]) -> _T:
        if not done:
            return write()
        with self.lock:
            self.done_writes += 1
            number = self.done_writes
            self.threads.add(threading.current_thread().name)
        threading.Event().wait(0.05)  # the listener goes on meanwhile
        if number in self.fail_on:
            raise StoreError("the store went away (injected)")
        results = write()
        seen = self.seen()
        self.marked_too_early.extend(
            uid for uid in (self.uid_of.get(key) for key in done) if uid in seen
        )
        return results

    def seen(self) -> set[int]:
        """The UIDs marked seen in the mailbox now."""
        if isinstance(self.mailbox, ScriptedImapServer):
            server = self.mailbox
            return {uid for uid in server.uids() if b"\\Seen" in server.flags(uid)}
        return {uid for uid, flags in flags_of(self.mailbox).items() if b"\\Seen" in flags}


def listener_for(mailbox, store, handler, port=None, **options) -> ImapListener:  # type: ignore[no-untyped-def]
    def handing(delivery: Delivery) -> None:
        store.uid_of[delivery.key.id] = delivery.uid
        handler(delivery)

    settings = settings_for(mailbox, port)
    return ImapListener(settings, handing, store=store, lease_ttl=None, **options)


def test_only_stores_that_say_so_are_written_behind(mailbox):
    assert writes_in_parallel(BehindStore(mailbox))
    assert not writes_in_parallel(MemoryStore())


def test_a_behind_thread_hands_its_error_to_the_waiter_once():
    def fails() -> None:
        raise StoreError("down")

    behind = Behind(fails, "test")
    with pytest.raises(StoreError, match="down"):
        behind.wait()
    behind.wait()  # taken: not raised twice


def test_every_mail_is_recorded_before_it_is_marked(mailbox, batches_of):
    batches_of(10)
    fill(mailbox, 45)
    store = BehindStore(mailbox)
    calls: Counter[str] = Counter()
    listener = listener_for(mailbox, store, lambda d: calls.update([subject(d)]))
    assert listener.poll_once() == 45
    assert calls == Counter({f"mail {n}": 1 for n in range(1, 46)})
    assert store.marked_too_early == []
    assert any(name.startswith("mailtether-record-") for name in store.threads), "behind"
    assert all(b"\\Seen" in f for f in flags_of(mailbox).values())
    assert listener.poll_once() == 0, "nothing is handed out again"


def test_a_mail_held_in_a_batch_recorded_behind_is_put_aside(mailbox, batches_of):
    batches_of(7)
    fill(mailbox, 30)
    store = BehindStore(mailbox)
    guard = DuplicateGuard(store, max_failures=1)

    def handler(delivery: Delivery) -> None:
        if subject(delivery) == "mail 12":
            raise ValueError("poison")

    listener = listener_for(mailbox, store, handler, guard=guard, on_poison="flag")
    assert listener.poll_once() == 29
    flags = flags_of(mailbox)
    assert [uid for uid, f in flags.items() if b"\\Flagged" in f] == [12]
    assert sum(b"\\Seen" in f for f in flags.values()) == 29
    assert store.marked_too_early == []


def test_a_failed_behind_write_marks_nothing_it_did_not_record(mailbox, batches_of):
    """The second batch's outcomes are lost with the store: its mail comes again, later."""
    batches_of(10)
    fill(mailbox, 35)
    clock = FakeClock(auto_advance=False)
    store = BehindStore(mailbox, fail_on={2}, clock=clock)
    guard = DuplicateGuard(store, claim_ttl=60)
    calls: Counter[str] = Counter()
    listener = listener_for(mailbox, store, lambda d: calls.update([subject(d)]), guard=guard)
    with pytest.raises(StoreError, match="went away"):
        listener.poll_once()
    seen = {uid for uid, f in flags_of(mailbox).items() if b"\\Seen" in f}
    # The first batch's change was sent (whether the server made it before the connection
    # closed is its business: if not, it is made on the next catch-up); not the second's.
    assert seen <= set(range(1, 11)), "nothing of the second batch: it was not recorded"
    assert store.marked_too_early == []
    clock.advance(61)  # the unrecorded claims expire: those mails are due again
    listener.poll_once()
    assert all(b"\\Seen" in f for f in flags_of(mailbox).values())
    twice = {name for name, n in calls.items() if n == 2}
    assert twice == {f"mail {n}" for n in range(11, 21)}, "only what was not recorded"
    assert set(calls) == {f"mail {n}" for n in range(1, 36)}
    assert store.marked_too_early == []


def test_a_connection_lost_while_a_batch_is_recorded_behind(mailbox, batches_of):
    """Its outcomes are recorded all the same; its change is made after the reconnect."""
    from mailtether.testing import FaultProxy

    batches_of(10)
    fill(mailbox, 40)
    store = BehindStore(mailbox)
    calls: Counter[str] = Counter()
    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as proxy:
        proxy.cut_on(b"Subject: mail 25\r\n")  # while the second batch is being recorded
        listener = listener_for(
            mailbox, store, lambda d: calls.update([subject(d)]), port=proxy.port, **reconnecting()
        )
        with pytest.raises(Exception, match="the connection broke"):
            listener.poll_once()
        proxy.pass_through()
        listener.poll_once()
    assert calls == Counter({f"mail {n}": 1 for n in range(1, 41)})
    assert all(b"\\Seen" in f for f in flags_of(mailbox).values())
    assert store.marked_too_early == []


def test_a_copy_in_the_next_batch_waits_for_the_first_to_be_recorded(mailbox, batches_of):
    """The same bytes under a later UID, while the first is still being recorded: a copy."""
    batches_of(10)
    client = mailbox.client()
    for n in range(1, 31):
        client.append("INBOX", mail(13 if n == 25 else n))  # UID 25: a byte copy of UID 13
    client.logout()
    store = BehindStore(mailbox)
    calls: Counter[int] = Counter()
    listener = listener_for(mailbox, store, lambda d: calls.update([d.uid]))
    # The second batch (UIDs 11-20) is recorded behind while the third is handed over.
    assert listener.poll_once() == 29
    assert any(name.startswith("mailtether-record-") for name in store.threads), "behind"
    assert 25 not in calls, "decided as a copy of UID 13, not handled again"
    assert set(calls) == set(range(1, 31)) - {25}
    assert all(b"\\Seen" in f for f in flags_of(mailbox).values())
    assert store.marked_too_early == []


def test_a_pop3_mailbox_recorded_behind_is_handled_once_and_emptied(mailbox, batches_of):
    import poplib

    batches_of(10)
    fill(mailbox, 25)
    store = BehindStore(mailbox)
    calls: Counter[str] = Counter()
    settings = settings_for(mailbox, mailbox.server.pop3_port)
    poller = Pop3Poller(
        settings, lambda d: calls.update([subject(d)]), store=store, lease_ttl=None, timeout=5
    )
    assert poller.poll_once() == 25
    assert calls == Counter({f"mail {n}": 1 for n in range(1, 26)})
    assert any(name.startswith("mailtether-record-") for name in store.threads), "behind"
    pop = poplib.POP3("127.0.0.1", mailbox.server.pop3_port, timeout=10)
    pop.user(mailbox.user)
    pop.pass_(mailbox.password)
    assert pop.stat()[0] == 0, "every mail deleted"
    pop.quit()
    assert poller.poll_once() == 0


def test_a_batch_with_nothing_after_it_is_recorded_in_line(mailbox):
    """One batch (a push in IDLE, a small catch-up): no thread, nothing to overlap."""
    fill(mailbox, 5)
    store = BehindStore(mailbox)
    listener = listener_for(mailbox, store, lambda d: None)
    assert listener.poll_once() == 5
    assert store.threads == {threading.current_thread().name}
    assert all(b"\\Seen" in f for f in flags_of(mailbox).values())


def test_a_mail_held_from_a_batch_recorded_behind_is_forwarded_whole(mailbox, batches_of):
    """Put aside once the write is in: the held mail's bytes go to the reviewer whole."""
    import base64

    from mailtether import Outbox, SmtpRelay

    batches_of(10)
    fill(mailbox, 30)
    store = BehindStore(mailbox)
    outbox = Outbox(store, SmtpRelay("127.0.0.1", port=1, security="plain"))  # queued only
    guard = DuplicateGuard(store, max_failures=1)

    def handler(delivery: Delivery) -> None:
        if subject(delivery) == "mail 15":  # in the second batch, recorded behind
            raise ValueError("poison")

    listener = listener_for(
        mailbox, store, handler, guard=guard, on_poison="forward:review@example.com", outbox=outbox
    )
    assert listener.poll_once() == 29
    assert any(name.startswith("mailtether-record-") for name in store.threads), "behind"
    forwarded = [base64.b64decode(r.data["raw"]) for r in store.scan("outgoing")]
    assert len(forwarded) == 1
    assert b"Subject: mail 15\r\n" in forwarded[0]


@pytest.mark.parametrize("fault", ["answers mixed", "split", "STORE unanswered", "mail omitted"])
def test_a_misbehaving_server_while_batches_are_recorded_behind(batches_of, fault):
    """Mixed, trickled, missing answers: every mail once (or held), nothing marked early."""
    from mailtether import Fixed, Keepalive

    batches_of(10)
    with ScriptedImapServer(user="someone", password="a-long-secret") as server:
        for n in range(1, 41):
            server.append(mail(n))
        if fault == "answers mixed":
            server.answer_out_of_order(wait=0.2)
        elif fault == "split":
            server.split_writes(7)
        elif fault == "STORE unanswered":
            server.never_answer("UID STORE", times=1)  # a dead connection: replaced in time
        else:
            server.omit_from_fetch(25)
        store = BehindStore(server)
        calls: Counter[str] = Counter()

        def handler(delivery: Delivery) -> None:
            store.uid_of[delivery.key.id] = delivery.uid
            calls[subject(delivery)] += 1

        listener = ImapListener(
            ImapSettings(
                server.host, "someone", "a-long-secret", port=server.port, security="plain"
            ),
            handler,
            store=store,
            guard=DuplicateGuard(store, max_failures=2),
            keepalive=Keepalive(noop_interval=5, idle_renewal=5, response_timeout=1),
            reconnect=Fixed(0.05),
            poll_interval=0.2,
            lease_ttl=None,
            heartbeat=None,
            on_poison="flag",
        )
        bad = {25} if fault == "mail omitted" else set()
        good = [uid for uid in range(1, 41) if uid not in bad]
        listener.run_in_thread()
        try:
            eventually(lambda: all(b"\\Seen" in server.flags(uid) for uid in good), timeout=30)
            eventually(lambda: all(b"\\Flagged" in server.flags(uid) for uid in bad), timeout=30)
        finally:
            listener.stop()
        assert calls == Counter({f"mail {uid}": 1 for uid in good}), "nothing lost or doubled"
        assert any(name.startswith("mailtether-record-") for name in store.threads), "behind"
        assert store.marked_too_early == []
