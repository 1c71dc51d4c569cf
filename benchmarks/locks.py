"""Uncontended acquire + release: our stores' leases beside the lock libraries users know.

Run: ``.venv/bin/python benchmarks/locks.py`` (the peers come with the ``dev`` extra; the
Redis half needs ``redis-server`` installed, and starts its own on a free loopback port).

Pairs on the same medium, measured in one run, each figure the median of several rounds:

- local disk: ``SQLiteStore`` vs ``filelock.FileLock`` and ``portalocker.Lock``;
- Redis: ``RedisStore`` vs redis-py's ``Lock`` and ``python-redis-lock``.

The ratio is the peer's time per operation divided by ours (> 1: we are faster). Note what
is compared: our leases also expire, carry a fencing token and work across processes (and,
on Redis, hosts); the file locks neither expire nor fence.
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

ROUNDS = 5


def per_op(body: Callable[[], None], count: int) -> float:
    """Median microseconds per acquire+release over ROUNDS rounds of *count*."""
    body()  # warm up: create tables, load scripts, open connections
    samples = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(count):
            body()
        samples.append((time.perf_counter() - started) / count * 1e6)
    return statistics.median(samples)


def report(title: str, ours_name: str, ours: float, peers: list[tuple[str, float]]) -> None:
    print(f"\n{title}")
    print(f"  {ours_name:<28}{ours:>9.1f} µs  {1e6 / ours:>9.0f}/s")
    for name, theirs in peers:
        print(f"  {name:<28}{theirs:>9.1f} µs  {1e6 / theirs:>9.0f}/s   ratio {theirs / ours:.2f}x")


def local_disk(tmp: Path, count: int) -> None:
    import filelock
    import portalocker

    store = SQLiteStore(tmp / "state.db")
    owner = default_owner()

    def ours() -> None:
        lease = store.acquire("bench", owner, 30)
        assert lease is not None
        store.release(lease)

    file_lock = filelock.FileLock(str(tmp / "filelock.lock"))

    def with_filelock() -> None:
        file_lock.acquire()
        file_lock.release()

    def with_portalocker() -> None:
        with portalocker.Lock(str(tmp / "portalocker.lock")):
            pass

    report(
        "local disk: acquire + release, uncontended",
        "SQLiteStore lease",
        per_op(ours, count),
        [
            (f"filelock {version('filelock')}", per_op(with_filelock, count)),
            (f"portalocker {version('portalocker')}", per_op(with_portalocker, count)),
        ],
    )
    store.close()


def on_redis(port: int, count: int) -> None:
    import redis
    import redis_lock

    store = store_from_url(f"redis://127.0.0.1:{port}/0")
    owner = default_owner()
    client = redis.Redis(host="127.0.0.1", port=port)

    def ours() -> None:
        lease = store.acquire("bench", owner, 30)
        assert lease is not None
        store.release(lease)

    def with_redis_py() -> None:
        lock = client.lock("bench-redis-py", timeout=30)
        assert lock.acquire(blocking=False)
        lock.release()

    def with_python_redis_lock() -> None:
        lock = redis_lock.Lock(client, "bench-python-redis-lock", expire=30)
        assert lock.acquire(blocking=False)
        lock.release()

    report(
        "Redis on loopback: acquire + release, uncontended",
        "RedisStore lease",
        per_op(ours, count),
        [
            (f"redis-py Lock {version('redis')}", per_op(with_redis_py, count)),
            (
                f"python-redis-lock {version('python-redis-lock')}",
                per_op(with_python_redis_lock, count),
            ),
        ],
    )
    store.close()
    client.close()


def main() -> int:
    count = 2000
    print(f"Python {sys.version.split()[0]}, {count} operations x {ROUNDS} rounds, median")
    with tempfile.TemporaryDirectory() as tmp:
        local_disk(Path(tmp), count)
    with redis_server() as port:
        if port is None:
            print("\nRedis: redis-server not installed; skipped")
        else:
            on_redis(port, count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
