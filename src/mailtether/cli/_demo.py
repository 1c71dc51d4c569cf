"""``mailtether demo``: a listener through resets, a black hole and a duplicate, in a minute.

Runs an embedded IMAP server (pymap, from the ``demo`` extra) on a free loopback port, a
:class:`~mailtether.testing.FaultProxy` in front of it, and an :class:`~mailtether.ImapListener`
with its state in SQLite in a temporary directory; then injects faults and prints, live, what
happens. Ends with a summary; the exit code is 0 only if no mail was lost or handled twice.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TextIO

from mailtether._delivery import Delivery
from mailtether._errors import ConfigError
from mailtether._guard import DuplicateGuard
from mailtether._keepalive import Keepalive
from mailtether._settings import ImapSettings
from mailtether._status import SourceState, StatusBoard, StatusChange
from mailtether._strategies import Exponential
from mailtether.imap._listener import ImapListener
from mailtether.stores._sqlite import SQLiteStore
from mailtether.testing import FaultProxy

__all__ = ["run_demo"]

USER, PASSWORD = "demo", "demopass"


class _Pymap:
    """pymap's in-memory IMAP server, run in this process on its own event loop thread."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="pymap", daemon=True)

    def start(self) -> _Pymap:
        self._thread.start()
        if not self._ready.wait(30) or self._failed is not None:
            raise RuntimeError(f"the embedded IMAP server did not start: {self._failed}")
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported by start()
            self._failed = error
            self._ready.set()

    async def _serve(self) -> None:
        from pymap.backend import backends
        from pymap.service import services

        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers(dest="backend", required=True)
        backends["dict"].add_subparser("dict", sub).set_defaults(backend_type=backends["dict"])
        services["imap"].add_arguments(parser)
        parser.set_defaults(skip_services=[], passlib_cfg=None, debug=False)
        args = parser.parse_args(
            [
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-tls",
                "dict",
                "--demo-user",
                USER,
                "--demo-password",
                PASSWORD,
            ]
        )
        backend, config = await args.backend_type.init(args)
        config.apply_context()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with AsyncExitStack() as stack:
            await backend.start(stack)
            await services["imap"](backend, config).start(stack)
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def _mail(n: int) -> bytes:
    return (
        f"From: customer{n}@example.com\r\nTo: support@example.com\r\n"
        f"Message-ID: <demo-{n}@example.com>\r\nSubject: help request #{n}\r\n\r\n"
        f"Hello, this is request {n}.\r\n"
    ).encode()


