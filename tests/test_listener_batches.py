"""How ImapListener records outcomes of a fetched batch: grouped, never lost, blamed alone."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import flags_of, settings_for
from mailtether import (
    Delivery,
    DuplicateGuard,
    ImapListener,
    MessageKey,
    SQLiteStore,
)
from mailtether.testing import FakeClock

WORKER = Path(__file__).parent / "listener_worker.py"


def mail(n: int) -> bytes:
    head = f"From: a@example.com\r\nMessage-ID: <b{n}@example.com>\r\nSubject: mail {n}\r\n"
    return f"{head}\r\n{n}\r\n".encode()


@pytest.fixture
def store(tmp_path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "state.db")
    yield opened
    opened.close()


def reconnecting() -> dict[str, object]:
    """Listener options for a test that cuts the connection: quick to notice, quick back."""
    from mailtether import Fixed, Keepalive

    return {
        "reconnect": Fixed(0.05),
        "keepalive": Keepalive(noop_interval=1, idle_renewal=1, response_timeout=2),
        "poll_interval": 1,
    }


def subject(delivery: Delivery) -> str:
    return str(delivery.message["Subject"])


def fill(mailbox, count: int) -> None:
    """Append mails 1..count in one session."""
    client = mailbox.client()
    for n in range(1, count + 1):
        client.append("INBOX", mail(n))
    client.logout()


@pytest.mark.parametrize(
    ("window", "work", "recorded_when_handling"),
    [
        # 4 ms of handler work per mail: with a 10 ms window, every third outcome records
        # the group; with 0, each outcome is recorded before the next mail is handed out.
        (0.01, 0.004, {1: 0, 2: 0, 3: 0, 4: 3, 5: 3, 6: 3, 7: 6}),
        (0.0, 0.004, {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6}),
        # A handler slower than the window: nothing waits behind it.
        (0.01, 0.5, {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6}),
    ],
)
def test_outcomes_are_recorded_in_groups_of_at_most_the_window(
    mailbox, store, window, work, recorded_when_handling
):
    for n in range(1, 8):
        mailbox.append(mail(n))
    clock = FakeClock()
    guard = DuplicateGuard(store)
    seen: dict[int, int] = {}

    def handler(delivery: Delivery) -> None:
        seen[delivery.uid] = guard.counts()["done"]
        clock.advance(work)

    listener = ImapListener(
        settings_for(mailbox),
        handler,
        store=store,
        guard=guard,
        clock=clock,
        lease_ttl=None,
        commit_window=window,
    )
    assert listener.poll_once() == 7
    assert seen == recorded_when_handling
    assert guard.counts()["done"] == 7


def test_an_interrupt_records_what_was_handled_and_gives_the_rest_back(mailbox, store):
    for n in range(1, 7):
        mailbox.append(mail(n))
    calls: Counter[str] = Counter()
    guard = DuplicateGuard(store)

    def interrupted(delivery: Delivery) -> None:
        calls[subject(delivery)] += 1
        if subject(delivery) == "mail 4":
            raise KeyboardInterrupt

    listener = ImapListener(
        settings_for(mailbox),
        interrupted,
        store=store,
        guard=guard,
        lease_ttl=None,
        commit_window=60,
    )
    with pytest.raises(KeyboardInterrupt):
        listener.poll_once()
    assert guard.counts() == {"processing": 0, "done": 3, "failed": 1, "held": 0, "dropped": 0}
    assert guard.held() == []
    interrupted_mail = [r for r in store.scan(guard.namespace) if r.state == "failed"]
    assert len(interrupted_mail) == 1
    assert interrupted_mail[0].data.get("attempts", 0) == 0, "not the mail's fault"

    def handler(delivery: Delivery) -> None:
        calls[subject(delivery)] += 1

    listener = ImapListener(
        settings_for(mailbox), handler, store=store, guard=guard, lease_ttl=None
    )
    assert listener.poll_once() == 3
    assert calls == Counter(
        {"mail 1": 1, "mail 2": 1, "mail 3": 1, "mail 4": 2, "mail 5": 1, "mail 6": 1}
    )
    assert all(b"\\Seen" in f for f in flags_of(mailbox).values())


def run_worker(  # type: ignore[no-untyped-def]
    mailbox, tmp_path: Path, window: float, run: int, killer: str = "mail 3", *more: str
) -> int:
    settings = settings_for(mailbox)
    command = [
        sys.executable,
        str(WORKER),
        settings.host,
        str(settings.port),
        settings.username,
        mailbox.password,
        str(tmp_path / "state.db"),
        str(tmp_path / "handled.txt"),
        killer,
        str(window),
        str(run * 1000),  # each run's store clock is past the claims the last one left
        *more,
    ]
    return subprocess.run(command, timeout=60, check=False).returncode


@pytest.mark.parametrize("window", [0.0, 0.01])
def test_a_mail_that_kills_the_process_is_held_alone(mailbox, tmp_path, window):
    """A hard crash on one mail: it alone is held; the mail after it is handled once."""
    for n in range(1, 7):
        mailbox.append(mail(n))
    codes = [run_worker(mailbox, tmp_path, window, run) for run in range(4)]
    assert codes == [3, 3, 3, 0], "three crashes, then mail 3 is held and the rest flows"
    handled = Counter((tmp_path / "handled.txt").read_text().splitlines())
    assert handled["mail 3"] == 3
    assert [handled[f"mail {n}"] for n in (4, 5, 6)] == [1, 1, 1]
    if window == 0:
        assert handled["mail 1"] == handled["mail 2"] == 1, "recorded before the crash"
    else:  # handled within the window before the crash: handed out again, once
        assert handled["mail 1"] == handled["mail 2"] == 2
    store = SQLiteStore(tmp_path / "state.db")
    try:
        guard = DuplicateGuard(store)
        assert [entry.key.uid for entry in guard.held()] == [3]
        assert guard.counts()["done"] == 5
    finally:
        store.close()


def test_a_mail_that_kills_the_process_while_a_batch_is_recorded_behind(mailbox, tmp_path):
    """kill -9 while the batch before is recorded behind: nothing marked unrecorded, one held."""
    fill(mailbox, 40)
    store = SQLiteStore(tmp_path / "state.db")  # made first, so the runs find it

    def seen_but_not_done() -> set[int]:
        seen = {uid for uid, f in flags_of(mailbox).items() if b"\\Seen" in f}
        records = store.scan(DuplicateGuard(store).namespace, state="done")
        return seen - {MessageKey.from_id(record.key).uid for record in records}

    codes = []
    try:
        for run in range(6):
            codes.append(run_worker(mailbox, tmp_path, 0.01, run, "mail 25", "10", "1"))
            assert seen_but_not_done() == set(), f"run {run}: marked before its outcome"
            if codes[-1] == 0:
                break
        assert codes == [3, 3, 3, 0], "three crashes, then mail 25 is held and the rest flows"
        handled = Counter((tmp_path / "handled.txt").read_text().splitlines())
        assert handled["mail 25"] == 3
        assert all(handled[f"mail {n}"] == 1 for n in [*range(1, 11), *range(26, 41)])
        assert all(1 <= handled[f"mail {n}"] <= 2 for n in range(11, 25)), handled
        guard = DuplicateGuard(store)
        assert [entry.key.uid for entry in guard.held()] == [25]
        assert guard.counts()["done"] == 39
        flags = flags_of(mailbox)
        assert [uid for uid, f in flags.items() if b"\\Seen" not in f] == [25]
    finally:
        store.close()


def test_the_next_batch_is_asked_for_while_this_one_is_handled(mailbox, store, batches_of):
    """Pipelined batches: every mail once, in order, each batch's changes after its outcomes."""
    batches_of(7)
    fill(mailbox, 40)
    order: list[int] = []
    guard = DuplicateGuard(store, max_failures=1)

    def handler(delivery: Delivery) -> None:
        order.append(delivery.uid)
        if subject(delivery) == "mail 12":  # held at once: flagged mid-batch, next batch in flight
            raise ValueError("poison")

    listener = ImapListener(
        settings_for(mailbox), handler, store=store, guard=guard, lease_ttl=None, on_poison="flag"
    )
    assert listener.poll_once() == 39
    assert order == sorted(order)
    assert len(order) == 40
    assert len(set(order)) == 40
    flags = flags_of(mailbox)
    assert sum(b"\\Seen" in f for f in flags.values()) == 39
    assert [uid for uid, f in flags.items() if b"\\Flagged" in f] == [order[11]]
    assert listener.poll_once() == 0, "nothing is handed out again"


