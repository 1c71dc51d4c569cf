"""KeepaliveWatchdog around a user's own imapclient, and the locked client it shares.

``LockedClient`` is the machinery under both ``KeepaliveWatchdog`` and ``ImapConnection``:
the lock, named errors, last activity, and a death recorded once. Its own tests use a fake
client; the watchdog's run against a real Dovecot.
"""

from __future__ import annotations

import imaplib
import ssl
import threading
import time

import pytest
from imapclient.exceptions import IMAPClientError

from helpers import eventually
from mailtether import (
    CommandFailed,
    ConnectionLost,
    Keepalive,
    KeepaliveWatchdog,
    MailServerError,
    TLSFailure,
)
from mailtether.imap._errors import translate_error
from mailtether.imap._locked import LockedClient
from mailtether.testing import FakeClock, FaultProxy

FAST = Keepalive(noop_interval=1, idle_renewal=1, response_timeout=1)


class FakeSocket:
    def __init__(self) -> None:
        self.shutdowns = 0
        self.timeout: float | None = None

    def shutdown(self, how: int) -> None:
        self.shutdowns += 1

    def settimeout(self, seconds: float) -> None:
        self.timeout = seconds


class FakeClient:
    """Stands in for imapclient: NOOP answers, ``fail`` raises what it is given."""

    def __init__(self) -> None:
        self.sock = FakeSocket()
        self.noops = 0

    def socket(self) -> FakeSocket:
        return self.sock

    def noop(self) -> tuple[bytes, list[object]]:
        self.noops += 1
        return b"NOOP completed", []

    def fail(self, error: BaseException) -> None:
        raise error


def _locked(
    client: FakeClient, clock: FakeClock, deaths: list[MailServerError]
) -> LockedClient[FakeClient]:
    return LockedClient(
        client,
        name="the connection to test",
        translate=translate_error,
        clock=clock,
        on_dead=deaths.append,
    )


# -- the locked client -----------------------------------------------------------------------


def test_a_call_is_activity_on_the_clock():
    clock = FakeClock(monotonic=5.0)
    client = FakeClient()
    locked = _locked(client, clock, [])
    assert locked.last_activity == 5.0
    clock.advance(10)
    assert locked.call("sending NOOP", client.noop) == (b"NOOP completed", [])
    assert locked.last_activity == 15.0
    clock.advance(10)
    with pytest.raises(CommandFailed):
        locked.call("searching", client.fail, IMAPClientError("BAD criteria"))
    assert locked.last_activity == 15.0, "a failure counted as activity"


def test_a_broken_connection_dies_once_and_refuses_every_later_call():
    client = FakeClient()
    deaths: list[MailServerError] = []
    locked = _locked(client, FakeClock(), deaths)
    with pytest.raises(ConnectionLost, match="sending NOOP: the connection broke"):
        locked.call("sending NOOP", client.fail, ConnectionResetError(104, "reset"))
    assert not locked.alive
    assert len(deaths) == 1
    assert deaths[0] is locked.error
    assert client.sock.shutdowns == 1, "the socket was not shut for blocked threads"
    locked.mark_dead(ConnectionLost("found again"))
    assert len(deaths) == 1
    assert client.sock.shutdowns == 1
    with pytest.raises(ConnectionLost, match=r"test is broken \(sending NOOP.*open a new one"):
        locked.call("sending NOOP", client.noop)
    assert client.noops == 0


def test_a_refused_command_leaves_the_connection_alive():
    client = FakeClient()
    deaths: list[MailServerError] = []
    locked = _locked(client, FakeClock(), deaths)
    with pytest.raises(CommandFailed):
        locked.call("searching", client.fail, IMAPClientError("SEARCH command error: BAD"))
    assert locked.alive
    assert deaths == []
    locked.call("sending NOOP", client.noop)


def test_a_tls_failure_kills_the_connection():
    client = FakeClient()
    deaths: list[MailServerError] = []
    locked = _locked(client, FakeClock(), deaths)
    with pytest.raises(TLSFailure):
        locked.call("fetching", client.fail, ssl.SSLError("decryption failed or bad record mac"))
    assert len(deaths) == 1
    assert not locked.alive


