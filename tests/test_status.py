"""StatusBoard: states, persistence, resume, de-duplicated notifications, STALE; SmtpNotifier."""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable, Iterator

import attrs
import pytest

from mailtether import (
    LoggingNotifier,
    MemoryStore,
    SmtpNotifier,
    SourceState,
    SourceStatus,
    SQLiteStore,
    StatusBoard,
    StatusChange,
)
from mailtether.cli._main import main
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
    assert [c.sentence() for c in sent] == [
        "s is online",
        "s is retrying (was online)",
        "s is online again after under a second (was retrying)",
    ], "the repeats of the problem, and their recoveries, are counted, not sent"
    clock.advance(601)
    board.set("s", SourceState.ONLINE)
    assert len(sent) == 3, "the person was told 'online' last: still true"
    board.set("s", SourceState.RETRYING)
    assert sent[-1].sentence() == "s is retrying (was online) [18 similar changes not sent]"


def test_a_recovery_is_told_with_how_long_the_problem_lasted(board, sent, clock):
    board.set("s", SourceState.ONLINE)
    clock.advance(5)
    board.set("s", SourceState.RETRYING, reason="reset")
    clock.advance(200)
    board.set("s", SourceState.OFFLINE, reason="reset")
    clock.advance(100)
    board.set("s", SourceState.ONLINE, reason="")
    assert sent[-1].lasted == 300
    assert sent[-1].sentence() == "s is online again after 5 min (was offline)"
    assert board.get("s").outage_since is None


def test_a_recovery_within_the_quiet_period_is_told(board, sent, clock):
    """Issue 20: "online again" was dropped as a repeat of the first "online"."""
    board.set("s", SourceState.ONLINE)
    board.set("s", SourceState.RETRYING)
    clock.advance(42)
    board.set("s", SourceState.ONLINE)
    assert [c.current.state for c in sent] == [
        SourceState.ONLINE,
        SourceState.RETRYING,
        SourceState.ONLINE,
    ]
    assert sent[-1].sentence() == "s is online again after 42 s (was retrying)"


def test_a_held_back_problem_that_lasts_is_told_after_all(board, sent, clock):
    board.set("s", SourceState.ONLINE)
    board.set("s", SourceState.RETRYING)
    board.set("s", SourceState.ONLINE)
    board.set("s", SourceState.RETRYING, reason="timeout", attempts=1)  # a repeat: held back
    assert len(sent) == 3
    clock.advance(59)
    board.set("s", SourceState.RETRYING, reason="timeout", attempts=2)
    assert len(sent) == 3, "not yet a tenth of the quiet period"
    clock.advance(1)
    board.set("s", SourceState.RETRYING, reason="timeout", attempts=3)
    assert sent[-1].sentence() == "s is still retrying, for 60 s: timeout"
    board.set("s", SourceState.RETRYING, reason="timeout", attempts=4)
    assert len(sent) == 4, "told once"
    board.set("s", SourceState.ONLINE)
    assert sent[-1].sentence() == "s is online again after 60 s (was retrying)"


def test_what_was_told_is_shared_through_the_store(clock, sent):
    """Two processes (or one restarted) on one store decide alike: nobody tells twice."""
    store = MemoryStore(clock=clock)
    first = StatusBoard(store, notifiers=[sent.append], quiet_period=600, clock=clock)
    first.set("s", SourceState.ONLINE)
    first.set("s", SourceState.RETRYING)
    again: list[StatusChange] = []
    second = StatusBoard(store, notifiers=[again.append], quiet_period=600, clock=clock)
    second.set("s", SourceState.ONLINE)
    assert [c.sentence() for c in again] == [
        "s is online again after under a second (was retrying)"
    ]
    first.set("s", SourceState.RETRYING)  # a repeat within the quiet period, told by another
    second.set("s", SourceState.ONLINE)
    assert len(sent) == 2
    assert len(again) == 1


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


# -- liveness: a source whose heartbeat expired reads as STALE -----------------------------------

# FakeClock's wall clock starts at 1_700_000_000: 2023-11-14 22:13:20 UTC.
START = "2023-11-14 22:13:20 UTC"


def test_an_expired_heartbeat_reads_as_stale(board, clock, sent):
    board.set("s", SourceState.ONLINE)
    board.heartbeat("s", alive_for=30)
    clock.advance(30)
    assert board.get("s").state is SourceState.ONLINE, "alive until this very moment"
    clock.advance(1)
    status = board.get("s")
    assert status.state is SourceState.STALE
    assert status.reason == f"no heartbeat since {START}; last known state: online"
    assert status.since == 1_700_000_000.0, "stale since the last heartbeat"
    assert board.snapshot() == [status]
    assert board.store.get("status", "s").state == "online", "derived on read, never written"
    assert [c.current.state for c in sent] == [SourceState.ONLINE], "nobody is told"


