"""Duplicate-guard throughput per backend, and the first-sync batch check on SQLite.

Run: ``.venv/bin/python benchmarks/guard.py`` (Redis and PostgreSQL rows need the
``redis`` / ``postgres`` extras and ``redis-server`` / PostgreSQL binaries; they start their
own servers on free loopback ports, or are skipped with a note).

1. claim + complete per second, per backend (each message claimed, handled, recorded done);
2. "which of these 100 000 keys are new?" on SQLite, with half of them already done, beside
   a plain Python ``set`` (the floor: no persistence) and a naive loop that asks the store
   one key at a time, all in the same run.

Targets: the batch check under 1 s on SQLite; the memory backend at least 100 000 claims/s.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _servers import postgres_server, redis_server

from mailtether import DuplicateGuard, MemoryStore, MessageKey, SQLiteStore, Store, store_from_url

ROUNDS = 5


def keys(count: int, offset: int = 0) -> list[MessageKey]:
    made = [
        MessageKey.imap("support@example.com", "INBOX", 7, uid)
        for uid in range(1 + offset, count + 1 + offset)
    ]
    for key in made:
        _ = key.id  # built once by the listener, as it fetches the UID list
    return made


def claims_per_second(make_store: Callable[[], Store], count: int) -> float:
    rates = []
    for round_ in range(ROUNDS):
        store = make_store()
        guard = DuplicateGuard(store, repeat="skip")
        batch = keys(count, offset=round_ * count)
        started = time.perf_counter()
        for key in batch:
            with guard.claim(key):
                pass
        rates.append(count / (time.perf_counter() - started))
        store.close()
    return statistics.median(rates)


def batch_check(tmp: Path, total: int) -> None:
    store = SQLiteStore(tmp / "batch.db")
    guard = DuplicateGuard(store, repeat="skip")
    everything = keys(total)
    done = everything[::2]
    seeding = time.perf_counter()
    for key in done:
        with guard.claim(key):
            pass
    seeded = time.perf_counter() - seeding

    def ours() -> int:
        return len(guard.filter_new(everything))

    done_ids = {key.id for key in done}

    def plain_set() -> int:
        return sum(1 for key in everything if key.id not in done_ids)

    def one_query_per_key() -> int:
        return sum(1 for key in everything if store.get(guard.namespace, key.id) is None)

    rows = []
    for name, check in (
        ("DuplicateGuard.filter_new", ours),
        ("plain set (in memory)", plain_set),
        ("one query per key", one_query_per_key),
    ):
        times = []
        for _ in range(3):
            started = time.perf_counter()
            new = check()
            times.append(time.perf_counter() - started)
        assert new == total - len(done), (name, new)
        rows.append((name, statistics.median(times)))
    ours_time = rows[0][1]
    print(
        f"\nfirst sync: which of {total:,} keys are new ({len(done):,} done; "
        f"seeding took {seeded:.1f} s)"
    )
    for name, seconds in rows:
        print(f"  {name:<28}{seconds * 1000:>9.0f} ms   vs ours {seconds / ours_time:>6.2f}x")
    verdict = "meets" if ours_time < 1.0 else "MISSES"
    print(f"  target: under 1 s on SQLite -> {ours_time:.3f} s, {verdict} it")
    store.close()


def main() -> int:
    print(f"Python {sys.version.split()[0]}; median of {ROUNDS} rounds")
    print("\nclaim + complete, one worker")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        counter = iter(range(1_000_000))
        backends: list[tuple[str, Callable[[], Store], int]] = [
            ("MemoryStore", MemoryStore, 50_000),
            ("SQLiteStore", lambda: SQLiteStore(path / f"claims-{next(counter)}.db"), 5_000),
        ]
        with redis_server() as redis_port, postgres_server() as postgres_dsn:
            if redis_port is not None:
                backends.append(
                    (
                        "RedisStore",
                        lambda: store_from_url(
                            f"redis://127.0.0.1:{redis_port}/0?prefix=b{next(counter)}"
                        ),
                        2_000,
                    )
                )
            if postgres_dsn is not None:
                backends.append(
                    (
                        "PostgresStore",
                        lambda: store_from_url(f"{postgres_dsn}?table_prefix=b{next(counter)}"),
                        1_000,
                    )
                )
            for name, make_store, count in backends:
                try:
                    rate = claims_per_second(make_store, count)
                except ImportError as error:
                    print(f"  {name:<16}skipped: {error}")
                    continue
                note = ""
                if name == "MemoryStore":
                    note = f"   target 100 000/s: {'meets' if rate >= 100_000 else 'MISSES'} it"
                print(f"  {name:<16}{rate:>12,.0f} claims/s{note}")
            if redis_port is None:
                print("  RedisStore       skipped: redis-server not installed")
            if postgres_dsn is None:
                print("  PostgresStore    skipped: PostgreSQL server binaries not found")
        batch_check(path, 100_000)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
