"""A fleet of idle folders in one process beside plain imapclient IDLE threads, push latency
at scale, and how fast workers share, rebalance and take over (issue 22).

Run: ``.venv/bin/python benchmarks/fleet.py [idle|push|rebalance|all] [--quick] [options]``
(as root, or where Dovecot can run; Redis and PostgreSQL rows need them installed: they run
on throwaway servers, or are left out with a note). ``all`` (the default) runs the three.

idle
    RSS and CPU of ONE process watching N idle IMAP folders (``--sizes``, default 10, 100,
    500; each folder a Dovecot user's INBOX): a :class:`~mailtether.FleetWorker` (SQLite store,
    ``Fleet(heartbeat=5, lease_ttl=30)``, sources at ``--poll-interval``, default 60 s),
    beside the same folders watched by plain imapclient, one thread each in
    ``idle()`` / ``idle_check(timeout=30)`` (the imapclient docs' loop), each side in a child
    process of its own, one after the other, per size. Once every folder is watched (ours:
    every source ONLINE and caught up once) and after a settling pause, the child is measured
    over ``--window`` seconds (default 60: one poll interval, so every source's safety
    catch-up falls in it once): CPU from ``/proc/<pid>/stat`` (utime + stime), VmRSS and
    VmHWM from ``/proc/<pid>/status``, and how often each kind of thread woke (its voluntary
    context switches). Goal: 500 folders under 150 MB RSS and under 5 % of one core.
push
    APPEND to one random folder of a worker holding N (default 500) → the handler called,
    measured in the handler against the ``X-Sent`` time in the mail, beside a worker holding
    one folder, running at the same time, pushes alternating (``--pushes`` each, default 50).
    Goal: the median and p95 at 500 within 1.1x of those at 1.
rebalance
    ``mailtether run`` worker processes sharing ``--sources`` (default 40) folders, on SQLite,
    Redis and PostgreSQL: seconds until every source is held, in even shares, after 3
    workers start, after a 4th joins, and after one is killed with ``kill -9``
    (heartbeat 5 s, lease_ttl 30 s: the takeover is bounded by 35 s and a moment to act).
    The first figure includes the processes' start (imports, logins).

``--quick``: sizes 10 and 100, a 30 s window (one idle_check timeout of the plain side; it
can miss the sources' 60 s safety catch-ups), 15 pushes at 100 folders, 12 sources with
heartbeat 1 s and lease_ttl 4 s; about four minutes instead of about a quarter of an hour.

The test Dovecot is started with ``process_limit`` above the largest size: each login is an
``imap-login`` process of its own, and Dovecot's default of 100 at once left a third of 500
simultaneous plain logins timing out.

Dovecot's IDLE watches each mailbox with an inotify instance, at most
``fs.inotify.max_user_instances`` (128 by default) for its one mail user: sessions past it
are looked at only every 30 s (``mailbox_idle_check_interval``), for both sides alike, which
ruins push latency at 500 folders. The header says whether the limit is high enough; raise it
with ``sysctl fs.inotify.max_user_instances=1024`` (as root) before the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _servers import postgres_server, redis_server

from mailtether import Store, store_from_url
from mailtether._fleet_registry import read_workers
from servers.dovecot import DovecotServer
from servers.tls import make_ca

CHILD = Path(__file__).resolve().parent / "_fleet_child.py"
TICK = os.sysconf("SC_CLK_TCK")
IDLE_CHECK = 30.0  # the plain side's idle_check(timeout=...), as in imapclient's docs
RSS_GOAL = 150e6  # bytes, 500 idle folders in one process (issue 22)
CPU_GOAL = 0.05  # of one core, 500 idle folders, nothing arriving
PUSH_GOAL = 1.1  # push latency at 500 folders / at 1 folder
SETTLE = 5.0  # seconds between "every folder watched" and the window
HANDLER = "def handle(delivery):\n    pass\n"


# -- /proc ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int | str, task: str | None = None) -> float:
    path = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def proc_status(pid: int | str, field: str, task: str | None = None) -> int:
    path = f"/proc/{pid}/status" if task is None else f"/proc/{pid}/task/{task}/status"
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            value = line.split()[1]
            return int(value) * (1024 if line.endswith("kB") else 1)
    return 0


def tasks(pid: int) -> dict[str, tuple[int, float]]:
    """Each thread of *pid*: its voluntary context switches (times it slept) and CPU seconds."""
    found = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            found[task] = (
                proc_status(pid, "voluntary_ctxt_switches", task),
                cpu_seconds(pid, task),
            )
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every core, from /proc/stat."""
    numbers = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = numbers[3] + numbers[4]  # idle, iowait
    return sum(numbers) - idle, sum(numbers)


