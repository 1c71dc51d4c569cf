"""The outbox against real SMTP servers (aiosmtpd): outcomes per recipient, schedules, skips.

Each test runs ``Outbox.deliver_due`` (or its thread) against aiosmtpd servers whose replies
are scripted per recipient and per DATA; time is a FakeClock, so schedules are exact.
"""

from __future__ import annotations

import io
import json
import signal
import smtplib
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from helpers import eventually
from mailtether import (
    ConfigError,
    Fixed,
    MemoryStore,
    OutboundMail,
    Outbox,
    SmtpRelay,
    SourceState,
    SQLiteStore,
    StatusBoard,
    Store,
    StoreError,
    store_from_url,
)
from mailtether.cli._main import main
from mailtether.testing import FakeClock, FaultProxy
from servers import free_port, tls
from servers.smtp import Scripted, smtp_server

WORKER = Path(__file__).parent / "outbox_worker.py"


def relay(port: int, **options: object) -> SmtpRelay:
    options.setdefault("security", "plain")
    options.setdefault("timeout", 5)
    return SmtpRelay("127.0.0.1", port=port, **options)  # type: ignore[arg-type]


def mail(n: int, *to: str, received: int = 0) -> EmailMessage:
    message = EmailMessage()
    for hop in range(received):
        message["Received"] = f"from hop{hop}.example.com by mx.example.com"
    message["From"] = "helpdesk@example.com"
    message["To"] = ", ".join(to or ("alice@example.com",))
    message["Subject"] = f"reply {n}"
    message["Message-ID"] = f"<reply-{n}@example.com>"
    message.set_content(f"Your ticket {n}\n")
    return message


def subject_of(raw: bytes) -> bytes:
    return raw.split(b"Subject: ")[1].split(b"\r\n")[0]


