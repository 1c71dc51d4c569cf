"""ImapConnection against a real Dovecot, through FaultProxy: every trap, every bound."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from mailtether import (
    AuthenticationFailed,
    ConnectionLost,
    FolderMissing,
    ImapConnection,
    ImapSettings,
    Keepalive,
    ResponseTimeout,
    ServerUnreachable,
    TLSFailure,
)
from mailtether.testing import FaultProxy

MAIL = b"From: a@example.com\r\nSubject: hello\r\n\r\nbody\r\n"
FAST = Keepalive(noop_interval=1, idle_renewal=1, response_timeout=1)


def plain(mailbox, host: str = "127.0.0.1", port: int | None = None, **kwargs) -> ImapSettings:
    kwargs.setdefault("connect_timeout", 5)
    return ImapSettings(
        host,
        mailbox.user,
        mailbox.password,
        port=port or mailbox.server.imap_port,
        security="plain",
        **kwargs,
    )


@pytest.fixture
def proxy(mailbox):
    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as running:
        yield running


def test_open_logs_in_and_selects(mailbox):
    with ImapConnection.open(plain(mailbox)) as connection:
        assert connection.alive
        assert connection.has_idle
        assert connection.uidvalidity is not None
        assert connection.uidvalidity > 0
        sock = connection.client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert not connection.alive


def test_imaplib_trace_only_when_someone_listens(mailbox, caplog):
    """imaplib's per-line debug formatting (mail bodies too) is off unless its log is on."""
    mailbox.append(MAIL)
    with ImapConnection.open(plain(mailbox)) as connection:
        assert connection.client._imap.debug == 0
        caplog.clear()
        connection.client.fetch([1], ["BODY.PEEK[]"])
        assert not [r for r in caplog.records if r.name == "imapclient.imaplib"]
    with caplog.at_level(logging.DEBUG, logger="imapclient.imaplib"):
        with ImapConnection.open(plain(mailbox)) as connection:
            caplog.clear()
            connection.client.fetch([1], ["BODY.PEEK[]"])
        assert [r for r in caplog.records if r.name == "imapclient.imaplib"], "trace kept"


def test_a_command_sent_ahead_is_read_before_the_next_one(mailbox):
    from mailtether.imap._fetch import send_fetch

    for _ in range(3):
        mailbox.append(MAIL)
    with ImapConnection.open(plain(mailbox)) as connection:
        client = connection.client
        answer = connection.call_ahead("fetching", send_fetch, client, [1, 2])
        # Another command meanwhile: the answer on its way is read first, not mistaken.
        assert (
            b"\\Seen" not in connection.call("fetching", client.fetch, [3], ["FLAGS"])[3][b"FLAGS"]
        )
        fetched = answer()
        assert sorted(fetched) == [1, 2]
        assert fetched[1][0] == MAIL
        assert answer() is fetched, "read once, kept"
        later = connection.call_ahead("fetching", send_fetch, client, [3])
        assert later()[3][0] == MAIL


def test_an_answer_ahead_lost_with_the_connection_raises_connection_lost(mailbox, proxy):
    from mailtether.imap._fetch import send_fetch

    mailbox.append(MAIL)
    with ImapConnection.open(plain(mailbox, port=proxy.port), keepalive=FAST) as connection:
        proxy.blackhole()
        answer = connection.call_ahead("fetching new mail", send_fetch, connection.client, [1])
        with pytest.raises(ConnectionLost, match="fetching new mail"):
            answer()
        with pytest.raises(ConnectionLost):
            connection.call("searching", connection.client.search, ["ALL"])


def test_implicit_tls_verified_by_default_context(mailbox, tls_ca):
    settings = ImapSettings(
        "127.0.0.1",
        mailbox.user,
        mailbox.password,
        port=mailbox.server.imaps_port,
        ssl_context=tls_ca.client_context(),
    )
    with ImapConnection.open(settings) as connection:
        assert connection.alive