def test_a_stale_source_names_its_last_state_and_has_no_next_attempt(board, clock):
    board.set("s", SourceState.RETRYING, reason="connection reset", next_attempt_at=1e10)
    board.heartbeat("s", alive_for=30)
    clock.advance(31)
    status = board.get("s")
    assert status.state is SourceState.STALE
    assert status.reason == (
        f"no heartbeat since {START}; last known state: retrying (connection reset)"
    )
    assert status.next_attempt_at is None, "no process is there to make the attempt"


def test_a_stale_blocked_source_stays_blocked_and_can_be_resumed(board, clock):
    board.set("s", SourceState.BLOCKED, reason="credentials rejected")
    board.heartbeat("s", alive_for=30)
    clock.advance(31)
    status = board.get("s")
    assert status.state is SourceState.BLOCKED
    assert status.reason == f"credentials rejected (not running: no heartbeat since {START})"
    assert board.resume("s")
    assert board.store.get("status", "s").data["reason"] == "credentials rejected"


def test_a_stale_blocked_source_without_a_reason_says_it_is_not_running(board, clock):
    board.set("s", SourceState.BLOCKED)
    board.heartbeat("s", alive_for=30)
    clock.advance(31)
    assert board.get("s").reason == f"not running: no heartbeat since {START}"


def test_a_status_without_a_heartbeat_keeps_its_state(board, clock):
    """Written by an older version, or by a source that has not beaten yet."""
    board.set("s", SourceState.ONLINE)
    clock.advance(365 * 86_400)
    assert board.get("s").state is SourceState.ONLINE
    assert board.get("s").alive_until is None


def test_a_heartbeat_changes_neither_state_nor_since_and_notifies_nobody(board, clock, sent):
    board.set("s", SourceState.RETRYING, reason="reset", attempts=2)
    before = board.get("s")
    clock.advance(5)
    board.heartbeat("s", alive_for=30)
    after = board.get("s")
    assert after == attrs.evolve(before, heartbeat_at=clock.time(), alive_until=clock.time() + 30)
    assert len(sent) == 1


def test_a_heartbeat_for_a_source_that_never_reported_writes_nothing(board):
    board.heartbeat("nobody", alive_for=30)
    assert board.get("nobody") is None


@pytest.mark.parametrize("alive_for", [0, -1, float("inf"), float("nan"), True])
def test_a_heartbeat_needs_a_positive_alive_for(board, alive_for):
    board.set("s", SourceState.ONLINE)
    with pytest.raises(ValueError, match="alive_for"):
        board.heartbeat("s", alive_for=alive_for)


def test_a_restarted_source_carries_on_from_its_stored_state(board, clock):
    board.set("s", SourceState.ONLINE, processed=7)
    board.heartbeat("s", alive_for=30)
    clock.advance(3600)
    assert board.get("s").state is SourceState.STALE
    board.heartbeat("s", alive_for=30)  # the new process's first beat
    status = board.get("s")
    assert (status.state, status.processed, status.since) == (SourceState.ONLINE, 7, 1.7e9)


def test_stale_is_never_recorded(board):
    with pytest.raises(ValueError, match="never recorded"):
        board.set("s", SourceState.STALE)


def test_counting_a_stale_source_keeps_its_stored_state(board, clock):
    board.set("s", SourceState.ONLINE)
    board.heartbeat("s", alive_for=30)
    clock.advance(31)
    board.count("s", processed=1)
    assert board.store.get("status", "s").state == "online"
    assert board.get("s").processed == 1