def test_threads_finding_it_dead_together_report_it_once():
    client = FakeClient()
    deaths: list[MailServerError] = []
    locked = _locked(client, FakeClock(), deaths)
    barrier = threading.Barrier(8)

    def find(n: int) -> None:
        barrier.wait()
        locked.mark_dead(ConnectionLost(f"found by {n}"))

    threads = [threading.Thread(target=find, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(deaths) == 1
    assert client.sock.shutdowns == 1


def test_a_closed_client_refuses_calls():
    client = FakeClient()
    locked = _locked(client, FakeClock(), [])
    assert locked.detach() is client
    assert not locked.alive
    with pytest.raises(ConnectionLost, match="test is closed"):
        locked.call("sending NOOP", client.noop)


def test_a_holder_sees_a_waiting_caller_and_lets_it_in_first():
    locked = _locked(FakeClient(), FakeClock(), [])
    turns: list[str] = []
    caller = threading.Thread(target=lambda: locked.call("noop", turns.append, "caller"))
    with locked.held():
        assert not locked.callers_waiting
        caller.start()
        eventually(lambda: locked.callers_waiting, timeout=5)
        turns.append("holder")
    locked.let_callers_in(5)
    with locked.held():
        turns.append("holder again")
    caller.join()
    assert turns == ["holder", "caller", "holder again"]
    assert not locked.callers_waiting


# -- the standalone watchdog around a user's own imapclient --------------------------------------


@pytest.fixture
def proxy(mailbox):
    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as running:
        yield running


def _user_client(mailbox, port: int):
    from imapclient import IMAPClient

    client = IMAPClient("127.0.0.1", port=port, ssl=False, timeout=5)
    client.login(mailbox.user, mailbox.password)
    client.select_folder("INBOX")
    return client


def test_watchdog_sends_noop_after_quiet_time_on_its_clock():
    clock = FakeClock(auto_advance=False)
    client = FakeClient()
    with KeepaliveWatchdog(client, Keepalive(noop_interval=60), clock=clock) as watchdog:
        assert client.sock.timeout == 30.0, "reads have no response timeout"
        clock.wait_for_sleepers()
        clock.advance(30)
        watchdog.client.socket()  # not a call to the server: no activity
        watchdog.client.noop()  # the user's own call at 30 s
        assert client.noops == 1
        clock.advance(30)  # 60 s: the first NOOP was due, but the user's call moved it on
        eventually(lambda: len(clock.sleeps) == 2, timeout=5)
        assert clock.sleeps == [60.0, 30.0]
        assert client.noops == 1
        clock.advance(30)
        eventually(lambda: len(clock.sleeps) == 3, timeout=5)
        assert client.noops == 2, "no NOOP after 60 quiet seconds"
        assert clock.sleeps == [60.0, 30.0, 60.0]


def test_watchdog_reports_death_once_even_when_the_callback_fails(caplog):
    client = FakeClient()
    deaths: list[MailServerError] = []

    def on_dead(error: MailServerError) -> None:
        deaths.append(error)
        raise RuntimeError("a careless callback")

    watchdog = KeepaliveWatchdog(client, Keepalive(noop_interval=0), on_dead=on_dead)
    with pytest.raises(ConnectionLost):
        watchdog.client.fail(BrokenPipeError(32, "Broken pipe"))
    with pytest.raises(ConnectionLost, match="open a new one"):
        watchdog.client.noop()
    assert watchdog.dead.is_set()
    assert watchdog.error is deaths[0]
    assert len(deaths) == 1
    assert client.noops == 0
    assert "the on_dead callback raised" in caplog.text


def test_watchdog_sends_noop_when_idle_and_finds_a_black_hole(mailbox, proxy):
    dead: list[BaseException] = []
    client = _user_client(mailbox, proxy.port)
    with KeepaliveWatchdog(client, FAST, on_dead=dead.append) as watchdog:
        watchdog.client.noop()
        started = time.monotonic()
        proxy.blackhole()
        assert watchdog.dead.wait(FAST.detection_bound + 1), "not found without a user call"
        assert time.monotonic() - started <= FAST.detection_bound + 1
        assert len(dead) == 1
        with pytest.raises(ConnectionLost, match="open a new one"):
            watchdog.client.noop()
    client.shutdown()


def test_watchdog_is_safe_with_user_calls_from_threads(mailbox):
    client = _user_client(mailbox, mailbox.server.imap_port)
    # On a clock that jumps ahead whenever the watchdog sleeps, it sends NOOP after NOOP,
    # as fast as the server answers: the most interleaving there can be.
    clock = FakeClock()
    errors: list[BaseException] = []
    with KeepaliveWatchdog(client, Keepalive(noop_interval=1), clock=clock) as watchdog:

        def work() -> None:
            try:
                for _ in range(20):
                    assert watchdog.client.search(["ALL"]) == []
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not watchdog.dead.is_set()
    assert errors == []
    assert len(clock.sleeps) > 1, "the watchdog sent no NOOP meanwhile"
    client.logout()


def test_watchdog_translates_errors(mailbox, proxy):
    client = _user_client(mailbox, proxy.port)
    with KeepaliveWatchdog(client, Keepalive()) as watchdog:
        proxy.reset_all()
        with pytest.raises(ConnectionLost):
            watchdog.client.noop()
        assert watchdog.dead.is_set()
    client.shutdown()


def test_a_bug_in_the_keepalive_thread_gives_the_connection_up_instead_of_dying_quietly(
    monkeypatch, caplog
):
    client = FakeClient()
    deaths: list[MailServerError] = []

    def broken_call(self, name, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug")

    monkeypatch.setattr(KeepaliveWatchdog, "call", broken_call)
    watchdog = KeepaliveWatchdog(
        client, Keepalive(noop_interval=60), clock=FakeClock(), on_dead=deaths.append
    )
    with watchdog:
        assert watchdog.dead.wait(5), "the connection is treated as dead, not left unwatched"
    assert isinstance(watchdog.error, ConnectionLost)
    assert "the keepalive thread failed (RuntimeError: a bug)" in str(watchdog.error)
    assert deaths == [watchdog.error]
    assert "the keepalive thread failed" in caplog.text


def test_a_line_past_imaplibs_bound_breaks_the_connection_not_just_the_command():
    error = translate_error(imaplib.IMAP4.error("got more than 1000000 bytes"), "fetching new mail")
    assert isinstance(error, ConnectionLost), "the rest of the line is still on its way"
    assert "a line too long" in str(error)
