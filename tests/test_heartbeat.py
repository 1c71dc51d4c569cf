"""Heartbeat: beats on the injected clock while the run loop lives, outlives a store outage;
and a listener killed with SIGKILL reads as STALE within the heartbeat's bound."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from helpers import eventually
from mailtether import (
    ConfigError,
    MemoryStore,
    SourceState,
    SQLiteStore,
    StatusBoard,
    StoreError,
)
from mailtether._heartbeat import Heartbeat
from mailtether.testing import FakeClock

EVERY = 10.0


class FlakyStore(MemoryStore):
    """A MemoryStore whose writes fail while :attr:`down` is set."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.down = False

    def put(self, *args, **kwargs):
        if self.down:
            raise StoreError("the store is unreachable: connection refused")
        return super().put(*args, **kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(auto_advance=False)


@pytest.fixture
def store(clock) -> FlakyStore:
    return FlakyStore(clock)


@pytest.fixture
def board(store, clock) -> StatusBoard:
    board = StatusBoard(store, notifiers=[], clock=clock)
    board.set("s", SourceState.ONLINE)
    return board


@pytest.fixture
def alive() -> threading.Event:
    alive = threading.Event()
    alive.set()
    return alive


@pytest.fixture
def heartbeat(board, clock, alive) -> Iterator[Heartbeat]:
    heartbeat = Heartbeat(board, "s", every=EVERY, clock=clock, alive=alive.is_set)
    yield heartbeat
    assert heartbeat.stop(timeout=5), "the heartbeat thread ended"


def beats(clock: FakeClock, count: int) -> None:
    """Wait until the heartbeat thread has gone to sleep *count* times (after each beat)."""
    eventually(lambda: len(clock.sleeps) >= count and clock.sleepers == 1, timeout=10)


def next_beat(clock: FakeClock) -> None:
    """Move the clock to the next beat and wait until it is done."""
    done = len(clock.sleeps)
    clock.advance(EVERY)
    beats(clock, done + 1)


def test_beats_at_start_and_then_every_period(heartbeat, board, clock):
    heartbeat.start()
    beats(clock, 1)
    assert board.get("s").alive_until == clock.time() + 3 * EVERY, "the first beat at once"
    for _ in range(3):
        next_beat(clock)
        assert board.get("s").heartbeat_at == clock.time()
        assert board.get("s").alive_until == clock.time() + 3 * EVERY
    assert clock.sleeps == [EVERY] * 4
    assert board.get("s").state is SourceState.ONLINE


def test_a_running_heartbeat_keeps_the_source_from_going_stale(heartbeat, board, clock):
    heartbeat.start()
    beats(clock, 1)
    for _ in range(10):
        next_beat(clock)
        assert board.get("s").state is SourceState.ONLINE


def test_no_beats_while_the_run_loop_is_dead(heartbeat, board, clock, alive, caplog):
    heartbeat.start()
    beats(clock, 1)
    vouched = board.get("s").alive_until
    alive.clear()
    with caplog.at_level(logging.WARNING, logger="mailtether.status"):
        for _ in range(3):
            next_beat(clock)
    assert board.get("s").alive_until == vouched
    clock.advance(1)
    assert board.get("s").state is SourceState.STALE
    assert [r.getMessage() for r in caplog.records] == [
        "s: its run loop is not running; no more heartbeats, it will read as stale"
    ], "said once"
    alive.set()
    next_beat(clock)
    assert board.get("s").state is SourceState.ONLINE, "beats again once the loop lives"


def test_an_alive_check_that_raises_counts_as_dead(board, clock, caplog):
    def broken() -> bool:
        raise RuntimeError("no such thread")

    heartbeat = Heartbeat(board, "s", every=EVERY, clock=clock, alive=broken)
    heartbeat.start()
    try:
        beats(clock, 1)
        next_beat(clock)
        assert board.get("s").alive_until is None
        assert "alive() check raised" in caplog.text
    finally:
        assert heartbeat.stop()


def test_survives_a_store_outage_and_says_so_once(heartbeat, board, store, clock, caplog):
    heartbeat.start()
    beats(clock, 1)
    store.down = True
    with caplog.at_level(logging.INFO, logger="mailtether.status"):
        for _ in range(5):
            next_beat(clock)
        assert board.get("s").state is SourceState.STALE, "the outage outlasted alive_for"
        store.down = False
        next_beat(clock)
    assert board.get("s").state is SourceState.ONLINE
    assert board.get("s").alive_until == clock.time() + 3 * EVERY
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("s: could not record its heartbeat (trying again every 10 s")
    assert messages[0].endswith("the store is unreachable: connection refused")
    assert messages[1] == "s: heartbeat recorded again after 5 failed beat(s)"
    store.down = True
    next_beat(clock)
    assert len(caplog.records) == 3, "a new outage is said again"


def test_stop_is_prompt(heartbeat, clock):
    heartbeat.start()
    beats(clock, 1)
    started = time.monotonic()
    assert heartbeat.stop(timeout=5)
    assert time.monotonic() - started < 1.0
    assert "stopped" in repr(heartbeat)


def test_stop_with_the_system_clock_is_prompt(board):
    heartbeat = Heartbeat(board, "s", every=3600, alive=lambda: True)
    heartbeat.start()
    eventually(lambda: board.get("s").alive_until is not None, timeout=5)
    started = time.monotonic()
    assert heartbeat.stop(timeout=5)
    assert time.monotonic() - started < 1.0


def test_beat_now_beats_in_the_calling_thread_and_never_raises(heartbeat, board, store, clock):
    clock.advance(5)
    heartbeat.beat_now()
    assert board.get("s").heartbeat_at == clock.time()
    store.down = True
    heartbeat.beat_now()  # logged, not raised: the run loop must not die of it


def test_start_twice_is_refused_and_a_stopped_heartbeat_starts_again(heartbeat, clock):
    heartbeat.start()
    with pytest.raises(RuntimeError, match="already running"):
        heartbeat.start()
    beats(clock, 1)
    assert heartbeat.stop()
    heartbeat.start()
    beats(clock, 2)
    assert "running" in repr(heartbeat)


@pytest.mark.parametrize("every", [0, -1, float("nan"), float("inf"), True])
def test_every_must_be_a_positive_duration(board, every):
    with pytest.raises(ConfigError, match="every"):
        Heartbeat(board, "s", every=every, alive=lambda: True)


def test_repr(board):
    assert repr(Heartbeat(board, "s", every=0.5, alive=lambda: True)) == (
        "Heartbeat('s', every=0.5, stopped)"
    )


# -- a listener killed with SIGKILL: STALE within the heartbeat's bound ----------------------------

BEAT = 0.2  # the worker's heartbeat; readers see it STALE 3 * BEAT after its last beat

WORKER = """
import sys
from mailtether import ImapListener, ImapSettings, SQLiteStore

host, port, user, password, db, every = sys.argv[1:]
listener = ImapListener(
    ImapSettings(host, user, password, port=int(port), security="plain", connect_timeout=2),
    lambda delivery: None,
    store=SQLiteStore(db),
    lease_ttl=None,
    poll_interval=0.3,
    heartbeat=float(every),
)
listener.run()
"""


def test_a_killed_listener_reads_as_stale_within_the_heartbeat_bound(mailbox, tmp_path):
    db = tmp_path / "state.db"
    errors = tmp_path / "worker.err"
    with errors.open("wb") as stderr:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                "127.0.0.1",
                str(mailbox.server.imap_port),
                mailbox.user,
                mailbox.password,
                str(db),
                str(BEAT),
            ],
            stderr=stderr,
        )
    store = SQLiteStore(db)
    board = StatusBoard(store, notifiers=[])
    try:

        def online() -> bool:
            if child.poll() is not None:
                raise AssertionError(f"the worker exited: {errors.read_text()}")
            status = board.snapshot()
            # beating: the first beat may come just after the state (no record to vouch for)
            return (
                bool(status)
                and status[0].state is SourceState.ONLINE
                and status[0].alive_until is not None
            )

        eventually(online, timeout=20)
        watched = time.monotonic() + 10 * BEAT  # longer than alive_for: beats keep coming
        while time.monotonic() < watched:
            [status] = board.snapshot()
            assert status.state is SourceState.ONLINE, status.reason
            assert status.alive_until is not None
            time.sleep(BEAT / 4)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        killed = time.monotonic()
        eventually(lambda: board.snapshot()[0].state is SourceState.STALE, timeout=10)
        assert time.monotonic() - killed <= 3 * BEAT + 0.5, "STALE within alive_for"
        [status] = board.snapshot()
        assert status.reason.startswith("no heartbeat since ")
        assert status.reason.endswith("; last known state: online")
        assert store.get("status", status.source).state == "online", "the record keeps it"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        store.close()
