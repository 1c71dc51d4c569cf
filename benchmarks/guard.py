"""The duplicate guard and the stores' records beside their raw floors: one run, three sizes.

Run: ``.venv/bin/python benchmarks/guard.py [filter] [batch] [single] [remote]`` (no argument
runs all four). Redis and PostgreSQL need the ``redis`` / ``postgres`` extras and their
server binaries: they start their own throwaway servers on free loopback ports, or are
skipped with a note. Every figure is the median of interleaved rounds (each contender once a
round, in turn), wall-clock time; the ratio is ours divided by the peer (< 1: we are faster).

filter
    "Which of these keys are new?", half of them done, at 10,000, 100,000 and 1,000,000 keys:
    ``DuplicateGuard.filter_new`` on SQLite beside a raw key-only look-up of the same file (a
    plain ``sqlite3`` connection with the store's pragmas: ``SELECT key ... IN (500
    placeholders)`` into a set, then the same filtering of the keys). Target: <= 1.5x.
batch
    Claim and finish N new keys on SQLite in batches of 500 (``claim_many`` then
    ``finish_many``, all done), at 10,000, 100,000 and 200,000 keys, beside the same writes as
    raw SQL over a plain connection (the statements SQLiteStore sends, without the guard or
    the store around them: the floor; unanswered, each statement's count of rows checked, as
    the store does). Target: 100,000 keys in under 1 s.
single
    ``with guard.claim(key):`` (claim and done, one key at a time) on MemoryStore, at 10,000,
    100,000 and 300,000 keys, beside a dict behind a lock doing the same two transitions (the
    floor: no versions, expiry or failure counts). Target: >= 150,000 claims/s. Then one size
    on SQLite, Redis and PostgreSQL, for reference.
remote
    ``put_many`` (claims: create-only), ``get_many`` and ``existing`` of 100, 500 and 5,000
    records per call: RedisStore beside pipelined ``HSET`` / ``HMGET`` / ``EXISTS`` through
    redis-py (no compare-and-set, no indexes: the floor), PostgresStore beside raw psycopg
    (one fixed ``unnest`` statement over text arrays, ``key = ANY(list)``).
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from _servers import postgres_server, redis_server

from mailtether import (
    DuplicateGuard,
    MemoryStore,
    MessageKey,
    SQLiteStore,
    Store,
    Write,
    store_from_url,
)

Timed = Callable[[int], float]
"""A contender: given the round's number, does its work and returns the seconds it took."""


def keys(count: int, offset: int = 0) -> list[MessageKey]:
    """IMAP keys with their ids built, as a listener has them after listing the UIDs."""
    made = [
        MessageKey.imap("support@example.com", "INBOX", 7, uid)
        for uid in range(1 + offset, count + 1 + offset)
    ]
    for key in made:
        _ = key.id
    return made


