"""The listener beside plain imapclient (and imap_tools), in one run on a loopback Dovecot.

Run: ``.venv/bin/python benchmarks/listener.py [a] [b] [c] [d] [e]`` (as root, or where
Dovecot can run); no argument runs all five.

(a) recovery: a server-side kick (BYE) until the listener is in IDLE again, beside plain
    connect + LOGIN + SELECT + IDLE, interleaved (target <= 1.2x);
(b) push latency: APPEND until the handler runs, beside a plain ``idle_check`` + FETCH loop
    (target <= 1.05x; Dovecot's own ~0.5 s notification delay dominates);
(c) first sync of 10,000 small messages, fetched and marked seen (``ONLY=Redis,floor``: just
    the contenders whose names hold one of those words), beside imap_tools (bulk
    500) and plain imapclient (batches of 500, with and without a silent STORE): mailtether on
    SQLite (default commit_window, and 0: every outcome its own commit), MemoryStore, Redis
    and PostgreSQL (these two on throwaway servers, or skipped with a note); \\Seen cleared
    before each round so the server does real work; ratios to imap_tools, and the chart
    docs/_static/first-sync.svg (with matplotlib: the ``bench`` extra). Targets: >= 0.8x
    imap_tools on SQLite, Redis and PostgreSQL, >= 1.0x on MemoryStore, >= 0.5x with
    commit_window=0. Beside them, the floors (benchmarks/_floors.py): raw imaplib fetching
    and marking in batches of 500 with, per store, only the writes the guarantees need as
    raw SQL or Redis commands — the most any implementation can reach here;
(d) resident memory of the process with one idle listener;
(e) first sync of 1,000, 10,000 and 100,000 small messages, each run in a fresh child process:
    peak RSS (``VmHWM``) and messages/s of plain imapclient (batched FETCH + STORE, as in (c)),
    mailtether now (this checkout's ``src``, or the directory in ``MAILTETHER_NOW_SRC``) and
    mailtether at the release ``BEFORE_RELEASE`` (its ``src`` from ``git archive``, or the
    directory in ``MAILTETHER_BEFORE_SRC``), interleaved (targets:
    peak < 40 MB at 100,000 mails; throughput now >= before). The mailboxes are written
    straight into Dovecot's maildir, outside the timing.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _floors import PostgresWriter, RedisWriter, SQLiteWriter, floor
from _servers import postgres_server, redis_server
from imapclient import IMAPClient

from mailtether import (
    ImapListener,
    ImapSettings,
    Keepalive,
    MemoryStore,
    SourceState,
    SQLiteStore,
    StatusBoard,
    StatusChange,
    Store,
    store_from_url,
)
from servers.dovecot import DovecotServer
from servers.tls import make_ca

SYNC_MESSAGES = 10_000
SYNC_ROUNDS = 7  # (c): timed rounds of each contender, interleaved, after a warm-up round
# (e): mailbox sizes, and timed rounds of each contender per size (after a warm-up round).
SCALE_ROUNDS = {1_000: 7, 10_000: 7, 100_000: 3}
BEFORE_RELEASE = "fbae026"  # the release before bounded memory (sizes first, windows)
RSS_TARGET = 40_000_000  # bytes of peak RSS after a first sync of 100,000 mails (issue 15)


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
    fill_maildir(server, user, SYNC_MESSAGES)
    password = server.password(user)

    def connect() -> IMAPClient:
        client = IMAPClient("127.0.0.1", port=server.imap_port, ssl=False, timeout=30)
        client.login(user, password)
        return client

    def unseen() -> None:
        """Clear \\Seen everywhere (untimed), so every round's STORE changes every flag."""
        client = connect()
        client.select_folder("INBOX")
        client.remove_flags("1:*", [b"\\Seen"], silent=True)
        client.logout()

    def plain(silent: bool) -> float:
        started = time.perf_counter()
        client = connect()
        client.select_folder("INBOX")
        uids = client.search(["ALL"])
        for i in range(0, len(uids), 500):
            batch = uids[i : i + 500]
            client.fetch(batch, ["BODY.PEEK[]", "FLAGS"])
            client.add_flags(batch, [b"\\Seen"], silent=silent)
        client.logout()
        return len(uids) / (time.perf_counter() - started)

    def tools() -> float:
        from imap_tools import MailBoxUnencrypted

        started = time.perf_counter()
        with MailBoxUnencrypted("127.0.0.1", port=server.imap_port).login(user, password) as box:
            count = sum(1 for _ in box.fetch(mark_seen=True, bulk=500))
        return count / (time.perf_counter() - started)

    runs = 0
    names = iter(range(1_000_000))

    def ours(open_store: Callable[[str], Store], commit_window: float | None = None) -> float:
        nonlocal runs
        runs += 1
        store = open_store(f"sync{runs}")  # a first sync: the guard knows nothing
        options = {} if commit_window is None else {"commit_window": commit_window}
        listener = ImapListener(
            settings(server, user), lambda d: None, store=store, lease_ttl=None, **options
        )
        started = time.perf_counter()
        done = listener.poll_once()
        rate = done / (time.perf_counter() - started)
        store.close()
        assert done == SYNC_MESSAGES, done
        return rate

    with contextlib.ExitStack() as servers:
        redis_port = servers.enter_context(redis_server())
        postgres_dsn = servers.enter_context(postgres_server())
        contenders: dict[str, Callable[[], float]] = {
            "imap_tools, bulk 500": tools,
            "plain imapclient, batches of 500, silent STORE": lambda: plain(True),
            "plain imapclient, batches of 500": lambda: plain(False),
            "mailtether, SQLite": lambda: ours(lambda name: SQLiteStore(tmp / f"{name}.db")),
            "mailtether, SQLite, commit_window=0": lambda: ours(
                lambda name: SQLiteStore(tmp / f"{name}.db"), commit_window=0.0
            ),
            "mailtether, MemoryStore": lambda: ours(lambda name: MemoryStore()),
        }
        missing = []
        if redis_port is None:
            missing.append("Redis (redis-server not installed)")
        else:
            contenders["mailtether, Redis"] = lambda: ours(
                lambda name: store_from_url(f"redis://127.0.0.1:{redis_port}/0?prefix={name}")
            )
        if postgres_dsn is None:
            missing.append("PostgreSQL (not installed)")
        else:
            contenders["mailtether, PostgreSQL"] = lambda: ours(
                lambda name: store_from_url(f"{postgres_dsn}?table_prefix={name}")
            )
        port = server.imap_port
        floors: dict[str, Callable[[str], object] | None] = {
            "": None,
            ", raw SQLite": lambda name: SQLiteWriter(tmp / f"{name}.db"),
            ", raw SQLite, a commit a mail": lambda name: SQLiteWriter(
                tmp / f"{name}.db", each=True
            ),
        }
        if redis_port is not None:
            floors[", raw Redis"] = lambda name: RedisWriter(redis_port, name)
            floors[", raw Redis + scan indexes"] = lambda name: RedisWriter(
                redis_port, name, indexed=True
            )
        if postgres_dsn is not None:
            floors[", raw PostgreSQL"] = lambda name: PostgresWriter(postgres_dsn, name)
        for label, open_writer in floors.items():
            contenders[f"floor: imaplib, PEEK + silent STORE{label}"] = (
                lambda open_writer=open_writer: floor(  # type: ignore[misc]
                    port, user, password, open_writer, f"floor{next(names)}"
                )
            )
        only = [part for part in os.environ.get("ONLY", "").split(",") if part]
        if only:  # ONLY=Redis,SQLite: those contenders (and imap_tools, the reference)
            contenders = {
                name: run
                for name, run in contenders.items()
                if name.startswith("imap_tools") or any(part in name for part in only)
            }
        for run in contenders.values():  # warm-up: the server's caches, the stores' tables
            unseen()
            run()
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(SYNC_ROUNDS):
            for name, run in contenders.items():
                unseen()
                rates[name].append(run())
    median = {name: statistics.median(values) for name, values in rates.items()}
    tools_rate = median["imap_tools, bulk 500"]
    print(
        f"\n(c) first sync of {SYNC_MESSAGES:,} messages, fetched and marked seen "
        f"(\\Seen cleared before each round; interleaved; median of {SYNC_ROUNDS})"
    )
    print(f"  {'contender':<48} {'msg/s':>8}  x imap_tools")
    for name, rate in median.items():
        print(f"  {name:<48} {rate:8,.0f}  {rate / tools_rate:5.2f}")
    for name in missing:
        print(f"  (not run: {name})")
    print(
        "  targets: >= 0.80x imap_tools on SQLite, Redis and PostgreSQL; >= 1.00x on "
        "MemoryStore; >= 0.50x with commit_window=0"
    )
    chart(median, tools_rate)