def kind(name: str) -> str:
    """A thread's name with its numbers, folder and worker names taken out: its kind."""
    if name.startswith("mailtether-fleet-"):
        return "mailtether-fleet-<worker>"
    return re.sub(r"\d+", "#", re.sub(r"user\d+", "<folder>", name))


# -- the child processes -------------------------------------------------------------------------


class Child:
    """One side, in a process of its own (benchmarks/_fleet_child.py), read line by line."""

    def __init__(self, **args: Any) -> None:
        self.args = args
        # The arguments (passwords among them) in a file, not on the command line.
        fd, path = tempfile.mkstemp(prefix="fleet-child-", suffix=".json")
        with os.fdopen(fd, "w") as out:
            json.dump(args, out)
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.handled: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ready: dict[str, Any] = {}
        self.imported_rss = 0
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = json.loads(line)
            (self.handled if event["event"] == "handled" else self.events).put(event)
        self.events.put({"event": "exited"})

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            if event["event"] == "imported":
                self.imported_rss = event["rss"]
            elif event["event"] == "ready":
                self.ready = event
                return event
            else:
                raise RuntimeError(f"{self.args['who']} child: {event}")

    def stop(self) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def measure(child: Child, window: float) -> dict[str, Any]:
    """The child over *window* seconds: CPU, RSS, and which kinds of thread woke how often."""
    pid = child.pid
    names = child.ready.get("threads", {})
    before, cpu0, busy0 = tasks(pid), cpu_seconds(pid), machine_busy()
    started = time.monotonic()
    peak_rss = 0
    while (left := started + window - time.monotonic()) > 0:
        peak_rss = max(peak_rss, proc_status(pid, "VmRSS"))
        time.sleep(min(1.0, left))
    after, cpu1, busy1 = tasks(pid), cpu_seconds(pid), machine_busy()
    took = time.monotonic() - started
    wakes: Counter[str] = Counter()
    cpu_by_kind: Counter[str] = Counter()
    threads_by_kind: Counter[str] = Counter()
    for task, (switches, cpu) in after.items():
        name = kind(names.get(task, "(started later)"))
        was = before.get(task, (0, 0.0))
        wakes[name] += switches - was[0]
        cpu_by_kind[name] += cpu - was[1]
        threads_by_kind[name] += 1
    # A thread's CPU is counted in whole ticks (10 ms): hundreds of threads that each run
    # less than that in the window show none, so the kinds of many threads get the rest.
    many = [name for name, count in threads_by_kind.items() if count > 1]
    if len(many) == 1:
        others = sum(cpu for name, cpu in cpu_by_kind.items() if name != many[0])
        cpu_by_kind[many[0]] = max(0.0, cpu1 - cpu0 - others)
    return {
        "cpu": (cpu1 - cpu0) / took,
        "rss": proc_status(pid, "VmRSS"),
        "peak_rss": max(peak_rss, proc_status(pid, "VmRSS")),
        "hwm": proc_status(pid, "VmHWM"),
        "threads": len(after),
        "wakes": {k: v / took for k, v in wakes.items()},
        "cpu_by_kind": {k: v / took for k, v in cpu_by_kind.items()},
        "threads_by_kind": dict(threads_by_kind),
        "machine": (busy1[0] - busy0[0]) / (busy1[1] - busy0[1]),
    }


def credentials(server: DovecotServer, users: list[str]) -> list[tuple[str, str]]:
    return [(user, server.password(user)) for user in users]


def start_child(who: str, server: DovecotServer, users: list[str], tmp: Path, opts: Any) -> Child:
    return Child(
        who=who,
        port=server.imap_port,
        users=credentials(server, users),
        db=str(tmp / f"fleet-{who}-{len(users)}-{time.monotonic_ns()}.db"),
        poll_interval=opts.poll_interval,
        heartbeat=5.0,
        lease_ttl=30.0,
        idle_check=IDLE_CHECK,
        timeout=600,
    )


# -- idle ----------------------------------------------------------------------------------------


