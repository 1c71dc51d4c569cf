"""The listener beside plain imapclient (and imap_tools), in one run on a loopback Dovecot.

Run: ``.venv/bin/python benchmarks/listener.py [a] [b] [c] [d]`` (as root, or where Dovecot
can run); no argument runs all four.

(a) recovery: a server-side kick (BYE) until the listener is in IDLE again, beside plain
    connect + LOGIN + SELECT + IDLE, interleaved (target <= 1.2x);
(b) push latency: APPEND until the handler runs, beside a plain ``idle_check`` + FETCH loop
    (target <= 1.05x; Dovecot's own ~0.5 s notification delay dominates);
(c) first sync of N small messages through the guard (SQLite) + mark seen, messages/s,
    beside a plain batched imapclient FETCH + STORE and imap_tools (target >= 0.8x); with the
    default commit_window and with commit_window=0 (every outcome its own commit);
(d) resident memory of the process with one idle listener.
"""

from __future__ import annotations

import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from imapclient import IMAPClient

from mailtether import (
    ImapListener,
    ImapSettings,
    Keepalive,
    SourceState,
    SQLiteStore,
    StatusBoard,
    StatusChange,
)
from servers.dovecot import DovecotServer
from servers.tls import make_ca

SYNC_MESSAGES = 10_000


def mail(n: int) -> bytes:
    head = f"From: a@example.com\r\nSubject: {n}\r\nMessage-ID: <{n}@bench>\r\n"
    return f"{head}\r\nbody {n}\r\n".encode()


def settings(server: DovecotServer, user: str) -> ImapSettings:
    return ImapSettings(
        "127.0.0.1", user, server.password(user), port=server.imap_port, security="plain"
    )


def plain_connect_idle(server: DovecotServer, user: str) -> float:
    started = time.perf_counter()
    client = IMAPClient("127.0.0.1", port=server.imap_port, ssl=False, timeout=10)
    client.login(user, server.password(user))
    client.select_folder("INBOX")
    client.idle()
    took = time.perf_counter() - started
    client.idle_done()
    client.logout()
    return took


_idle_started: list[tuple[str, float]] = []
_plain_idle = IMAPClient.idle


def _timed_idle(self: IMAPClient) -> object:
    """IMAPClient.idle, noting when the server accepted it (and in which thread)."""
    result = _plain_idle(self)
    _idle_started.append((threading.current_thread().name, time.perf_counter()))
    return result


def recovery(server: DovecotServer, tmp: Path) -> None:
    user = server.add_user()
    noticed: list[float] = []

    def watch(change: StatusChange) -> None:
        if change.current.state is SourceState.RETRYING:
            noticed.append(time.perf_counter())

    store = SQLiteStore(tmp / "recovery.db")
    board = StatusBoard(store, notifiers=[watch], quiet_period=0)
    listener = ImapListener(
        settings(server, user),
        lambda d: None,
        store=store,
        status=board,
        keepalive=Keepalive(idle_renewal=60),
        lease_ttl=None,
    )
    IMAPClient.idle = _timed_idle  # type: ignore[method-assign]
    thread = listener.run_in_thread()

    def idles() -> list[float]:
        return [at for name, at in _idle_started if name == thread.name]

    while not idles():
        time.sleep(0.01)
    ours, plain = [], []
    for _ in range(15):  # interleaved, so both meet the same machine
        time.sleep(0.3)  # let it settle in IDLE
        before = len(idles())
        server.kick(user)
        while len(idles()) == before:
            time.sleep(0.001)
        ours.append(idles()[-1] - noticed[-1])  # from the BYE seen, not from doveadm
        plain.append(plain_connect_idle(server, user))
    listener.stop()
    IMAPClient.idle = _plain_idle  # type: ignore[method-assign]
    store.close()
    o, t = statistics.median(ours) * 1000, statistics.median(plain) * 1000
    print("\n(a) recovery after a server-side kick until IDLE again, median of 15, interleaved")
    print(f"  plain connect+LOGIN+SELECT+IDLE   {t:7.1f} ms")
    print(f"  mailtether BYE seen -> IDLE       {o:7.1f} ms   ratio {o / t:.2f}x (target <= 1.2x)")


