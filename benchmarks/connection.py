"""Detection, set-up, push latency, recovery and IDLE CPU: mailtether beside plain imapclient.

Run: ``.venv/bin/python benchmarks/connection.py`` (as root or with Dovecot runnable; it
starts its own Dovecot on loopback ports, from the test suite's fixtures). A few minutes.

1. Detection: a FaultProxy black-holes an IDLE connection; how long until the code knows?
   mailtether (``ImapConnection.wait``, with ``Keepalive(idle_renewal=2, response_timeout=1)``)
   against its configured bound, and a plain imapclient ``idle_check`` loop (the common
   recipe) which, without a deadline of its own, does not notice at all.
2. Set-up: connect + LOGIN + SELECT + IDLE started, median of 30, interleaved, ours vs plain
   imapclient (target: at most 1.1x).
3. Push latency: from just before an APPEND (on a second connection) until the thread
   waiting in IDLE returns with the change: ``ImapConnection.wait`` (which has also ended
   the IDLE by then) vs ``idle()`` + ``idle_check`` returning a non-empty list. Each has its
   own mailbox; median of 25, interleaved (target: at most 1.05x). Dovecot's own ~0.5 s
   notification delay dominates both.
4. IDLE CPU: the waiting thread's CPU time (``time.thread_time``) per push of part 3 (one
   cycle: IDLE, waiting, the push, DONE), and per second of IDLE with nothing to hear; ours
   vs plain, reported as a ratio (no target).
5. Recovery: a FaultProxy resets (RST) the connection in IDLE; time until the code waits in
   IDLE again on a new connection (the server accepted the IDLE: its ``+`` was read).
   Ours: ``wait`` raises ConnectionLost, ``close``, ``ImapConnection.open``, the next
   ``wait`` sends IDLE (as ImapListener, which reconnects at once the first time, but
   without its catch-up before the IDLE). Plain, the common recipe: ``idle_check`` (which
   swallows the RST and returns ``[]`` at once), ``idle_done`` raising, then connect +
   LOGIN + SELECT + IDLE. Median of 25, interleaved, with when the RST was seen and the
   reconnect done (target: at most 1.1x).
"""

from __future__ import annotations

import contextlib
import queue
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
PUSH_KEEPALIVE = Keepalive(idle_renewal=60, response_timeout=10)
ROUNDS = 25  # per contender, for push latency (and its CPU) and recovery
SETTLE = 0.3  # seconds in IDLE before the push or the RST: both sit blocked on the socket
QUIET = 3.0  # seconds of IDLE with nothing happening, per round of the quiet CPU measure


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
    theirs: list[float] = []
    mine: list[float] = []
    for round_ in range(rounds):  # interleaved, each first in turn: the host's noise shared
        pair = [(plain, theirs), (ours, mine)]
        for run, into in pair if round_ % 2 else pair[::-1]:
            into.append(run())
    theirs_ms = statistics.median(theirs) * 1000
    ours_ms = statistics.median(mine) * 1000
    ratio = ours_ms / theirs_ms
    print(f"\nconnect + LOGIN + SELECT + IDLE, median of {rounds}, interleaved")
    print(f"  plain imapclient      {theirs_ms:7.2f} ms")
    print(
        f"  mailtether            {ours_ms:7.2f} ms   ratio {ratio:.2f}x "
        f"(target <= 1.1x: {'meets' if ratio <= 1.1 else 'MISSES'} it)"
    )


def mail(n: int) -> bytes:
    head = f"From: a@example.com\r\nSubject: {n}\r\nMessage-ID: <{n}@bench>\r\n"
    return f"{head}\r\nbody {n}\r\n".encode()


def plain_client(port: int, user: str, password: str) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port=port, ssl=False, timeout=10)
    client.login(user, password)
    client.select_folder("INBOX")
    return client


def note_idles(connection: ImapConnection, entered: queue.Queue[float]) -> None:
    """Put the time of each IDLE the server accepts on this connection into *entered*."""
    client = connection.client

    def idle() -> object:
        result = IMAPClient.idle(client)
        entered.put(time.perf_counter())
        return result

    client.idle = idle


def ratio_line(label: str, ours_ms: float, plain_ms: float, target: float) -> str:
    ratio = ours_ms / plain_ms
    verdict = "meets" if ratio <= target else "MISSES"
    return (
        f"  {label:<38}{ours_ms:8.1f} ms   ratio {ratio:.2f}x (target <= {target:g}x: {verdict} it)"
    )