def store_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store of *kind* (sqlite, redis, postgres, postgres-prepared), as a URL."""
    name = f"o{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'outbox.db'}"
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        return f"redis://127.0.0.1:{server.port}/0?prefix={name}"
    url = f"{request.getfixturevalue('postgres_server').dsn}?table_prefix={name}"
    return url + ("&prepared_statements=true" if kind == "postgres-prepared" else "")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def handler() -> Iterator[tuple[Scripted, int]]:
    scripted = Scripted()
    with smtp_server(scripted) as port:
        yield scripted, port


def test_a_mail_is_recorded_then_delivered(handler, clock):
    scripted, port = handler
    store = MemoryStore()
    board = StatusBoard(store, notifiers=[], quiet_period=0)
    outbox = Outbox(store, relay(port), clock=clock, status=board)
    queued = outbox.send(mail(1, "alice@example.com", "bob@example.com"))
    assert queued.state == "queued"
    assert queued.pending == ("alice@example.com", "bob@example.com")
    assert scripted.received == [], "send() records; the sender sends"
    assert outbox.deliver_due() == 1
    [(sender, recipients, raw)] = scripted.received
    assert sender == "helpdesk@example.com"
    assert recipients == ("alice@example.com", "bob@example.com")
    assert b"Message-ID: <reply-1@example.com>" in raw
    sent = outbox.get("<reply-1@example.com>")
    assert sent is not None
    assert sent.state == "sent"
    assert sent.recipients == {"alice@example.com": "sent", "bob@example.com": "sent"}
    assert [t.outcome for t in sent.history] == ["sent"]
    assert board.get(f"outbox:127.0.0.1:{port}").state is SourceState.ONLINE
    assert outbox.deliver_due() == 0, "nothing is sent twice"
    assert len(scripted.received) == 1
    kept = store.get("outgoing", "<reply-1@example.com>")
    assert kept is not None
    assert "raw" not in kept.data, "a sent mail's bytes are not kept"
    assert kept.data["sender"] == "helpdesk@example.com"


def test_the_same_message_id_is_queued_once_and_a_mail_without_one_gets_one(clock):
    outbox = Outbox(MemoryStore(), relay(free_port()), clock=clock)
    outbox.send(mail(1))
    again = outbox.send(mail(1))
    assert outbox.counts() == {"queued": 1}
    assert again.message_id == "<reply-1@example.com>"
    bare = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: x\r\n\r\nhi\r\n"
    queued = outbox.send(bare)
    assert queued.message_id.endswith("@mailtether.invalid>")
    assert outbox.counts() == {"queued": 2}


def test_bcc_recipients_get_the_mail_without_the_bcc_header(handler, clock):
    scripted, port = handler
    outbox = Outbox(MemoryStore(), relay(port), clock=clock)
    message = mail(1, "alice@example.com")
    message["Bcc"] = "auditor@example.com"
    outbox.send(message)
    outbox.deliver_due()
    [(_, recipients, raw)] = scripted.received
    assert recipients == ("alice@example.com", "auditor@example.com")
    assert b"auditor@example.com" not in raw


def test_each_recipient_gets_the_outcome_smtp_gives_it(handler, clock):
    """250: sent; 450: tried again on the schedule; 550: failed at once with the words."""
    scripted, port = handler
    scripted.rcpt = {
        "busy@example.com": "450 4.2.1 mailbox busy",
        "gone@example.com": "550 5.1.1 no such user",
    }
    store = MemoryStore()
    outbox = Outbox(store, relay(port), clock=clock, retry=Fixed(120))
    outbox.send(mail(1, "alice@example.com", "busy@example.com", "gone@example.com"))
    assert outbox.deliver_due() == 0
    first = outbox.get("<reply-1@example.com>")
    assert first is not None
    assert first.state == "queued"
    queued = store.get("outgoing", "<reply-1@example.com>")
    assert queued is not None
    assert queued.data["raw"], "a mail still to send keeps its bytes"
    assert first.recipients == {
        "alice@example.com": "sent",
        "busy@example.com": "pending",
        "gone@example.com": "failed",
    }
    assert first.next_at == clock.time() + 120
    assert {t.reply for t in first.history} == {
        "250 accepted",
        "450 4.2.1 mailbox busy",
        "550 5.1.1 no such user",
    }
    clock.advance(60)
    outbox.deliver_due()  # not due yet
    assert len(scripted.received) == 1
    scripted.rcpt.pop("busy@example.com")
    clock.advance(60)
    outbox.deliver_due()
    assert [recipients for _, recipients, _ in scripted.received] == [
        ("alice@example.com",),
        ("busy@example.com",),
    ], "each recipient is sent to once"
    done = outbox.get("<reply-1@example.com>")
    assert done is not None
    assert done.state == "failed", "in the error queue: one recipient refused for good"
    failed = store.get("outgoing", "<reply-1@example.com>")
    assert failed is not None
    assert failed.data["raw"], "the error queue keeps the mail"
    assert "gone@example.com" in done.reason
    assert "550 5.1.1 no such user" in done.reason
    assert outbox.mails("failed") == [done]


@pytest.mark.parametrize(
    ("reply", "state"),
    [("554 5.7.1 rejected as spam", "failed"), ("451 4.3.0 try later", "queued")],
)
def test_a_refused_data_concerns_every_recipient(handler, clock, reply, state):
    scripted, port = handler
    scripted.data = reply
    outbox = Outbox(MemoryStore(), relay(port), clock=clock)
    outbox.send(mail(1, "alice@example.com", "bob@example.com"))
    outbox.deliver_due()
    result = outbox.get("<reply-1@example.com>")
    assert result is not None
    assert result.state == state
    assert result.history[-1].reply == reply
    expected = "failed" if state == "failed" else "pending"
    assert set(result.recipients.values()) == {expected}


def test_a_relay_that_is_down_delays_the_mail_and_it_goes_when_the_relay_is_back(clock):
    port = free_port()  # nothing listens yet
    store = MemoryStore()
    board = StatusBoard(store, notifiers=[], quiet_period=0)
    outbox = Outbox(store, relay(port), clock=clock, status=board, retry=Fixed(30))
    outbox.send(mail(1))
    assert outbox.deliver_due() == 0
    waiting = outbox.get("<reply-1@example.com>")
    assert waiting is not None
    assert waiting.state == "queued"
    assert waiting.attempts == 1
    assert "ConnectionRefusedError" in waiting.history[-1].reply
    status = board.get(f"outbox:127.0.0.1:{port}")
    assert status is not None
    assert status.state is SourceState.RETRYING
    assert "cannot hand mail to 127.0.0.1" in status.reason
    scripted = Scripted()
    from aiosmtpd.controller import Controller

    controller = Controller(scripted, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        clock.advance(30)
        assert outbox.deliver_due() == 1
    finally:
        controller.stop()
    assert len(scripted.received) == 1
    assert board.get(f"outbox:127.0.0.1:{port}").state is SourceState.ONLINE


def test_a_dead_relay_is_skipped_for_the_rest_of_a_pass_and_the_others_flow_on(handler, clock):
    scripted, port = handler
    dead = relay(free_port(), name="dead")
    alive = relay(port, name="alive")
    outbox = Outbox(MemoryStore(), [alive, dead], clock=clock, skip_after=2)
    for n in range(5):
        outbox.send(mail(n), relay="dead")
    for n in range(5, 7):
        outbox.send(mail(n), relay="alive")
    assert outbox.deliver_due() == 2
    assert len(scripted.received) == 2
    tried = [m for m in outbox.mails() if m.relay == "dead" and m.attempts]
    assert len(tried) == 1, "the failure that skips the relay is not charged to its mail"
    assert sum(1 for m in outbox.mails() if m.relay == "dead" and m.state == "queued") == 5


@pytest.mark.parametrize("kind", ["memory", "redis", "postgres"])
def test_a_skipped_relay_leaves_no_mail_claimed_not_even_the_batch_claimed_ahead(
    clock, request, tmp_path, kind
):
    """Three claims of 50: the next one is made while a batch is sent, and put back too."""
    if kind == "memory":
        store: Store = MemoryStore()
    else:
        store = store_from_url(store_url(kind, request, tmp_path))
    try:
        outbox = Outbox(store, relay(free_port()), clock=clock, skip_after=2)
        for n in range(120):
            outbox.send(mail(n))
        assert outbox.deliver_due() == 0
        assert outbox.counts() == {"queued": 120}, "nothing left claimed"
        assert sum(1 for m in outbox.mails() if m.attempts) == 1, "one try charged"
    finally:
        store.close()


def test_a_slow_relay_never_gets_a_mail_whose_claim_has_run_out(clock):
    """A mail a minute, claims of two minutes: each is renewed before it is sent."""
    seen: list[tuple[bytes, float]] = []
    store = MemoryStore(clock=clock)

    class Slow(Scripted):
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            key = f"<{subject_of(bytes(envelope.content)).decode().replace(' ', '-')}@example.com>"
            record = store.get("outgoing", key)
            assert record is not None
            seen.append((key.encode(), float(record.data["claimed_until"]) - clock.time()))
            clock.advance(60)  # the relay takes a minute over each mail
            return await super().handle_DATA(server, session, envelope)

    scripted = Slow()
    with smtp_server(scripted) as port:
        outbox = Outbox(store, relay(port), clock=clock, claim_ttl=120)
        for n in range(6):
            outbox.send(mail(n))
        assert outbox.deliver_due() == 6
    assert len(seen) == 6
    assert all(left > 0 for _, left in seen), f"a mail went with its claim run out: {seen}"
    assert outbox.counts() == {"sent": 6}


def test_a_mail_in_a_loop_is_held_until_released(handler, clock):
    scripted, port = handler
    outbox = Outbox(MemoryStore(), relay(port), clock=clock, max_received=5)
    held = outbox.send(mail(1, received=6))
    assert held.state == "held"
    assert "6 Received: lines (more than 5)" in held.reason
    assert outbox.send(mail(2, received=5)).state == "queued"
    outbox.deliver_due()
    assert len(scripted.received) == 1
    assert outbox.release("<reply-1@example.com>")
    outbox.deliver_due()
    assert len(scripted.received) == 2
    assert not outbox.release("<reply-1@example.com>"), "sent: nothing to release"


def test_a_failed_mail_can_be_released_or_dropped(handler, clock):
    scripted, port = handler
    scripted.rcpt = {"gone@example.com": "550 no such user"}
    outbox = Outbox(MemoryStore(), relay(port), clock=clock)
    outbox.send(mail(1, "gone@example.com"))
    outbox.send(mail(2, "gone@example.com"))
    outbox.deliver_due()
    assert outbox.counts() == {"failed": 2}
    scripted.rcpt = {}
    assert outbox.release("<reply-1@example.com>")
    outbox.deliver_due()
    assert outbox.drop("<reply-2@example.com>")
    assert outbox.counts() == {"sent": 1}
    assert not outbox.drop("<reply-1@example.com>"), "sent mail is not dropped"


def test_the_schedule_gives_up_into_the_error_queue(clock):
    port = free_port()
    outbox = Outbox(MemoryStore(), relay(port), clock=clock, retry=Fixed(60, max_attempts=2))
    outbox.send(mail(1))
    for _ in range(3):
        outbox.deliver_due()
        clock.advance(60)
    failed = outbox.get("<reply-1@example.com>")
    assert failed is not None
    assert failed.state == "failed"
    assert failed.attempts == 3
    assert "given up after 3 tries" in failed.reason
    assert "ConnectionRefusedError" in failed.reason


def test_starttls_and_login_are_required_and_the_password_is_never_shown(tmp_path, clock, caplog):
    ca = tls.make_ca(tmp_path / "ca")
    scripted = Scripted()
    with smtp_server(scripted, ca=ca, password="s3cret-pw") as port:
        good = SmtpRelay(
            "127.0.0.1",
            port=port,
            username="bot@example.com",
            password="s3cret-pw",
            ssl_context=ca.client_context(),
        )
        outbox = Outbox(MemoryStore(), good, clock=clock)
        outbox.send(mail(1))
        assert outbox.deliver_due() == 1
        assert scripted.logins == [("bot@example.com", "s3cret-pw")]
        untrusted = SmtpRelay("127.0.0.1", port=port, ssl_context=ca.wrong_context())
        other = Outbox(MemoryStore(), untrusted, clock=clock)
        other.send(mail(2))
        other.deliver_due()
        refused = other.get("<reply-2@example.com>")
        assert refused is not None
        assert refused.state == "queued"
        assert "CERTIFICATE_VERIFY_FAILED" in refused.history[-1].reply
    assert "s3cret-pw" not in repr(good)
    assert "s3cret-pw" not in caplog.text


def test_relays_and_mail_are_checked():
    with pytest.raises(ConfigError, match="security"):
        SmtpRelay("smtp.example.com", security="ssl")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="port"):
        SmtpRelay("smtp.example.com", port=0)
    with pytest.raises(ConfigError, match="at least one"):
        Outbox(MemoryStore(), [])
    outbox = Outbox(MemoryStore(), SmtpRelay("smtp.example.com"))
    with pytest.raises(ConfigError, match="no recipient"):
        outbox.send(b"From: a@example.com\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n")
    with pytest.raises(ConfigError, match="no relay named"):
        outbox.send(mail(1), relay="elsewhere")


def test_two_senders_on_one_store_send_every_mail_once(handler, tmp_path):
    scripted, port = handler
    path = tmp_path / "outbox.db"
    first, second = SQLiteStore(path), SQLiteStore(path)
    try:
        senders = [Outbox(store, relay(port)) for store in (first, second)]
        for n in range(40):
            senders[n % 2].send(mail(n))
        threads = [threading.Thread(target=sender.deliver_due) for sender in senders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        subjects = sorted(subject_of(raw) for _, _, raw in scripted.received)
        assert subjects == sorted(f"reply {n}".encode() for n in range(40))
        assert senders[0].counts() == {"sent": 40}
    finally:
        first.close()
        second.close()


class StartedWrites(MemoryStore):
    """A store that starts a write and applies it when its answer is asked for (as PostgreSQL
    applies it while the sender goes on), logging both moments beside the relay's mail."""

    def __init__(self, scripted: Scripted, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.scripted = scripted
        self.log: list[tuple[str, str, int]] = []  # (event, key, mails the relay had)
        self.failing: str | None = None

    def _put_started(self, writes):  # type: ignore[no-untyped-def]
        outcomes = [write.key for write in writes if write.state != "sending"]  # not claims
        for key in outcomes:
            self.log.append(("sent", key, len(self.scripted.received)))

        def answer():  # type: ignore[no-untyped-def]
            for key in outcomes:
                self.log.append(("answered", key, len(self.scripted.received)))
                if key == self.failing:
                    raise StoreError("the store is down")
            return self.put_many(writes)

        return answer


def test_a_started_record_is_answered_before_the_next_mail_can_be_accepted(handler, clock):
    """Mail n's record is sent as mail n + 1's MAIL FROM goes, answered before its content."""
    scripted, port = handler
    store = StartedWrites(scripted, clock)
    outbox = Outbox(store, relay(port), clock=clock)
    for n in range(5):
        outbox.send(mail(n))
    assert outbox.deliver_due() == 5
    assert outbox.counts() == {"sent": 5}
    keys = [f"<reply-{n}@example.com>" for n in range(5)]
    # Each outcome: sent and answered while the relay had that mail and not the next one.
    assert store.log == [
        (event, key, n + 1) for n, key in enumerate(keys) for event in ("sent", "answered")
    ]


class FailingRecord(MemoryStore):
    """A store whose record of one mail's delivery fails while ``failing`` is set."""

    failing = True

    def put(self, namespace, key, state, data, *, expect=None):  # type: ignore[no-untyped-def]
        if self.failing and key == "<reply-1@example.com>" and state == "sent":
            raise StoreError("the store is down")
        return super().put(namespace, key, state, data, expect=expect)


@pytest.mark.parametrize("written", ["at once", "started"])
def test_a_record_that_fails_stops_the_next_mail_before_the_relay_accepts_it(
    handler, clock, written
):
    """Mail n is recorded while mail n + 1's first commands are answered; if that fails, n + 1
    waits (written at once: while MAIL FROM is answered; started: answered while DATA is)."""
    scripted, port = handler
    store: FailingRecord | StartedWrites
    if written == "at once":
        store = FailingRecord(clock=clock)
    else:
        store = StartedWrites(scripted, clock)
        store.failing = "<reply-1@example.com>"
    outbox = Outbox(store, relay(port), clock=clock, claim_ttl=60)
    for n in range(4):
        outbox.send(mail(n))
    with pytest.raises(StoreError, match="the store is down"):
        outbox.deliver_due()
    assert [subject_of(raw) for _, _, raw in scripted.received] == [b"reply 0", b"reply 1"]
    assert outbox.counts() == {"sent": 1, "sending": 3}, "mail 2 went no further than DATA"
    store.failing = False if written == "at once" else None
    clock.advance(61)  # the claims expire
    assert outbox.deliver_due() == 3
    subjects = Counter(subject_of(raw) for _, _, raw in scripted.received)
    assert subjects == {b"reply 0": 1, b"reply 1": 2, b"reply 2": 1, b"reply 3": 1}


@pytest.mark.parametrize("kind", ["redis", "postgres", "postgres-prepared"])
def test_on_a_server_store_each_mail_is_recorded_before_the_next_one_reaches_the_relay(
    request, tmp_path, kind
):
    """The started writes on a real server: when the relay has mail n + 1, mail n is sent."""
    url = store_url(kind, request, tmp_path)
    reader = store_from_url(url)
    unrecorded: list[bytes] = []

    class Checking(Scripted):
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            before = len(self.received) - 1  # the mail accepted before this one
            if before >= 0:
                key = f"<reply-{before}@example.com>"
                record = reader.get("outgoing", key)
                if record is None or record.state != "sent":
                    unrecorded.append(key.encode())
            return await super().handle_DATA(server, session, envelope)

    scripted = Checking()
    store = store_from_url(url)
    try:
        with smtp_server(scripted) as port:
            outbox = Outbox(store, relay(port))
            for n in range(60):  # more than one claim of 50
                outbox.send(mail(n))
            assert outbox.deliver_due() == 60
        assert unrecorded == []
        assert outbox.counts() == {"sent": 60}
        subjects = Counter(subject_of(raw) for _, _, raw in scripted.received)
        assert subjects == Counter(f"reply {n}".encode() for n in range(60)), "each mail once"
    finally:
        store.close()
        reader.close()


def test_the_relay_gets_what_smtplib_sendmail_sends(handler, clock):
    """Dots at line starts, no final line end, display names and quoted local parts."""
    scripted, port = handler
    raw = b"From: a@example.com\r\nSubject: dots\r\n\r\n.one\r\n..two\r\nlast"
    recipients = ["Bob <bob@example.com>", '"odd one"@example.com', "carol@example.com"]
    with smtplib.SMTP("127.0.0.1", port) as plain:
        plain.sendmail("Helpdesk <helpdesk@example.com>", recipients, raw)
    outbox = Outbox(MemoryStore(clock=clock), relay(port), clock=clock)
    outbox.send(
        b"Message-ID: <dots@example.com>\r\n" + raw,
        sender="Helpdesk <helpdesk@example.com>",
        recipients=recipients,
    )
    assert outbox.deliver_due() == 1
    theirs, ours = scripted.received
    assert ours[:2] == theirs[:2]
    assert ours[2] == b"Message-ID: <dots@example.com>\r\n" + theirs[2]


def test_the_sender_thread_sends_what_is_queued_and_stops(handler):
    scripted, port = handler
    outbox = Outbox(MemoryStore(), relay(port), poll_interval=30)
    outbox.run_in_thread()
    try:
        outbox.send(mail(1))  # wakes the sender: no 30 s wait
        eventually(lambda: len(scripted.received) == 1, timeout=10)
        with pytest.raises(RuntimeError, match="already running"):
            outbox.run_in_thread()
    finally:
        outbox.stop()
    assert outbox.get("<reply-1@example.com>").state == "sent"


def test_a_view_of_a_mail_is_a_frozen_value(clock):
    outbox = Outbox(MemoryStore(), relay(free_port()), clock=clock)
    queued = outbox.send(mail(1))
    assert isinstance(queued, OutboundMail)
    with pytest.raises(AttributeError):
        queued.state = "sent"  # type: ignore[misc]


@pytest.mark.parametrize("kind", ["sqlite", "redis", "postgres", "postgres-prepared"])
def test_a_sender_killed_mid_run_loses_nothing_and_repeats_only_the_mail_in_flight(
    tmp_path, request, kind
):
    """kill -9 between the server's 250 and the record: that mail, and only it, goes twice.

    On Redis and PostgreSQL the records are started writes (sent once the next mail's MAIL
    FROM is, answered before its content): the same promise.
    """
    url = store_url(kind, request, tmp_path)
    store = store_from_url(url)
    killing, killed = threading.Event(), threading.Event()
    worker: list[subprocess.Popen[bytes]] = []

    class KillOnTenth(Scripted):
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            reply = await super().handle_DATA(server, session, envelope)
            if len(self.received) == 10 and not killing.is_set():
                killing.set()
                worker[0].kill()  # accepted here; the sender never hears the 250
                worker[0].wait(10)
                killed.set()
            return reply

    scripted = KillOnTenth()
    try:
        with smtp_server(scripted) as port:
            outbox = Outbox(store, relay(port))
            for n in range(30):
                outbox.send(mail(n))
            command = [sys.executable, str(WORKER), url, str(port)]
            worker.append(subprocess.Popen(command, stderr=subprocess.PIPE))
            deadline = time.monotonic() + 30
            while not killed.wait(0.1):  # (a sender that died on its own fails at once)
                if worker[0].poll() is not None and not killing.is_set():
                    raise AssertionError(f"the sender died: {worker[0].stderr.read()!r}")
                assert time.monotonic() < deadline, "the sender got to the tenth mail"
            assert worker[0].returncode == -signal.SIGKILL
            claimed = outbox.mails("sending")
            assert len(claimed) == 21, "claimed together; only the first was handed over"
            # A sender started after the dead one's claim expired (60 s: a FakeClock ahead).
            later = Outbox(store, relay(port), clock=FakeClock(wall=time.time() + 61))
            assert later.deliver_due() == 21
    finally:
        store.close()
        for process in worker:
            if process.poll() is None:
                process.kill()
            process.wait(10)
            if process.stderr is not None:
                process.stderr.close()
    subjects = Counter(subject_of(raw) for _, _, raw in scripted.received)
    assert set(subjects) == {f"reply {n}".encode() for n in range(30)}, "nothing lost"
    twice = [subject for subject, count in subjects.items() if count > 1]
    assert twice == [b"reply 9"], "only the mail in flight (the tenth) went twice"
    assert subjects[b"reply 9"] == 2


# -- mailtether queue ---------------------------------------------------------------------------


def queue_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["queue", *args], out=out)
    return code, out.getvalue()