def idle(server: DovecotServer, tmp: Path, opts: Any) -> None:
    users = [server.add_user() for _ in range(max(opts.sizes))]
    print(
        f"\nidle: one process watching N idle folders, measured over {opts.window:g} s after "
        f"every folder is watched (+{SETTLE:g} s)\n"
        f"  mailtether: FleetWorker, SQLite, heartbeat 5 s, lease_ttl 30 s, poll_interval "
        f"{opts.poll_interval:g} s\n"
        f"  plain: one imapclient thread per folder, idle() + idle_check(timeout={IDLE_CHECK:g})",
        flush=True,
    )
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for number, size in enumerate(opts.sizes):
        sides = ["plain", "ours"] if number % 2 == 0 else ["ours", "plain"]
        for who in sides:
            child = start_child(who, server, users[:size], tmp, opts)
            try:
                ready = child.wait_ready(timeout=600)
                time.sleep(SETTLE)
                result = measure(child, opts.window)
            finally:
                child.stop()
            result["took"] = ready["took"]
            result["imported"] = child.imported_rss
            results[who, size] = result
            print(
                f"  N={size:<4} {who:<5} watching after {ready['took']:5.1f} s; CPU "
                f"{result['cpu'] * 100:6.2f} % of a core; VmRSS {result['rss'] / 1e6:6.1f} MB "
                f"(peak in window {result['peak_rss'] / 1e6:6.1f}, "
                f"VmHWM {result['hwm'] / 1e6:6.1f}, after imports "
                f"{child.imported_rss / 1e6:5.1f}); "
                f"{result['threads']} threads; "
                f"machine {result['machine'] * 100:3.0f} % busy",
                flush=True,
            )
            for name, count in sorted(result["wakes"].items(), key=lambda kv: -kv[1]):
                print(
                    f"      {result['threads_by_kind'][name]:4d} x {name:<40} woke "
                    f"{count:8.2f}/s  CPU {result['cpu_by_kind'][name] * 100:6.2f} %"
                )
    print(f"\n  {'N':>4}  {'':<6}{'CPU % core':>11} {'VmRSS MB':>9} {'VmHWM MB':>9} {'wakes/s':>8}")
    for size in opts.sizes:
        for who in ("plain", "ours"):
            r = results[who, size]
            print(
                f"  {size:4d}  {who:<6}{r['cpu'] * 100:11.2f} {r['rss'] / 1e6:9.1f} "
                f"{r['hwm'] / 1e6:9.1f} {sum(r['wakes'].values()):8.1f}"
            )
        o, p = results["ours", size], results["plain", size]
        cpu_ratio = f"{o['cpu'] / p['cpu']:5.2f}x" if p["cpu"] else "  -   "
        print(
            f"  {size:4d}  ours/plain  CPU {cpu_ratio}   VmRSS {o['rss'] / p['rss']:5.2f}x"
            f"   VmHWM {o['hwm'] / p['hwm']:5.2f}x"
        )
    small, large = min(opts.sizes), max(opts.sizes)
    if large > small:
        for who in ("ours", "plain"):
            a, b = results[who, small], results[who, large]
            rss = (b["rss"] - a["rss"]) / (large - small)
            cpu = (b["cpu"] - a["cpu"]) / (large - small)
            print(
                f"  {who}: each more folder costs {rss / 1e3:6.1f} kB VmRSS, "
                f"{cpu * 100:6.4f} % of a core"
            )
    ours = results["ours", large]
    rss_ok = ours["hwm"] < RSS_GOAL
    cpu_ok = ours["cpu"] < CPU_GOAL
    print(
        f"  goal at {large} folders: RSS < {RSS_GOAL / 1e6:.0f} MB: VmHWM "
        f"{ours['hwm'] / 1e6:.1f} MB, {'met' if rss_ok else 'NOT met'}; CPU < "
        f"{CPU_GOAL * 100:.0f} % of a core: {ours['cpu'] * 100:.2f} %, "
        f"{'met' if cpu_ok else 'NOT met'}" + ("" if large >= 500 else " (fewer than 500 folders)")
    )


# -- push ----------------------------------------------------------------------------------------


