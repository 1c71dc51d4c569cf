"""The fleet in one process: shares, hand-over, a lost lease, the fleet file, status.

Workers here are stepped by the test (``FleetWorker.step``), one round at a time, so each
hand-over is seen at its clean point; the listeners run for real against Dovecot. The
multi-process scenario (kill -9, Redis, PostgreSQL) is in test_fleet_processes.py.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import eventually
from mailtether import (
    ConfigError,
    Delivery,
    Fleet,
    FleetSource,
    FleetWorker,
    SQLiteStore,
)
from mailtether._fleet_registry import fair_share, read_workers
from mailtether.cli._main import main
from mailtether.testing import FakeClock


@given(
    st.sets(st.text(min_size=1, max_size=8), min_size=1, max_size=30),
    st.integers(min_value=0, max_value=1000),
)
def test_fair_shares_add_up_and_differ_by_one_at_most(workers, sources):
    live = sorted(workers)
    shares = [fair_share(worker, live, sources) for worker in live]
    assert sum(shares) == sources
    assert max(shares) - min(shares) <= 1


def url(dovecot, user: str) -> str:  # type: ignore[no-untyped-def]
    return (
        f"imap://{user}:{dovecot.password(user)}@127.0.0.1:{dovecot.imap_port}/INBOX?security=plain"
    )


@pytest.fixture
def store(tmp_path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "fleet.db")
    yield opened
    opened.close()


@pytest.fixture
def handled() -> list[tuple[str, str, int | None]]:
    return []


@pytest.fixture
def fleet(dovecot, handled) -> Fleet:  # type: ignore[no-untyped-def]
    def handle(delivery: Delivery) -> None:
        handled.append((delivery.key.account, str(delivery.message["Subject"]), delivery.token))

    users = [dovecot.add_user() for _ in range(5)]
    return Fleet(
        [FleetSource(user, url(dovecot, user), handle, {"poll_interval": 0.5}) for user in users],
        heartbeat=1,
        lease_ttl=3,
    )


def shares(store) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {info.worker: len(info.held) for info in read_workers(store)}


def test_a_second_worker_is_handed_sources_at_a_clean_point(fleet, store, dovecot, handled):
    first = FleetWorker(fleet, store, worker="a")
    second = FleetWorker(fleet, store, worker="b")
    try:
        first.step()
        assert len(first.held) == 5, "alone, it takes every source"
        for source in fleet.sources:
            dovecot.save(source.name, f"Subject: before {source.name}\r\n\r\nhi\r\n".encode())
        eventually(lambda: len(handled) == 5)
        second.step()
        assert second.held == [], "every source is still leased to the first"
        first.step()  # two live workers: 3 for "a", 2 for "b"; "a" lets go of 2
        eventually(lambda: sum(not first.runner(n).running for n in first.held) == 2)
        first.step()  # their listeners stopped: their leases go
        assert len(first.held) == 3
        second.step()
        assert len(second.held) == 2
        assert set(first.held).isdisjoint(second.held)
        assert shares(store) == {"a": 3, "b": 2}
        for source in fleet.sources:
            dovecot.save(source.name, f"Subject: after {source.name}\r\n\r\nhi\r\n".encode())
        eventually(lambda: len(handled) == 10)
        tokens = {account: token for account, subject, token in handled if "after" in subject}
        moved = set(second.held)
        for account, subject, token in handled:
            if "before" in subject and account in moved:
                assert token is not None
                assert tokens[account] > token, "the new holder's fencing token is greater"
    finally:
        second.stop()
        first.stop()
    assert sorted(subject for _, subject, _ in handled) == sorted(
        [f"before {s.name}" for s in fleet.sources] + [f"after {s.name}" for s in fleet.sources]
    ), "every mail once"


def test_a_worker_that_stops_hands_everything_back_at_once(fleet, store):
    first = FleetWorker(fleet, store, worker="a")
    second = FleetWorker(fleet, store, worker="b")
    try:
        second.step()
        first.step()
        assert len(first.held) + len(second.held) == 5
        second.stop()
        assert [info.worker for info in read_workers(store)] == ["a"], "its record is gone"
        first.step()
        assert len(first.held) == 5, "its leases were released: taken in the next round"
    finally:
        first.stop()


def test_a_lost_lease_stops_that_source_at_once(fleet, store):
    clock = FakeClock()
    worker = FleetWorker(fleet, store, worker="a", clock=clock)
    try:
        worker.step()
        name = worker.held[0]
        runner = worker.runner(name)
        lease = store.holder(f"listener:{name}")
        assert lease is not None
        assert store.release(lease)  # as if it expired while the worker was paused
        assert store.acquire(f"listener:{name}", "someone-else", 60) is not None
        clock.advance(fleet.lease_ttl / 3)  # time to renew: the renewal finds it taken
        worker.step()
        assert name not in worker.held
        eventually(lambda: not runner.running)
    finally:
        worker.stop()


def test_status_shows_who_holds_each_source_and_the_workers(fleet, store, tmp_path):
    worker = FleetWorker(fleet, store, worker="host-a:123:beef")
    try:
        worker.step()
        eventually(lambda: all(worker.runner(n).catch_ups >= 1 for n in worker.held))
        out = io.StringIO()
        assert main(["status", "--store", f"sqlite:{tmp_path / 'fleet.db'}"], out=out) == 0
        text = out.getvalue()
        assert "HELD BY" in text
        assert "fleet workers:" in text
        assert "host-a:123:beef" in text
        out = io.StringIO()
        assert (
            main(["status", "--store", f"sqlite:{tmp_path / 'fleet.db'}", "--json"], out=out) == 0
        )
        data = json.loads(out.getvalue())
        assert {s["source"]: s["held_by"]["worker"] for s in data["sources"]} == {
            s.name: "host-a:123:beef" for s in fleet.sources
        }
        (info,) = data["workers"]
        assert info["alive"] is True
        assert sorted(info["held"]) == sorted(s.name for s in fleet.sources)
    finally:
        worker.stop()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def test_the_fleet_file(tmp_path, monkeypatch):
    (tmp_path / "fleet_handlers_ok.py").write_text("def handle(delivery):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(
        tmp_path,
        """