def run_demo(out: TextIO | None = None) -> int:
    """Run the demo, printing to *out*; return 0 if no mail was lost or handled twice."""
    out = out or sys.stdout
    try:
        import pymap  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the demo needs the embedded IMAP server: pip install 'mailtether[demo]'"
        ) from None
    started = time.monotonic()

    def say(text: str) -> None:
        out.write(f"[{time.monotonic() - started:5.1f}s] {text}\n")
        out.flush()

    server = _Pymap().start()
    proxy = FaultProxy(("127.0.0.1", server.port)).start()
    tmp = tempfile.TemporaryDirectory(prefix="mailtether-demo-")
    store = SQLiteStore(Path(tmp.name) / "state.db")
    handled: Counter[str] = Counter()
    lock = threading.Lock()
    states: list[SourceState] = []

    def handler(delivery: Delivery) -> None:
        subject = str(delivery.message["Subject"])
        with lock:
            handled[subject] += 1
        say(f"handled   UID {delivery.uid}: {subject}")

    def notify(change: StatusChange) -> None:
        states.append(change.current.state)
        say(f"status    {change.sentence()}")

    keepalive = Keepalive(noop_interval=1, idle_renewal=1.5, response_timeout=1)
    settings = ImapSettings(
        "127.0.0.1", USER, PASSWORD, port=proxy.port, security="plain", connect_timeout=2
    )
    guard = DuplicateGuard(store, repeat="skip")  # the default, "block", would stop at step 4
    listener = ImapListener(
        settings,
        handler,
        store=store,
        guard=guard,
        status=StatusBoard(store, notifiers=[notify], quiet_period=0),
        keepalive=keepalive,
        reconnect=Exponential(0.25, growth=1, max_delay=2).immediate_first(),
        poll_interval=2,
        lease_ttl=5,
        name="demo@pymap/INBOX",
    )
    delivered = 0

    def deliver(n: int) -> None:
        nonlocal delivered
        from imapclient import IMAPClient

        client = IMAPClient("127.0.0.1", port=server.port, ssl=False, timeout=10)
        client.login(USER, PASSWORD)
        client.append("INBOX", _mail(n))
        client.logout()
        delivered += 1
        say(f"delivered request #{n} (straight to the server)")

    def wait(what: str, condition: Callable[[], bool], timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                say(f"!! gave up waiting for {what}")
                return False
            time.sleep(0.05)
        return True

    def total() -> int:
        with lock:
            return sum(handled.values())

    class _Waits(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "reconnect attempt" in record.getMessage():
                say("waiting   " + record.getMessage().split(": ", 1)[1].split(" (", 1)[0])

    waits = _Waits(logging.INFO)
    listener_log = logging.getLogger("mailtether.listener")
    listener_log.addHandler(waits)
    old_level = listener_log.level
    listener_log.setLevel(logging.INFO)
    listener_log.propagate = False
    ok = True
    try:
        say(
            f"embedded IMAP server on 127.0.0.1:{server.port}; FaultProxy on {proxy.port}; "
            f"state in {tmp.name}"
        )
        listener.run_in_thread()
        ok &= wait("the listener to come online", lambda: SourceState.ONLINE in states)

        say("--- 1. new mail is handled once, then marked seen")
        for n in (1, 2, 3):
            deliver(n)
        ok &= wait("three mails", lambda: total() == 3)

        say("--- 2. the connection is reset and the server refuses us; mail arrives meanwhile")
        proxy.refuse_new()
        proxy.reset_all()
        ok &= wait("the listener to notice", lambda: SourceState.RETRYING in states)
        deliver(4)
        deliver(5)
        time.sleep(1.0)
        say("network back")
        proxy.pass_through()
        ok &= wait("the mail from the outage", lambda: total() == 5)

        say("--- 3. a black hole: the socket stays open, nothing gets through")
        states.clear()
        holed = time.monotonic()
        proxy.blackhole()
        deliver(6)
        ok &= wait("the dead connection to be found", lambda: SourceState.RETRYING in states)
        say(
            f"dead connection found after {time.monotonic() - holed:.1f} s "
            f"(bound: {listener.detection_bound:g} s)"
        )
        proxy.pass_through()
        ok &= wait("request #6", lambda: total() == 6)

        say("--- 4. the same mail is delivered again under a new UID")
        before = guard.counts()["done"]
        deliver(2)
        ok &= wait("the guard to see it", lambda: guard.counts()["done"] == before + 1)
        time.sleep(0.5)
        say("the guard recognised the content of request #2: not handled again")
    finally:
        listener.stop()
        listener_log.removeHandler(waits)
        listener_log.setLevel(old_level)
        listener_log.propagate = True
        proxy.stop()
        server.stop()
        store_counts = guard.counts()
        store.close()
        tmp.cleanup()

    twice = sorted(subject for subject, n in handled.items() if n > 1)
    duplicates = delivered - sum(handled.values()) if not twice else 0
    lost = 6 - len(handled)
    out.write(
        "\nsummary: "
        f"delivered {delivered}, handled {sum(handled.values())}, duplicates refused "
        f"{duplicates}, handled twice {len(twice)}, lost {lost}\n"
    )
    out.write(f"guard: {store_counts}\n")
    return 0 if ok and lost == 0 and not twice and duplicates == 1 else 1