def push_mail(n: int) -> bytes:
    head = f"From: a@example.com\r\nSubject: push {n}\r\nX-Sent: {time.time():.6f}\r\n"
    return f"{head}Message-ID: <push-{n}@bench>\r\n\r\nbody {n}\r\n".encode()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def push(server: DovecotServer, tmp: Path, opts: Any) -> None:
    many = [server.add_user() for _ in range(opts.push_size)]
    one = [server.add_user()]
    print(
        f"\npush: APPEND -> handler (X-Sent in the mail, timed in the handler), a worker of "
        f"{opts.push_size} folders beside a worker of 1, running together, {opts.pushes} pushes "
        f"each, alternating",
        flush=True,
    )
    children = {
        opts.push_size: start_child("ours", server, many, tmp, opts),
        1: start_child("ours", server, one, tmp, opts),
    }
    latencies: dict[int, list[float]] = {size: [] for size in children}
    outside: dict[int, list[float]] = {size: [] for size in children}
    rng = random.Random(22)
    try:
        for child in children.values():
            child.wait_ready(timeout=600)
        time.sleep(SETTLE)
        n = 0
        for _ in range(opts.pushes):
            for size, child in children.items():
                n += 1
                user = rng.choice(many if size > 1 else one)
                with server.client(user) as client:
                    started = time.perf_counter()
                    client.append("INBOX", push_mail(n))
                event = child.handled.get(timeout=120)
                outside[size].append(time.perf_counter() - started)
                assert event["subject"] == f"push {n}", event
                latencies[size].append(event["latency"])
                time.sleep(rng.uniform(0.1, 0.4))
    finally:
        for child in children.values():
            child.stop()
    print(f"  {'folders':>8} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}   (APPEND sent -> seen)")
    for size in children:
        values = latencies[size]
        print(
            f"  {size:8d} {statistics.median(values) * 1e3:10.1f} "
            f"{percentile(values, 0.95) * 1e3:8.1f} {max(values) * 1e3:8.1f}   "
            f"({statistics.median(outside[size]) * 1e3:.1f} median)"
        )
    big = latencies[opts.push_size]
    median_ratio = statistics.median(big) / statistics.median(latencies[1])
    p95_ratio = percentile(big, 0.95) / percentile(latencies[1], 0.95)
    met = median_ratio <= PUSH_GOAL and p95_ratio <= PUSH_GOAL
    print(
        f"  {opts.push_size} / 1: median {median_ratio:.2f}x, p95 {p95_ratio:.2f}x "
        f"(goal <= {PUSH_GOAL}x: {'met' if met else 'NOT met'})"
    )


# -- rebalance -----------------------------------------------------------------------------------


class Workers:
    """``mailtether run`` processes on one fleet file."""

    def __init__(self, tmp: Path, fleet: Path) -> None:
        self.tmp, self.fleet = tmp, fleet
        self.env = {**os.environ, "PYTHONPATH": str(tmp)}
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"worker-{len(self.processes)}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "mailtether", "run", str(self.fleet)],
                cwd=self.tmp,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_even(store: Store, pids: set[int], sources: int, timeout: float) -> float:
    """Seconds until every source is held once by the live *pids*, shares within one."""
    started = time.monotonic()
    while True:
        now = store.now()
        held: dict[int, list[str]] = {pid: [] for pid in pids}
        for info in read_workers(store):
            if info.alive(now) and info.pid in pids:
                held[info.pid] = sorted(info.held)
        every = [source for names in held.values() for source in names]
        shares = [len(names) for names in held.values()]
        if len(every) == sources == len(set(every)) and max(shares) - min(shares) <= 1:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"not even after {timeout} s: shares {shares} of {sources}")
        time.sleep(0.05)


@contextlib.contextmanager
def store_urls(tmp: Path) -> Iterator[dict[str, str | None]]:
    with redis_server() as redis_port, postgres_server() as dsn:
        yield {
            "SQLite": f"sqlite://{tmp}/rebalance.db",
            "Redis": None if redis_port is None else f"redis://127.0.0.1:{redis_port}/0",
            "PostgreSQL": dsn,
        }


