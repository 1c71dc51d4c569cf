"""A person pauses a source on purpose: it disconnects, hands out no mail, until resumed."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest

from helpers import Collector, eventually, state_of
from mailtether import (
    ImapListener,
    ImapSettings,
    Keepalive,
    MemoryStore,
    SourceState,
    StatusBoard,
    StatusChange,
)
from mailtether.testing import FakeClock

KEEPALIVE = Keepalive(noop_interval=0, idle_renewal=60, response_timeout=2)


def mail(n: int) -> bytes:
    return (
        f"From: sender@example.com\r\nTo: support@example.com\r\n"
        f"Message-ID: <p{n}-{time.monotonic_ns()}@example.com>\r\n"
        f"Subject: mail {n}\r\n\r\nbody {n}\r\n"
    ).encode()


def settings_for(mailbox) -> ImapSettings:  # type: ignore[no-untyped-def]
    return ImapSettings(
        "127.0.0.1",
        mailbox.user,
        mailbox.password,
        port=mailbox.server.imap_port,
        security="plain",
        connect_timeout=2,
    )


class Rig:
    """A listener whose run loop and heartbeat sleep on a FakeClock the test moves."""

    def __init__(self, mailbox, **kwargs: object) -> None:  # type: ignore[no-untyped-def]
        self.clock = FakeClock(auto_advance=False)
        store = MemoryStore(clock=self.clock)
        self.told: list[StatusChange] = []
        self.board = StatusBoard(store, notifiers=[self.told.append], clock=self.clock)
        self.handler = Collector()
        self.listener = ImapListener(
            settings_for(mailbox),
            self.handler,
            store=store,
            status=self.board,
            clock=self.clock,
            keepalive=KEEPALIVE,
            lease_ttl=None,
            **kwargs,  # type: ignore[arg-type]
        )

    def advance(self, seconds: float, sleepers: int) -> None:
        """Move the clock; wait until *sleepers* threads sleep again, the last for 1 s.

        With the heartbeat's (1 s), the run loop's sleep while it waits for a person.
        """
        seen = len(self.clock.sleeps)
        self.clock.advance(seconds)
        eventually(
            lambda: (
                len(self.clock.sleeps) >= seen + sleepers
                and self.clock.sleepers >= sleepers
                and self.clock.sleeps[-1] == 1.0
            )
        )

    def waiting_rounds(self, rounds: int, sleepers: int) -> None:
        """Let the run loop look at its status *rounds* times while it waits (1 s sleeps)."""
        for _ in range(rounds):
            self.advance(1.0, sleepers)


@pytest.fixture
def rig(mailbox) -> Iterator[Rig]:  # type: ignore[no-untyped-def]
    made: list[Rig] = []

    def make(**kwargs: object) -> Rig:
        made.append(Rig(mailbox, **kwargs))
        made[-1].listener.run_in_thread()
        return made[-1]

    yield make  # type: ignore[misc]
    for each in made:
        each.listener.stop()


def test_a_paused_listener_disconnects_and_hands_out_nothing_until_resumed(mailbox, rig):
    mailbox.append(mail(1))
    # IDLE, and no catch-up due for 600 s: the pause is seen through the heartbeat.
    rig = rig(heartbeat=1.0, poll_interval=600)
    listener, board = rig.listener, rig.board
    eventually(lambda: rig.handler.count()["mail 1"] == 1)
    eventually(lambda: state_of(listener) is SourceState.ONLINE)
    catch_ups = listener.catch_ups

    assert board.pause(listener.name, by="alice")
    status = board.get(listener.name)
    assert status.state is SourceState.PAUSED
    assert status.reason == "paused by alice"
    rig.clock.wait_for_sleepers(1)  # the heartbeat
    rig.advance(1.0, sleepers=2)  # its next beat reads the pause: the session ends
    rig.waiting_rounds(3, sleepers=2)  # the run loop sleeps in its wait, not in a session
    mailbox.append(mail(2))
    rig.waiting_rounds(3, sleepers=2)
    assert rig.handler.count() == Counter({"mail 1": 1}), "nothing handed out while paused"
    assert listener.catch_ups == catch_ups
    assert state_of(listener) is SourceState.PAUSED, "the heartbeat keeps it from STALE"
    assert listener.running

    assert board.resume(listener.name, by="bob")
    rig.clock.advance(1.0)
    eventually(lambda: rig.handler.count()["mail 2"] == 1)
    eventually(lambda: state_of(listener) is SourceState.ONLINE)
    mailbox.append(mail(3))
    eventually(lambda: rig.handler.count()["mail 3"] == 1)
    assert rig.handler.count() == Counter({"mail 1": 1, "mail 2": 1, "mail 3": 1})
    sentences = [change.sentence() for change in rig.told]
    assert f"{listener.name} is paused (was online): paused by alice" in sentences
    assert f"{listener.name} is retrying (was paused): resumed by bob; connecting" in sentences
    assert sentences[-1].startswith(f"{listener.name} is online again after")


def test_a_pause_is_seen_at_the_next_catch_up_without_a_heartbeat(mailbox, rig):
    # Polling every 5 s (no NOOP), no heartbeat: the catch-up reads the status first.
    rig = rig(heartbeat=None, poll_interval=5, mode="poll")
    listener, board = rig.listener, rig.board
    eventually(lambda: state_of(listener) is SourceState.ONLINE)
    rig.clock.wait_for_sleepers(1)  # the poll's wait
    assert rig.clock.sleeps[-1] == 5.0
    assert board.pause(listener.name, by="alice")
    mailbox.append(mail(1))
    rig.advance(5.0, sleepers=1)  # the catch-up is due: it sees the pause, hands nothing out
    rig.waiting_rounds(3, sleepers=1)
    assert rig.clock.sleeps[-3:] == [1.0, 1.0, 1.0], "the run loop's wait, not the poll's"
    assert rig.handler.handled == []
    assert board.resume(listener.name)
    rig.clock.advance(1.0)
    eventually(lambda: rig.handler.count()["mail 1"] == 1)
    eventually(lambda: state_of(listener) is SourceState.ONLINE)


def test_a_pause_outlasts_what_the_run_loop_writes_before_it_notices(mailbox):
    board = StatusBoard(MemoryStore(), notifiers=[])
    board.set("a@example.com/INBOX", SourceState.ONLINE)
    assert board.pause("a@example.com/INBOX", by="alice")
    kept = board.set("a@example.com/INBOX", SourceState.RETRYING, reason="connection reset")
    assert kept.state is SourceState.PAUSED
    assert board.get("a@example.com/INBOX").reason == "paused by alice"
    assert board.resume("a@example.com/INBOX")
    assert board.set("a@example.com/INBOX", SourceState.ONLINE).state is SourceState.ONLINE
    assert not board.pause("never@example.com/INBOX"), "an unknown source"
