"""ImapConnection against a real Dovecot, through FaultProxy: every trap, every bound."""

from __future__ import annotations

import imaplib
import logging
import os
import poplib
import re
import signal
import socket
import ssl
import subprocess
import threading
import time

import attrs
import pytest
from imapclient.exceptions import (
    CapabilityError,
    IMAPClientAbortError,
    IMAPClientError,
    LoginError,
    ProtocolError,
)

from mailtether import (
    AuthenticationFailed,
    CommandFailed,
    ConnectionLost,
    FolderMissing,
    ImapConnection,
    ImapSettings,
    Keepalive,
    ResponseTimeout,
    ServerUnreachable,
    TLSFailure,
)
from mailtether._network_errors import translate_network_error
from mailtether.imap._errors import translate_error
from mailtether.testing import FakeClock, FaultProxy

MAIL = b"From: a@example.com\r\nSubject: hello\r\n\r\nbody\r\n"
FAST = Keepalive(noop_interval=1, idle_renewal=1, response_timeout=1)


class ProtocolTrace(logging.Handler):
    """Reads imaplib's protocol trace: which commands went out, and when IDLE was accepted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._changed = threading.Condition(threading.RLock())
        self.sent: list[str] = []
        self.idling = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        with self._changed:
            sent = re.fullmatch(r"> b'\S+ (.*)'", message)
            if sent:
                self.sent.append(sent.group(1))
            elif "+ idling" in message:
                self.idling += 1
            self._changed.notify_all()

    def count(self, command: str) -> int:
        with self._changed:
            return sum(1 for line in self.sent if line.split(" ")[0] == command)

    def wait_until_sent(self, command: str, timeout: float = 5.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.count(command) > 0, timeout):
                raise AssertionError(f"{command} was not sent")

    def idling_at_least(self, times: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.idling >= times, timeout)

    def wait_until_idling(self, times: int = 1, timeout: float = 5.0) -> None:
        if not self.idling_at_least(times, timeout):
            raise AssertionError(f"IDLE accepted {self.idling} times, expected {times}")


@pytest.fixture
def trace():
    """imaplib's trace turned on (before the connection opens, which is when it is read)."""
    logger = logging.getLogger("imapclient.imaplib")
    handler = ProtocolTrace()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


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


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_ctrl_c_in_a_command_passes_through_and_gives_the_connection_up(mailbox, interrupt):
    def interrupted() -> None:
        raise interrupt

    with ImapConnection.open(plain(mailbox)) as connection:
        with pytest.raises(interrupt):  # not turned into a named error that would be retried
            connection.call("sending NOOP", interrupted)
        assert not connection.alive, "a command cut off halfway leaves the protocol unknown"


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


def test_idle_is_renewed_and_wait_times_out_on_the_connections_clock(mailbox, trace):
    clock = FakeClock(auto_advance=False)
    keepalive = Keepalive(noop_interval=60, idle_renewal=60, response_timeout=5)
    with ImapConnection.open(plain(mailbox), keepalive=keepalive, clock=clock) as connection:
        result: list[list[object]] = []
        waiter = threading.Thread(target=lambda: result.append(connection.wait(150)))
        started = time.monotonic()
        waiter.start()
        trace.wait_until_idling(1)
        # Four read slices of real time, while the connection's clock stands still.
        assert not trace.idling_at_least(2, timeout=1), "renewed on the real clock"
        clock.advance(60)  # the renewal is due: DONE, and IDLE again
        trace.wait_until_idling(2)
        clock.advance(60)
        trace.wait_until_idling(3)
        assert waiter.is_alive(), "the wait ended at 120 of 150 s"
        clock.advance(30)
        waiter.join(5)
        assert result == [[]], "no quiet timeout"
        assert time.monotonic() - started < 6, "the schedule waited in real time"
        assert trace.count("IDLE") == 3
        assert connection.alive
        connection.noop()  # still usable after several IDLE/DONE rounds


def test_polling_sends_noop_on_the_connections_clock(mailbox, trace):
    clock = FakeClock()
    keepalive = Keepalive(noop_interval=60, idle_renewal=60, response_timeout=5)
    with ImapConnection.open(plain(mailbox), keepalive=keepalive, clock=clock) as connection:
        started = time.monotonic()
        assert connection.wait(600, use_idle=False) == []
        assert time.monotonic() - started < 5
        assert clock.sleeps == [60.0] * 10
        assert trace.count("NOOP") == 10