def _colour(contender: str) -> str:
    if contender.startswith("mailtether"):
        return "#4c72b0"
    return "#dd8452" if contender.startswith("floor") else "#999999"


def chart(median: dict[str, float], tools_rate: float) -> None:
    """docs/_static/first-sync.svg: the figures of (c) as bars (needs ``mailtether[bench]``)."""
    try:
        import matplotlib

        matplotlib.use("svg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (no chart: pip install -e '.[bench]' for matplotlib)")
        return
    matplotlib.rcParams["svg.hashsalt"] = "mailtether"  # the same figures, the same file
    names = list(median)
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    bars = axes.barh(
        names[::-1],
        [median[name] for name in names[::-1]],
        color=[_colour(name) for name in names[::-1]],
    )
    axes.bar_label(bars, [f"{median[n] / tools_rate:.2f}x" for n in names[::-1]], padding=3)
    axes.set_xlabel(f"messages per second, first sync of {SYNC_MESSAGES:,} (x imap_tools)")
    axes.margins(x=0.12)
    figure.tight_layout()
    target = Path(__file__).resolve().parent.parent / "docs" / "_static" / "first-sync.svg"
    target.parent.mkdir(exist_ok=True)
    figure.savefig(target, metadata={"Date": None})
    plt.close(figure)
    print(f"  chart: {target}")


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


