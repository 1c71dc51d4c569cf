"""Never run, only type-checked (mypy --strict): the public API as users write it."""

from __future__ import annotations

import random
import threading
from datetime import timedelta
from typing import Any, assert_type

import mailtether
from mailtether import (
    DAY,
    MINUTE,
    Backoff,
    BackoffState,
    Chain,
    Exponential,
    Fixed,
    ReconnectStrategy,
    Tiered,
    strategy_from_config,
)
from mailtether.testing import FakeClock, Schedule, check_strategy, simulate


class OfficeHours:
    """A third-party strategy: any object with a matching delay method is a strategy."""

    def delay(self, attempt: int, offline_for: float) -> float | None:
        return 60.0


def strategies() -> None:
    fixed = Fixed(60)
    assert_type(fixed.delay(1, 0.0), float | None)
    rpa = Exponential(initial=1, growth=1, max_attempts=12).immediate_first()
    assert_type(rpa, mailtether.ImmediateFirst)
    helpdesk = Tiered((7 * DAY, 30 * MINUTE), (None, DAY))
    Tiered((timedelta(days=7), timedelta(minutes=30)), (None, timedelta(days=1)))
    spread = Exponential(1, max_delay=600).jittered("decorrelated", rng=random.Random(1))
    capped = Fixed(timedelta(seconds=30)).capped(max_offline_for=timedelta(days=1))
    chain: Chain = Fixed(5, max_attempts=3).then(spread)
    Chain((fixed, 3), (OfficeHours(), None))
    mine: ReconnectStrategy = OfficeHours()
    for strategy in (fixed, rpa, helpdesk, spread, capped, chain, mine):
        check_strategy(strategy)
    loaded: ReconnectStrategy = strategy_from_config("tiered 30m until 7d, then 1d")
    assert_type(simulate(loaded), Schedule)


def backoff() -> None:
    clock = FakeClock()
    runner = Backoff(Fixed(60), clock=clock)
    wait = runner.failed()
    if wait is not None:
        clock.sleep(wait, threading.Event())
    saved = runner.state.to_dict()
    Backoff(Fixed(60), state=BackoffState.from_dict(saved)).succeeded()
    assert_type(mailtether.SYSTEM_CLOCK.sleep(1.0), bool)


def listeners_and_the_guard() -> None:
    def handle(delivery: mailtether.Delivery) -> None:
        assert_type(delivery.key, mailtether.MessageKey)

    store = mailtether.MemoryStore()
    listener = mailtether.ImapListener("imaps://u:p@imap.example.com/INBOX", handle, store=store)
    poller = mailtether.Pop3Poller("pop3s://u:p@pop.example.com/", handle, deliver="body")
    assert_type(listener.wait_for_catch_ups(2, timeout=10), bool)
    assert_type(poller.catch_ups, int)
    guard = mailtether.DuplicateGuard(store)
    key = mailtether.MessageKey.imap("a", "INBOX", 7, 1)
    triage = guard.triage([key, key.with_uid(2)])
    assert_type(triage, mailtether.Triage)
    assert_type(guard.retryable(key.scope), list[mailtether.MessageKey])
    for claim in guard.claim_many(triage.new):
        claim.give_back()
    entry = guard.lookup(key)
    if entry is not None:
        assert_type(entry.state, mailtether.GuardState)
    assert_type(key.with_content(b"Subject: x\r\n\r\n"), mailtether.MessageKey)
    assert_type(triage.busy, tuple[mailtether.MessageKey, ...])
    assert_type(listener.max_message_bytes, int)


def misbehaving_servers() -> None:
    from mailtether.testing import FaultProxy, ScriptedImapServer

    with ScriptedImapServer(user="u", password="a-secret") as server:
        assert_type(server.append(b"Subject: x\r\n\r\nbody\r\n"), int)
        server.omit_from_fetch(1, times=1)
        server.fetch_no(1)
        server.huge_literal(1, then="close")
        assert_type(server.port, int)
        with FaultProxy(server.address) as proxy:
            proxy.fragment(1, 7, gap=0.003, direction="both", seed=1)
    try:
        raise mailtether.MalformedReply("garbled")
    except mailtether.ConnectionLost as error:
        assert_type(error.message, str)


def the_wire() -> None:
    from mailtether.testing import FaultProxy

    settings = mailtether.ImapSettings("127.0.0.1", "u", "a-secret", security="plain")
    keepalive = mailtether.Keepalive(response_timeout=20)  # the deadline of each step
    with mailtether.ImapConnection.open(settings, keepalive=keepalive) as connection:
        stop = threading.Event()
        stop.set()
        connection.wake()  # a wait in another thread sees its stop event at once
        assert_type(connection.wait(60, stop), list[Any])
    with FaultProxy(("127.0.0.1", 143)) as proxy:
        proxy.set_latency(0.2, direction="down")
        proxy.set_bandwidth(20)
