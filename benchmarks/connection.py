"""Dead-connection detection and connection set-up: mailtether beside plain imapclient.

Run: ``.venv/bin/python benchmarks/connection.py`` (as root or with Dovecot runnable; it
starts its own Dovecot on loopback ports, from the test suite's fixtures).

1. Detection: a FaultProxy black-holes an IDLE connection; how long until the code knows?
   mailtether (``ImapConnection.wait``, with ``Keepalive(idle_renewal=2, response_timeout=1)``)
   against its configured bound, and a plain imapclient ``idle_check`` loop (the common
   recipe) which, without a deadline of its own, does not notice at all.
2. Set-up: connect + LOGIN + SELECT + IDLE started, median of 30, ours vs plain imapclient
   (target: at most 1.1x).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from imapclient import IMAPClient

from mailtether import ConnectionLost, ImapConnection, ImapSettings, Keepalive
from mailtether.testing import FaultProxy
from servers.dovecot import DovecotServer
from servers.tls import make_ca

KEEPALIVE = Keepalive(noop_interval=2, idle_renewal=2, response_timeout=1)
PLAIN_PATIENCE = 10.0


def detection(server: DovecotServer, user: str) -> None:
    with FaultProxy(("127.0.0.1", server.imap_port)) as proxy:
        settings = ImapSettings(
            "127.0.0.1", user, server.password(user), port=proxy.port, security="plain"
        )
        connection = ImapConnection.open(settings, keepalive=KEEPALIVE)
        outcome: list[float] = []

        holed_at: list[float] = []

        def hole() -> None:  # once the connection sits in IDLE
            holed_at.append(time.monotonic())
            proxy.blackhole()

        threading.Timer(0.7, hole).start()
        try:
            connection.wait(60)
        except ConnectionLost:
            outcome.append(time.monotonic() - holed_at[0])
        connection.close()
        proxy.pass_through()

        client = IMAPClient("127.0.0.1", port=proxy.port, ssl=False)  # the default: no timeout
        client.login(user, server.password(user))
        client.select_folder("INBOX")
        client.idle()
        noticed: list[float] = []

        def plain_loop() -> None:
            started = time.monotonic()
            try:
                while time.monotonic() - started < PLAIN_PATIENCE:
                    client.idle_check(timeout=1)  # [] forever: nothing says the link is gone
            except Exception:
                noticed.append(time.monotonic() - started)

        proxy.blackhole()
        worker = threading.Thread(target=plain_loop)
        worker.start()
        worker.join()
        client.shutdown()

    print("\nblack hole during IDLE: time until the code knows the connection is dead")
    print(
        f"  mailtether ImapConnection.wait   {outcome[0]:6.2f} s   "
        f"(bound {KEEPALIVE.detection_bound:g} s + 1 s slack: "
        f"{'within' if outcome[0] <= KEEPALIVE.detection_bound + 1 else 'OVER'})"
    )
    plain = f"{noticed[0]:6.2f} s" if noticed else f"not noticed in {PLAIN_PATIENCE:g} s"
    print(f"  plain imapclient idle_check loop {plain}")


def setup_time(server: DovecotServer, user: str, rounds: int = 30) -> None:
    password = server.password(user)
    settings = ImapSettings("127.0.0.1", user, password, port=server.imap_port, security="plain")

    def plain() -> float:
        started = time.perf_counter()
        client = IMAPClient("127.0.0.1", port=server.imap_port, ssl=False, timeout=10)
        client.login(user, password)
        client.select_folder("INBOX")
        client.idle()
        took = time.perf_counter() - started
        client.idle_done()
        client.logout()
        return took

    def ours() -> float:
        started = time.perf_counter()
        connection = ImapConnection.open(settings)
        connection.call("starting IDLE", connection.client.idle)
        took = time.perf_counter() - started
        connection.call("ending IDLE", connection.client.idle_done)
        connection.close()
        return took

    plain(), ours()  # warm up
    theirs_ms = statistics.median(plain() for _ in range(rounds)) * 1000
    ours_ms = statistics.median(ours() for _ in range(rounds)) * 1000
    ratio = ours_ms / theirs_ms
    print(f"\nconnect + LOGIN + SELECT + IDLE, median of {rounds}")
    print(f"  plain imapclient      {theirs_ms:7.2f} ms")
    print(
        f"  mailtether            {ours_ms:7.2f} ms   ratio {ratio:.2f}x "
        f"(target <= 1.1x: {'meets' if ratio <= 1.1 else 'MISSES'} it)"
    )


def main() -> int:
    ca = make_ca(Path(tempfile.mkdtemp(prefix="mailtether-bench-ca-")))
    server = DovecotServer(ca).start()
    try:
        detection(server, server.add_user())
        setup_time(server, server.add_user())
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
