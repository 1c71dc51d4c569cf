"""Step deadlines: a step that trickles is cut at its deadline, named; a progressing fetch is not.

A socket timeout bounds each read only. These servers send each byte well within it, and
the whole step never: greeting, SELECT, POP3 greeting. Each case fails within its deadline
plus half a second, in a sentence that names the step. A large mail that arrives slowly but
steadily gets the time its size needs.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from mailtether import (
    ImapConnection,
    ImapListener,
    ImapSettings,
    Keepalive,
    MemoryStore,
    Pop3Poller,
    ResponseTimeout,
)
from mailtether._step_deadlines import StepDeadlines, overran
from mailtether.pop3._connection import Pop3Connection
from mailtether.testing import FaultProxy

SLACK = 0.5  # what the issue allows past a deadline


def settings(port: int, user: str = "someone", password: str = "a-long-secret") -> ImapSettings:
    return ImapSettings("127.0.0.1", user, password, port=port, security="plain", connect_timeout=1)


@pytest.fixture
def trickler() -> Iterator[int]:
    """A server that greets one byte every 0.1 s, a line that never ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=trickle, args=(client,), daemon=True).start()

    def trickle(client: socket.socket) -> None:
        with client:
            for byte in b"* OK " + b"x" * 10_000:
                if stop.wait(0.1):
                    return
                try:
                    client.sendall(bytes([byte]))
                except OSError:
                    return

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()


def test_a_step_past_its_deadline_cuts_the_socket_and_names_the_step():
    deadlines = StepDeadlines()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        deadlines.attach(ours)
        started = time.monotonic()
        with deadlines.step("reading the greeting", 0.3) as step:
            try:
                data = ours.recv(10)  # nothing comes: the deadline cuts it
            except OSError as error:
                data, cause = b"", overran(step, error)
            else:
                cause = overran(step, OSError("the read returned"))
            assert isinstance(cause, ResponseTimeout)
        assert data == b"", "the blocked read returned when the step was cut"
        assert 0.3 <= time.monotonic() - started < 0.3 + SLACK
        assert step.expired
        error = step.error()
        assert isinstance(error, ResponseTimeout)
        assert str(error).startswith("reading the greeting: not finished within 0.3 s")
    deadlines.close()


def test_a_step_done_in_time_leaves_the_socket_alone():
    deadlines = StepDeadlines()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        deadlines.attach(ours)
        with deadlines.step("a quick one", 0.2) as step:
            theirs.sendall(b"hello")
            assert ours.recv(5) == b"hello"
        time.sleep(0.4)  # past the deadline: a finished step must not cut anything
        theirs.sendall(b"again")
        assert ours.recv(5) == b"again"
        assert not step.expired
        assert overran(step, OSError("x")).args == ("x",)
    deadlines.close()


def test_a_trickled_imap_greeting_fails_at_the_steps_deadline(trickler):
    keepalive = Keepalive(response_timeout=1)
    started = time.monotonic()
    with pytest.raises(ResponseTimeout) as raised:
        ImapConnection.open(settings(trickler), keepalive=keepalive)
    took = time.monotonic() - started
    # connect_timeout (1 s) + response_timeout (1 s): the TCP, TLS and greeting step
    assert took < 2 + SLACK, f"the greeting held the step for {took:.1f} s"
    assert f"connecting to 127.0.0.1:{trickler}" in str(raised.value)
    assert "not finished within 2 s" in str(raised.value)


def test_a_trickled_select_answer_fails_at_the_steps_deadline(mailbox):
    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as proxy:
        keepalive = Keepalive(response_timeout=1.5)
        target = settings(proxy.port, mailbox.user, mailbox.password)
        connection = ImapConnection.open(target, keepalive=keepalive, select_folder=False)
        try:
            proxy.set_bandwidth(40)  # a byte every 25 ms: each read is quick, SELECT is not
            started = time.monotonic()
            with pytest.raises(ResponseTimeout) as raised:
                connection.select("INBOX")
            took = time.monotonic() - started
        finally:
            connection.close()
    assert took < 1.5 + SLACK, f"SELECT's answer held the step for {took:.1f} s"
    assert str(raised.value).startswith("selecting 'INBOX': not finished within 1.5 s")
    assert not connection.alive


