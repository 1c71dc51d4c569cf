"""``on_poison="forward:ADDRESS"``: a held mail goes to a person through the outbox (seed 002).

The help-desk write-up forwards a mail it cannot turn into a ticket to an administrator and
removes it from the mailbox. Here against Dovecot (IMAP and POP3) and aiosmtpd: the whole
mail reaches the reviewer byte for byte, then the mailbox changes as ``after`` says; a mail
that cannot be queued stays and the source is BLOCKED, then forwarded once resumed; a mail
forwarded twice (a crash in between) is queued once.
"""

from __future__ import annotations

import email
import email.policy
import time
from collections import Counter
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest

import helpers
from helpers import Collector, eventually, flags_of, state_of
from mailtether import (
    ConfigError,
    DuplicateGuard,
    Fixed,
    ImapListener,
    ImapSettings,
    Keepalive,
    MemoryStore,
    MessageKey,
    Outbox,
    Pop3Poller,
    SmtpRelay,
    SourceState,
    SQLiteStore,
    StatusBoard,
    StoreError,
)
from mailtether._review import review_id, review_mail
from mailtether.testing import FakeClock
from servers.smtp import Scripted, smtp_server

FAST = Keepalive(noop_interval=1, idle_renewal=1, response_timeout=1)
REVIEWER = "reviewer@example.com"


def mail(n: int, subject: str | None = None) -> bytes:
    return (
        f"From: customer@example.com\r\nTo: support@example.com\r\n"
        f"Message-ID: <m{n}-{time.monotonic_ns()}@example.com>\r\n"
        f"Subject: {subject or f'mail {n}'}\r\n\r\nbody {n}\r\n"
    ).encode()


def settings_for(mailbox, port: int | None = None) -> ImapSettings:  # type: ignore[no-untyped-def]
    return helpers.settings_for(mailbox, port, connect_timeout=2)