def push_latency(server: DovecotServer, tmp: Path) -> None:
    user = server.add_user()
    arrived = threading.Event()
    store = SQLiteStore(tmp / "push.db")
    listener = ImapListener(
        settings(server, user),
        lambda d: arrived.set(),
        store=store,
        lease_ttl=None,
        poll_interval=30,
    )
    listener.run_in_thread()
    time.sleep(1.0)
    ours = []
    for n in range(5):
        arrived.clear()
        time.sleep(0.3)
        started = time.perf_counter()
        server.append(user, mail(n))
        arrived.wait(10)
        ours.append(time.perf_counter() - started)
    listener.stop()
    store.close()

    plain_user = server.add_user()
    client = IMAPClient("127.0.0.1", port=server.imap_port, ssl=False, timeout=10)
    client.login(plain_user, server.password(plain_user))
    client.select_folder("INBOX")
    theirs = []
    for n in range(5):
        client.idle()
        started = time.perf_counter()
        threading.Thread(target=server.append, args=(plain_user, mail(n))).start()
        while not any(r[1] == b"EXISTS" for r in client.idle_check(timeout=5) if len(r) > 1):
            pass
        client.idle_done()
        uids = client.search(["UNSEEN"])
        client.fetch(uids, ["BODY.PEEK[]"])
        theirs.append(time.perf_counter() - started)
        client.add_flags(uids, [b"\\Seen"])
    client.logout()
    o, t = statistics.median(ours) * 1000, statistics.median(theirs) * 1000
    print("\n(b) push latency APPEND -> handler, median of 5")
    print(f"  plain idle_check + FETCH          {t:7.1f} ms")
    print(f"  mailtether listener               {o:7.1f} ms   ratio {o / t:.2f}x (target <= 1.05x)")


def first_sync(server: DovecotServer, tmp: Path) -> None:
    user = server.add_user()
    server.save(user, mail(0))  # create the mailbox
    client = IMAPClient("127.0.0.1", port=server.imap_port, ssl=False, timeout=30)
    client.login(user, server.password(user))
    for n in range(1, SYNC_MESSAGES):
        client.append("INBOX", mail(n))
    client.logout()
    # Every contender reads the whole folder and marks it seen, so they all meet the same
    # mailbox; rounds alternate, after one untimed warm-up round (the server's caches).

    def plain() -> float:
        started = time.perf_counter()
        client = IMAPClient("127.0.0.1", port=server.imap_port, ssl=False, timeout=30)
        client.login(user, server.password(user))
        client.select_folder("INBOX")
        uids = client.search(["ALL"])
        for i in range(0, len(uids), 500):
            batch = uids[i : i + 500]
            client.fetch(batch, ["BODY.PEEK[]", "FLAGS"])
            client.add_flags(batch, [b"\\Seen"])
        client.logout()
        return len(uids) / (time.perf_counter() - started)

    def tools() -> float:
        from imap_tools import MailBoxUnencrypted

        started = time.perf_counter()
        with MailBoxUnencrypted("127.0.0.1", port=server.imap_port).login(
            user, server.password(user)
        ) as box:
            count = sum(1 for _ in box.fetch(mark_seen=True, bulk=500))
        return count / (time.perf_counter() - started)

    runs = 0

    def ours(commit_window: float) -> float:
        nonlocal runs
        runs += 1
        store = SQLiteStore(tmp / f"sync-{runs}.db")  # a first sync: the guard knows nothing
        listener = ImapListener(
            settings(server, user),
            lambda d: None,
            store=store,
            lease_ttl=None,
            commit_window=commit_window,
        )
        started = time.perf_counter()
        done = listener.poll_once()
        rate = done / (time.perf_counter() - started)
        store.close()
        assert done == SYNC_MESSAGES, done
        return rate

    contenders = {
        "plain": plain,
        "tools": tools,
        "ours": lambda: ours(0.01),
        "strict": lambda: ours(0.0),
    }
    for run in contenders.values():
        run()  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(5):
        for name, run in contenders.items():
            rates[name].append(run())
    median = {name: statistics.median(values) for name, values in rates.items()}
    plain_rate, tools_rate = median["plain"], median["tools"]
    print(f"\n(c) first sync of {SYNC_MESSAGES:,} messages, fetched and marked seen (median of 5)")
    print(f"  plain imapclient, batches of 500  {plain_rate:9,.0f} msg/s")
    print(f"  imap_tools, bulk 500              {tools_rate:9,.0f} msg/s")
    for name, label in (
        ("ours", "mailtether (default)           "),
        ("strict", "mailtether (commit_window=0)   "),
    ):
        rate = median[name]
        print(
            f"  {label}   {rate:9,.0f} msg/s   ratio {rate / plain_rate:.2f}x plain, "
            f"{rate / tools_rate:.2f}x imap_tools (target >= 0.8x plain)"
        )


def memory(server: DovecotServer, tmp: Path) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    user = server.add_user()
    store = SQLiteStore(tmp / "rss.db")
    listener = ImapListener(settings(server, user), lambda d: None, store=store, lease_ttl=None)
    listener.run_in_thread()
    time.sleep(3)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    listener.stop()
    store.close()
    print("\n(d) memory: peak RSS of this process")
    print(
        f"  before the listener {before / 1024:6.1f} MiB, "
        f"with one idle listener {after / 1024:6.1f} MiB"
    )


def main() -> int:
    parts = {"d": memory, "a": recovery, "b": push_latency, "c": first_sync}
    chosen = sys.argv[1:] or list(parts)
    unknown = set(chosen) - set(parts)
    if unknown:
        print(f"usage: listener.py [a] [b] [c] [d] (unknown: {', '.join(sorted(unknown))})")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="mailtether-bench-"))
    ca = make_ca(tmp / "ca")
    server = DovecotServer(ca).start()
    try:
        for name, part in parts.items():
            if name in chosen:
                part(server, tmp)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