def push_rounds(server: DovecotServer, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """(latency s, CPU s of the waiting thread) per push, ours and plain interleaved.

    Each has its own mailbox and its own appending connection: with one mailbox, the other's
    push would wait on this connection and be announced the moment its next IDLE starts.
    The waiting thread's CPU covers one whole cycle: IDLE sent, waiting, the push read, DONE.
    """
    users = {"ours": server.add_user(), "plain": server.add_user()}
    appenders = {}
    for name, user in users.items():
        appenders[name] = IMAPClient("127.0.0.1", port=server.imap_port, ssl=False, timeout=10)
        appenders[name].login(user, server.password(user))
    user = users["ours"]
    settings = ImapSettings(
        "127.0.0.1", user, server.password(user), port=server.imap_port, security="plain"
    )
    connection = ImapConnection.open(settings, keepalive=PUSH_KEEPALIVE)
    client = plain_client(server.imap_port, users["plain"], server.password(users["plain"]))
    entered: queue.Queue[float] = queue.Queue()
    note_idles(connection, entered)

    def ours(done: queue.Queue[tuple[float, float, int]]) -> None:
        cpu = time.thread_time()
        changes = connection.wait(10, use_idle=True)
        done.put((time.perf_counter(), time.thread_time() - cpu, len(changes)))

    def plain(done: queue.Queue[tuple[float, float, int]]) -> None:
        cpu = time.thread_time()
        client.idle()
        entered.put(time.perf_counter())
        changes = client.idle_check(timeout=10)
        seen = time.perf_counter()
        client.idle_done()
        done.put((seen, time.thread_time() - cpu, len(changes)))

    waiters = {"ours": ours, "plain": plain}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in waiters}
    for n in range(rounds + 1):  # round 0 warms up
        for name, waiter in waiters.items():
            done: queue.Queue[tuple[float, float, int]] = queue.Queue()
            thread = threading.Thread(target=waiter, args=(done,))
            thread.start()
            entered.get(timeout=10)
            time.sleep(SETTLE)
            started = time.perf_counter()
            appenders[name].append("INBOX", mail(n))
            seen, cpu, changes = done.get(timeout=15)
            thread.join()
            if not changes or seen < started:
                raise RuntimeError(f"{name}: the wait did not end with the push")
            if n:
                samples[name].append((seen - started, cpu))
    connection.close()
    client.logout()
    for appender in appenders.values():
        appender.logout()
    return samples


def push_latency(samples: dict[str, list[tuple[float, float]]]) -> None:
    ours = statistics.median(latency for latency, _ in samples["ours"]) * 1000
    plain = statistics.median(latency for latency, _ in samples["plain"]) * 1000
    rounds = len(samples["ours"])
    print(f"\npush latency: APPEND until the IDLE wait returns, median of {rounds}, interleaved")
    print(f"  plain imapclient idle_check           {plain:8.1f} ms")
    print(ratio_line("mailtether ImapConnection.wait", ours, plain, 1.05))


def wakeup_cpu(
    server: DovecotServer, samples: dict[str, list[tuple[float, float]]], rounds: int = 3
) -> None:
    ours = statistics.median(cpu for _, cpu in samples["ours"]) * 1e6
    plain = statistics.median(cpu for _, cpu in samples["plain"]) * 1e6
    pushes = len(samples["ours"])
    # And with nothing to hear: what waiting in IDLE costs per second, wake-ups and all.
    user = server.add_user()
    password = server.password(user)
    settings = ImapSettings("127.0.0.1", user, password, port=server.imap_port, security="plain")
    connection = ImapConnection.open(settings, keepalive=PUSH_KEEPALIVE)
    client = plain_client(server.imap_port, user, password)
    quiet: dict[str, list[float]] = {"ours": [], "plain": []}
    for _ in range(rounds):
        cpu = time.thread_time()
        connection.wait(QUIET, use_idle=True)
        quiet["ours"].append((time.thread_time() - cpu) / QUIET)
        cpu = time.thread_time()
        client.idle()
        client.idle_check(timeout=QUIET)
        client.idle_done()
        quiet["plain"].append((time.thread_time() - cpu) / QUIET)
    connection.close()
    client.logout()
    ours_quiet = statistics.median(quiet["ours"]) * 1e6
    plain_quiet = statistics.median(quiet["plain"]) * 1e6
    print(f"\nCPU of the waiting thread per push of the above (IDLE ... DONE), median of {pushes}")
    print(f"  plain idle + idle_check + idle_done   {plain:8.1f} us")
    print(f"  mailtether ImapConnection.wait        {ours:8.1f} us   ratio {ours / plain:.2f}x")
    print(f"CPU of the waiting thread per second of quiet IDLE, median of {rounds} x {QUIET:g} s")
    print(f"  plain idle + idle_check + idle_done   {plain_quiet:8.1f} us/s")
    print(
        f"  mailtether ImapConnection.wait        {ours_quiet:8.1f} us/s   "
        f"ratio {ours_quiet / plain_quiet:.2f}x"
    )