def test_an_untrusted_certificate_is_refused(mailbox, tls_ca):
    settings = ImapSettings(
        "127.0.0.1",
        mailbox.user,
        mailbox.password,
        port=mailbox.server.imaps_port,
        ssl_context=tls_ca.wrong_context(),
    )
    with pytest.raises(TLSFailure, match="not trusted"):
        ImapConnection.open(settings)


def test_a_certificate_for_another_host_is_refused(mailbox, tls_ca):
    with FaultProxy(("127.0.0.1", mailbox.server.imaps_port), listen=("127.0.0.2", 0)) as proxy:
        settings = ImapSettings(
            "127.0.0.2",
            mailbox.user,
            mailbox.password,
            port=proxy.port,
            ssl_context=tls_ca.client_context(),
        )
        with pytest.raises(TLSFailure, match="not trusted"):
            ImapConnection.open(settings)


def test_starttls_is_used_when_asked(mailbox, tls_ca):
    settings = ImapSettings(
        "127.0.0.1",
        mailbox.user,
        mailbox.password,
        port=mailbox.server.imap_port,
        security="starttls",
        ssl_context=tls_ca.client_context(),
    )
    with ImapConnection.open(settings) as connection:
        assert connection.client.socket().version() is not None  # an SSL socket now


def test_stripped_starttls_is_refused_not_downgraded(mailbox, tls_ca, proxy):
    proxy.rewrite(b"STARTTLS", b"XTARTTLS")
    settings = ImapSettings(
        "127.0.0.1",
        mailbox.user,
        "never-sent-pw",
        port=proxy.port,
        security="starttls",
        ssl_context=tls_ca.client_context(),
    )
    with pytest.raises(TLSFailure, match="does not offer STARTTLS") as info:
        ImapConnection.open(settings)
    assert "never-sent-pw" not in str(info.value)
    log = mailbox.server.log.read_text()
    assert f"user=<{mailbox.user}>, method=PLAIN" not in log, "no login was attempted"


def test_rejected_credentials(mailbox, caplog):
    caplog.set_level(logging.DEBUG)
    settings = ImapSettings(
        "127.0.0.1", mailbox.user, "wrong-pw-123", port=mailbox.server.imap_port, security="plain"
    )
    with pytest.raises(AuthenticationFailed) as info:
        ImapConnection.open(settings)
    assert "wrong-pw-123" not in str(info.value)
    assert "wrong-pw-123" not in repr(settings)
    assert "resume" in info.value.hint
    assert not info.value.retryable


def test_password_never_in_debug_logs(mailbox, caplog):
    caplog.set_level(logging.DEBUG)
    with ImapConnection.open(plain(mailbox)) as connection:
        connection.noop()
    assert mailbox.password not in caplog.text


def test_a_missing_folder(mailbox):
    with pytest.raises(FolderMissing, match="Nope"):
        ImapConnection.open(plain(mailbox, folder="Nope"))


def test_refused_connection_is_unreachable(mailbox, proxy):
    proxy.refuse_new()
    with pytest.raises(ServerUnreachable) as info:
        ImapConnection.open(plain(mailbox, port=proxy.port))
    assert info.value.retryable


def test_a_silent_server_times_out_at_connect(mailbox, proxy):
    proxy.drop_new()
    started = time.monotonic()
    with pytest.raises(ConnectionLost):
        ImapConnection.open(plain(mailbox, port=proxy.port, connect_timeout=1), keepalive=FAST)
    assert time.monotonic() - started < 4


def test_wait_returns_new_mail_pushed_during_idle(mailbox):
    with ImapConnection.open(plain(mailbox), keepalive=FAST) as connection:
        threading.Timer(0.3, mailbox.append, args=(MAIL,)).start()
        changes = connection.wait(10)
        assert (1, b"EXISTS") in changes


def test_mail_between_select_and_idle_is_not_missed(mailbox):
    with ImapConnection.open(plain(mailbox), keepalive=FAST) as connection:
        mailbox.append(MAIL)  # lands after SELECT, before IDLE starts
        changes = connection.wait(5)
        assert (1, b"EXISTS") in changes


