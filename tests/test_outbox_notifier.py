"""OutboxNotifier: status changes queued as mail in an outbox, sent by it to a real aiosmtpd."""

from __future__ import annotations

import email
import email.policy
import logging
from collections.abc import Iterator

import pytest

from mailtether import (
    ConfigError,
    MemoryStore,
    Outbox,
    SmtpRelay,
    SourceState,
    StatusBoard,
    StoreError,
)
from mailtether._outbox_notifier import OutboxNotifier
from mailtether.testing import FakeClock
from servers import free_port
from servers.smtp import Scripted, smtp_server


def relay(port: int) -> SmtpRelay:
    return SmtpRelay("127.0.0.1", port=port, security="plain", timeout=5)


def parsed(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def smtp() -> Iterator[Scripted]:
    handler = Scripted()
    with smtp_server(handler) as port:
        handler.port = port
        yield handler


@pytest.fixture
def store(clock) -> MemoryStore:
    return MemoryStore(clock=clock)


@pytest.fixture
def board(store, clock) -> StatusBoard:
    return StatusBoard(store, notifiers=[], quiet_period=600, clock=clock)


def test_a_change_becomes_a_queued_mail_that_the_outbox_delivers(smtp, store, board, clock):
    outbox = Outbox(store, relay(smtp.port), clock=clock)
    board.notifiers.append(
        OutboxNotifier(outbox, "mailtether@example.com", ["admin@example.com", "ops@example.com"])
    )
    board.set("support@example.com/INBOX", SourceState.BLOCKED, reason="credentials rejected")
    assert outbox.counts() == {"queued": 1}, "in the store when the board's set() returns"
    assert smtp.received == []
    assert outbox.deliver_due() == 1
    [(sender, to, raw)] = smtp.received
    assert (sender, to) == ("mailtether@example.com", ("admin@example.com", "ops@example.com"))
    message = parsed(raw)
    assert message["Subject"] == "[mailtether] support@example.com/INBOX is blocked"
    assert message["To"] == "admin@example.com, ops@example.com"
    body = message.get_content().replace("\r\n", "\n")
    assert body.startswith("support@example.com/INBOX is blocked: credentials rejected\n")
    assert "mailtether resume 'support@example.com/INBOX'" in body
    assert outbox.counts() == {"sent": 1}


def test_changes_told_while_the_relay_is_down_are_sent_once_it_is_back(store, board, clock):
    """The relay's own outage is told too: queued while it is down, mailed after."""
    port = free_port()  # nothing listens there yet
    outbox = Outbox(store, relay(port), clock=clock, status=board)
    board.notifiers.append(OutboxNotifier(outbox, "mailtether@example.com", ["admin@example.com"]))
    board.set("a@x/INBOX", SourceState.BLOCKED, reason="credentials rejected")
    assert outbox.deliver_due() == 0
    assert board.get(f"outbox:127.0.0.1:{port}").state is SourceState.RETRYING
    waiting = {mail.attempts for mail in outbox.mails("queued")}
    assert waiting == {0, 1}, "the source's change (tried once), and the relay's own"
    handler = Scripted()
    with smtp_server(handler, port=port):
        clock.advance(60)  # the outbox's schedule: the first try again after a minute
        assert outbox.deliver_due() == 2
        assert outbox.counts() == {"sent": 2, "queued": 1}, "the relay's ONLINE, just told"
        assert outbox.deliver_due() == 1
    subjects = [parsed(raw)["Subject"] for _, _, raw in handler.received]
    assert sorted(subjects[:2]) == [
        "[mailtether] a@x/INBOX is blocked",
        f"[mailtether] outbox:127.0.0.1:{port} is retrying",
    ]
    assert subjects[2] == f"[mailtether] outbox:127.0.0.1:{port} is online"


def test_each_change_is_a_mail_of_its_own_even_when_alike(smtp, store, board, clock):
    outbox = Outbox(store, relay(smtp.port), clock=clock)
    board.notifiers.append(OutboxNotifier(outbox, "mailtether@example.com", ["admin@example.com"]))
    board.notice("a", "held", "mail 7 held: too large")
    clock.advance(601)  # past the board's quiet period
    board.notice("a", "held", "mail 7 held: too large")
    assert outbox.counts() == {"queued": 2}
    assert outbox.deliver_due() == 2
    ids = [parsed(raw)["Message-ID"] for _, _, raw in smtp.received]
    assert len(set(ids)) == 2
    assert all(i.endswith(".mailtether-status@mailtether.invalid>") for i in ids)


def test_only_picks_states_and_notices_always_pass(smtp, store, board, clock):
    outbox = Outbox(store, relay(smtp.port), clock=clock)
    notifier = OutboxNotifier(outbox, "m@example.com", ["admin@example.com"], only={"blocked"})
    board.notifiers.append(notifier)
    board.set("a", SourceState.ONLINE)
    board.set("a", SourceState.RETRYING)
    board.notice("a", "error queue", "mail <m@x> is in the error queue: 550 no")
    board.set("a", SourceState.BLOCKED)
    outbox.deliver_due()
    assert sorted(parsed(raw)["Subject"] for _, _, raw in smtp.received) == [
        "[mailtether] a is blocked",
        "[mailtether] a: mail <m@x> is in the error queue: 550 no",
    ], "the outbox keeps no order among its mails"

    assert repr(notifier) == (
        f"OutboxNotifier({outbox!r}, to=['admin@example.com'], only=['blocked'])"
    )


def test_a_status_mail_that_fails_is_logged_not_mailed_about_again(
    smtp, store, board, clock, caplog
):
    """Else a refused admin address would be told of its own refusal, hourly, for ever."""
    smtp.rcpt["admin@example.com"] = "550 5.1.1 no such user"
    outbox = Outbox(store, relay(smtp.port), clock=clock, status=board)
    board.notifiers.append(OutboxNotifier(outbox, "m@example.com", ["admin@example.com"]))
    board.set("a", SourceState.BLOCKED, reason="credentials rejected")
    with caplog.at_level(logging.ERROR, logger="mailtether.status"):
        outbox.deliver_due()
    assert outbox.counts() == {"failed": 1}, "no mail about the failed mail"
    [error] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert error.startswith(
        f"outbox notifier: a status mail failed, not mailed again: outbox:127.0.0.1:{smtp.port}: "
        "mail <"
    )
    assert "is in the error queue: refused for good: admin@example.com: 550" in error


def test_another_mail_in_the_error_queue_is_mailed_about(smtp, store, board, clock):
    smtp.rcpt["gone@example.com"] = "550 5.1.1 no such user"
    outbox = Outbox(store, relay(smtp.port), clock=clock, status=board)
    board.notifiers.append(OutboxNotifier(outbox, "m@example.com", ["admin@example.com"]))
    answer = email.message.EmailMessage()
    answer["From"], answer["To"] = "helpdesk@example.com", "gone@example.com"
    answer["Message-ID"] = "<reply-1@example.com>"
    answer.set_content("Closed.\n")
    outbox.send(answer)
    outbox.deliver_due()
    assert outbox.counts() == {"failed": 1, "queued": 1}
    outbox.deliver_due()
    (_, _, raw) = smtp.received[-1]
    assert parsed(raw)["Subject"].startswith(
        f"[mailtether] outbox:127.0.0.1:{smtp.port}: mail <reply-1@example.com> is in the error"
    )


def test_a_store_that_refuses_the_mail_is_logged_and_the_board_goes_on(clock, caplog):
    class Down(MemoryStore):
        def put(self, namespace, key, state, data, *, expect=None):  # type: ignore[no-untyped-def]
            if namespace == "outgoing":
                raise StoreError("the store is down")
            return super().put(namespace, key, state, data, expect=expect)

    store = Down(clock=clock)
    outbox = Outbox(store, relay(25), clock=clock)
    board = StatusBoard(store, notifiers=[], clock=clock)
    board.notifiers.append(OutboxNotifier(outbox, "m@example.com", ["admin@example.com"]))
    with caplog.at_level(logging.ERROR, logger="mailtether.status"):
        board.set("a", SourceState.BLOCKED, reason="credentials rejected")
    assert board.get("a").state is SourceState.BLOCKED
    assert [r.getMessage() for r in caplog.records] == [
        "outbox notifier: could not queue the mail (the store is down); not told: "
        "a is blocked: credentials rejected"
    ]


def test_a_named_relay_is_used_and_an_unknown_one_refused(smtp, store, clock):
    outbox = Outbox(store, {"main": relay(free_port()), "alerts": relay(smtp.port)}, clock=clock)
    board = StatusBoard(store, notifiers=[], clock=clock)
    board.notifiers.append(
        OutboxNotifier(outbox, "m@example.com", ["admin@example.com"], relay="alerts")
    )
    board.set("a", SourceState.BLOCKED)
    assert outbox.deliver_due() == 1
    assert len(smtp.received) == 1
    with pytest.raises(ConfigError, match="no relay named 'other'"):
        OutboxNotifier(outbox, "m@example.com", ["admin@example.com"], relay="other")


@pytest.mark.parametrize(
    ("recipients", "only", "says"),
    [
        ([], None, "at least one recipient"),
        (["a@example.com"], "blocked", "not the string"),
        (["a@example.com"], {"stale"}, "'stale', which no status board tells of"),
    ],
)
def test_settings_that_cannot_work_are_refused(store, recipients, only, says):
    outbox = Outbox(store, relay(25))
    with pytest.raises(ConfigError, match=says):
        OutboxNotifier(outbox, "m@example.com", recipients, only=only)