def interleaved(contenders: dict[str, Timed], rounds: int) -> dict[str, float]:
    """Median seconds of each contender over *rounds* rounds, each round all in turn."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(rounds):
        order = list(contenders.items())
        if round_ % 2:  # neither always first (a warm cache) nor always last
            order.reverse()
        for name, run in order:
            samples[name].append(run(round_))
    return {name: statistics.median(times) for name, times in samples.items()}


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def print_ratio(size: int, ours: str, peer: str, times: dict[str, float], label: str = "") -> None:
    """One line: our time, the peer's and their ratio (ours / the peer's)."""
    print(
        f"  {size:>9,}  {label or ours} {times[ours] * 1000:>8.1f} ms   {peer} "
        f"{times[peer] * 1000:>8.1f} ms   ratio {times[ours] / times[peer]:.2f}x"
    )


# -- filter: which keys are new --------------------------------------------------------------


def raw_known(connection: sqlite3.Connection, namespace: str, ids: list[str]) -> set[str]:
    """The peer: the existing keys among *ids*, 500 per query, on a plain connection."""
    found: set[str] = set()
    full = f"SELECT key FROM mailtether_records WHERE namespace = ? AND key IN ({'?,' * 499}?)"
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        sql = full
        if len(chunk) < 500:
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT key FROM mailtether_records WHERE namespace = ? AND key IN ({marks})"
        found.update(row[0] for row in connection.execute(sql, (namespace, *chunk)))
    return found


def filter_section(tmp: Path) -> None:
    print("\nfilter_new on SQLite, half the keys done, beside a raw key-only look-up")
    print(f"  {'keys':>9}  (target: <= 1.5x)")
    for size, rounds in ((10_000, 7), (100_000, 5), (1_000_000, 3)):
        filter_size(tmp, size, rounds)


def filter_size(tmp: Path, size: int, rounds: int) -> None:
    store = SQLiteStore(tmp / f"filter-{size}.db")
    guard = DuplicateGuard(store, repeat="skip")
    everything = keys(size)
    done = [key.id for key in everything[::2]]
    for start in range(0, len(done), 5000):  # what finish_many leaves: done, no document
        chunk = done[start : start + 5000]
        store.put_many(Write(guard.namespace, id_, "done", {}) for id_ in chunk)
    connection = sqlite3.connect(store.path, isolation_level=None)
    connection.execute("PRAGMA synchronous = NORMAL")
    expected = size - len(done)

    def ours(_: int) -> float:
        started = time.perf_counter()
        new = guard.filter_new(everything)
        seconds = time.perf_counter() - started
        assert len(new) == expected
        return seconds

    def raw(_: int) -> float:
        started = time.perf_counter()
        known = raw_known(connection, guard.namespace, [key.id for key in everything])
        new = [key for key in everything if key.id not in known]
        seconds = time.perf_counter() - started
        assert len(new) == expected
        return seconds

    print_ratio(
        size,
        "filter_new",
        "raw look-up",
        interleaved({"filter_new": ours, "raw look-up": raw}, rounds),
    )
    connection.close()
    store.close()


# -- batch: claim_many + finish_many on SQLite ----------------------------------------------------

_CREATE = (
    "INSERT INTO mailtether_records (namespace, key, state, data, version, updated_at) "
    "VALUES {rows} ON CONFLICT (namespace, key) DO NOTHING"
)
_UPDATE = (
    "UPDATE mailtether_records SET state = v.column3, data = v.column4, "
    "version = mailtether_records.version + 1, updated_at = ? FROM (VALUES {rows}) AS v "
    "WHERE mailtether_records.namespace = ? AND mailtether_records.key = v.column1 "
    "AND mailtether_records.version = v.column2"
)


def raw_batches(path: Path, ids: list[str], batch: int) -> float:
    """The peer: the writes of claim_many + finish_many as raw SQL, 100 rows a statement."""
    SQLiteStore(path).close()  # the same schema
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA synchronous = NORMAL")
    encode = json.JSONEncoder(separators=(",", ":")).encode
    started = time.perf_counter()
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        now = time.time()
        claimed = encode({"owner": "host:1:0123abcd", "expires_at": now + 600})
        connection.execute("BEGIN IMMEDIATE")
        for at in range(0, len(chunk), 100):
            part = chunk[at : at + 100]
            params: list[Any] = []
            for id_ in part:
                params += ("guard", id_, "processing", claimed, now)
            rows = ",".join(["(?, ?, ?, ?, 1, ?)"] * len(part))
            assert connection.execute(_CREATE.format(rows=rows), params).rowcount == len(part)
        connection.execute("COMMIT")
        now = time.time()
        connection.execute("BEGIN IMMEDIATE")
        for at in range(0, len(chunk), 100):
            part = chunk[at : at + 100]
            params = [now]
            for id_ in part:
                params += (id_, 1, "done", "{}")
            params.append("guard")
            rows = ",".join(["(?, ?, ?, ?)"] * len(part))
            assert connection.execute(_UPDATE.format(rows=rows), params).rowcount == len(part)
        connection.execute("COMMIT")
    seconds = time.perf_counter() - started
    connection.close()
    return seconds


def batch_section(tmp: Path) -> None:
    print("\nclaim_many + finish_many on SQLite, batches of 500, beside the same writes as raw SQL")
    print(f"  {'keys':>9}  (target: 100,000 keys in under 1 s)")
    for size, rounds in ((10_000, 5), (100_000, 3), (200_000, 3)):
        times = batch_size(tmp, size, rounds)
        print_ratio(size, "guard", "raw SQL", times)
        if size == 100_000:
            verdict = "meets" if times["guard"] < 1.0 else "MISSES"
            print(f"  target: under 1 s -> {times['guard']:.2f} s, {verdict} it")


def batch_size(tmp: Path, size: int, rounds: int) -> dict[str, float]:
    work = keys(size)
    ids = [key.id for key in work]
    files = (tmp / f"batch-{size}-{n}.db" for n in range(10**6))

    def ours(_: int) -> float:
        guard = DuplicateGuard(SQLiteStore(next(files)), repeat="skip")
        started = time.perf_counter()
        for start in range(0, size, 500):
            claims = guard.claim_many(work[start : start + 500])
            guard.finish_many([(claim, None) for claim in claims])
        seconds = time.perf_counter() - started
        assert guard.counts()["done"] == size
        guard.store.close()
        return seconds

    def raw(_: int) -> float:
        return raw_batches(next(files), ids, 500)

    return interleaved({"guard": ours, "raw SQL": raw}, rounds)


# -- single: one claim at a time ----------------------------------------------------------------


class DictFloor:
    """The floor of a one-process guard: a dict behind a lock, processing then done."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.lock = threading.Lock()

    def handle(self, key: MessageKey) -> None:
        with self.lock:
            if key.id in self.states:
                return
            self.states[key.id] = "processing"
        with self.lock:
            self.states[key.id] = "done"


