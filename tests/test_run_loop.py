"""The run loop never dies: whatever is raised at any step ends in a state (RETRYING, BLOCKED).

Each test breaks one step of a real listener's loop against Dovecot (connect, select, search,
fetch, the handler's bookkeeping, the post-action, a status write) with an exception nobody
planned for, and checks that the thread lives on, the status says what happened, and the mail
is handled once when the step works again.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from helpers import Collector, eventually, state_of
from mailtether import (
    ClaimLost,
    DuplicateGuard,
    Fixed,
    ImapListener,
    ImapSettings,
    Keepalive,
    MemoryStore,
    SourceState,
    StatusBoard,
    StoreError,
)
from mailtether._runner import UNEXPECTED_LIMIT
from mailtether.imap import _listener as imap_listener
from mailtether.imap._connection import ImapConnection
from mailtether.testing import FakeClock

FAST = Keepalive(noop_interval=1, idle_renewal=1, response_timeout=1)


def mail(n: int) -> bytes:
    return (
        f"From: a@example.com\r\nMessage-ID: <loop{n}@x>\r\nSubject: mail {n}\r\n\r\nb\r\n".encode()
    )


def settings_for(mailbox) -> ImapSettings:  # type: ignore[no-untyped-def]
    return ImapSettings(
        "127.0.0.1",
        mailbox.user,
        mailbox.password,
        port=mailbox.server.imap_port,
        security="plain",
        connect_timeout=2,
    )


def alive(listener: ImapListener) -> bool:
    return listener._thread is not None and listener._thread.is_alive()


class Breaker:
    """Wraps a callable so its first *times* calls raise *error*, then it works."""

    def __init__(self, real, error: BaseException, times: int) -> None:  # type: ignore[no-untyped-def]
        self.real = real
        self.error = error
        self.left = times
        self.lock = threading.Lock()

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        with self.lock:
            if self.left > 0:
                self.left -= 1
                raise self.error
        return self.real(*args, **kwargs)


# Where the loop is broken: (object, attribute). Each is a step of one session.
STEPS = {
    "connect": (ImapConnection, "open"),
    "select": (ImapConnection, "select"),
    "search": (imap_listener._ImapMailbox, "list_new"),
    "fetch": (imap_listener._ImapMailbox, "fetch"),
    "bookkeeping": (DuplicateGuard, "finish_many"),
    "post-action": (imap_listener._ImapMailbox, "apply"),
    "status write": (StatusBoard, "set"),
}


def break_step(monkeypatch, step: str, error: BaseException, times: int) -> None:  # type: ignore[no-untyped-def]
    owner, name = STEPS[step]
    real = owner.__dict__[name]
    if isinstance(real, classmethod):
        bound = real.__get__(None, owner)
        monkeypatch.setattr(owner, name, classmethod(lambda cls, *a, **k: breaker(*a, **k)))
        breaker = Breaker(bound, error, times)
    else:
        breaker = Breaker(real, error, times)
        monkeypatch.setattr(owner, name, lambda self, *a, **k: breaker(self, *a, **k))


@pytest.fixture
def listen(mailbox) -> Iterator:  # type: ignore[no-untyped-def]
    started: list[ImapListener] = []

    def make(handler, **kwargs) -> ImapListener:  # type: ignore[no-untyped-def]
        kwargs.setdefault("store", MemoryStore())
        listener = ImapListener(
            settings_for(mailbox),
            handler,
            keepalive=FAST,
            reconnect=Fixed(0.05),
            poll_interval=0.3,
            lease_ttl=None,
            **kwargs,
        )
        started.append(listener)
        listener.run_in_thread()
        return listener

    yield make
    for listener in started:
        listener.stop()


@pytest.mark.parametrize("step", list(STEPS))
def test_an_unexpected_error_at_any_step_is_retried_and_the_mail_handled_once(
    mailbox, listen, monkeypatch, step
):
    mailbox.append(mail(1))
    break_step(monkeypatch, step, RuntimeError(f"injected at {step}"), times=2)
    handler = Collector()
    listener = listen(handler)
    eventually(lambda: handler.count()["mail 1"] == 1)
    eventually(lambda: state_of(listener) is SourceState.ONLINE)
    assert listener.wait_for_catch_ups(2, timeout=10)
    assert alive(listener)
    assert handler.count() == Counter({"mail 1": 1})


@pytest.mark.parametrize("step", ["connect", "search", "fetch", "post-action"])
def test_an_unexpected_error_that_keeps_coming_blocks_with_a_sentence(
    mailbox, listen, monkeypatch, step
):
    mailbox.append(mail(2))
    break_step(monkeypatch, step, KeyError("UIDVALIDITY"), times=10**6)
    listener = listen(Collector())
    eventually(lambda: state_of(listener) is SourceState.BLOCKED)
    reason = listener.status.get(listener.name).reason
    assert f"repeated {UNEXPECTED_LIMIT} times in a row" in reason
    assert "KeyError" in reason
    assert "resume" in reason
    assert alive(listener)


def test_a_store_outage_is_retrying_and_recovers_by_itself(mailbox, listen, monkeypatch):
    mailbox.append(mail(3))
    store = MemoryStore()
    outage = StoreError("connection refused by the state store")
    armed = threading.Event()  # the outage begins once the listener runs
    for name in ("put_many", "get", "get_many", "scan"):
        breaker = Breaker(getattr(store, name), outage, times=3)
        real = getattr(store, name)
        monkeypatch.setattr(
            store,
            name,
            lambda *a, breaker=breaker, real=real, **k: (breaker if armed.is_set() else real)(
                *a, **k
            ),
        )
    handler = Collector()
    listener = listen(handler, store=store)
    armed.set()
    eventually(lambda: handler.count()["mail 3"] == 1)
    eventually(lambda: state_of(listener) is SourceState.ONLINE)
    assert listener.wait_for_catch_ups(2, timeout=10)
    assert handler.count() == Counter({"mail 3": 1})
    assert alive(listener)


def test_a_store_outage_shows_as_retrying_with_its_reason(mailbox, listen, monkeypatch):
    store = MemoryStore()
    outage = StoreError("connection refused by the state store")
    real_get_many = store.get_many
    down = threading.Event()

    def get_many(namespace, keys):  # type: ignore[no-untyped-def]
        if down.is_set():
            raise outage
        return real_get_many(namespace, keys)

    monkeypatch.setattr(store, "get_many", get_many)
    listener = listen(Collector(), store=store)
    eventually(lambda: state_of(listener) is SourceState.ONLINE)
    down.set()
    mailbox.append(mail(4))  # its catch-up needs the store
    eventually(lambda: state_of(listener) is SourceState.RETRYING)
    assert listener.status.get(listener.name).reason.startswith("the state store is unreachable")
    down.clear()
    eventually(lambda: state_of(listener) is SourceState.ONLINE)


def test_a_strategy_that_answers_nan_blocks_instead_of_killing_the_loop(mailbox, listen):
    class Broken:
        def delay(self, attempt: int, offline_for: float) -> float | None:
            return float("nan")

    listener = ImapListener(
        ImapSettings("127.0.0.1", "u", "p", port=9, security="plain", connect_timeout=1),
        Collector(),
        reconnect=Broken(),  # type: ignore[arg-type]
        lease_ttl=None,
        store=MemoryStore(),
    )
    listener.run_in_thread()
    try:
        eventually(lambda: state_of(listener) is SourceState.BLOCKED)
        assert "reconnect strategy failed" in listener.status.get(listener.name).reason
        assert alive(listener)
    finally:
        listener.stop()


def test_a_status_the_store_did_not_take_is_written_later_and_says_so(mailbox, listen, monkeypatch):
    break_step(monkeypatch, "status write", StoreError("the store is read-only"), times=1)
    listener = listen(Collector())
    eventually(lambda: state_of(listener) is SourceState.ONLINE)
    reason = listener.status.get(listener.name).reason
    assert "status could not be saved" in reason
    assert "the store is read-only" in reason


def test_a_standby_asks_again_just_after_the_holders_lease_would_expire():
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    listener = ImapListener(
        ImapSettings("127.0.0.1", "u", "p", port=9, security="plain"),
        Collector(),
        store=store,
        lease_ttl=3.0,
        clock=clock,
    )
    assert store.acquire(f"listener:{listener.name}", "another-worker", 3.0) is not None
    clock.advance(1.0)
    assert listener._until_takeover() == pytest.approx(2.0 + 0.05)  # its expiry, and a moment
    clock.advance(5.0)  # expired: its holder died, and the lease is free: at once
    assert listener._until_takeover() == pytest.approx(0.05)


def test_a_lost_claim_is_retried_with_its_sentence_not_counted_as_unexpected(
    mailbox, listen, monkeypatch
):
    mailbox.append(mail(3))
    lost = ClaimLost("the claim of x expired and was taken over … raise claim_ttl")
    break_step(monkeypatch, "bookkeeping", lost, times=10**6)
    reasons: list[str] = []
    real_set = StatusBoard.set

    def set_(self, source, state, **fields):  # type: ignore[no-untyped-def]
        reasons.append(str(fields.get("reason", "")))
        return real_set(self, source, state, **fields)

    monkeypatch.setattr(StatusBoard, "set", set_)
    listener = listen(Collector())
    eventually(lambda: any("raise claim_ttl" in reason for reason in reasons))
    assert not [reason for reason in reasons if "unexpected" in reason], "a known fault"
    assert listener.wait_for_catch_ups(1, timeout=10)
    assert state_of(listener) is not SourceState.BLOCKED
    assert alive(listener)


def test_standing_by_is_said_once_and_taking_over_once(caplog, monkeypatch):
    """Issue 20: a standby said "standing by" at INFO every lease period (55-70 lines a minute)."""
    import logging

    from mailtether import LeaseUnavailable

    clock = FakeClock()
    store = MemoryStore(clock=clock)
    listener = ImapListener(
        ImapSettings("127.0.0.1", "u", "p", port=9, security="plain"),
        Collector(),
        store=store,
        lease_ttl=3.0,
        clock=clock,
    )
    held = [True]

    def session(stop):  # type: ignore[no-untyped-def]
        if held[0]:
            raise LeaseUnavailable("listener:u@127.0.0.1/INBOX is held by 'another-worker'")
        listener._online()

    monkeypatch.setattr(listener, "_session", session)
    caplog.set_level(logging.DEBUG, logger="mailtether")
    stop = threading.Event()
    for _ in range(20):
        listener._run_once(stop)
    held[0] = False
    listener._run_once(stop)
    listener._run_once(stop)
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert [m for m in info if "standing by" in m] == [
        "u@127.0.0.1/INBOX: another listener works this mailbox; standing by until its lease ends"
    ]
    assert sum("still standing by" in m for m in debug) == 19
    assert [m for m in info if "active" in m] == [
        "u@127.0.0.1/INBOX: active: took the mailbox over from the listener before"
    ]


def test_a_restart_in_an_outage_keeps_to_the_saved_next_attempt():
    """Issue 20: the first try after a restart ignored the saved next_attempt_at."""
    from mailtether import BackoffState
    from mailtether._runner import BACKOFFS
    from mailtether.testing import ScriptedImapServer

    clock = FakeClock(auto_advance=False)
    store = MemoryStore(clock=clock)
    with ScriptedImapServer(user="u", password="p") as imap:
        settings = ImapSettings(imap.host, "u", "p", port=imap.port, security="plain")
        name = f"u@{imap.host}/INBOX"
        saved = BackoffState(
            attempt=3,
            offline_since=clock.time() - 100,
            last_delay=1800,
            next_attempt_at=clock.time() + 1700,
        )
        store.put(BACKOFFS, name, "state", saved.to_dict())
        listener = ImapListener(
            settings, Collector(), store=store, clock=clock, lease_ttl=None, heartbeat=None
        )
        listener.run_in_thread()
        try:
            clock.wait_for_sleepers(1)
            status = listener.status.get(name)
            assert status.state is SourceState.RETRYING
            assert status.next_attempt_at == saved.next_attempt_at
            assert status.attempts == 3
            assert imap.connections == 0, "no attempt before it is due"
            clock.advance(1700)
            eventually(lambda: state_of(listener) is SourceState.ONLINE)
            assert imap.connections == 1
        finally:
            listener.stop()


def test_retryable_says_what_the_run_loop_does():
    """Issue 20: CommandFailed said not retryable, and the listener retried it."""
    import mailtether
    from mailtether._runner import SourceRunner

    errors = [
        value
        for value in vars(mailtether).values()
        if isinstance(value, type) and issubclass(value, mailtether.MailServerError)
    ]
    assert mailtether.CommandFailed in errors
    for error in errors:
        retried = issubclass(error, SourceRunner.retry_errors)
        assert error.retryable is retried, f"{error.__name__}.retryable says {error.retryable}"