def rebalance(server: DovecotServer, tmp: Path, opts: Any) -> None:
    users = [server.add_user() for _ in range(opts.sources)]
    heartbeat, lease_ttl, workers = opts.heartbeat, opts.lease_ttl, 3
    (tmp / "fleet_bench_handlers.py").write_text(HANDLER)
    print(
        f"\nrebalance: {opts.sources} sources, `mailtether run` processes, heartbeat "
        f"{heartbeat:g} s, lease_ttl {lease_ttl:g} s; seconds until every source is held in "
        f"even shares (max - min <= 1)",
        flush=True,
    )
    print(
        f"  {'store':<11} {workers} start {'':>3} +1 joins   kill -9 one   "
        f"(bound {lease_ttl + heartbeat:g} s)"
    )
    with store_urls(tmp) as urls:
        for name, url in urls.items():
            if url is None:
                print(f"  {name:<11} (not installed)")
                continue
            # A table/key prefix of its own, so each store's run starts empty.
            prefix = f"r{time.monotonic_ns() % 10**9}"
            if name == "Redis":
                url = f"{url}?prefix={prefix}"
            elif name == "PostgreSQL":
                url = f"{url}?table_prefix={prefix}"
            fleet = tmp / f"fleet-{name}.toml"
            lines = [
                "[fleet]",
                f'store = "{url}"',
                f'heartbeat = "{heartbeat}s"',
                f'lease_ttl = "{lease_ttl}s"',
            ]
            for user in users:
                lines += [
                    "",
                    "[[source]]",
                    f'name = "{user}"',
                    f'url = "imap://{user}:{server.password(user)}@127.0.0.1:{server.imap_port}'
                    '/INBOX?security=plain"',
                    'handler = "fleet_bench_handlers:handle"',
                ]
            fleet.write_text("\n".join(lines) + "\n")
            store = store_from_url(url)
            running = Workers(tmp, fleet)
            try:
                for _ in range(workers):
                    running.start()
                pids = {p.pid for p in running.processes}
                start = wait_until_even(store, pids, opts.sources, timeout=300)
                pids.add(running.start().pid)
                joined = wait_until_even(store, pids, opts.sources, timeout=300)
                victim = running.processes[0]
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                pids.discard(victim.pid)
                killed = wait_until_even(store, pids, opts.sources, timeout=300)
            finally:
                running.stop_all()
                store.close()
            print(f"  {name:<11} {start:8.1f} s {joined:9.1f} s {killed:11.1f} s", flush=True)


# -- main ----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "part", nargs="?", default="all", choices=["idle", "push", "rebalance", "all"]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, short windows")
    parser.add_argument("--sizes", help="idle: comma-separated folder counts (10,100,500)")
    parser.add_argument("--window", type=float, help="idle: seconds measured (60)")
    parser.add_argument("--poll-interval", type=float, default=60.0, help="sources' (60)")
    parser.add_argument("--pushes", type=int, help="push: pushes to each worker (50)")
    parser.add_argument("--push-size", type=int, help="push: folders of the big worker (500)")
    parser.add_argument("--sources", type=int, help="rebalance: sources (40)")
    parser.add_argument("--heartbeat", type=float, help="rebalance: the fleet's (5)")
    parser.add_argument("--lease-ttl", type=float, help="rebalance: the fleet's (30)")
    opts = parser.parse_args()
    quick = {"sizes": "10,100", "window": 30.0, "pushes": 15, "push_size": 100, "sources": 12}
    full = {"sizes": "10,100,500", "window": 60.0, "pushes": 50, "push_size": 500, "sources": 40}
    for key, value in (quick if opts.quick else full).items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    opts.heartbeat = opts.heartbeat or (1.0 if opts.quick else 5.0)
    opts.lease_ttl = opts.lease_ttl or (4.0 if opts.quick else 30.0)
    opts.sizes = sorted(int(n) for n in opts.sizes.split(","))
    parts = {"idle": idle, "push": push, "rebalance": rebalance}
    chosen = list(parts) if opts.part == "all" else [opts.part]

    inotify = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    needed = max([*opts.sizes, opts.push_size + 1]) + 8
    print(
        f"Python {sys.version.split()[0]}; {os.cpu_count()} cores, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; fs.inotify.max_user_instances "
        f"{inotify}"
        + (
            ""
            if inotify >= needed
            else f" < {needed}: Dovecot IDLE sessions past "
            f"it see new mail only every 30 s (sysctl fs.inotify.max_user_instances=1024)"
        )
    )
    tmp = Path(tempfile.mkdtemp(prefix="mailtether-bench-fleet-"))
    # 500 logins at once need 500 imap-login processes: Dovecot's default allows 100 (the
    # rest wait, and many time out), so the fixture is given more.
    server = DovecotServer(make_ca(tmp / "ca"), process_limit=needed + 100).start()
    try:
        for name in chosen:
            parts[name](server, tmp, opts)
    finally:
        server.stop()
    print(f"\nload average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
