"""Prometheus metrics of the sources, their leases and the fleet's workers, read at each scrape.

Nothing is counted in this process: every scrape reads the store (the status board, the
listeners' leases, the fleet workers' records), so any process on any host that shares the
store can serve the metrics, and they agree. A store that cannot be read makes a scrape answer
``mailtether_scrape_error 1`` (and a log line), never an HTTP error.

``prometheus_client`` comes with the ``metrics`` extra and is imported only when metrics are
asked for, so ``import mailtether`` never needs it.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Final

import attrs

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._errors import ConfigError, StoreError
from mailtether._fleet_registry import FleetWorkerInfo, read_workers
from mailtether._redaction import redacting_logger
from mailtether._status import SourceState, SourceStatus, StatusBoard
from mailtether.stores._protocol import Store

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import Metric

    from mailtether._fleet_worker import FleetWorker

__all__ = ["MetricsCollector", "MetricsServer", "metrics_collector", "serve_metrics"]

log = redacting_logger("mailtether.metrics")

_LEASE_PREFIX: Final = "listener:"
"""A source's run loop holds the lease ``listener:<source>`` while it works the mailbox."""


def _require_prometheus() -> None:
    """Raise ConfigError, saying what to install, if ``prometheus_client`` is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(
            "metrics need the metrics extra: pip install 'mailtether[metrics]'"
        ) from None


@attrs.frozen
class _Reading:
    """What one scrape read from the store."""

    statuses: list[SourceStatus]
    holders: dict[str, str]
    """The owner of each source's lease, for the sources whose lease is held."""
    workers: list[FleetWorkerInfo]
    now: float
    """The statuses' clock when read (wall-clock seconds)."""
    store_now: float
    """The store's clock when read: the fleet workers' records are on it."""


class _Families:
    """The metric families of one scrape (or of ``describe``), empty until filled."""

    def __init__(self) -> None:
        from prometheus_client.metrics_core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        def gauge(name: str, text: str, *labels: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"mailtether_{name}", text, labels=list(labels))

        def counter(name: str, text: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"mailtether_{name}", text, labels=["source"])

        self.state = gauge(
            "source_state", "1 for the state the source is in, 0 for the others.", "source", "state"
        )
        self.in_state = gauge(
            "source_seconds_in_state", "Seconds since the source entered its state.", "source"
        )
        self.handled = counter("source_mails_handled", "Mails handled successfully.")
        self.failed = counter("source_mails_failed", "Handler runs that failed.")
        self.held = counter("source_mails_held", "Mails held (poisoned, or too large).")
        self.reconnects = counter("source_reconnects", "Reconnect attempts.")
        self.caught_up = gauge(
            "source_seconds_since_caught_up",
            "Seconds since the source last finished a catch-up (absent: never).",
            "source",
        )
        self.holder = InfoMetricFamily(
            "mailtether_source_lease_holder",
            "Who holds the source's lease (absent: nobody).",
            labels=["source"],
        )
        self.worker_held = gauge("worker_sources_held", "Sources the fleet worker holds.", "worker")
        self.worker_alive = gauge(
            "worker_alive", "1 while the fleet worker's heartbeat vouches for it, else 0.", "worker"
        )
        self.worker_started = gauge(
            "worker_started_timestamp_seconds",
            "When the fleet worker started (the store's clock).",
            "worker",
        )
        self.exporter = InfoMetricFamily(
            "mailtether_exporter", "The fleet worker whose process serves these metrics."
        )
        self.scrape_error = gauge(
            "scrape_error", "1 if the store could not be read for this scrape, else 0."
        )
        self.scrape_duration = gauge(
            "scrape_duration_seconds", "How long reading the store took for this scrape."
        )

    def sources(self) -> list[Metric]:
        """The per-source and per-worker families: what a failed read leaves out."""
        return [
            self.state,
            self.in_state,
            self.handled,
            self.failed,
            self.held,
            self.reconnects,
            self.caught_up,
            self.holder,
            self.worker_held,
            self.worker_alive,
            self.worker_started,
        ]

    def fill(self, reading: _Reading) -> None:
        """Add the samples of *reading*."""
        for status in reading.statuses:
            source = [status.source]
            for state in SourceState:
                self.state.add_metric([*source, state.value], float(state is status.state))
            self.in_state.add_metric(source, max(0.0, reading.now - status.since))
            self.handled.add_metric(source, status.processed)
            self.failed.add_metric(source, status.failed)
            self.held.add_metric(source, status.held)
            self.reconnects.add_metric(source, status.reconnects)
            if status.caught_up_at is not None:
                self.caught_up.add_metric(source, max(0.0, reading.now - status.caught_up_at))
            holder = reading.holders.get(status.source)
            if holder is not None:
                self.holder.add_metric(source, {"holder": holder})
        for info in reading.workers:
            worker = [info.worker]
            self.worker_held.add_metric(worker, len(info.held))
            self.worker_alive.add_metric(worker, float(info.alive(reading.store_now)))
            self.worker_started.add_metric(worker, info.started_at)


