"""The Prometheus endpoint: real HTTP scrapes of serve_metrics, every value checked."""

from __future__ import annotations

import logging
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mailtether import (
    ConfigError,
    Fleet,
    FleetSource,
    FleetWorker,
    MemoryStore,
    Record,
    SourceState,
    SQLiteStore,
    StatusBoard,
    Store,
    StoreError,
)
from mailtether._fleet_registry import WORKERS, FleetWorkerInfo
from mailtether._metrics import MetricsServer, metrics_collector, serve_metrics
from mailtether.testing import FakeClock

START = 1_700_000_000.0
SUPPORT = "support@example.com/INBOX"
SALES = "sales@example.com/Orders"
PASSWORD = "Hunter2-metrics-pw"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
Serve = Callable[..., MetricsServer]


def samples_of(text: str) -> Samples:
    """Every sample of an exposition: (name, labels) -> value."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"{key} twice"
            found[key] = sample.value
    return found


def fetch(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def scrape(server: MetricsServer) -> Samples:
    status, text = fetch(server.url)
    assert status == 200
    return samples_of(text)


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def without_duration(samples: Samples) -> Samples:
    duration = samples.pop(key("mailtether_scrape_duration_seconds"))
    assert 0.0 <= duration < 10.0
    return samples


def states(source: str, current: str) -> Samples:
    return {
        key("mailtether_source_state", source=source, state=state.value): float(
            state.value == current
        )
        for state in SourceState
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=START)


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock=clock)


@pytest.fixture
def serve(clock: FakeClock) -> Iterator[Serve]:
    servers: list[MetricsServer] = []

    def start(store: Store, *, worker: FleetWorker | None = None) -> MetricsServer:
        server = serve_metrics(store, 0, clock=clock, worker=worker)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()


def fill(store: Store, clock: FakeClock) -> None:
    """Two sources, a lease, two fleet workers (one dead); 90 s after SUPPORT caught up."""
    board = StatusBoard(store, notifiers=[], clock=clock)
    board.set(SUPPORT, SourceState.ONLINE)
    board.count(SUPPORT, processed=5, failed=2, held=1, reconnects=3)
    board.caught_up(SUPPORT)
    board.set(SALES, SourceState.RETRYING, reason="connection refused", attempts=2)
    board.count(SALES, reconnects=7)
    assert store.acquire(f"listener:{SUPPORT}", "hostA:1:abcd", 300) is not None
    alive = FleetWorkerInfo(
        "hostA:1:abcd", "hostA", 1, started_at=START - 50, alive_until=START + 120,
        held={SUPPORT: START, SALES: START},
    )  # fmt: skip
    dead = FleetWorkerInfo("hostB:2:ef01", "hostB", 2, started_at=START - 500, alive_until=START)
    for info in (alive, dead):
        store.put(WORKERS, info.worker, "alive", info.to_dict())
    clock.advance(90)


def expected_after_fill() -> Samples:
    return {
        **states(SUPPORT, "online"),
        **states(SALES, "retrying"),
        key("mailtether_source_seconds_in_state", source=SUPPORT): 90.0,
        key("mailtether_source_seconds_in_state", source=SALES): 90.0,
        key("mailtether_source_mails_handled_total", source=SUPPORT): 5.0,
        key("mailtether_source_mails_handled_total", source=SALES): 0.0,
        key("mailtether_source_mails_failed_total", source=SUPPORT): 2.0,
        key("mailtether_source_mails_failed_total", source=SALES): 0.0,
        key("mailtether_source_mails_held_total", source=SUPPORT): 1.0,
        key("mailtether_source_mails_held_total", source=SALES): 0.0,
        key("mailtether_source_reconnects_total", source=SUPPORT): 3.0,
        key("mailtether_source_reconnects_total", source=SALES): 7.0,
        # SALES never caught up, and nobody holds its lease: no series for it.
        key("mailtether_source_seconds_since_caught_up", source=SUPPORT): 90.0,
        key("mailtether_source_lease_holder_info", source=SUPPORT, holder="hostA:1:abcd"): 1.0,
        key("mailtether_worker_sources_held", worker="hostA:1:abcd"): 2.0,
        key("mailtether_worker_sources_held", worker="hostB:2:ef01"): 0.0,
        key("mailtether_worker_alive", worker="hostA:1:abcd"): 1.0,
        key("mailtether_worker_alive", worker="hostB:2:ef01"): 0.0,
        key("mailtether_worker_started_timestamp_seconds", worker="hostA:1:abcd"): START - 50,
        key("mailtether_worker_started_timestamp_seconds", worker="hostB:2:ef01"): START - 500,
        key("mailtether_scrape_error"): 0.0,
    }


def test_a_scrape_shows_every_source_lease_and_worker(
    store: MemoryStore, clock: FakeClock, serve: Serve
) -> None:
    fill(store, clock)
    server = serve(store)
    assert without_duration(scrape(server)) == expected_after_fill()


def test_each_scrape_reads_the_store_anew(
    store: MemoryStore, clock: FakeClock, serve: Serve
) -> None:
    server = serve(store)
    assert without_duration(scrape(server)) == {key("mailtether_scrape_error"): 0.0}
    fill(store, clock)
    StatusBoard(store, notifiers=[], clock=clock).count(SUPPORT, processed=1)
    clock.advance(10)
    samples = scrape(server)
    assert samples[key("mailtether_source_mails_handled_total", source=SUPPORT)] == 6.0
    assert samples[key("mailtether_source_seconds_since_caught_up", source=SUPPORT)] == 100.0
    assert samples[key("mailtether_worker_alive", worker="hostA:1:abcd")] == 1.0
    clock.advance(21)  # past hostA's alive_until
    assert scrape(server)[key("mailtether_worker_alive", worker="hostA:1:abcd")] == 0.0


def test_a_sqlite_store_is_read_the_same(tmp_path: Path, clock: FakeClock, serve: Serve) -> None:
    store = SQLiteStore(tmp_path / "state.db", clock=clock)
    try:
        fill(store, clock)
        server = serve(store)
        assert without_duration(scrape(server)) == expected_after_fill()
    finally:
        store.close()


def test_a_source_whose_heartbeat_expired_is_stale(
    store: MemoryStore, clock: FakeClock, serve: Serve
) -> None:
    board = StatusBoard(store, notifiers=[], clock=clock)
    board.set(SUPPORT, SourceState.ONLINE)
    board.heartbeat(SUPPORT, alive_for=30)
    board.set(SALES, SourceState.BLOCKED, reason="credentials rejected")
    board.heartbeat(SALES, alive_for=30)
    server = serve(store)
    clock.advance(20)
    samples = scrape(server)
    assert {k: v for k, v in samples.items() if k[0] == "mailtether_source_state"} == {
        **states(SUPPORT, "online"),
        **states(SALES, "blocked"),
    }
    clock.advance(25)  # 45 s after the last heartbeat, which vouched for 30
    samples = scrape(server)
    assert {k: v for k, v in samples.items() if k[0] == "mailtether_source_state"} == {
        **states(SUPPORT, "stale"),
        **states(SALES, "blocked"),  # a person must act either way: it stays BLOCKED
    }
    # Stale since the last heartbeat; blocked since it was blocked.
    assert samples[key("mailtether_source_seconds_in_state", source=SUPPORT)] == 45.0
    assert samples[key("mailtether_source_seconds_in_state", source=SALES)] == 45.0


class BreakableStore(MemoryStore):
    """A MemoryStore whose scans fail while ``broken``; counts them."""

    broken = False
    scans = 0

    def scan(
        self,
        namespace: str,
        *,
        state: str | None = None,
        updated_before: float | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        self.scans += 1
        if self.broken:
            raise StoreError("MemoryStore: scan of status failed: connection reset")
        return super().scan(namespace, state=state, updated_before=updated_before, limit=limit)


def test_a_store_error_answers_scrape_error_not_a_server_error(
    clock: FakeClock,
    serve: Serve,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = BreakableStore(clock=clock)
    fill(store, clock)
    server = serve(store)
    assert without_duration(scrape(server)) == expected_after_fill()
    store.broken = True
    with caplog.at_level(logging.WARNING, logger="mailtether.metrics"):
        status, text = fetch(server.url)
    assert status == 200
    assert without_duration(samples_of(text)) == {key("mailtether_scrape_error"): 1.0}
    assert [record.getMessage() for record in caplog.records] == [
        "metrics: the store could not be read for a scrape: "
        "MemoryStore: scan of status failed: connection reset"
    ]
    store.broken = False
    assert without_duration(scrape(server)) == expected_after_fill()


def test_a_record_no_reader_understands_answers_scrape_error(
    store: MemoryStore,
    clock: FakeClock,
    serve: Serve,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fill(store, clock)
    store.put("status", "odd", "weird", {"source": "odd", "state": "weird", "since": 0.0})
    server = serve(store)
    with caplog.at_level(logging.ERROR, logger="mailtether.metrics"):
        assert without_duration(scrape(server)) == {key("mailtether_scrape_error"): 1.0}
    assert [record.getMessage() for record in caplog.records] == [
        "metrics: reading the store for a scrape failed"
    ]
    assert caplog.records[0].exc_info is not None


def test_the_worker_of_this_process_is_named_and_no_secret_is_shown(
    store: MemoryStore, clock: FakeClock, serve: Serve
) -> None:
    url = f"imaps://support:{PASSWORD}@imap.example.com/INBOX"
    fleet = Fleet([FleetSource(SUPPORT, url, print)])
    worker = FleetWorker(fleet, store, worker="hostA:1:abcd", clock=clock)
    fill(store, clock)
    server = serve(store, worker=worker)
    status, text = fetch(server.url)
    assert status == 200
    assert without_duration(samples_of(text)) == {
        **expected_after_fill(),
        key("mailtether_exporter_info", worker="hostA:1:abcd"): 1.0,
    }
    assert PASSWORD not in text
    assert "imaps://" not in text


def test_port_zero_picks_a_free_port_and_shutdown_frees_it(store: MemoryStore) -> None:
    server = serve_metrics(store, 0)
    try:
        port = server.port
        assert port > 0
        assert server.host == "127.0.0.1"
        assert server.url == f"http://127.0.0.1:{port}/metrics"
        assert repr(server) == f"MetricsServer('http://127.0.0.1:{port}/metrics', serving)"
        assert scrape(server)[key("mailtether_scrape_error")] == 0.0
    finally:
        server.shutdown()
    assert repr(server) == f"MetricsServer('http://127.0.0.1:{port}/metrics', stopped)"
    server.shutdown()  # again: nothing
    with pytest.raises(urllib.error.URLError), urllib.request.urlopen(server.url, timeout=5):
        pass
    with serve_metrics(store, port) as again:  # the port is free for the next one
        assert again.port == port
        assert scrape(again)[key("mailtether_scrape_error")] == 0.0
    with socket.create_server(("127.0.0.1", port)):
        pass


def test_a_taken_port_is_an_os_error(store: MemoryStore) -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as taken,
        pytest.raises(OSError, match="in use"),
    ):
        serve_metrics(store, taken.getsockname()[1])


def test_the_collector_in_ones_own_registry_reads_nothing_until_scraped(clock: FakeClock) -> None:
    store = BreakableStore(clock=clock)
    fill(store, clock)
    scans = store.scans
    registry = CollectorRegistry(auto_describe=True)
    registry.register(metrics_collector(store, clock=clock))
    assert store.scans == scans  # registering described the metrics without reading
    samples = samples_of(generate_latest(registry).decode())
    assert without_duration(samples) == expected_after_fill()
    assert store.scans == scans + 2  # the statuses and the fleet workers


def test_without_the_metrics_extra_the_error_says_what_to_install(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    message = "metrics need the metrics extra: pip install 'mailtether[metrics]'"
    with pytest.raises(ConfigError) as raised:
        metrics_collector(store)
    assert str(raised.value) == message
    with pytest.raises(ConfigError) as raised:
        serve_metrics(store, 0)
    assert str(raised.value) == message