def recovery(server: DovecotServer, user: str, rounds: int = ROUNDS) -> None:
    password = server.password(user)
    with FaultProxy(("127.0.0.1", server.imap_port)) as proxy:
        settings = ImapSettings("127.0.0.1", user, password, port=proxy.port, security="plain")

        def ours(entered: queue.Queue[float], marks: list[float], stop: threading.Event) -> None:
            connection = ImapConnection.open(settings, keepalive=PUSH_KEEPALIVE)
            note_idles(connection, entered)
            try:
                connection.wait(60)
            except ConnectionLost:
                marks.append(time.perf_counter())
            connection.close()
            connection = ImapConnection.open(settings, keepalive=PUSH_KEEPALIVE)
            marks.append(time.perf_counter())
            note_idles(connection, entered)
            connection.wait(60, stop)  # its IDLE, noted, ends the measurement
            connection.close()

        def plain(entered: queue.Queue[float], marks: list[float], stop: threading.Event) -> None:
            client = plain_client(proxy.port, user, password)
            client.idle()
            entered.put(time.perf_counter())
            try:
                while True:  # the common recipe: idle_check, then DONE and IDLE again
                    client.idle_check(timeout=60)  # [] at once after an RST (swallowed)
                    client.idle_done()  # ... and this raises: the socket is gone
                    client.idle()
            except (OSError, IMAPClient.AbortError):
                marks.append(time.perf_counter())
            with contextlib.suppress(OSError):
                client.shutdown()
            client = plain_client(proxy.port, user, password)
            marks.append(time.perf_counter())
            client.idle()
            entered.put(time.perf_counter())
            stop.wait()
            client.idle_done()
            client.logout()

        waiters = {"ours": ours, "plain": plain}
        samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in waiters}
        for n in range(rounds + 1):  # round 0 warms up
            for name, waiter in waiters.items():
                entered: queue.Queue[float] = queue.Queue()
                marks: list[float] = []
                stop = threading.Event()
                thread = threading.Thread(target=waiter, args=(entered, marks, stop))
                thread.start()
                entered.get(timeout=10)
                time.sleep(SETTLE)
                started = time.perf_counter()
                proxy.reset_all()
                again = entered.get(timeout=10)
                stop.set()
                thread.join()
                if len(marks) != 2:
                    raise RuntimeError(f"{name}: the RST went unnoticed")
                lost, reopened = marks
                if n:
                    samples[name].append((lost - started, reopened - started, again - started))

    def median(name: str, step: int) -> float:
        return statistics.median(sample[step] for sample in samples[name]) * 1000

    print(f"\nRST during IDLE until in IDLE again, new connection, median of {rounds}, interleaved")
    for name, label in (("plain", "plain imapclient"), ("ours", "mailtether")):
        print(
            f"  {label:<17} RST seen {median(name, 0):6.2f} ms, reconnected "
            f"{median(name, 1):6.2f} ms, in IDLE {median(name, 2):6.2f} ms"
        )
    print(ratio_line("mailtether, until in IDLE again", median("ours", 2), median("plain", 2), 1.1))


def main() -> int:
    ca = make_ca(Path(tempfile.mkdtemp(prefix="mailtether-bench-ca-")))
    server = DovecotServer(ca).start()
    try:
        detection(server, server.add_user())
        setup_time(server, server.add_user())
        samples = push_rounds(server, ROUNDS)
        push_latency(samples)
        wakeup_cpu(server, samples)
        recovery(server, server.add_user())
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
