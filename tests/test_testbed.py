"""The test bed works: real servers, delivery helpers, and FaultProxy against real IMAP."""

from __future__ import annotations

import imaplib
import poplib
import socket
import ssl
import threading
import time

import pytest
from imapclient import IMAPClient

from mailtether.testing import FaultProxy

MAIL = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: test\r\n\r\nhello\r\n"


def plain_client(host: str, port: int, timeout: float | None = 10) -> IMAPClient:
    return IMAPClient(host, port=port, ssl=False, timeout=timeout)


def test_imapclient_logs_in_through_the_proxy(mailbox):
    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as proxy:
        client = plain_client(proxy.host, proxy.port)
        client.login(mailbox.user, mailbox.password)
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
        client.logout()
        assert proxy.accepted == 1


def test_imaps_verifies_the_test_ca(mailbox, tls_ca):
    client = IMAPClient(
        "127.0.0.1",
        port=mailbox.server.imaps_port,
        ssl=True,
        ssl_context=tls_ca.client_context(),
        timeout=10,
    )
    client.login(mailbox.user, mailbox.password)
    client.logout()


@pytest.mark.parametrize("trusting", ["system CAs only", "another CA"])
def test_imaps_refuses_a_certificate_from_an_untrusted_ca(dovecot, tls_ca, trusting):
    context = ssl.create_default_context() if trusting == "system CAs only" else None
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        IMAPClient(
            "127.0.0.1",
            port=dovecot.imaps_port,
            ssl=True,
            ssl_context=context or tls_ca.wrong_context(),
            timeout=10,
        )


def test_starttls_is_offered_on_the_plain_port(mailbox, tls_ca):
    client = plain_client("127.0.0.1", mailbox.server.imap_port)
    assert b"STARTTLS" in client.capabilities()
    client.starttls(tls_ca.client_context())
    client.login(mailbox.user, mailbox.password)
    client.logout()


def test_a_reset_raises_in_the_client(mailbox):
    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as proxy:
        client = plain_client(proxy.host, proxy.port)
        client.login(mailbox.user, mailbox.password)
        client.select_folder("INBOX")
        assert proxy.reset_all() == 1
        with pytest.raises((OSError, imaplib.IMAP4.abort)):
            client.noop()
        client.shutdown()


def test_a_black_hole_hangs_a_client_without_timeout_but_not_one_with(mailbox):
    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as proxy:
        forever = plain_client(proxy.host, proxy.port, timeout=None)
        forever.login(mailbox.user, mailbox.password)
        bounded = plain_client(proxy.host, proxy.port, timeout=0.5)
        bounded.login(mailbox.user, mailbox.password)
        proxy.blackhole()

        done = threading.Event()
        outcome: list[object] = []

        def noop() -> None:
            try:
                outcome.append(forever.noop())
            except Exception as error:  # ends when the test closes the socket
                outcome.append(error)
            done.set()

        thread = threading.Thread(target=noop, daemon=True)
        thread.start()
        assert not done.wait(1.0), "a client without a timeout waits forever on a black hole"

        started = time.monotonic()
        with pytest.raises((TimeoutError, socket.timeout, OSError)):
            bounded.noop()
        assert time.monotonic() - started < 3

        forever.socket().shutdown(socket.SHUT_RDWR)  # release the hung thread
        assert done.wait(5)
        forever.shutdown()
        bounded.shutdown()


def test_idle_is_woken_by_an_append_from_another_connection(mailbox):
    client = mailbox.client()
    client.select_folder("INBOX")
    client.idle()
    uid = mailbox.append(MAIL)
    responses = client.idle_check(timeout=5)
    client.idle_done()
    assert (1, b"EXISTS") in responses
    assert uid == 1
    client.logout()


def test_doveadm_save_delivers_server_side(mailbox):
    mailbox.save(MAIL)
    mailbox.save(MAIL, folder="INBOX")
    client = mailbox.client()
    assert client.select_folder("INBOX")[b"EXISTS"] == 2
    client.logout()


def test_kick_sends_bye_to_an_idle_connection(mailbox):
    client = mailbox.client()
    client.select_folder("INBOX")
    client.idle()
    mailbox.kick()
    responses = client.idle_check(timeout=5)
    assert any(response and response[0] == b"BYE" for response in responses), responses
    client.shutdown()


def test_pop3_plain_and_pop3s(mailbox, tls_ca):
    mailbox.save(MAIL)
    plain = poplib.POP3("127.0.0.1", mailbox.server.pop3_port, timeout=10)
    plain.user(mailbox.user)
    plain.pass_(mailbox.password)
    assert plain.stat()[0] == 1
    plain.quit()
    secure = poplib.POP3_SSL(
        "127.0.0.1", mailbox.server.pop3s_port, timeout=10, context=tls_ca.client_context()
    )
    secure.user(mailbox.user)
    secure.pass_(mailbox.password)
    assert secure.stat()[0] == 1
    assert secure.uidl()[1]
    secure.quit()
    upgraded = poplib.POP3("127.0.0.1", mailbox.server.pop3_port, timeout=10)
    upgraded.stls(tls_ca.client_context())
    upgraded.user(mailbox.user)
    upgraded.pass_(mailbox.password)
    assert upgraded.stat()[0] == 1
    upgraded.quit()


def test_redis_answers(redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    assert client.ping() is True
    client.close()


def test_postgres_answers(postgres_server):
    import psycopg

    with psycopg.connect(postgres_server.dsn) as connection:
        assert connection.execute("select 1").fetchone() == (1,)


def test_a_changed_password_is_refused(mailbox):
    mailbox.server.set_password(mailbox.user, "rotated")
    client = plain_client("127.0.0.1", mailbox.server.imap_port)
    with pytest.raises(Exception, match=r"(?i)auth"):
        client.login(mailbox.user, "secret-pw")
    client.login(mailbox.user, "rotated")
    client.logout()


@pytest.mark.parametrize(("ci", "outcome"), [("true", "failed"), ("", "skipped")])
def test_a_server_that_cannot_start_fails_in_ci_and_skips_outside(monkeypatch, ci, outcome):
    from servers import ServerUnavailable, start_or_skip

    def broken() -> None:
        raise ServerUnavailable("no binary")

    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if outcome == "failed" else pytest.skip.Exception
    with pytest.raises(expected, match="no binary"):
        start_or_skip("Dovecot", broken)


def test_a_missing_dovecot_says_how_to_install_it(tls_ca):
    from servers import ServerUnavailable
    from servers.dovecot import DovecotServer

    server = DovecotServer(tls_ca, binary="/nonexistent/dovecot")
    with pytest.raises(ServerUnavailable, match="scripts/install-test-servers"):
        server.start()
    assert server.process is None