def test_polling_without_noop_sleeps_on_the_connections_clock(mailbox, trace):
    clock = FakeClock()
    keepalive = Keepalive(noop_interval=0, idle_renewal=60, response_timeout=5)
    with ImapConnection.open(plain(mailbox), keepalive=keepalive, clock=clock) as connection:
        stop = threading.Event()
        result: list[list[object]] = []
        waiter = threading.Thread(
            target=lambda: result.append(connection.wait(3600, stop, use_idle=False))
        )
        waiter.start()
        waiter.join(5)
        stop.set()  # ends a real sleep, had there been one
        waiter.join()
        assert clock.sleeps == [3600.0], "slept on the real clock"
        assert result == [[]]
        assert trace.count("NOOP") == 0


def _wait_in(connection: ImapConnection, timeout: float) -> tuple[threading.Thread, list[object]]:
    """Start connection.wait(timeout) in a thread; the list gets its result or its error."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(connection.wait(timeout))
        except ConnectionLost as error:
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_call_from_another_thread_ends_idle_at_once_and_the_wait_goes_on(
    mailbox, trace, monkeypatch
):
    from mailtether.imap import _idle

    monkeypatch.setattr(_idle, "_SLICE", 30.0)  # the bell, not a look every so often
    keepalive = Keepalive(noop_interval=60, idle_renewal=10, response_timeout=5)
    with ImapConnection.open(plain(mailbox), keepalive=keepalive) as connection:
        waiter, outcome = _wait_in(connection, 30)
        trace.wait_until_idling()
        started = time.monotonic()
        answer = connection.call("noop", connection.client.noop)
        took = time.monotonic() - started
        assert b"NOOP" in answer[0]
        assert took < 1, f"the call waited {took:.1f} s for the IDLE (renewed every 10 s)"
        trace.wait_until_idling(2)
        assert waiter.is_alive(), "the wait ended with the call"
        commands = [line.split(" ")[0] for line in trace.sent]
        assert commands[-3:] == ["IDLE", "NOOP", "IDLE"], (
            "the call did not have its turn between two IDLEs"
        )
        mailbox.append(MAIL)  # (its own client's commands are traced too)
        waiter.join(10)
        assert outcome, "the wait did not see the mail appended after the call"
        assert (1, b"EXISTS") in outcome[0]  # type: ignore[operator]


def test_wake_has_a_wait_see_its_stop_event_at_once(mailbox, trace, monkeypatch):
    from mailtether.imap import _idle

    monkeypatch.setattr(_idle, "_SLICE", 30.0)  # without the bell: 30 s
    keepalive = Keepalive(noop_interval=60, idle_renewal=60, response_timeout=5)
    with ImapConnection.open(plain(mailbox), keepalive=keepalive) as connection:
        stop = threading.Event()
        ended: list[float] = []
        waiter = threading.Thread(
            target=lambda: (connection.wait(60, stop), ended.append(time.monotonic()))
        )
        waiter.start()
        trace.wait_until_idling()
        connection.wake()  # no stop yet: the wait goes on
        time.sleep(0.3)
        assert not ended, "a wake without a stop event set ended the wait"
        started = time.monotonic()
        stop.set()
        connection.wake()
        waiter.join(5)
        assert ended, "the wait did not end"
        assert ended[0] - started < 1, f"the stop was seen after {ended[0] - started:.1f} s"


def test_many_calls_from_two_threads_during_idle(mailbox, trace):
    for _ in range(2):
        mailbox.append(MAIL)
    keepalive = Keepalive(noop_interval=60, idle_renewal=10, response_timeout=5)
    with ImapConnection.open(plain(mailbox), keepalive=keepalive) as connection:
        waiter, outcome = _wait_in(connection, 60)
        trace.wait_until_idling()
        slowest: list[float] = []
        answers: list[object] = []

        def work() -> None:
            for _ in range(10):
                started = time.monotonic()
                answers.append(connection.call("searching", connection.client.search, ["ALL"]))
                slowest.append(time.monotonic() - started)

        workers = [threading.Thread(target=work) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert answers == [[1, 2]] * 20
        assert max(slowest) < 2, "a call waited for an IDLE renewal"
        assert waiter.is_alive()
        mailbox.append(MAIL)
        waiter.join(10)
        assert outcome
        assert (3, b"EXISTS") in outcome[0]  # type: ignore[operator]
        assert connection.alive


def test_close_from_another_thread_ends_the_idle_and_logs_out(mailbox, trace):
    keepalive = Keepalive(noop_interval=60, idle_renewal=10, response_timeout=5)
    connection = ImapConnection.open(plain(mailbox), keepalive=keepalive)
    waiter, outcome = _wait_in(connection, 30)
    trace.wait_until_idling()
    started = time.monotonic()
    connection.close()
    assert time.monotonic() - started < 1, "close waited for the IDLE renewal"
    waiter.join(5)
    assert trace.count("LOGOUT") == 1, "no LOGOUT"
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectionLost)
    assert "closed" in str(outcome[0])


def test_abort_wakes_a_call_blocked_on_a_dead_network(mailbox, proxy, trace):
    keepalive = Keepalive(noop_interval=60, idle_renewal=60, response_timeout=30)
    with ImapConnection.open(plain(mailbox, port=proxy.port), keepalive=keepalive) as connection:
        proxy.blackhole()
        errors: list[ConnectionLost] = []

        def blocked() -> None:
            try:
                connection.noop()
            except ConnectionLost as error:
                errors.append(error)

        thread = threading.Thread(target=blocked)
        thread.start()
        trace.wait_until_sent("NOOP")
        started = time.monotonic()
        connection.abort("the lease was lost")
        thread.join(5)
        assert time.monotonic() - started < 3, "the call waited for the 30 s response timeout"
        assert len(errors) == 1
        assert not connection.alive
        with pytest.raises(ConnectionLost, match="the lease was lost"):
            connection.noop()


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
        with pytest.raises(ConnectionLost, match=r"the connection was reset during IDLE \(RST\)"):
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
        with pytest.raises(ConnectionLost, match=r"closed the connection during IDLE \(EOF\)"):
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


# -- naming what went wrong ------------------------------------------------------------------------


def _untrusted() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] verify failed")
    error.verify_message = "unable to get local issuer certificate"
    return error


def _tls_failed() -> ssl.SSLError:
    error = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    error.reason = "WRONG_VERSION_NUMBER"
    return error


def _row(error, doing, named, message, *, secret="", network=True):  # type: ignore[no-untyped-def]
    return pytest.param(error, doing, secret, network, named, message, id=type(error).__name__)


# What translate_error made of each before the network cases moved to _network_errors, kept
# to the letter (each message is followed by the error's default hint).
_NAMED = [
    _row(
        _untrusted(),
        "connecting to h:993",
        TLSFailure,
        "connecting to h:993: the server's certificate is not trusted "
        "(unable to get local issuer certificate)",
    ),
    _row(
        ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
        "fetching",
        ConnectionLost,
        "fetching: the server closed the TLS connection",
    ),
    _row(
        ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed (EOF)"),
        "fetching",
        ConnectionLost,
        "fetching: the server closed the TLS connection",
    ),
    _row(
        _tls_failed(), "starting TLS", TLSFailure, "starting TLS: TLS failed (WRONG_VERSION_NUMBER)"
    ),
    _row(
        socket.gaierror(-2, "Name or service not known"),
        "connecting to nowhere:993",
        ServerUnreachable,
        "connecting to nowhere:993: the host name cannot be resolved "
        "([Errno -2] Name or service not known)",
    ),
    _row(
        ConnectionRefusedError(111, "Connection refused"),
        "connecting to h:143",
        ServerUnreachable,
        "connecting to h:143: connection refused",
    ),
    _row(
        TimeoutError("timed out"),
        "sending NOOP",
        ResponseTimeout,
        "sending NOOP: no answer in time",
    ),
    _row(
        ConnectionResetError(104, "Connection reset by peer"),
        "fetching",
        ConnectionLost,
        "fetching: the connection broke "
        "(ConnectionResetError: [Errno 104] Connection reset by peer)",
    ),
    _row(
        BrokenPipeError(32, "Broken pipe"),
        "ending IDLE",
        ConnectionLost,
        "ending IDLE: the connection broke (BrokenPipeError: [Errno 32] Broken pipe)",
    ),
    _row(EOFError(), "reading", ConnectionLost, "reading: the connection broke (EOFError: )"),
    _row(
        OSError("cannot read from timed out object"),
        "fetching",
        ConnectionLost,
        "fetching: the connection broke (OSError: cannot read from timed out object)",
    ),
    _row(
        socket.herror(1, "Unknown host"),
        "connecting",
        ConnectionLost,
        "connecting: the connection broke (herror: [Errno 1] Unknown host)",
    ),
    _row(
        OSError("token ya29.secret leaked"),
        "fetching",
        ConnectionLost,
        "fetching: the connection broke (OSError: token *** leaked)",
        secret="ya29.secret",
    ),
    _row(
        LoginError("b'[AUTHENTICATIONFAILED] Authentication failed.'"),
        "logging in",
        AuthenticationFailed,
        "logging in: the server rejected the credentials "
        "(b'[AUTHENTICATIONFAILED] Authentication failed.')",
        network=False,
    ),
    _row(
        LoginError(b"[AUTHENTICATIONFAILED] bad pw-123"),
        "logging in",
        AuthenticationFailed,
        "logging in: the server rejected the credentials ([AUTHENTICATIONFAILED] bad ***)",
        secret="pw-123",
        network=False,
    ),
    _row(
        IMAPClientAbortError("socket error: timed out"),
        "fetching",
        ResponseTimeout,
        "fetching: no answer in time (socket error: timed out)",
        network=False,
    ),
    _row(
        imaplib.IMAP4.abort("socket error: EOF"),
        "fetching",
        ConnectionLost,
        "fetching: the connection broke (socket error: EOF)",
        network=False,
    ),
    _row(
        imaplib.IMAP4.readonly("INBOX is not writable"),
        "selecting 'INBOX'",
        ConnectionLost,
        "selecting 'INBOX': the connection broke (INBOX is not writable)",
        network=False,
    ),
    _row(
        IMAPClientError("SELECT command error: BAD [b'x']"),
        "selecting 'Nope'",
        CommandFailed,
        "selecting 'Nope': the server said SELECT command error: BAD [b'x']",
        network=False,
    ),
    _row(
        imaplib.IMAP4.error(b"NO [AUTHENTICATIONFAILED] nope"),
        "fetching",
        AuthenticationFailed,
        "fetching: the server rejected the credentials (NO [AUTHENTICATIONFAILED] nope)",
        network=False,
    ),
    _row(
        IMAPClientError("mechanism not supported"),
        "logging in (XOAUTH2)",
        CommandFailed,
        "logging in (XOAUTH2): the server said mechanism not supported",
        network=False,
    ),
    _row(
        IMAPClientError("bad"),
        "LOGIN",
        AuthenticationFailed,
        "LOGIN: the server rejected the credentials (bad)",
        network=False,
    ),
    _row(
        ProtocolError("unexpected response"),
        "fetching",
        CommandFailed,
        "fetching: the server said unexpected response",
        network=False,
    ),
    _row(
        CapabilityError("Server does not have IDLE capability"),
        "starting IDLE",
        CommandFailed,
        "starting IDLE: the server said Server does not have IDLE capability",
        network=False,
    ),
    _row(
        imaplib.IMAP4.error("a", "b"),
        "fetching",
        CommandFailed,
        "fetching: the server said ('a', 'b')",
        network=False,
    ),
    _row(
        ValueError("a range string is not allowed"),
        "fetching",
        CommandFailed,
        "fetching: ValueError: a range string is not allowed",
        network=False,
    ),
    _row(
        poplib.error_proto(b"-ERR odd"),
        "RETR",
        CommandFailed,
        "RETR: error_proto: -ERR odd",
        network=False,
    ),
    _row(
        KeyboardInterrupt(),
        "fetching",
        CommandFailed,
        "fetching: KeyboardInterrupt: ",
        network=False,
    ),
    _row(
        RuntimeError(b"bytes ya29.secret"),
        "fetching",
        CommandFailed,
        "fetching: RuntimeError: bytes ***",
        secret="ya29.secret",
        network=False,
    ),
]


@pytest.mark.parametrize(("error", "doing", "secret", "network", "named", "message"), _NAMED)
def test_every_failure_gets_the_same_name_and_message(
    error, doing, secret, network, named, message
):
    expected = f"{message}: {named.default_hint}"
    translated = translate_error(error, doing, secret=secret)
    assert type(translated) is named
    assert str(translated) == expected
    from_network = translate_network_error(error, doing, secret=secret)
    if network:
        assert type(from_network) is named
        assert str(from_network) == expected
    else:
        assert from_network is None, "a protocol error taken for a network error"


def test_a_named_error_is_passed_on_as_it_is():
    error = CommandFailed("fetching: the server said NO")
    assert translate_error(error, "anything") is error
    assert translate_network_error(error, "anything") is error


def test_tls_errors_raised_by_hand_are_named_too():
    """ssl's own errors carry reason and verify_message; ones raised by a library may not."""
    plain_error = translate_network_error(ssl.SSLError("bad record mac"), "starting TLS")
    assert isinstance(plain_error, TLSFailure)
    assert "TLS failed (bad record mac)" in str(plain_error)
    untrusted = translate_error(ssl.SSLCertVerificationError("no issuer"), "connecting")
    assert isinstance(untrusted, TLSFailure)
    assert "not trusted (no issuer)" in str(untrusted)