def test_idle_is_renewed_and_wait_times_out_quietly(mailbox):
    with ImapConnection.open(plain(mailbox), keepalive=FAST) as connection:
        started = time.monotonic()
        assert connection.wait(2.5) == []
        assert 2.4 <= time.monotonic() - started < 4
        assert connection.alive
        connection.noop()  # still usable after several IDLE/DONE rounds


def test_wait_returns_when_stopped(mailbox):
    with ImapConnection.open(plain(mailbox), keepalive=FAST) as connection:
        stop = threading.Event()
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        assert connection.wait(30, stop) == []
        assert time.monotonic() - started < 2


def _measure_detection(connection, fault) -> float:
    errors: list[BaseException] = []
    started = time.monotonic()
    fault()
    try:
        connection.wait(30)
    except ConnectionLost as error:
        errors.append(error)
    assert errors, "the dead connection must be found"
    return time.monotonic() - started


def test_a_black_hole_during_idle_is_found_within_the_bound(mailbox, proxy):
    with ImapConnection.open(plain(mailbox, port=proxy.port), keepalive=FAST) as connection:
        took = _measure_detection(connection, proxy.blackhole)
    assert took <= FAST.detection_bound + 1


def test_a_black_hole_while_polling_is_found_by_noop(mailbox, proxy):
    with ImapConnection.open(plain(mailbox, port=proxy.port), keepalive=FAST) as connection:
        connection.capabilities = frozenset()  # a server without IDLE: poll with NOOP
        took = _measure_detection(connection, proxy.blackhole)
    assert took <= FAST.detection_bound + 1


def test_a_reset_during_idle_is_found_at_once(mailbox, proxy):
    with ImapConnection.open(plain(mailbox, port=proxy.port), keepalive=Keepalive()) as connection:
        threading.Timer(0.3, proxy.reset_all).start()
        started = time.monotonic()
        with pytest.raises(ConnectionLost):
            connection.wait(60)
        assert time.monotonic() - started < 3, "not after the 25-minute renewal"


def test_a_server_kick_is_bye(mailbox):
    with ImapConnection.open(plain(mailbox), keepalive=Keepalive()) as connection:
        threading.Timer(0.3, mailbox.kick).start()
        with pytest.raises(ConnectionLost, match="BYE"):
            connection.wait(60)