[fleet]
store = "sqlite:state.db"
heartbeat = "2s"
lease_ttl = "1m"

[[source]]
name = "support"
url = "imaps://support%40example.com:s3cret-pw@imap.example.com/INBOX"
handler = "fleet_handlers_ok:handle"
after = "move:Done"
reconnect = "fixed 5s"
noop_interval = "5m"

[[source]]
name = "invoices"
url = "pop3s://invoices:s3cret-pw@pop.example.com/"
handler = "fleet_handlers_ok:handle"
delete = false
""",
    )
    fleet = Fleet.from_toml(path)
    assert [s.name for s in fleet.sources] == ["support", "invoices"]
    assert [s.kind for s in fleet.sources] == ["imap", "pop3"]
    assert (fleet.heartbeat, fleet.lease_ttl, fleet.store_url) == (2.0, 60.0, "sqlite:state.db")
    assert "s3cret-pw" not in repr(fleet.sources[0])


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[fleet]\n", "no [[source]] tables"),
        ('[[source]]\nname = "a"\nurl = "imaps://u:p@h/"\n', "lacks handler"),
        ('[fleet]\nspeed = 1\n[[source]]\nname="a"\n', "unknown [fleet] setting(s) speed"),
        (
            '[[source]]\nname = "a"\nurl = "imaps://u:p@h/"\nhandler = "nosuchmodule:f"\n',
            "cannot import handler module 'nosuchmodule'",
        ),
        (
            '[[source]]\nname = "a"\nurl = "imaps://u:p@h/"\nhandler = "json:dumps"\ncolour = 3\n',
            "source 'a': unknown setting(s) colour",
        ),
        (
            '[[source]]\nname = "a"\nurl = "imaps://u:p@h/"\nhandler = "json:dumps"\n'
            'after = "burn"\n',
            "source 'a': after must be one of",
        ),
        (
            '[[source]]\nname = "a"\nurl = "imaps://u:p@h/"\nhandler = "json:dumps"\n'
            '[[source]]\nname = "a"\nurl = "imaps://u:p@h/"\nhandler = "json:dumps"\n',
            "repeated: ['a']",
        ),
        (
            '[fleet]\nheartbeat = "10s"\nlease_ttl = "20s"\n'
            '[[source]]\nname = "a"\nurl = "imaps://u:p@h/"\nhandler = "json:dumps"\n',
            "at least three heartbeats",
        ),
        ("not toml [", "cannot read the fleet file"),
    ],
)
def test_a_bad_fleet_file_is_refused_naming_what_is_wrong(tmp_path, text, words):
    with pytest.raises(ConfigError) as raised:
        Fleet.from_toml(write(tmp_path, text))
    assert words in str(raised.value)


def test_mailtether_run_says_what_is_wrong_in_one_line(tmp_path):
    path = write(
        tmp_path, '[[source]]\nname = "a"\nurl = "imaps://u:p@h/"\nhandler = "json:dumps"\n'
    )
    out = io.StringIO()
    assert main(["run", str(path)], out=out, environ={}) == 2
    assert out.getvalue() == (
        "mailtether: run needs a store: give --store URL, set MAILTETHER_STORE, or put "
        'store = "…" in mailtether.toml, or under [fleet] in the fleet file\n'
    )


def test_a_fleet_runs_pop3_mailboxes_beside_imap_folders(dovecot, store, handled):
    def handle(delivery: Delivery) -> None:
        handled.append((delivery.key.account, str(delivery.message["Subject"]), delivery.token))

    imap_user, pop_user = dovecot.add_user(), dovecot.add_user()
    pop_url = (
        f"pop3://{pop_user}:{dovecot.password(pop_user)}@127.0.0.1:{dovecot.pop3_port}/"
        "?security=plain"
    )
    fleet = Fleet(
        [
            FleetSource("folder", url(dovecot, imap_user), handle, {"poll_interval": 0.5}),
            FleetSource("mailbox", pop_url, handle, {"poll_interval": 0.5, "timeout": 5}),
        ],
        heartbeat=1,
        lease_ttl=3,
    )
    assert [source.kind for source in fleet.sources] == ["imap", "pop3"]
    worker = FleetWorker(fleet, store, worker="a")
    try:
        worker.step()
        dovecot.save(imap_user, b"Subject: by imap\r\n\r\nhi\r\n")
        dovecot.save(pop_user, b"Subject: by pop3\r\n\r\nhi\r\n")
        eventually(lambda: len(handled) == 2)
        tokens = {account: token for account, _, token in handled}
        assert all(isinstance(token, int) for token in tokens.values())
        assert sorted(subject for _, subject, _ in handled) == ["by imap", "by pop3"]
    finally:
        worker.stop()


def test_a_paused_source_of_a_fleet_hands_out_nothing_until_resumed(fleet, store, dovecot, handled):
    worker = FleetWorker(fleet, store, worker="a")
    try:
        worker.step()
        name = fleet.sources[0].name
        runner = worker.runner(name)
        eventually(lambda: runner.catch_ups >= 1)
        assert worker.status.pause(name, by="a person")
        worker.step()  # the round's heartbeat reads the pause and passes it on
        eventually(lambda: runner._connection is None)
        dovecot.save(name, b"Subject: while paused\r\n\r\nhi\r\n")
        time.sleep(1.0)  # a listener in IDLE would have handled it by now (a negative check)
        assert worker.status.get(name).state.value == "paused"
        assert handled == [], "nothing handed out while paused"
        assert worker.status.resume(name, by="a person")
        eventually(lambda: [subject for _, subject, _ in handled] == ["while paused"])
    finally:
        worker.stop()


def test_a_round_that_fails_is_logged_and_the_next_one_goes_on(fleet, store, caplog, monkeypatch):
    """Every error ends in the log and the next round, never in a dead worker thread."""
    from mailtether import StoreError

    worker = FleetWorker(fleet, store, worker="a")
    try:
        worker.step()
        assert len(worker.held) == 5
        real_scan = type(store).scan
        failures = [StoreError("the store is down"), RuntimeError("a bug in a store")]

        def scan(self, namespace, *args, **kwargs):  # type: ignore[no-untyped-def]
            if namespace == "fleet-worker" and failures:
                raise failures.pop(0)
            return real_scan(self, namespace, *args, **kwargs)

        monkeypatch.setattr(type(store), "scan", scan)
        worker.step()
        worker.step()
        assert "this round failed (the store): the store is down" in caplog.text
        assert "this round failed (tried again next round): a bug in a store" in caplog.text
        worker.step()
        assert len(worker.held) == 5, "the sources ran on through the failed rounds"
        assert all(worker.runner(name).running for name in worker.held)
    finally:
        worker.stop()