class FlakyStore(MemoryStore):
    """A store that refuses writes while ``down`` (a database that is unreachable)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def put(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            raise StoreError("the outbox's database is unreachable")
        return super().put(*args, **kwargs)


@pytest.fixture
def smtp() -> Iterator[tuple[Scripted, int]]:
    scripted = Scripted()
    with smtp_server(scripted) as port:
        yield scripted, port


@pytest.fixture
def store(tmp_path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "state.db")
    yield opened
    opened.close()


@pytest.fixture
def start(store):  # type: ignore[no-untyped-def]
    started: list[ImapListener | Pop3Poller] = []

    def make(settings: ImapSettings, handler, kind=ImapListener, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("reconnect", Fixed(0.2))
        kwargs.setdefault("poll_interval", 0.3)
        kwargs.setdefault("store", store)
        if kind is ImapListener:
            kwargs.setdefault("keepalive", FAST)
            kwargs.setdefault("lease_ttl", 3.0)
        else:
            kwargs.setdefault("timeout", 2)
        source = kind(settings, handler, **kwargs)
        source.run_in_thread()
        started.append(source)
        return source

    yield make
    for source in started:
        source.stop()


def attached(raw: bytes) -> bytes:
    """The held mail inside a review mail, as sent."""
    review = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(review, EmailMessage)
    (part,) = list(review.iter_attachments())
    assert part.get_filename() == "held-mail.eml"
    content = part.get_content()
    assert isinstance(content, bytes)
    return content


def test_a_held_mail_reaches_the_reviewer_whole_then_is_marked_seen(mailbox, start, store, smtp):
    scripted, port = smtp
    outbox = Outbox(store, SmtpRelay("127.0.0.1", port=port, security="plain"))
    guard = DuplicateGuard(store, max_failures=1)
    poison = mail(1, "poison pill") + b"\xff\xfe not UTF-8, kept as it is\r\n"
    mailbox.append(poison)
    mailbox.append(mail(2))
    handler = Collector(fail_on="poison")
    listener = start(
        settings_for(mailbox),
        handler,
        guard=guard,
        outbox=outbox,
        on_poison=f"forward:{REVIEWER}",
    )
    eventually(lambda: outbox.counts().get("queued") == 1)
    eventually(lambda: all(b"\\Seen" in f for f in flags_of(mailbox).values()))
    assert handler.count() == Counter({"mail 2": 1})
    assert outbox.deliver_due() == 1
    ((sender, recipients, raw),) = scripted.received
    assert recipients == (REVIEWER,)
    assert sender == mailbox.user if "@" in mailbox.user else REVIEWER
    assert attached(raw) == poison, "the held mail byte for byte"
    review = email.message_from_bytes(raw, policy=email.policy.default)
    assert "held for review: poison pill" in str(review["Subject"])
    body = review.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "ValueError: cannot handle poison pill" in text
    assert "marked seen" in text
    assert state_of(listener) is SourceState.ONLINE
    (held,) = guard.held()
    assert review["X-Mailtether-Held"] == held.key.id


def test_a_forwarded_mail_is_deleted_when_after_says_delete(mailbox, start, store, smtp):
    _, port = smtp
    outbox = Outbox(store, SmtpRelay("127.0.0.1", port=port, security="plain"))
    guard = DuplicateGuard(store, max_failures=1)
    mailbox.append(mail(1, "poison pill"))
    start(
        settings_for(mailbox),
        Collector(fail_on="poison"),
        guard=guard,
        outbox=outbox,
        after="delete",
        on_poison=f"forward:{REVIEWER}",
    )
    eventually(lambda: outbox.counts().get("queued") == 1)
    eventually(lambda: flags_of(mailbox) == {})


def test_a_mail_the_outbox_cannot_take_stays_and_blocks_until_resumed(mailbox, start, store):
    outbox_store = FlakyStore()
    outbox_store.down = True
    outbox = Outbox(outbox_store, SmtpRelay("127.0.0.1", port=1, security="plain"))
    guard = DuplicateGuard(store, max_failures=1)
    mailbox.append(mail(1, "poison pill"))
    clock = FakeClock(auto_advance=False)
    listener = start(
        settings_for(mailbox),
        Collector(fail_on="poison"),
        guard=guard,
        outbox=outbox,
        on_poison=f"forward:{REVIEWER}",
        clock=clock,
        heartbeat=None,
    )
    eventually(lambda: state_of(listener) is SourceState.BLOCKED)
    status = listener.status.get(listener.name)
    assert status is not None
    assert "could not be queued for review by reviewer@example.com" in status.reason
    assert "unreachable" in status.reason
    (flags,) = flags_of(mailbox).values()
    assert b"\\Seen" not in flags, "the mail stays as it was"
    assert outbox.counts() == {}
    outbox_store.down = False
    assert StatusBoard(store).resume(listener.name)
    clock.wait_for_sleepers(1)
    clock.advance(1.0)
    eventually(lambda: outbox.counts().get("queued") == 1)
    eventually(lambda: all(b"\\Seen" in f for f in flags_of(mailbox).values()))
    eventually(lambda: state_of(listener) is SourceState.ONLINE)


def test_a_mail_too_large_to_fetch_is_reported_without_its_bytes_and_stays(
    mailbox, start, store, smtp
):
    scripted, port = smtp
    outbox = Outbox(store, SmtpRelay("127.0.0.1", port=port, security="plain"))
    big = mail(1).replace(b"\r\n\r\n", b"\r\n\r\n" + (b"x" * 78 + b"\r\n") * 60, 1)
    mailbox.append(big)
    start(
        settings_for(mailbox),
        Collector(),
        outbox=outbox,
        on_poison=f"forward:{REVIEWER}",
        max_message_bytes=2048,
    )
    eventually(lambda: outbox.counts().get("queued") == 1)
    assert outbox.deliver_due() == 1
    ((_, _, raw),) = scripted.received
    review = email.message_from_bytes(raw, policy=email.policy.default)
    assert list(review.iter_attachments()) == []
    body = review.get_body(("plain",))
    assert body is not None
    assert "left in the mailbox" in body.get_content()
    assert "larger than max_message_bytes" in body.get_content()
    (flags,) = flags_of(mailbox).values()
    assert b"\\Seen" not in flags, "never fetched, never marked: it stays for a person"


def test_pop3_forwards_a_held_mail_then_deletes_it(mailbox, start, store, smtp):
    import poplib

    _, port = smtp
    outbox = Outbox(store, SmtpRelay("127.0.0.1", port=port, security="plain"))
    mailbox.append(mail(1, "poison pill"))
    mailbox.append(mail(2))
    settings = ImapSettings(
        "127.0.0.1",
        mailbox.user,
        mailbox.password,
        port=mailbox.server.pop3_port,
        security="plain",
    )
    handler = Collector(fail_on="poison")
    start(
        settings,
        handler,
        kind=Pop3Poller,
        guard=DuplicateGuard(store, max_failures=1),
        outbox=outbox,
        on_poison=f"forward:{REVIEWER}",
    )

    def on_server() -> int:
        pop = poplib.POP3("127.0.0.1", mailbox.server.pop3_port, timeout=10)
        pop.user(mailbox.user)
        pop.pass_(mailbox.password)
        count = int(pop.stat()[0])
        pop.quit()
        return count

    eventually(lambda: outbox.counts().get("queued") == 1)
    eventually(lambda: on_server() == 0)
    assert handler.count() == Counter({"mail 2": 1})


KEY = MessageKey("imap", "support@example.com", "INBOX", uidvalidity=7, uid=17)


def review_of(raw: bytes, reason: str = "ValueError: no") -> EmailMessage:
    """The review mail of the held mail UID 17 of support@example.com."""
    return review_mail(
        source="support",
        key=KEY,
        where="UID 17",
        reason=reason,
        raw=raw,
        sender="support@example.com",
        reviewer=REVIEWER,
        then="marked seen",
    )


def test_forwarding_the_same_mail_again_queues_it_once():
    """A crash between the queueing and the mailbox change forwards it again: queued once."""
    first = review_of(b"Subject: x\r\n\r\nbody\r\n")
    again = review_of(b"Subject: x\r\n\r\nbody\r\n")
    assert first["Message-ID"] == again["Message-ID"] == review_id(KEY)
    outbox = Outbox(MemoryStore(), SmtpRelay("127.0.0.1", port=1, security="plain"))
    outbox.send(first)
    outbox.send(again)
    assert outbox.counts() == {"queued": 1}


@pytest.mark.parametrize(
    "raw", [b"", b"\x00\xff garbage with no header at all", b"Subject: =?bad?=\r\n\r\n\xff"]
)
def test_a_mail_of_any_bytes_is_attached_as_it_is(raw):
    review = review_of(raw, reason="held")
    sent = review.as_bytes(policy=review.policy.clone(linesep="\r\n"))
    assert attached(sent) == raw


def test_forward_needs_an_outbox_and_an_address(mailbox):
    settings = settings_for(mailbox)
    with pytest.raises(ConfigError, match="needs an outbox"):
        ImapListener(settings, print, store=MemoryStore(), on_poison=f"forward:{REVIEWER}")
    outbox = Outbox(MemoryStore(), SmtpRelay("127.0.0.1", port=1, security="plain"))
    for bad in ("forward:", "forward:nobody", "forward:@example.com", "forward:a@b@c"):
        with pytest.raises(ValueError, match="on_poison"):
            ImapListener(settings, print, store=MemoryStore(), outbox=outbox, on_poison=bad)
    with pytest.raises(ValueError, match="forward:<address>"):
        Pop3Poller(settings, print, store=MemoryStore(), on_poison="flag")


def test_a_forward_left_undone_by_a_crash_is_finished_on_the_next_run(mailbox, start, store, smtp):
    """The pipeline's outbox says "forward" (written before it began): the next run does it."""
    _, port = smtp
    guard = DuplicateGuard(store, max_failures=1)
    mailbox.append(mail(1, "poison pill"))
    first = start(settings_for(mailbox), Collector(fail_on="poison"), guard=guard)
    eventually(lambda: guard.counts().get("held") == 1)
    first.stop()
    (held,) = guard.held()
    store.put("outbox", held.key.id, "pending", {"action": "forward", "address": REVIEWER})
    outbox = Outbox(store, SmtpRelay("127.0.0.1", port=port, security="plain"))
    start(
        settings_for(mailbox),
        Collector(),
        guard=guard,
        outbox=outbox,
        on_poison=f"forward:{REVIEWER}",
    )
    eventually(lambda: outbox.counts().get("queued") == 1)
    eventually(lambda: all(b"\\Seen" in f for f in flags_of(mailbox).values()))
    eventually(lambda: store.get("outbox", held.key.id) is None)
    assert guard.lookup(held.key) is not None
    assert outbox.counts() == {"queued": 1}