def test_a_large_mail_arriving_steadily_gets_the_time_its_size_needs(mailbox):
    body = b"y" * 76 + b"\r\n"
    raw = b"Subject: big\r\nMessage-ID: <big@x>\r\n\r\n" + body * 8000  # about 625 KiB
    mailbox.append(raw)
    seen: list[bytes] = []
    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as proxy:
        proxy.set_bandwidth(250_000)  # 2.5 s for the mail, past response_timeout
        listener = ImapListener(
            settings(proxy.port, mailbox.user, mailbox.password),
            lambda delivery: seen.append(delivery.raw),
            store=MemoryStore(),
            keepalive=Keepalive(response_timeout=1),
            lease_ttl=None,
        )
        started = time.monotonic()
        assert listener.poll_once() == 1
        took = time.monotonic() - started
    assert took > 1, "the fetch took longer than the step deadline alone"
    assert len(seen) == 1
    assert seen[0].endswith(body)


def test_a_trickled_pop3_greeting_fails_at_the_steps_deadline(trickler):
    started = time.monotonic()
    with pytest.raises(ResponseTimeout) as raised:
        Pop3Connection.open(settings(trickler), timeout=1)
    took = time.monotonic() - started
    assert took < 1 + SLACK, f"the greeting held the step for {took:.1f} s"
    assert f"connecting to 127.0.0.1:{trickler}" in str(raised.value)


def test_a_trickled_pop3_answer_fails_at_the_steps_deadline(mailbox):
    for n in range(3):
        mailbox.append(f"Subject: {n}\r\nMessage-ID: <{n}@x>\r\n\r\nbody {n}\r\n".encode())
    with FaultProxy(("127.0.0.1", mailbox.server.pop3_port)) as proxy:
        target = settings(proxy.port, mailbox.user, mailbox.password)
        connection = Pop3Connection.open(target, timeout=1)
        try:
            proxy.set_bandwidth(20)
            started = time.monotonic()
            with pytest.raises(ResponseTimeout) as raised:
                connection.call("UIDL", connection.pop.uidl)
            took = time.monotonic() - started
        finally:
            connection.close()
    assert took < 1 + SLACK, f"UIDL's answer held the step for {took:.1f} s"
    assert str(raised.value).startswith("UIDL: not finished within 1 s")


def test_the_poller_reports_a_trickling_server_as_a_named_step(mailbox):
    mailbox.append(b"Subject: x\r\nMessage-ID: <x@x>\r\n\r\nx\r\n")
    with FaultProxy(("127.0.0.1", mailbox.server.pop3_port)) as proxy:
        proxy.set_bandwidth(20)
        poller = Pop3Poller(
            settings(proxy.port, mailbox.user, mailbox.password),
            lambda delivery: None,
            store=MemoryStore(),
            timeout=1,
            lease_ttl=None,
        )
        started = time.monotonic()
        with pytest.raises(ResponseTimeout, match="not finished within"):
            poller.poll_once()
        assert time.monotonic() - started < 2 + SLACK


def test_a_trickled_tls_handshake_after_starttls_fails_at_the_steps_deadline(
    mailbox, tls_ca, monkeypatch
):
    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as proxy:
        target = ImapSettings(
            "127.0.0.1",
            mailbox.user,
            mailbox.password,
            port=proxy.port,
            security="starttls",
            ssl_context=tls_ca.client_context(),
            connect_timeout=1,
        )
        real = ImapConnection._watch_socket

        def throttled(self, client, *, duplicate=False):  # type: ignore[no-untyped-def]
            real(self, client, duplicate=duplicate)
            if duplicate:  # just before STARTTLS: the handshake trickles
                proxy.set_bandwidth(200)

        monkeypatch.setattr(ImapConnection, "_watch_socket", throttled)
        started = time.monotonic()
        with pytest.raises(ResponseTimeout) as raised:
            ImapConnection.open(target, keepalive=Keepalive(response_timeout=1))
        took = time.monotonic() - started
    assert took < 2 + 1 + SLACK, f"the handshake held the step for {took:.1f} s"
    assert str(raised.value).startswith("starting TLS: not finished within 1 s")


def test_a_standing_connection_holds_no_file_descriptor_more_than_its_socket_and_bell(
    mailbox,
):
    target = settings(mailbox.server.imap_port, mailbox.user, mailbox.password)
    before = len(os.listdir("/proc/self/fd"))
    connection = ImapConnection.open(target)
    try:
        assert len(os.listdir("/proc/self/fd")) == before + 1
        connection.wait(0.2)  # in IDLE: the bell other threads ring is one more (eventfd)
        assert len(os.listdir("/proc/self/fd")) == before + 2
    finally:
        connection.close()
    assert len(os.listdir("/proc/self/fd")) == before
