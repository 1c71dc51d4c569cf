"""Answers that break the protocol end in a named error and a retry, never a dead thread."""

from __future__ import annotations

import pytest

from helpers import eventually
from mailtether import (
    ConnectionLost,
    Fixed,
    GuardState,
    ImapConnection,
    ImapSettings,
    MalformedReply,
    MemoryStore,
    MessageKey,
    Pop3Poller,
    SourceState,
    StatusBoard,
)
from scripted import Scripted

SELECT_WITHOUT_UIDVALIDITY = b"* 3 EXISTS\r\n* OK [UIDNEXT 4] next\r\nTAG OK [READ-WRITE] done\r\n"


def settings(server: Scripted) -> ImapSettings:
    return ImapSettings("127.0.0.1", "someone", "a-long-secret", port=server.port, security="plain")


def test_a_select_without_uidvalidity_asks_status_for_it():
    status = b"* STATUS INBOX (UIDVALIDITY 42)\r\nTAG OK done\r\n"
    with Scripted.imap({b"SELECT": SELECT_WITHOUT_UIDVALIDITY, b"STATUS": status}) as server:
        connection = ImapConnection.open(settings(server))
        try:
            assert connection.uidvalidity == 42
        finally:
            connection.close()
    assert server.commands.count(b"STATUS") == 1


@pytest.mark.parametrize(
    "status",
    [
        b"* STATUS INBOX (MESSAGES 3)\r\nTAG OK done\r\n",
        b"* STATUS INBOX (UIDVALIDITY 0)\r\nTAG OK done\r\n",
    ],
)
def test_no_valid_uidvalidity_at_all_is_a_malformed_reply(status):
    answers = {b"SELECT": SELECT_WITHOUT_UIDVALIDITY, b"STATUS": status}
    with (
        Scripted.imap(answers) as server,
        pytest.raises(MalformedReply, match="no valid UIDVALIDITY for 'INBOX'") as caught,
    ):
        ImapConnection.open(settings(server))
    assert isinstance(caught.value, ConnectionLost), "retried on the reconnect strategy"
    assert caught.value.retryable


GOOD_UIDL = b"+OK\r\n1 aaa\r\n2 bbb\r\n.\r\n"


@pytest.mark.parametrize(
    "line",
    [b"x aaa", b"1", b"0 aaa", b"-1 aaa", b"1 " + b"u" * 600, b"\xff\xfe 1"],
    ids=["not-a-number", "no-id", "zero", "negative", "overlong", "binary"],
)
def test_a_malformed_uidl_line_is_named(line):
    uidl = b"+OK\r\n1 aaa\r\n" + line + b"\r\n.\r\n"
    handled: list[object] = []
    with Scripted.pop3({b"UIDL": uidl}) as server:
        poller = Pop3Poller(settings(server), handled.append, store=MemoryStore(), lease_ttl=None)
        with pytest.raises(MalformedReply, match="the server's UIDL answer has a malformed line"):
            poller.poll_once()
    assert handled == [], "nothing is handed out on a listing that cannot be read"


def test_a_poller_fed_garbage_keeps_retrying_and_says_why():
    store = MemoryStore()
    with Scripted.pop3({b"UIDL": b"+OK\r\ngarbage\r\n.\r\n"}) as server:
        poller = Pop3Poller(
            settings(server),
            lambda delivery: None,
            store=store,
            lease_ttl=None,
            reconnect=Fixed(0.05),
            heartbeat=None,
        )
        thread = poller.run_in_thread()
        try:
            board = StatusBoard(store)

            def attempts() -> int:
                status = board.get(poller.name)
                return 0 if status is None else status.attempts

            eventually(lambda: attempts() >= 3)  # not reset by each login the server takes
            status = board.get(poller.name)
            assert status is not None
            assert status.state is SourceState.RETRYING
            assert "malformed line 'garbage'" in status.reason
            assert thread.is_alive()
        finally:
            poller.stop()


def test_one_mail_a_pop3_server_refuses_costs_itself_an_attempt_not_the_session():
    def retr(line: bytes) -> bytes:
        number = int(line.split()[1])
        if number == 2:
            return b"-ERR [SYS/TEMP] cannot read message 2\r\n"
        return b"+OK\r\nMessage-ID: <m%d@x>\r\nSubject: m%d\r\n\r\nbody\r\n.\r\n" % (number, number)

    uidl = b"+OK\r\n1 one\r\n2 two\r\n3 three\r\n.\r\n"
    store = MemoryStore()
    handled: list[str] = []
    with Scripted.pop3({b"UIDL": uidl, b"RETR": retr}) as server:
        poller = Pop3Poller(
            settings(server),
            lambda delivery: handled.append(str(delivery.message["Subject"])),
            store=store,
            lease_ttl=None,
        )
        assert poller.poll_once() == 2
    assert sorted(handled) == ["m1", "m3"]
    assert server.commands.count(b"DELE") == 2, "the two handled mails are deleted"
    failed = poller.guard.lookup(MessageKey.pop3("someone", "two"))
    assert failed is not None
    assert failed.state is GuardState.FAILED
    assert failed.reason == (
        "the server could not give message 2: RETR: the server said -ERR [SYS/TEMP] cannot "
        "read message 2"
    )