class MetricsCollector:
    """A ``prometheus_client`` collector of a store's sources, leases and fleet workers.

    Register it in any ``CollectorRegistry``: each scrape reads the store anew (one scan of the
    statuses, one of the fleet workers, and one lease look-up per source). Made by
    :func:`metrics_collector`, which says what it shows.
    """

    def __init__(
        self, store: Store, *, worker: FleetWorker | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.store = store
        """Where the metrics are read from."""
        self.worker = worker
        """The fleet worker of this process, or ``None``."""
        self.clock = clock
        """The clock the statuses are written with."""
        self._board = StatusBoard(store, notifiers=[], clock=clock)

    def describe(self) -> list[Metric]:
        """The metric families, without samples: registering reads nothing from the store."""
        families = _Families()
        return [
            *families.sources(),
            families.scrape_error,
            families.scrape_duration,
            families.exporter,
        ]

    def collect(self) -> list[Metric]:
        """Read the store: every metric family, with its samples (what a scrape shows)."""
        started = time.monotonic()
        families = _Families()
        try:
            families.fill(self._read())
        except StoreError as error:
            log.warning("metrics: the store could not be read for a scrape: %s", error)
            failed = True
        except Exception:  # a record no reader understands must not take the endpoint down
            log.exception("metrics: reading the store for a scrape failed")
            failed = True
        else:
            failed = False
        families.scrape_error.add_metric([], float(failed))
        families.scrape_duration.add_metric([], time.monotonic() - started)
        scrape: list[Metric] = [families.scrape_error, families.scrape_duration]
        if self.worker is not None:
            families.exporter.add_metric([], {"worker": self.worker.worker})
            scrape.append(families.exporter)
        return ([] if failed else families.sources()) + scrape

    def _read(self) -> _Reading:
        statuses = self._board.snapshot()
        holders: dict[str, str] = {}
        for status in statuses:
            lease = self.store.holder(_LEASE_PREFIX + status.source)
            if lease is not None:
                holders[status.source] = lease.owner
        workers = read_workers(self.store)
        return _Reading(statuses, holders, workers, self.clock.time(), self.store.now())

    def __repr__(self) -> str:
        return f"MetricsCollector({self.store!r}, worker={self.worker!r})"


def metrics_collector(
    store: Store, *, worker: FleetWorker | None = None, clock: Clock = SYSTEM_CLOCK
) -> MetricsCollector:
    """A Prometheus collector of *store*'s sources, their leases and the fleet's workers.

    Register it in your own registry (``registry.register(metrics_collector(store))``), or let
    :func:`serve_metrics` serve it. Every scrape reads the store; what it shows:

    - per source (label ``source``): ``mailtether_source_state`` (one series per state, 1 for
      the current one, ``stale`` included), ``mailtether_source_seconds_in_state``,
      ``mailtether_source_mails_handled_total``, ``..._mails_failed_total``,
      ``..._mails_held_total``, ``mailtether_source_reconnects_total``,
      ``mailtether_source_seconds_since_caught_up`` (absent until the first catch-up) and
      ``mailtether_source_lease_holder_info`` (label ``holder``; absent while nobody holds the
      lease ``listener:<source>``);
    - per fleet worker (label ``worker``): ``mailtether_worker_sources_held``,
      ``mailtether_worker_alive`` (0 or 1) and ``mailtether_worker_started_timestamp_seconds``;
    - ``mailtether_scrape_error`` (1: the store could not be read, and only the scrape's own
      metrics are shown), ``mailtether_scrape_duration_seconds``, and with *worker*,
      ``mailtether_exporter_info`` naming it.

    Args:
        store: Where the statuses, leases and fleet workers live.
        worker: This process's fleet worker, if it runs one.
        clock: The clock the statuses are written with (the system clock unless a test says
            otherwise): it decides which sources are STALE and how long ago things happened.
            Fleet workers are alive or not by the store's clock, as they judge each other.

    Raises:
        ConfigError: ``prometheus_client`` is not installed (the ``metrics`` extra).
    """
    _require_prometheus()
    return MetricsCollector(store, worker=worker, clock=clock)


class MetricsServer:
    """A metrics endpoint serving in a thread: where it listens, and how to stop it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def host(self) -> str:
        """The address it listens on."""
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The port it listens on (the one picked, when asked for port 0)."""
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        """The address to scrape: ``http://host:port/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop serving and free the port (again: nothing)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "serving"
        return f"MetricsServer({self.url!r}, {state})"


def serve_metrics(
    store: Store,
    port: int,
    *,
    host: str = "127.0.0.1",
    worker: FleetWorker | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> MetricsServer:
    """Serve :func:`metrics_collector`'s metrics over HTTP, in a thread, until shut down.

    The collector is the only one in a registry of its own (no process or Python metrics).

    Args:
        store: Where the metrics are read from.
        port: The port; 0 picks a free one (:attr:`MetricsServer.port` says which).
        host: The address to listen on; the default answers this host only.
        worker: This process's fleet worker, if it runs one (see :func:`metrics_collector`).
        clock: See :func:`metrics_collector`.

    Raises:
        ConfigError: ``prometheus_client`` is not installed (the ``metrics`` extra).
        OSError: the port cannot be listened on (it is taken, or needs privileges).
    """
    collector = metrics_collector(store, worker=worker, clock=clock)
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(collector)
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread)