def test_idle_over_tls_through_split_packets_sees_each_push_and_the_close(mailbox, tls_ca):
    """TLS records cut into pieces: the reader waits for whole records, then whole lines."""
    with FaultProxy(("127.0.0.1", mailbox.server.imaps_port)) as proxy:
        proxy.fragment(1, 7, gap=0.002, direction="both", seed=11)
        settings = ImapSettings(
            "127.0.0.1",
            mailbox.user,
            mailbox.password,
            port=proxy.port,
            ssl_context=tls_ca.client_context(),
        )
        with ImapConnection.open(settings, keepalive=FAST) as connection:
            for count in (1, 2):
                threading.Timer(0.3, mailbox.append, args=(MAIL,)).start()
                changes = connection.wait(10)
                assert (count, b"EXISTS") in changes
            assert proxy.accepted == 1
            threading.Timer(0.3, mailbox.kick).start()
            with pytest.raises(ConnectionLost, match=r"BYE|EOF"):
                connection.wait(10)


def test_opening_asks_for_capabilities_no_more_than_imapclient_does(mailbox, monkeypatch):
    """The list a LOGIN answer carries is used, not asked for again (a round trip each open)."""
    sent: list[str] = []
    real = imaplib.IMAP4._command

    def command(self, name, *args):  # type: ignore[no-untyped-def]
        sent.append(name)
        return real(self, name, *args)

    monkeypatch.setattr(imaplib.IMAP4, "_command", command)
    connection = ImapConnection.open(plain(mailbox))
    try:
        assert b"IDLE" in connection.capabilities
    finally:
        connection.close()
    after_login = sent[sent.index("LOGIN") + 1 :]
    assert "CAPABILITY" not in after_login, sent