# The child of (e): one first sync, then its own peak RSS. It imports only what its contender
# needs, so the figure is that contender's alone (not this script's, nor the test servers').
_SCALE_CHILD = """
import json, sys, time

def status(field):
    with open("/proc/self/status") as lines:
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

args = json.loads(sys.argv[1])
if args["who"] == "plain":
    from imapclient import IMAPClient
    where = None
else:
    import mailtether
    from mailtether import ImapListener, ImapSettings, SQLiteStore
    where = mailtether.__file__
base = status("VmRSS")
started, cpu = time.perf_counter(), time.process_time()
if args["who"] == "plain":
    client = IMAPClient("127.0.0.1", port=args["port"], ssl=False, timeout=60)
    client.login(args["user"], args["password"])
    client.select_folder("INBOX")
    uids = client.search(["ALL"])
    for i in range(0, len(uids), 500):
        batch = uids[i : i + 500]
        client.fetch(batch, ["BODY.PEEK[]", "FLAGS"])
        client.add_flags(batch, [b"\\\\Seen"])
    client.logout()
    done = len(uids)
else:
    settings = ImapSettings(
        "127.0.0.1", args["user"], args["password"], port=args["port"], security="plain"
    )
    store = SQLiteStore(args["db"])
    listener = ImapListener(settings, lambda d: None, store=store, lease_ttl=None)
    done = listener.poll_once()
    store.close()
took, cpu = time.perf_counter() - started, time.process_time() - cpu
print(json.dumps({"done": done, "seconds": took, "cpu": cpu, "base": base,
                  "peak": status("VmHWM"), "module": where}))
"""


def fill_maildir(server: DovecotServer, user: str, count: int) -> None:
    """Put *count* messages (``mail(0)`` to ``mail(count - 1)``) in *user*'s INBOX, fast.

    The first by ``doveadm save`` (the mailbox made as delivery makes it); the rest written
    straight into the maildir's ``cur/`` (as Dovecot writes them: LF line ends, ``S=`` and
    ``W=`` sizes in the name), then indexed by a ``doveadm`` status: UIDs in order of name.
    """
    server.save(user, mail(0))
    assert server.root is not None
    cur = server.root / "mail" / user / "cur"
    owner = cur.stat()
    stamp = int(time.time())
    for n in range(1, count):
        body = mail(n).replace(b"\r\n", b"\n")
        name = f"{stamp}.M{n:07d}P0.bench,S={len(body)},W={len(mail(n))}:2,"
        path = cur / name
        path.write_bytes(body)
        os.chown(path, owner.st_uid, owner.st_gid)
    server.doveadm("mailbox", "status", "-u", user, "messages", "INBOX")