@pytest.mark.parametrize(("seconds_per_mail", "ahead"), [(0.001, True), (10.0, False)])
def test_the_next_batch_is_asked_for_ahead_only_when_handling_is_quick(
    mailbox, store, monkeypatch, batches_of, seconds_per_mail, ahead
):
    """A server drops a client that leaves an answer unread for minutes: slow handlers wait."""
    import mailtether.imap._listener as listener_module

    batches_of(10)
    events: list[str] = []
    real_send = listener_module.send_fetch

    def send(client, uids):  # type: ignore[no-untyped-def]
        events.append(f"fetch {uids[0]}")
        return real_send(client, uids)

    monkeypatch.setattr(listener_module, "send_fetch", send)
    fill(mailbox, 30)
    clock = FakeClock()

    def handler(delivery: Delivery) -> None:
        events.append(f"mail {delivery.uid}")
        clock.advance(seconds_per_mail)

    listener = ImapListener(
        settings_for(mailbox), handler, store=store, clock=clock, lease_ttl=None
    )
    assert listener.poll_once() == 30
    starts = [int(event.split()[1]) for event in events if event.startswith("fetch")]
    # The first batch is handled before anything is known about the handler's speed.
    assert events.index("fetch 11") > events.index("mail 10")
    if ahead:  # the third batch is on its way while the second is handled
        assert starts == [1, 11, 21]
        assert events.index("fetch 21") < events.index("mail 11")
    else:  # a minute of handling a batch at most, each asked for once the last is done
        assert starts == [1, 11, 17, 23, 29]  # sized down as soon as the speed is known
        for start in starts[1:]:
            assert events.index(f"fetch {start}") > events.index(f"mail {start - 1}")


def test_a_connection_lost_while_the_next_batch_is_on_its_way(mailbox, store, batches_of):
    """The reset comes in the middle of a batch asked for ahead: each mail still once, all seen."""
    from mailtether.testing import FaultProxy

    batches_of(10)
    fill(mailbox, 40)
    calls: Counter[str] = Counter()

    def handler(delivery: Delivery) -> None:
        calls[subject(delivery)] += 1

    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as proxy:
        proxy.cut_on(b"Subject: mail 25\r\n")  # inside the third batch, fetched ahead
        settings = settings_for(mailbox, proxy.port)
        listener = ImapListener(settings, handler, store=store, lease_ttl=None, **reconnecting())
        with pytest.raises(Exception, match="fetching new mail"):
            listener.poll_once()
        proxy.pass_through()
        listener.poll_once()
    assert calls == Counter({f"mail {n}": 1 for n in range(1, 41)})
    assert all(b"\\Seen" in f for f in flags_of(mailbox).values())