def _session_pid(mailbox) -> int:
    out = subprocess.run(
        ["doveadm", "-c", str(mailbox.server.config), "who", "-1", mailbox.user],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # "username proto pid ip" then one line per session: user20 imap 20455 127.0.0.1
    pids = [int(word) for word in out[4:] if word.isdigit()]
    assert pids, f"no session pid in {out}"
    return pids[0]


def test_a_killed_server_process_is_found_at_once(mailbox):
    with ImapConnection.open(plain(mailbox), keepalive=Keepalive()) as connection:
        pid = _session_pid(mailbox)
        threading.Timer(0.3, os.kill, args=(pid, signal.SIGKILL)).start()
        started = time.monotonic()
        with pytest.raises(ConnectionLost):
            connection.wait(60)
        assert time.monotonic() - started < 3


def test_a_hung_server_is_found_within_the_bound(mailbox):
    with ImapConnection.open(plain(mailbox), keepalive=FAST) as connection:
        pid = _session_pid(mailbox)
        os.kill(pid, signal.SIGSTOP)
        try:
            took = _measure_detection(connection, lambda: None)
        finally:
            os.kill(pid, signal.SIGCONT)
    assert took <= FAST.detection_bound + 1


def test_after_a_timeout_the_connection_is_never_reused(mailbox, proxy):
    with ImapConnection.open(plain(mailbox, port=proxy.port), keepalive=FAST) as connection:
        proxy.blackhole()
        with pytest.raises(ResponseTimeout):
            connection.noop()
        proxy.pass_through()
        with pytest.raises(ConnectionLost, match="open a new one"):
            connection.noop()
        assert not connection.alive


def test_idle_done_errors_are_translated(mailbox, proxy):
    with ImapConnection.open(plain(mailbox, port=proxy.port), keepalive=FAST) as connection:
        proxy.cut_on(b"OK Idle completed")
        with pytest.raises(ConnectionLost):
            connection.wait(3)


# -- the standalone watchdog around a user's own imapclient --------------------------------------


def _user_client(mailbox, port: int):
    from imapclient import IMAPClient

    client = IMAPClient("127.0.0.1", port=port, ssl=False, timeout=5)
    client.login(mailbox.user, mailbox.password)
    client.select_folder("INBOX")
    return client


def test_watchdog_sends_noop_when_idle_and_finds_a_black_hole(mailbox, proxy):
    from mailtether import KeepaliveWatchdog

    dead: list[BaseException] = []
    client = _user_client(mailbox, proxy.port)
    with KeepaliveWatchdog(client, FAST, on_dead=dead.append) as watchdog:
        watchdog.client.noop()
        started = time.monotonic()
        proxy.blackhole()
        assert watchdog.dead.wait(FAST.detection_bound + 1), "found without any user call"
        assert time.monotonic() - started <= FAST.detection_bound + 1
        assert len(dead) == 1
        with pytest.raises(ConnectionLost, match="open a new one"):
            watchdog.client.noop()
    client.shutdown()


def test_watchdog_is_safe_with_user_calls_from_threads(mailbox):
    from mailtether import KeepaliveWatchdog

    client = _user_client(mailbox, mailbox.server.imap_port)
    quick = Keepalive(noop_interval=0.05, idle_renewal=1, response_timeout=2)
    errors: list[BaseException] = []
    with KeepaliveWatchdog(client, quick) as watchdog:

        def work() -> None:
            try:
                for _ in range(20):
                    watchdog.client.search(["ALL"])
                    time.sleep(0.01)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not watchdog.dead.is_set()
    assert errors == []
    client.logout()


def test_watchdog_translates_errors(mailbox, proxy):
    from mailtether import KeepaliveWatchdog

    client = _user_client(mailbox, proxy.port)
    with KeepaliveWatchdog(client, Keepalive()) as watchdog:
        proxy.reset_all()
        with pytest.raises(ConnectionLost):
            watchdog.client.noop()
        assert watchdog.dead.is_set()
    client.shutdown()


def test_no_leaked_sessions_after_many_broken_connections(mailbox, proxy):
    """A reconnect storm must not pile up server sessions (Dovecot allows 20 per user+IP)."""
    for _ in range(30):
        connection = ImapConnection.open(plain(mailbox, port=proxy.port), keepalive=FAST)
        proxy.reset_all()
        with pytest.raises(ConnectionLost):
            connection.noop()
        connection.close()
    with ImapConnection.open(plain(mailbox), keepalive=FAST) as connection:
        assert connection.alive


def test_xoauth2_login_path_reports_a_rejection_without_the_token(mailbox):
    # This Dovecot offers no XOAUTH2: the server refuses the mechanism, which must surface as
    # a rejected login (not retried), with the token nowhere in the message.
    settings = ImapSettings(
        "127.0.0.1",
        mailbox.user,
        "ya29.secret-token",
        port=mailbox.server.imap_port,
        security="plain",
        auth="xoauth2",
    )
    with pytest.raises(AuthenticationFailed) as info:
        ImapConnection.open(settings)
    assert "ya29.secret-token" not in str(info.value)


def test_a_server_without_recent_works(mailbox, proxy):
    """Exchange Online sends no \\Recent: nothing may depend on it."""
    proxy.rewrite(b" RECENT", b" XHIDDEN")
    proxy.rewrite(b"\\Recent", b"\\Hidden")
    with ImapConnection.open(plain(mailbox, port=proxy.port), keepalive=FAST) as connection:
        threading.Timer(0.3, mailbox.append, args=(MAIL,)).start()
        assert (1, b"EXISTS") in connection.wait(5)