def release_source(tmp: Path) -> Path:
    """The ``src`` directory of mailtether at ``BEFORE_RELEASE`` (or MAILTETHER_BEFORE_SRC)."""
    given = os.environ.get("MAILTETHER_BEFORE_SRC")
    if given:
        return Path(given).resolve()
    root = Path(__file__).resolve().parent.parent
    into = tmp / f"release-{BEFORE_RELEASE}"
    into.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", BEFORE_RELEASE, "src"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def scale(server: DovecotServer, tmp: Path) -> None:
    given = os.environ.get("MAILTETHER_NOW_SRC")
    now_src = Path(given).resolve() if given else Path(__file__).resolve().parent.parent / "src"
    before_src = release_source(tmp)
    sources = {"plain": None, "now": now_src, "before": before_src}
    runs = 0

    def child(who: str, user: str, count: int) -> dict[str, float]:
        nonlocal runs
        runs += 1
        db = tmp / f"scale-{runs}.db"  # a first sync: the guard knows nothing
        source = sources[who]
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        if source is not None:
            env["PYTHONPATH"] = str(source)  # ahead of the installed (editable) mailtether
        args = {"who": who, "port": server.imap_port, "user": user, "db": str(db)}
        args["password"] = server.password(user)
        answer = subprocess.run(
            [sys.executable, "-c", _SCALE_CHILD, json.dumps(args)],
            env=env,
            cwd=tmp,
            capture_output=True,
            check=False,
            timeout=1800,
        )
        if answer.returncode != 0:
            raise RuntimeError(f"{who} at {count:,}: {answer.stderr.decode()[-2000:]}")
        result = json.loads(answer.stdout.decode().splitlines()[-1])
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        if source is not None:  # the library imported must be the one meant
            assert Path(result["module"]).is_relative_to(source), (who, result["module"])
        assert result["done"] == count, (who, count, result["done"])
        return result

    print(
        f"\n(e) first sync in a fresh child process, fetched and marked seen: msg/s and peak "
        f"RSS (VmHWM); median of the rounds, interleaved (noisy: other work shares the host);"
        f"\n    now = {now_src}, before = {BEFORE_RELEASE} ({before_src})"
    )
    names = list(sources)
    summary = []
    for count, rounds in SCALE_ROUNDS.items():
        user = server.add_user()
        started = time.perf_counter()
        fill_maildir(server, user, count)
        filled = time.perf_counter() - started
        for who in names:
            child(who, user, count)  # warm-up: Dovecot's index and cache, the page cache
        results: dict[str, list[dict[str, float]]] = {who: [] for who in names}
        for round_ in range(rounds):  # each round in another order
            for who in names[round_ % 3 :] + names[: round_ % 3]:
                results[who].append(child(who, user, count))
        rate = {w: statistics.median(r["done"] / r["seconds"] for r in results[w]) for w in names}
        best = {w: max(r["done"] / r["seconds"] for r in results[w]) for w in names}
        cpu = {w: statistics.median(r["cpu"] / r["done"] * 1e6 for r in results[w]) for w in names}
        peak = {w: max(r["peak"] for r in results[w]) / 2**20 for w in names}
        base = {w: statistics.median(r["base"] for r in results[w]) / 2**20 for w in names}
        print(f"  {count:,} messages (filled in {filled:.0f} s), {rounds} rounds")
        for who in names:
            print(
                f"    {who:<6} {rate[who]:9,.0f} msg/s (best {best[who]:6,.0f}, client CPU "
                f"{cpu[who]:4.0f} µs/msg)   peak {peak[who]:6.1f} MiB "
                f"(after imports {base[who]:5.1f} MiB)"
            )
        print(
            f"    now/before {rate['now'] / rate['before']:.2f}x msg/s, "
            f"{peak['now'] / peak['before']:.2f}x peak;   now/plain "
            f"{rate['now'] / rate['plain']:.2f}x msg/s, {peak['now'] / peak['plain']:.2f}x peak"
        )
        summary.append((count, peak["now"] * 2**20))
        if server.root is not None:  # the next size in a mailbox of its own: free the disk
            shutil.rmtree(server.root / "mail" / user, ignore_errors=True)
    count, peak_bytes = summary[-1]
    holds = "holds" if peak_bytes < RSS_TARGET else "does NOT hold"
    print(
        f"  target: peak RSS < {RSS_TARGET / 1e6:.0f} MB after a first sync of {count:,} "
        f"mails: {peak_bytes / 1e6:.1f} MB now, {holds}"
    )


def main() -> int:
    parts = {"d": memory, "a": recovery, "b": push_latency, "c": first_sync, "e": scale}
    chosen = sys.argv[1:] or list(parts)
    unknown = set(chosen) - set(parts)
    if unknown:
        print(f"usage: listener.py [a] [b] [c] [d] [e] (unknown: {', '.join(sorted(unknown))})")
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
