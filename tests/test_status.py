"""StatusBoard: states, persistence, resume, de-duplicated notifications; SmtpNotifier."""

from __future__ import annotations

import time

import pytest

from mailtether import (
    LoggingNotifier,
    MemoryStore,
    SmtpNotifier,
    SourceState,
    StatusBoard,
    StatusChange,
)
from mailtether.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sent() -> list[StatusChange]:
    return []


@pytest.fixture
def board(clock, sent) -> StatusBoard:
    return StatusBoard(
        MemoryStore(clock=clock), notifiers=[sent.append], quiet_period=600, clock=clock
    )


def test_states_are_recorded_with_since(board, clock):
    board.set("a@x/INBOX", SourceState.ONLINE)
    clock.advance(30)
    board.set("a@x/INBOX", SourceState.RETRYING, reason="reset", attempts=1)
    status = board.get("a@x/INBOX")
    assert status.state is SourceState.RETRYING
    assert status.since == clock.time()
    assert status.reason == "reset"
    clock.advance(5)
    board.set("a@x/INBOX", SourceState.RETRYING, attempts=2)
    assert board.get("a@x/INBOX").since == clock.time() - 5, "same state: since unchanged"


def test_notifies_on_changes_only(board, sent):
    board.set("s", SourceState.ONLINE)
    board.set("s", SourceState.ONLINE, processed=3)
    board.set("s", SourceState.RETRYING, reason="timeout")
    assert [(c.previous, c.current.state) for c in sent] == [
        (None, SourceState.ONLINE),
        (SourceState.ONLINE, SourceState.RETRYING),
    ]
    assert sent[-1].sentence() == "s is retrying (was online): timeout"


def test_a_flapping_source_does_not_flood(board, sent, clock):
    for _ in range(10):
        board.set("s", SourceState.ONLINE)
        board.set("s", SourceState.RETRYING)
    assert len(sent) == 2
    clock.advance(601)
    board.set("s", SourceState.ONLINE)
    assert len(sent) == 3
    assert sent[-1].suppressed == 18
    assert "18 similar changes not sent" in sent[-1].sentence()


def test_blocked_is_always_sent(board, sent):
    for _ in range(3):
        board.set("s", SourceState.RETRYING)
        board.set("s", SourceState.BLOCKED, reason="credentials rejected")
    assert sum(1 for c in sent if c.current.state is SourceState.BLOCKED) == 3


def test_resume_only_a_blocked_source(board):
    assert board.resume("unknown") is False
    board.set("s", SourceState.ONLINE)
    assert board.resume("s") is False
    board.set("s", SourceState.BLOCKED, reason="x")
    assert board.resume("s") is True
    assert board.get("s").resume_requested


def test_counts_and_snapshot(board):
    board.set("b", SourceState.ONLINE)
    board.set("a", SourceState.OFFLINE)
    board.count("b", processed=2, failed=1)
    board.count("b", processed=1)
    assert [s.source for s in board.snapshot()] == ["a", "b"]
    assert (board.get("b").processed, board.get("b").failed) == (3, 1)


def test_a_failing_notifier_does_not_stop_the_board(clock, sent):
    def broken(change: StatusChange) -> None:
        raise RuntimeError("smtp down")

    board = StatusBoard(MemoryStore(clock=clock), notifiers=[broken, sent.append], clock=clock)
    board.set("s", SourceState.BLOCKED)
    assert len(sent) == 1


def test_logging_notifier_levels(board, caplog):
    board.notifiers.append(LoggingNotifier())
    board.set("s", SourceState.BLOCKED, reason="credentials rejected")
    assert "s is blocked: credentials rejected" in caplog.text
    assert caplog.records[-1].levelname == "ERROR"


def test_status_round_trips_through_the_store(board):
    board.set("s", SourceState.RETRYING, attempts=3, next_attempt_at=123.0, reason="x")
    again = StatusBoard(board.store)
    assert again.get("s") == board.get("s")


# -- e-mail to admins through a real SMTP server -------------------------------------------------


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    received = []

    class Keep(Message):
        def handle_message(self, message) -> None:
            received.append(message)

    from servers import free_port

    controller = Controller(Keep(), hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, received
    controller.stop()


def test_smtp_notifier_mails_the_admins(smtp_server, board):
    controller, received = smtp_server
    notifier = SmtpNotifier(
        "127.0.0.1",
        "mailtether@example.com",
        ["admin@example.com", "ops@example.com"],
        port=controller.port,
        security="plain",
        only={"blocked"},
        password="smtp-secret",
    )
    board.notifiers.append(notifier)
    board.set("support@example.com/INBOX", SourceState.ONLINE)
    board.set("support@example.com/INBOX", SourceState.BLOCKED, reason="credentials rejected")
    assert notifier.flush(timeout=10)
    assert len(received) == 1, "only the change into BLOCKED is mailed"
    message = received[0]
    assert message["Subject"] == "[mailtether] support@example.com/INBOX is blocked"
    assert message["To"] == "admin@example.com, ops@example.com"
    assert "credentials rejected" in message.get_payload()
    assert "mailtether resume" in message.get_payload()
    assert "smtp-secret" not in repr(notifier)


def test_smtp_notifier_needs_recipients():
    from mailtether import ConfigError

    with pytest.raises(ConfigError, match="recipient"):
        SmtpNotifier("localhost", "a@example.com", [])


def test_a_silent_mail_server_never_holds_up_the_source(smtp_server, board, caplog):
    """The admins' mail server is down in the same outage: the listener must not wait for it."""
    from mailtether.testing import FaultProxy

    controller, received = smtp_server
    with FaultProxy(("127.0.0.1", controller.port)) as proxy:
        proxy.drop_new()  # connections accepted, then silence
        notifier = SmtpNotifier(
            "127.0.0.1",
            "m@example.com",
            ["admin@example.com"],
            port=proxy.port,
            security="plain",
            timeout=1.0,
        )
        board.notifiers.append(notifier)
        started = time.monotonic()
        board.set("a", SourceState.RETRYING, reason="reset")
        board.set("a", SourceState.BLOCKED, reason="credentials rejected")
        assert time.monotonic() - started < 0.5, "set() returned before any mail was sent"
        assert not notifier.flush(timeout=0.2), "still trying"
        with caplog.at_level("WARNING", logger="mailtether.status"):
            assert notifier.flush(timeout=10)
        failures = [r for r in caplog.records if "could not mail" in r.getMessage()]
        assert len(failures) == 2
        proxy.pass_through()
        board.set("a", SourceState.ONLINE)
        assert notifier.flush(timeout=10)
    assert [m["Subject"] for m in received] == ["[mailtether] a is online"]
