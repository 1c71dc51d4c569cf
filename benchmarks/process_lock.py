"""Cost of a ``ProcessLock`` hold beside the store's own lease, per store, side by side.

Run: ``.venv/bin/python benchmarks/process_lock.py [count ...]`` (the Redis rows need
``redis-server`` installed; a fresh one is started on a free loopback port).

For each store and each count, one round times *count* uncontended holds of one
``ProcessLock`` object (``with lock: pass``: take the lease, hand the hold to the heartbeat
thread, release) and one round times *count* bare ``store.acquire`` + ``store.release`` of a
lease; rounds alternate, and each figure is the median of ``ROUNDS`` rounds. The ratio is the
lock's time divided by the bare lease's (the goal: at most 2). The last column counts the
lock's heartbeat threads after all its holds (the goal: one, kept across holds).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from _servers import redis_server

from mailtether import MemoryStore, ProcessLock, SQLiteStore, Store, default_owner, store_from_url

ROUNDS = 5
COUNTS = (1_000, 10_000, 50_000)
GOAL = 2.0


def timed(body: Callable[[], None], count: int) -> float:
    """Microseconds per call of *body* over *count* calls."""
    started = time.perf_counter()
    for _ in range(count):
        body()
    return (time.perf_counter() - started) / count * 1e6


def compare(store: Store, label: str, count: int) -> None:
    owner = default_owner()
    lock = ProcessLock(store, "bench-process-lock", ttl=30, owner=owner)

    def bare() -> None:
        lease = store.acquire("bench-bare-lease", owner, 30)
        assert lease is not None
        store.release(lease)

    def hold() -> None:
        with lock:
            pass

    bare()  # warm up: tables, scripts, connections, the heartbeat thread
    hold()
    bare_times, lock_times = [], []
    for _ in range(ROUNDS):
        bare_times.append(timed(bare, count))
        lock_times.append(timed(hold, count))
    ours, theirs = statistics.median(lock_times), statistics.median(bare_times)
    threads = sum(t.name == "mailtether-lock-bench-process-lock" for t in threading.enumerate())
    verdict = "ok" if ours / theirs <= GOAL else "over"
    print(
        f"  {label:<13}{count:>8,}{theirs:>12.2f} µs{ours:>12.2f} µs"
        f"{ours / theirs:>9.2f}x  {verdict:<5}{threads:>8}"
    )
    assert lock.close(), "the heartbeat thread ended"


@contextmanager
def stores(tmp: Path) -> Iterator[list[tuple[str, Store]]]:
    opened: list[tuple[str, Store]] = [
        ("MemoryStore", MemoryStore()),
        ("SQLiteStore", SQLiteStore(tmp / "state.db")),
    ]
    with redis_server() as port:
        if port is None:
            print("(RedisStore: redis-server not installed; skipped)")
        else:
            opened.append(("RedisStore", store_from_url(f"redis://127.0.0.1:{port}/0")))
        try:
            yield opened
        finally:
            for _, store in opened:
                store.close()


def main(argv: list[str]) -> int:
    counts = tuple(int(arg.replace("_", "")) for arg in argv) or COUNTS
    print(
        f"Python {sys.version.split()[0]}: ProcessLock hold (enter + exit, uncontended) beside "
        f"the same store's bare lease acquire + release; median of {ROUNDS} alternating rounds"
    )
    print(
        f"  {'store':<13}{'holds':>8}{'bare lease':>15}{'ProcessLock':>15}{'ratio':>10}"
        f"  {'goal':<5}{'threads':>8}"
    )
    with tempfile.TemporaryDirectory() as tmp, stores(Path(tmp)) as opened:
        for label, store in opened:
            for count in counts:
                compare(store, label, count)
    print(f"(ratio = ProcessLock / bare lease; goal <= {GOAL:g}x with one heartbeat thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