def test_mailtether_queue_shows_the_queue_by_relay_and_domain_and_one_mails_history(
    handler, tmp_path
):
    scripted, port = handler
    scripted.rcpt = {"gone@example.org": "550 5.1.1 no such user"}
    db = tmp_path / "outbox.db"
    store = SQLiteStore(db)
    clock = FakeClock(wall=time.time())
    try:
        outbox = Outbox(store, [relay(port, name="smarthost")], clock=clock, retry=Fixed(600))
        outbox.send(mail(1, "alice@example.com"))
        outbox.send(mail(2, "gone@example.org"))
        outbox.send(mail(3, "loop@example.com", received=40))
        outbox.deliver_due()
        outbox.send(mail(4, "bob@example.com"))  # due now: active
    finally:
        store.close()
    url = f"sqlite://{db}"
    code, text = queue_cli("--store", url)
    assert code == 0
    assert "mails: failed 1, held 1, queued 1, sent 1" in text
    assert "smarthost" in text
    assert "example.org" in text
    assert "<reply-2@example.com>  failed" in text
    assert "550 5.1.1 no such user" in text
    code, text = queue_cli("--store", url, "--json")
    data = json.loads(text)
    assert data["relays"]["smarthost"]["active"] == 1
    assert data["relays"]["smarthost"]["failed"] == 1
    assert data["relays"]["smarthost"]["held"] == 1
    assert data["domains"]["example.org"]["failed"] == 1
    assert [m["message_id"] for m in data["attention"]] == [
        "<reply-2@example.com>",
        "<reply-3@example.com>",
    ]
    code, text = queue_cli("show", "<reply-2@example.com>", "--store", url)
    assert code == 0
    assert "failed   gone@example.org" in text
    assert "550 5.1.1 no such user" in text
    assert queue_cli("show", "<nope@x>", "--store", url)[0] == 1
    assert queue_cli("drop", "<reply-2@example.com>", "--store", url) == (
        0,
        "<reply-2@example.com>: dropped\n",
    )
    code, text = queue_cli("release", "<reply-3@example.com>", "--store", url, "--json")
    assert json.loads(text) == {
        "message_id": "<reply-3@example.com>",
        "ok": True,
        "result": "released",
    }
    assert queue_cli("release", "<reply-1@example.com>", "--store", url)[0] == 1, "sent"
    assert queue_cli("release", "--store", url)[0] == 1, "which mail?"


