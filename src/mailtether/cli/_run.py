"""``mailtether run FLEET.toml``: one fleet worker, until Ctrl-C or SIGTERM.

Start it on as many hosts (and as many times per host) as you like, every one on the same
store: the workers share the fleet's sources among themselves (see
:class:`~mailtether.FleetWorker`). The store is ``--store``, ``MAILTETHER_STORE``, the fleet
file's, or the settings file's; the relay ``--relay``, ``MAILTETHER_RELAY`` or the settings
file's; the status board takes ``[status]`` and ``[[notify.*]]`` from the settings file.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from typing import TextIO

from mailtether._fleet import Fleet
from mailtether._fleet_worker import FleetWorker
from mailtether._outbox import Outbox
from mailtether._status import LoggingNotifier
from mailtether.cli._config_file import ConfigFile, add_config_argument, flush
from mailtether.cli._outcome import OK
from mailtether.smtp._relay_url import relay_from_url
from mailtether.stores._url import store_from_url

__all__ = ["add_run_arguments", "run_fleet"]


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mailtether run``."""
    parser.add_argument("fleet", help="the fleet file (TOML: [fleet] and [[source]] tables)")
    parser.add_argument(
        "--store",
        help="the store URL (default: $MAILTETHER_STORE, the fleet file's [fleet] store, or "
        "store in the settings file)",
    )
    add_config_argument(parser)
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


def run_fleet(
    args: argparse.Namespace,
    out: TextIO,
    stop: threading.Event | None = None,
    *,
    config: ConfigFile | None = None,
) -> int:
    """Run one worker of the fleet until Ctrl-C, SIGTERM (or *stop*); return the exit code.

    *config*: the settings file and environment (default: ``--config``'s, the process's).
    """
    config = config or ConfigFile.load(args.config)
    fleet = Fleet.from_toml(args.fleet)
    url = config.store_url(args.store, "run", also=fleet.store_url)
    relay = config.relay_url(args.relay)
    notifiers = config.notifiers()
    config.board_options()  # checked before the store is opened (or made)
    store = store_from_url(url)
    board = config.board(store, [LoggingNotifier(), *notifiers])
    outbox = Outbox(store, relay_from_url(relay), status=board) if relay else None
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
        flush(notifiers)
    return OK
