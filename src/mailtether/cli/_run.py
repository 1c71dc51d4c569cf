"""``mailtether run FLEET.toml``: one fleet worker, until Ctrl-C or SIGTERM.

Start it on as many hosts (and as many times per host) as you like, every one on the same
store: the workers share the fleet's sources among themselves (see
:class:`~mailtether.FleetWorker`).
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from typing import TextIO

from mailtether._errors import ConfigError
from mailtether._fleet import Fleet
from mailtether._fleet_worker import FleetWorker
from mailtether._outbox import Outbox
from mailtether._status import LoggingNotifier, StatusBoard
from mailtether.cli._outcome import OK
from mailtether.smtp._relay_url import relay_from_url
from mailtether.stores._url import store_from_url

__all__ = ["add_run_arguments", "run_fleet"]


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mailtether run``."""
    parser.add_argument("fleet", help="the fleet file (TOML: [fleet] and [[source]] tables)")
    parser.add_argument("--store", help="the store URL (default: the fleet file's [fleet] store)")
    parser.add_argument(
        "--relay",
        help="smtps://user:password@host/ (or smtp://): an outbox sends through it "
        '(sources with on_poison = "forward:…")',
    )
    parser.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        help="serve Prometheus metrics on this port (needs mailtether[metrics])",
    )
    parser.add_argument(
        "--metrics-host", dest="metrics_host", default="127.0.0.1", help="default 127.0.0.1"
    )


def run_fleet(args: argparse.Namespace, out: TextIO, stop: threading.Event | None = None) -> int:
    """Run one worker of the fleet until Ctrl-C, SIGTERM (or *stop*); return the exit code."""
    fleet = Fleet.from_toml(args.fleet)
    url = args.store or fleet.store_url
    if not url:
        raise ConfigError("run needs a store: --store URL, or store = … under [fleet]")
    store = store_from_url(url)
    board = StatusBoard(store, notifiers=[LoggingNotifier()])
    outbox = Outbox(store, relay_from_url(args.relay), status=board) if args.relay else None
    worker = FleetWorker(fleet, store, status=board, outbox=outbox)
    metrics = None
    if args.metrics_port is not None:
        from mailtether._metrics import (  # type: ignore[import-not-found, unused-ignore]
            serve_metrics,  # the metrics extra: only when asked
        )

        metrics = serve_metrics(store, args.metrics_port, host=args.metrics_host, worker=worker)
    stop = stop or threading.Event()
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            handlers[number] = signal.signal(number, lambda *_: stop.set())
    out.write(f"fleet worker {worker.worker}: {len(fleet.sources)} sources in the fleet\n")
    out.flush()
    try:
        if outbox is not None:
            outbox.run_in_thread()
        worker.run_in_thread()
        while not stop.wait(1.0):
            pass
    finally:
        started = time.monotonic()
        worker.stop()
        if outbox is not None:
            outbox.stop()
        if metrics is not None:
            metrics.shutdown()
        for number, previous in handlers.items():
            signal.signal(number, previous)
        out.write(f"fleet worker stopped in {time.monotonic() - started:.1f} s\n")
        store.close()
    return OK