def test_a_password_beyond_ascii_logs_in_with_authenticate_plain(mailbox):
    """LOGIN cannot carry it (imaplib encodes ASCII): rejected as wrong, never retried forever."""
    from mailtether import AuthenticationFailed

    settings = plain(mailbox)
    with pytest.raises(AuthenticationFailed, match=r"logging in \(PLAIN\)"):
        ImapConnection.open(attrs.evolve(settings, password="pässwörd-wrong"))


@pytest.mark.parametrize(("stop_rings", "most"), [(True, 2), (False, None)])
def test_a_stop_that_rings_lets_idle_sleep_until_something_happens(
    mailbox, trace, monkeypatch, stop_rings, most
):
    """Hundreds of idle folders in one process: a wait that never wakes by itself."""
    from mailtether.imap import _idle

    monkeypatch.setattr(_idle, "_SLICE", 0.01)  # a look every 10 ms, unless the stop rings
    looks: list[float] = []
    real = _idle.IdleReader._responses

    def counted(self, until, doing):  # type: ignore[no-untyped-def]
        looks.append(until)
        return real(self, until, doing)

    monkeypatch.setattr(_idle.IdleReader, "_responses", counted)
    keepalive = Keepalive(noop_interval=60, idle_renewal=60, response_timeout=5)
    with ImapConnection.open(plain(mailbox), keepalive=keepalive) as connection:
        stop = threading.Event()
        waiter = threading.Thread(target=lambda: connection.wait(60, stop, stop_rings=stop_rings))
        waiter.start()
        trace.wait_until_idling()
        time.sleep(0.5)  # quiet: nothing arrives
        seen = len(looks)
        stop.set()
        connection.wake()
        waiter.join(5)
        assert not waiter.is_alive(), "the wait saw its stop event at once"
    if most is not None:
        assert seen <= most, f"{seen} looks in 0.5 s of quiet"
    else:
        assert seen >= 10, "without the ringing stop, it looks every slice"