def test_mailtether_queue_run_sends_the_outbox_through_a_relay_url(handler, tmp_path):
    scripted, port = handler
    db = tmp_path / "outbox.db"
    store = SQLiteStore(db)
    try:
        outbox = Outbox(store, relay(port, name="queued-with-this-name"))
        outbox.send(mail(1, "alice@example.com"), relay="queued-with-this-name")
    finally:
        store.close()
    url = f"sqlite://{db}"
    assert queue_cli("run", "--store", url) == (
        2,
        "mailtether queue run: give the relay: --relay smtps://user:pw@host/, "
        "MAILTETHER_RELAY, or relay = … in the settings file\n",
    )
    relay_url = f"smtp://127.0.0.1:{port}/?security=plain"
    # The mail names a relay this sender does not have: it waits, nothing is lost.
    assert queue_cli("run", "--once", "--relay", relay_url, "--store", url) == (
        0,
        "sent 0; mails: queued 1\n",
    )
    store = SQLiteStore(db)
    try:  # queued through the relay the command line names (by host:port)
        Outbox(store, relay(port)).send(mail(2, "bob@example.com"))
    finally:
        store.close()
    assert queue_cli("run", "--once", "--relay", relay_url, "--store", url) == (
        0,
        "sent 1; mails: queued 1, sent 1\n",
    )
    assert [recipients for _, recipients, _ in scripted.received] == [("bob@example.com",)]
    store = SQLiteStore(db)
    try:
        Outbox(store, relay(port)).send(mail(3, "carol@example.com"))
    finally:
        store.close()
    out = io.StringIO()  # the relay from the environment, as the other commands take it
    code = main(
        ["queue", "run", "--once", "--store", url],
        out=out,
        environ={"MAILTETHER_RELAY": relay_url},
    )
    assert (code, out.getvalue()) == (0, "sent 1; mails: queued 1, sent 2\n")
    code, text = queue_cli(
        "run", "--once", "--relay", "smtp://u:s3cret@127.0.0.1:1/?bad=1", "--store", url
    )
    assert code == 3
    assert "s3cret" not in text