def test_a_mail_the_server_will_not_give_is_reported_without_its_bytes_and_stays(smtp):
    """A server that answers NO to the fetch, every time: the reviewer still hears of it."""
    from mailtether.testing import ScriptedImapServer

    scripted, port = smtp
    store = MemoryStore()
    outbox = Outbox(store, SmtpRelay("127.0.0.1", port=port, security="plain"))
    with ScriptedImapServer(user="helpdesk@example.com", password="pw") as imap:
        imap.append(b"Subject: unreadable\r\n\r\nbody\r\n")
        imap.fetch_no(1)  # until clear_faults(): every fetch of UID 1 is refused
        listener = ImapListener(
            ImapSettings(imap.host, "helpdesk@example.com", "pw", port=imap.port, security="plain"),
            Collector(),
            store=store,
            guard=DuplicateGuard(store, max_failures=1),
            outbox=outbox,
            on_poison=f"forward:{REVIEWER}",
            lease_ttl=None,
            heartbeat=None,
        )
        listener.run_in_thread()
        try:
            eventually(lambda: outbox.counts().get("queued") == 1)
        finally:
            listener.stop()
        assert imap.flags(1) == set(), "not marked: it stays for a person"
    assert outbox.deliver_due() == 1
    ((sender, _, raw),) = scripted.received
    assert sender == "helpdesk@example.com", "from the mailbox's own address"
    review = email.message_from_bytes(raw, policy=email.policy.default)
    assert list(review.iter_attachments()) == []
    body = review.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "could not be fetched to attach it" in text
    assert "UID 1" in text
