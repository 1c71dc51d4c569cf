"""Acquire + release: our stores' leases beside the lock libraries users know, in one run.

Run: ``.venv/bin/python benchmarks/locks.py [rounds]`` (the peers come with the ``dev``
extra; the Redis half needs ``redis-server`` installed, and starts its own on a free
loopback port).

Pairs on the same medium, every figure the median of interleaved rounds (each contender once
a round, in turn; 7 rounds unless given), wall-clock time per acquire + release:

- local disk: ``SQLiteStore`` beside ``portalocker.Lock`` (target: <= 1.0x) and
  ``filelock.FileLock``;
- Redis on loopback: ``RedisStore`` beside redis-py's ``Lock`` (target: <= 1.0x) and
  ``python-redis-lock``.

The three sizes are how many lock names are used in turn: 1 (one name taken and let go
again and again), 100 and 10,000 (a lease table, a key space or a directory of lock files that
has grown: each acquire finds another name). Each contender gets 2,000 acquire + release
pairs a round. The ratio is ours divided by the peer's (< 1: we are faster). Note what is
compared: our leases also expire, carry a fencing token and work across processes (and, on
Redis, hosts); the file locks neither expire nor fence.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from _servers import redis_server

from mailtether import SQLiteStore, default_owner, store_from_url

OPERATIONS = 2000
SIZES = (1, 100, 10_000)

Pair = Callable[[str], None]
"""One acquire + release of the lock *name*."""


def per_op(pairs: dict[str, Pair], names: list[str], rounds: int) -> dict[str, float]:
    """Median microseconds per acquire + release of each contender, interleaved rounds."""
    for pair in pairs.values():  # warm up: tables, scripts, connections, every lock file
        for name in names:
            pair(name)
    samples: dict[str, list[float]] = {label: [] for label in pairs}
    cycle = [names[i % len(names)] for i in range(OPERATIONS)]
    for round_ in range(rounds):
        order = list(pairs.items())
        if round_ % 2:
            order.reverse()
        for label, pair in order:
            started = time.perf_counter()
            for name in cycle:
                pair(name)
            samples[label].append((time.perf_counter() - started) / OPERATIONS * 1e6)
    return {label: statistics.median(times) for label, times in samples.items()}


def report(size: int, ours: str, times: dict[str, float], target: str) -> None:
    print(f"  {size:>6,} names  {ours:<22}{times[ours]:>8.1f} µs")
    for label, theirs in times.items():
        if label == ours:
            continue
        mark = "   <- target <= 1.0x" if label == target else ""
        ratio = times[ours] / theirs
        print(f"  {'':>13}{label:<22}{theirs:>8.1f} µs   ours/theirs {ratio:.2f}x{mark}")


def local_disk(tmp: Path, rounds: int) -> None:
    import filelock
    import portalocker

    print("\nlocal disk: acquire + release, uncontended (target: SQLiteStore <= 1.0x portalocker)")
    store = SQLiteStore(tmp / "state.db")
    owner = default_owner()
    locks = tmp / "locks"
    locks.mkdir()

    def ours(name: str) -> None:
        lease = store.acquire(name, owner, 30)
        assert lease is not None
        store.release(lease)

    file_locks: dict[str, filelock.FileLock] = {}

    def with_filelock(name: str) -> None:
        lock = file_locks.get(name)
        if lock is None:
            lock = file_locks[name] = filelock.FileLock(str(locks / f"{name}.filelock"))
        lock.acquire()
        lock.release()

    def with_portalocker(name: str) -> None:
        with portalocker.Lock(str(locks / f"{name}.lock")):
            pass

    portalocker_label = f"portalocker {version('portalocker')}"
    for size in SIZES:
        names = [f"mailbox-{n}" for n in range(size)]
        times = per_op(
            {
                "SQLiteStore lease": ours,
                portalocker_label: with_portalocker,
                f"filelock {version('filelock')}": with_filelock,
            },
            names,
            rounds,
        )
        report(size, "SQLiteStore lease", times, portalocker_label)
    store.close()


def on_redis(port: int, rounds: int) -> None:
    import redis
    import redis_lock

    print("\nRedis on loopback: acquire + release, uncontended (target: <= 1.0x redis-py Lock)")
    store = store_from_url(f"redis://127.0.0.1:{port}/0")
    owner = default_owner()
    client = redis.Redis(host="127.0.0.1", port=port)

    def ours(name: str) -> None:
        lease = store.acquire(name, owner, 30)
        assert lease is not None
        store.release(lease)

    def with_redis_py(name: str) -> None:
        lock = client.lock(f"redis-py:{name}", timeout=30)
        assert lock.acquire(blocking=False)
        lock.release()

    def with_python_redis_lock(name: str) -> None:
        lock = redis_lock.Lock(client, f"python-redis-lock:{name}", expire=30)
        assert lock.acquire(blocking=False)
        lock.release()

    redis_py_label = f"redis-py Lock {version('redis')}"
    for size in SIZES:
        names = [f"mailbox-{n}" for n in range(size)]
        times = per_op(
            {
                "RedisStore lease": ours,
                redis_py_label: with_redis_py,
                f"python-redis-lock {version('python-redis-lock')}": with_python_redis_lock,
            },
            names,
            rounds,
        )
        report(size, "RedisStore lease", times, redis_py_label)
    store.close()
    client.close()


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv else 7
    print(
        f"Python {sys.version.split()[0]}, SQLite {__import__('sqlite3').sqlite_version}; "
        f"{OPERATIONS} acquire + release x {rounds} interleaved rounds, median"
    )
    with tempfile.TemporaryDirectory() as tmp:
        local_disk(Path(tmp), rounds)
    with redis_server() as port:
        if port is None:
            print("\nRedis: redis-server not installed; skipped")
        else:
            on_redis(port, rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