@pytest.mark.parametrize("kind", ["memory", "redis", "postgres"])
def test_a_relay_that_breaks_while_the_mail_before_is_recorded_loses_nothing(
    request, tmp_path, clock, kind
):
    """The connection cut at mail 2's MAIL FROM, as mail 1's record is written (started, on
    Redis and PostgreSQL): mail 1 is recorded sent, the others go in the next pass, once."""
    store = MemoryStore(clock=clock) if kind == "memory" else None
    store = store or store_from_url(store_url(kind, request, tmp_path))
    proxy = FaultProxy(("127.0.0.1", 1))

    class CutAfterFirst(Scripted):
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            if not self.received:  # mail 1 is accepted; the next MAIL FROM is cut
                proxy.cut_on(b"FROM:<", direction="up")  # smtplib: "mail FROM:<...>"
            return await super().handle_DATA(server, session, envelope)

    scripted = CutAfterFirst()
    try:
        with smtp_server(scripted) as port:
            proxy = FaultProxy(("127.0.0.1", port)).start()
            try:
                outbox = Outbox(
                    store, relay(proxy.port, timeout=2), clock=clock, retry=Fixed(60), skip_after=2
                )
                for n in range(3):
                    outbox.send(mail(n))
                assert outbox.deliver_due() == 1
                first = outbox.get("<reply-0@example.com>")
                assert first is not None
                assert first.state == "sent", "recorded while the next mail's MAIL FROM was cut"
                assert outbox.counts() == {"sent": 1, "queued": 2}, "none left claimed"
                proxy.pass_through()
                clock.advance(60)
                assert outbox.deliver_due() == 2
            finally:
                proxy.stop()
        subjects = Counter(subject_of(raw) for _, _, raw in scripted.received)
        assert subjects == Counter(f"reply {n}".encode() for n in range(3)), "each mail once"
    finally:
        store.close()