class _Interleaving(MemoryStore):
    """Another writer changes the state between the board's read and its write, once."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.meanwhile: Callable[[], object] | None = None

    def get(self, namespace, key):
        record = super().get(namespace, key)
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            meanwhile()
        return record


def test_a_heartbeat_never_overwrites_a_state_written_meanwhile(clock):
    store = _Interleaving(clock)
    board = StatusBoard(store, notifiers=[], clock=clock)
    other = StatusBoard(store, notifiers=[], clock=clock)
    board.set("s", SourceState.ONLINE)
    store.meanwhile = lambda: other.set("s", SourceState.RETRYING, reason="reset")
    board.heartbeat("s", alive_for=30)
    status = board.get("s")
    assert (status.state, status.reason, status.alive_until) == (
        SourceState.RETRYING,
        "reset",
        clock.time() + 30,
    )


def test_alive_until_round_trips_and_older_and_newer_records_read(board, clock):
    board.set("s", SourceState.ONLINE)
    board.heartbeat("s", alive_for=30)
    status = board.get("s")
    assert status.alive_until == clock.time() + 30
    assert SourceStatus.from_dict(status.to_dict()) == status
    old = {"source": "s", "state": "online", "since": 1.0, "reason": "", "attempts": 0}
    assert SourceStatus.from_dict(old).alive_until is None
    assert SourceStatus.from_dict({**old, "added_later": 1}) == SourceStatus.from_dict(old)


def test_mailtether_status_shows_stale(tmp_path):
    """The command line reads with the system clock: the heartbeat expired 70 s ago."""
    path = tmp_path / "state.db"
    written = FakeClock(wall=time.time() - 100)
    store = SQLiteStore(path)
    board = StatusBoard(store, notifiers=[], clock=written)
    board.set("a@x/INBOX", SourceState.RETRYING, reason="reset", next_attempt_at=1e10)
    board.heartbeat("a@x/INBOX", alive_for=30)
    board.set("b@x/INBOX", SourceState.ONLINE)
    board.heartbeat("b@x/INBOX", alive_for=1e6)
    store.close()
    out = io.StringIO()
    assert main(["status", "--store", f"sqlite://{path}"], out=out) == 0
    rows = {line.split()[0]: line for line in out.getvalue().splitlines() if "@x/" in line}
    assert rows["a@x/INBOX"].split()[1] == "STALE"
    assert "no heartbeat since" in rows["a@x/INBOX"]
    assert "last known state: retrying (reset)" in rows["a@x/INBOX"]
    assert "2286-" not in rows["a@x/INBOX"], "no next attempt shown (1e10 is in 2286)"
    assert rows["b@x/INBOX"].split()[1] == "ONLINE"
    assert "STALE: the process that ran the source stopped or hangs" in out.getvalue()
    out = io.StringIO()
    assert main(["status", "--store", f"sqlite://{path}", "--json"], out=out) == 0
    sources = {s["source"]: s for s in json.loads(out.getvalue())["sources"]}
    assert sources["a@x/INBOX"]["state"] == "stale"
    assert sources["a@x/INBOX"]["alive_until"] == pytest.approx(time.time() - 70, abs=5)
    assert sources["a@x/INBOX"]["next_attempt_at"] is None
    assert sources["b@x/INBOX"]["state"] == "online"


class _AuthSmtp:
    """An aiosmtpd handler that keeps what it is sent and checks XOAUTH2 logins."""

    def __init__(self, good_token: str = "token-2") -> None:
        self.received: list[object] = []
        self.offered: list[bytes] = []
        self.good = f"auth=Bearer {good_token}\x01".encode()

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.received.append(envelope)
        return "250 OK"

    async def auth_XOAUTH2(self, server, args):  # type: ignore[no-untyped-def]
        import base64

        from aiosmtpd.smtp import AuthResult

        answer = base64.b64decode(args[1])
        self.offered.append(answer)
        return AuthResult(success=self.good in answer, handled=False)


@contextlib.contextmanager
def robot_mailing(handler: _AuthSmtp, tokens: object) -> Iterator[SmtpNotifier]:
    """A notifier logging in as robot@example.com with *tokens*, to aiosmtpd with *handler*."""
    from aiosmtpd.controller import Controller

    from servers import free_port

    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), auth_require_tls=False)
    controller.start()
    try:
        yield SmtpNotifier(
            "127.0.0.1",
            "mailtether@example.com",
            ["admin@example.com"],
            port=controller.port,
            security="plain",
            username="robot@example.com",
            password=tokens,  # type: ignore[arg-type]
        )
    finally:
        controller.stop()


def test_smtp_notifier_logs_in_with_a_fresh_oauth2_token_after_a_refusal(board):
    """A token source: XOAUTH2 with its token, renewed once when the server refuses it."""
    from mailtether import AccessToken

    class Tokens:
        issued = 0

        def token(self, *, fresh: bool = False) -> AccessToken:
            if fresh or not self.issued:
                self.issued += 1
            return AccessToken(f"token-{self.issued}")

    handler = _AuthSmtp(good_token="token-2")
    with robot_mailing(handler, Tokens()) as notifier:
        board.notifiers.append(notifier)
        board.set("a@example.com/INBOX", SourceState.BLOCKED, reason="test")
        assert notifier.flush(timeout=10)
    assert handler.offered == [
        b"user=robot@example.com\x01auth=Bearer token-1\x01\x01",
        b"user=robot@example.com\x01auth=Bearer token-2\x01\x01",
    ], "the refused token was renewed once"
    assert len(handler.received) == 1


def test_smtp_notifier_with_a_revoked_grant_logs_it_and_goes_on(board, caplog):
    """A token source that cannot give a token: nothing is sent, the failure is logged."""
    from mailtether import AccessToken, TokenRevoked, TokenUnavailable

    class Gone:
        def __init__(self, error: Exception) -> None:
            self.error = error

        def token(self, *, fresh: bool = False) -> AccessToken:
            raise self.error

    handler = _AuthSmtp()
    for error in (TokenRevoked("the grant of robot is gone"), TokenUnavailable("no endpoint")):
        with robot_mailing(handler, Gone(error)) as notifier:
            board.notifiers[:] = [notifier]
            board.set(f"{type(error).__name__}/INBOX", SourceState.BLOCKED, reason="test")
            assert notifier.flush(timeout=10), "the notifier thread went on"
    assert handler.received == [], "no mail without a login"
    assert handler.offered == [], "no login tried without a token"
    assert "the grant of robot is gone" in caplog.text
    assert "no endpoint" in caplog.text


def test_a_notice_reaches_the_notifiers_without_changing_the_state(board, sent, clock):
    board.set("outbox:relay", SourceState.ONLINE)
    board.notice("outbox:relay", "error queue", "mail <a@x> is in the error queue: 550 no")
    assert board.get("outbox:relay").state is SourceState.ONLINE
    notice = sent[-1]
    assert notice.event == "mail <a@x> is in the error queue: 550 no"
    assert notice.previous is notice.current.state is SourceState.ONLINE
    assert notice.sentence() == "outbox:relay: mail <a@x> is in the error queue: 550 no"


def test_notices_of_one_kind_are_folded_within_the_quiet_period(board, sent, clock):
    for n in range(5):
        board.notice("s", "error queue", f"mail {n} failed")
    board.notice("s", "held", "mail 9 held")  # another kind: not folded with the first
    board.set("s", SourceState.RETRYING)  # a state change is not folded with notices
    assert [c.event or c.current.state.value for c in sent] == [
        "mail 0 failed",
        "mail 9 held",
        "retrying",
    ]
    clock.advance(601)
    board.notice("s", "error queue", "mail 5 failed")
    assert sent[-1].suppressed == 4
    assert sent[-1].sentence() == "s: mail 5 failed [4 similar not sent]"


def test_a_notice_is_redacted_and_one_line(board, sent):
    from mailtether._redaction import remember_secret

    remember_secret("hunter2-notice-secret")
    board.notice("s", "error queue", "login as bob:hunter2-notice-secret failed\nsecond line")
    assert sent[-1].event == "login as bob:*** failed second line"


def admin_mailer(board: StatusBoard, port: int, only: set[str]) -> SmtpNotifier:
    """An SmtpNotifier to admin@example.com on the local server, among *board*'s notifiers."""
    notifier = SmtpNotifier(
        "127.0.0.1",
        "mailtether@example.com",
        ["admin@example.com"],
        port=port,
        security="plain",
        only=only,
    )
    board.notifiers.append(notifier)
    return notifier


def test_smtp_notifier_mails_notices_whatever_only_says(smtp_server, board):
    controller, received = smtp_server
    notifier = admin_mailer(board, controller.port, {"blocked"})
    board.set("outbox:relay", SourceState.ONLINE)
    board.notice("outbox:relay", "error queue", "mail <a@x> is in the error queue: 550 no")
    assert notifier.flush(timeout=10)
    (message,) = received
    assert message["Subject"] == (
        "[mailtether] outbox:relay: mail <a@x> is in the error queue: 550 no"
    )


def test_smtp_notifier_says_how_to_resume_a_paused_source(smtp_server, board):
    controller, received = smtp_server
    notifier = admin_mailer(board, controller.port, {"paused"})
    board.set("support@example.com/INBOX", SourceState.ONLINE)
    assert board.pause("support@example.com/INBOX", by="bob")
    assert notifier.flush(timeout=10)
    (message,) = received
    text = message.get_payload(decode=True).decode()
    assert "Paused on purpose" in text
    assert "mailtether resume 'support@example.com/INBOX'" in text
