"""The listener beside plain imapclient (and imap_tools), in one run on a loopback Dovecot.

Run: ``.venv/bin/python benchmarks/listener.py`` (as root, or where Dovecot can run).

(a) recovery: a server-side kick (BYE) until the listener is ONLINE again, beside plain
    connect + LOGIN + SELECT + IDLE (target <= 1.2x);
(b) push latency: APPEND until the handler runs, beside a plain ``idle_check`` + FETCH loop
    (target <= 1.05x; Dovecot's own ~0.5 s notification delay dominates);
(c) first sync of N small messages through the guard (SQLite) + mark seen, messages/s,
    beside a plain batched imapclient FETCH + STORE and imap_tools (target >= 0.8x);
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


def recovery(server: DovecotServer, tmp: Path) -> None:
    user = server.add_user()
    online = threading.Event()
    noticed: list[float] = []

    def watch(change: StatusChange) -> None:
        if change.current.state is SourceState.ONLINE:
            online.set()
        elif change.current.state is SourceState.RETRYING:
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
    listener.run_in_thread()
    online.wait(10)
    samples = []
    for _ in range(10):
        online.clear()
        time.sleep(0.3)  # let it settle in IDLE
        server.kick(user)
        online.wait(10)
        samples.append(time.perf_counter() - noticed[-1])  # from the BYE, not doveadm
    listener.stop()
    store.close()
    ours = statistics.median(samples) * 1000
    plain = statistics.median(plain_connect_idle(server, user) for _ in range(10)) * 1000
    print("\n(a) recovery after a server-side kick, median of 10")
    print(f"  plain connect+LOGIN+SELECT+IDLE   {plain:7.1f} ms")
    print(
        f"  mailtether BYE seen -> ONLINE     {ours:7.1f} ms   ratio {ours / plain:.2f}x "
        "(target <= 1.2x)"
    )


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
    users = [server.add_user() for _ in range(3)]
    feeder = IMAPClient("127.0.0.1", port=server.imap_port, ssl=False, timeout=30)
    for user in users:
        server.save(user, b"".join([]) or mail(0))  # create the mailbox
        client = IMAPClient("127.0.0.1", port=server.imap_port, ssl=False, timeout=30)
        client.login(user, server.password(user))
        for n in range(1, SYNC_MESSAGES):
            client.append("INBOX", mail(n))
        client.logout()
    feeder.shutdown()

    # plain imapclient: search, fetch in batches, mark seen
    user = users[0]
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
    plain = len(uids) / (time.perf_counter() - started)

    # imap_tools
    from imap_tools import MailBoxUnencrypted

    user = users[1]
    started = time.perf_counter()
    with MailBoxUnencrypted("127.0.0.1", port=server.imap_port).login(
        user, server.password(user)
    ) as box:
        count = sum(1 for _ in box.fetch(mark_seen=True, bulk=500))
    tools = count / (time.perf_counter() - started)

    # mailtether: guard on SQLite, handler, mark seen after the outcome is recorded
    user = users[2]
    store = SQLiteStore(tmp / "sync.db")
    handled = []
    listener = ImapListener(
        settings(server, user), lambda d: handled.append(d.uid), store=store, lease_ttl=None
    )
    started = time.perf_counter()
    done = listener.poll_once()
    ours = done / (time.perf_counter() - started)
    store.close()
    print(f"\n(c) first sync of {SYNC_MESSAGES:,} messages, fetched and marked seen")
    print(f"  plain imapclient, batches of 500  {plain:9,.0f} msg/s")
    print(f"  imap_tools, bulk 500              {tools:9,.0f} msg/s")
    print(
        f"  mailtether (guard on SQLite)      {ours:9,.0f} msg/s   "
        f"ratio {ours / plain:.2f}x plain, {ours / tools:.2f}x imap_tools (target >= 0.8x)"
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
    tmp = Path(tempfile.mkdtemp(prefix="mailtether-bench-"))
    ca = make_ca(tmp / "ca")
    server = DovecotServer(ca).start()
    try:
        memory(server, tmp)
        recovery(server, tmp)
        push_latency(server, tmp)
        first_sync(server, tmp)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