@pytest.mark.parametrize("fault", ["blackhole", "fragment", "cut_mid_mail"])
def test_a_relay_that_goes_silent_trickles_or_breaks_mid_mail_loses_nothing(handler, clock, fault):
    """Silent: the relay's timeout ends the try; split: read whole; cut: tried again."""
    scripted, port = handler
    with FaultProxy(("127.0.0.1", port)) as proxy:
        outbox = Outbox(MemoryStore(), relay(proxy.port, timeout=0.5), clock=clock, retry=Fixed(60))
        outbox.send(mail(1))
        if fault == "blackhole":
            proxy.blackhole()
        elif fault == "fragment":
            proxy.fragment(1, 3, 0.0, seed=1)
        else:
            proxy.cut_on(b"\r\n.\r\n", direction="up")  # the end of the mail, halfway
        sent = outbox.deliver_due()
        proxy.pass_through()
        result = outbox.get("<reply-1@example.com>")
        assert result is not None
        if fault == "fragment":  # every reply in pieces of 1-3 bytes, read whole
            assert sent == 1
            assert result.state == "sent"
        else:
            assert sent == 0
            assert result.state == "queued", "delayed, not failed"
            assert result.recipients == {"alice@example.com": "pending"}
            clock.advance(60)
            assert outbox.deliver_due() == 1
    assert len(scripted.received) == 1, "sent once"