def single_section(tmp: Path, remote: dict[str, Callable[[], Store]]) -> None:
    print("\nwith guard.claim(key): claim and done one at a time, MemoryStore beside a dict")
    print(f"  {'keys':>9}  (target: >= 150,000 claims/s)")
    for size, rounds in ((10_000, 7), (100_000, 5), (300_000, 3)):
        times = single_size(size, rounds)
        rate, floor_rate = size / times["guard"], size / times["dict"]
        verdict = "meets" if rate >= 150_000 else "MISSES"
        print(
            f"  {size:>9,}  guard {rate:>9,.0f}/s   dict {floor_rate:>10,.0f}/s   "
            f"ratio {times['guard'] / times['dict']:.2f}x   target {verdict} it"
        )
    print("\n  one at a time on the other stores, for reference (median of 3)")
    counter = iter(range(10**6))
    others: dict[str, tuple[Callable[[], Store], int]] = {
        "SQLiteStore": (lambda: SQLiteStore(tmp / f"single-{next(counter)}.db"), 3000),
    }
    others.update({name: (make, 1000) for name, make in remote.items()})
    for name, (make, count) in others.items():

        def one(round_: int, make: Callable[[], Store] = make, count: int = count) -> float:
            store = make()
            guard = DuplicateGuard(store, repeat="skip")
            work = keys(count, offset=round_ * count)

            def run() -> None:
                for key in work:
                    with guard.claim(key):
                        pass

            seconds = timed(run)
            store.close()
            return seconds

        seconds = interleaved({name: one}, 3)[name]
        print(f"  {name:<14}{count / seconds:>9,.0f} claims/s")


def single_size(size: int, rounds: int) -> dict[str, float]:
    def ours(round_: int) -> float:
        guard = DuplicateGuard(MemoryStore(), repeat="skip")
        work = keys(size, offset=round_ * size)  # made outside the timing, for this round

        def run() -> None:
            for key in work:
                with guard.claim(key):
                    pass

        return timed(run)

    def floor(round_: int) -> float:
        guard = DictFloor()
        work = keys(size, offset=round_ * size)
        return timed(lambda: [guard.handle(key) for key in work])

    return interleaved({"guard": ours, "dict": floor}, rounds)


# -- remote: batches on Redis and PostgreSQL -------------------------------------------------------


def remote_section(redis_url: str | None, postgres_dsn: str | None) -> None:
    claimed = {"owner": "host:1:0123abcd", "expires_at": 1.9e9}
    text = json.dumps(claimed, separators=(",", ":"))
    if redis_url is None:
        print("\nRedis: redis-server not installed; skipped")
    else:
        import redis

        client = redis.Redis.from_url(redis_url, decode_responses=True)
        store = store_from_url(f"{redis_url}?prefix=bench")
        print("\nRedisStore beside pipelined redis-py commands (no compare-and-set, no indexes)")
        remote_rows(store, _redis_peers(client, text), claimed)
        store.close()
        client.close()
    if postgres_dsn is None:
        print("\nPostgreSQL: server binaries not found; skipped")
    else:
        import psycopg

        connection = psycopg.connect(postgres_dsn, autocommit=True, prepare_threshold=None)
        store = store_from_url(f"{postgres_dsn}?table_prefix=bench")
        connection.execute(
            'CREATE TABLE peer (namespace text, key text COLLATE "C", state text, data text, '
            "version bigint, updated_at float8, PRIMARY KEY (namespace, key))"
        )
        print("\nPostgresStore beside raw psycopg (unnest over text arrays, key = ANY(list))")
        remote_rows(store, _postgres_peers(connection, text), claimed)
        store.close()
        connection.close()


def _redis_peers(client: Any, text: str) -> dict[str, Callable[[list[str]], object]]:
    def put(ids: list[str]) -> object:
        pipe = client.pipeline(transaction=False)
        for id_ in ids:
            pipe.hset(f"peer:{id_}", mapping={"state": "processing", "data": text, "version": 1})
        return pipe.execute()

    def get(ids: list[str]) -> object:
        pipe = client.pipeline(transaction=False)
        for id_ in ids:
            pipe.hmget(f"peer:{id_}", "state", "data", "version", "updated_at")
        return [json.loads(found[1]) for found in pipe.execute() if found[0]]

    def existing(ids: list[str]) -> object:
        pipe = client.pipeline(transaction=False)
        for id_ in ids:
            pipe.exists(f"peer:{id_}")
        return {id_ for id_, found in zip(ids, pipe.execute(), strict=True) if found}

    return {"put_many": put, "get_many": get, "existing": existing}


