"""The outbox on the status board: a relay failing for long is OFFLINE; the error queue notifies.

Seed 003/004: a person hears of a relay that keeps failing (RETRYING, then OFFLINE after the
board's ``offline_after``, ONLINE again after a delivery) and of every mail that lands in the
error queue (folded when many do at once).
"""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from mailtether import (
    Fixed,
    MemoryStore,
    Outbox,
    SmtpRelay,
    SourceState,
    StatusBoard,
    StatusChange,
)
from mailtether.testing import FakeClock
from servers import free_port
from servers.smtp import Scripted, smtp_server


def mail(n: int, to: str = "alice@example.com") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "helpdesk@example.com"
    message["To"] = to
    message["Subject"] = f"reply {n}"
    message["Message-ID"] = f"<reply-{n}@example.com>"
    message.set_content(f"Your ticket {n}\n")
    return message


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def told() -> list[StatusChange]:
    return []


@pytest.fixture
def board(clock, told) -> StatusBoard:
    return StatusBoard(
        MemoryStore(clock=clock),
        notifiers=[told.append],
        offline_after=3600,
        quiet_period=600,
        clock=clock,
    )


@pytest.fixture
def smtp() -> Iterator[tuple[Scripted, int]]:
    scripted = Scripted()
    with smtp_server(scripted) as port:
        yield scripted, port


def test_a_relay_failing_past_offline_after_is_offline_then_online_again(board, told, clock):
    port = free_port()  # nothing listens there yet
    relay = SmtpRelay("127.0.0.1", port=port, security="plain", timeout=5)
    outbox = Outbox(MemoryStore(clock=clock), relay, status=board, clock=clock, retry=Fixed(600))
    outbox.send(mail(1))
    source = f"outbox:{relay.name}"
    states = []
    for _ in range(8):  # every 10 minutes for 80 minutes
        outbox.deliver_due()
        states.append(board.get(source).state)
        clock.advance(600)
    assert states[:6] == [SourceState.RETRYING] * 6
    assert states[6:] == [SourceState.OFFLINE] * 2, "failing for an hour: OFFLINE"
    scripted = Scripted()
    with smtp_server(scripted, port=port):
        assert outbox.deliver_due() == 1
    assert board.get(source).state is SourceState.ONLINE
    assert [c.current.state for c in told if not c.event] == [
        SourceState.RETRYING,
        SourceState.OFFLINE,
        SourceState.ONLINE,
    ]


def test_each_mail_sent_to_the_error_queue_is_told_folded_when_many(board, told, smtp, clock):
    scripted, port = smtp
    scripted.rcpt = {"gone@example.com": "550 5.1.1 no such user"}
    relay = SmtpRelay("127.0.0.1", port=port, security="plain", timeout=5)
    outbox = Outbox(MemoryStore(clock=clock), relay, status=board, clock=clock)
    for n in range(3):
        outbox.send(mail(n, "gone@example.com"))
    outbox.deliver_due()
    assert outbox.counts() == {"failed": 3}
    notices = [c for c in told if c.event]
    assert len(notices) == 1, "three at once: one notice, the others folded"
    assert "mail <reply-0@example.com> is in the error queue" in notices[0].event
    assert "550 5.1.1 no such user" in notices[0].event
    assert "mailtether queue show" in notices[0].event
    clock.advance(601)
    outbox.send(mail(9, "gone@example.com"))
    outbox.deliver_due()
    last = [c for c in told if c.event][-1]
    assert "<reply-9@example.com>" in last.event
    assert last.suppressed == 2


def test_a_pass_tells_the_board_online_once_not_once_a_mail(board, smtp, clock, monkeypatch):
    _, port = smtp
    relay = SmtpRelay("127.0.0.1", port=port, security="plain", timeout=5)
    outbox = Outbox(MemoryStore(clock=clock), relay, status=board, clock=clock)
    for n in range(5):
        outbox.send(mail(n))
    calls: list[SourceState] = []
    real = StatusBoard.set

    def counted(self, source, state, **fields):  # type: ignore[no-untyped-def]
        calls.append(state)
        return real(self, source, state, **fields)

    monkeypatch.setattr(StatusBoard, "set", counted)
    assert outbox.deliver_due() == 5
    assert calls == [SourceState.ONLINE], "two store round trips a mail saved"


def test_ordered_senders_work_a_relay_one_at_a_time_in_queued_order(smtp, tmp_path):
    """Several senders on one store; where the order matters, one sender per relay."""
    import threading

    from mailtether import SQLiteStore

    scripted, port = smtp
    store = SQLiteStore(tmp_path / "outbox.db")
    relay = SmtpRelay("127.0.0.1", port=port, security="plain", timeout=5)
    senders = [Outbox(store, relay, ordered=True) for _ in range(3)]
    for n in reversed(range(20)):  # queued in this order: 19, 18, ... 0
        senders[0].send(mail(n))
    assert store.acquire("outbox-relay:" + relay.name, "a-sender-elsewhere", 5.0) is not None
    assert [s.deliver_due() for s in senders] == [0, 0, 0], "another sender holds the relay"
    assert store.release(store.holder("outbox-relay:" + relay.name))
    threads = [threading.Thread(target=s.deliver_due) for s in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for sender in senders:
        sender.stop()
    subjects = [raw.split(b"Subject: ")[1].split(b"\r\n")[0] for _, _, raw in scripted.received]
    assert subjects == [f"reply {n}".encode() for n in reversed(range(20))], "queued order"
    assert senders[0].counts() == {"sent": 20}
    store.close()