def _postgres_peers(connection: Any, text: str) -> dict[str, Callable[[list[str]], object]]:
    put_sql = (
        "INSERT INTO peer (namespace, key, state, data, version, updated_at) "
        "SELECT 'guard', k, s, d, 1, extract(epoch from clock_timestamp()) "
        "FROM unnest(%s::text[], %s::text[], %s::text[]) AS v (k, s, d) "
        "ON CONFLICT (namespace, key) DO NOTHING RETURNING key, version, updated_at"
    )

    def put(ids: list[str]) -> object:
        params = (ids, ["processing"] * len(ids), [text] * len(ids))
        return connection.execute(put_sql, params).fetchall()

    def get(ids: list[str]) -> object:
        rows = connection.execute(
            "SELECT key, state, data, version, updated_at FROM peer "
            "WHERE namespace = 'guard' AND key = ANY(%s)",
            (ids,),
        ).fetchall()
        return [json.loads(row[2]) for row in rows]

    def existing(ids: list[str]) -> object:
        rows = connection.execute(
            "SELECT key FROM peer WHERE namespace = 'guard' AND key = ANY(%s)", (ids,)
        )
        return {row[0] for row in rows}

    return {"put_many": put, "get_many": get, "existing": existing}


def remote_rows(
    store: Store, peers: dict[str, Callable[[list[str]], object]], claimed: dict[str, Any]
) -> None:
    print(f"  {'per call':>9}")
    offsets = iter(range(1, 10**9))  # every batch its own keys
    for size, rounds in ((100, 15), (500, 9), (5000, 5)):
        remote_size(store, peers, claimed, size, rounds, offsets)


def remote_size(
    store: Store,
    peers: dict[str, Callable[[list[str]], object]],
    claimed: dict[str, Any],
    size: int,
    rounds: int,
    offsets: Iterator[int],
) -> None:
    made: dict[str, list[list[str]]] = {"ours": [], "peer": []}

    def fresh(name: str) -> list[str]:
        made[name].append([key.id for key in keys(size, offset=next(offsets) * size)])
        return made[name][-1]

    def ours_put(_: int) -> float:
        writes = [Write("guard", id_, "processing", claimed, expect=0) for id_ in fresh("ours")]
        return timed(lambda: store.put_many(writes))

    def peer_put(_: int) -> float:
        ids = fresh("peer")
        return timed(lambda: peers["put_many"](ids))

    print_ratio(
        size,
        "ours",
        "peer",
        interleaved({"ours": ours_put, "peer": peer_put}, rounds),
        "put_many  ",
    )
    for method in ("get_many", "existing"):
        lookup = getattr(store, method)

        def ours_get(round_: int, lookup: Any = lookup) -> float:
            ids = made["ours"][round_]
            return timed(lambda: lookup("guard", ids))

        def peer_get(round_: int, method: str = method) -> float:
            ids = made["peer"][round_]
            return timed(lambda: peers[method](ids))

        times = interleaved({"ours": ours_get, "peer": peer_get}, rounds)
        print_ratio(size, "ours", "peer", times, f"{method:<10}")


def main(argv: list[str]) -> int:
    sections = set(argv) or {"filter", "batch", "single", "remote"}
    print(f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}; wall-clock medians")
    with tempfile.TemporaryDirectory() as name, ExitStack() as stack:
        tmp = Path(name)
        servers = bool(sections & {"single", "remote"})
        redis_port = stack.enter_context(redis_server()) if servers else None
        postgres_dsn = stack.enter_context(postgres_server()) if servers else None
        redis_url = None if redis_port is None else f"redis://127.0.0.1:{redis_port}/0"
        remote: dict[str, Callable[[], Store]] = {}
        prefixes: Iterator[int] = iter(range(10**6))
        if redis_url is not None:
            remote["RedisStore"] = lambda: store_from_url(f"{redis_url}?prefix=s{next(prefixes)}")
        if postgres_dsn is not None:
            remote["PostgresStore"] = lambda: store_from_url(
                f"{postgres_dsn}?table_prefix=s{next(prefixes)}"
            )
        if "filter" in sections:
            filter_section(tmp)
        if "batch" in sections:
            batch_section(tmp)
        if "single" in sections:
            single_section(tmp, remote)
        if "remote" in sections:
            remote_section(redis_url, postgres_dsn)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
