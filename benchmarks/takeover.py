"""Takeover after a crash: a standby listener beside ProcessLock's own waiter, per store.

Run: ``.venv/bin/python benchmarks/takeover.py [rounds]`` (default 10; as root, or where
Dovecot can run; the Redis and PostgreSQL rows need ``redis-server`` / PostgreSQL binaries
and start their own servers on free loopback ports, or are skipped with a note). About 5
minutes for all four stores.

A holder takes the mailbox lease (``ProcessLock``, TTL ``TTL``, renewed every ``TTL / 3``
as a working listener's lease is) in a process of its own (benchmarks/_takeover_holder.py),
and is killed with SIGKILL at a random moment of its renewal cycle: no release, the lease
must run out. On MemoryStore, which lives in one process, the holder is a thread whose
clock freezes at the "kill" (its heartbeat never runs again). Measured from the kill:

- ours: a standby ``ImapListener`` (lease_ttl ``TTL``) on the same store and mailbox, to
  the moment it holds the lease, and to the moment its handler gets the mail that arrived
  (on a loopback Dovecot) while the dead holder still held the mailbox;
- peer: ``ProcessLock(store, name, ttl=TTL, timeout=...)`` waiting on the same lease name
  (it asks every ``TTL / 10``), to the moment it holds the lease.

Rounds alternate ours / peer with the same kill moments, in one run. The bound is the
issue's "TTL plus one heartbeat", the heartbeat being the lease's (``TTL / 3``). Polling cost:
every store call a standby makes (through a counting proxy), over ``WINDOW`` seconds of
waiting on a live holder after it settled, as calls per minute; ours includes the status
heartbeat of the listener (every 10 s, its default).
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, cast

from _servers import postgres_server, redis_server

from mailtether import (
    Delivery,
    ImapListener,
    ImapSettings,
    LeaseUnavailable,
    MemoryStore,
    ProcessLock,
    Store,
    store_from_url,
)
from servers import ServerUnavailable
from servers.dovecot import DovecotServer
from servers.tls import make_ca

TTL = 2.0
BEAT = TTL / 3  # ProcessLock's default heartbeat: how often the holder renews
BOUND = TTL + BEAT
SETTLE = 0.4  # seconds after the holder took the lease before the kill window opens
WINDOW = 12.0  # seconds of steady standby over which store calls are counted
HOLDER = Path(__file__).resolve().parent / "_takeover_holder.py"

STORE_METHODS = (
    "now",
    "get",
    "get_many",
    "put",
    "put_many",
    "delete",
    "scan",
    "count",
    "prune",
    "acquire",
    "renew",
    "release",
    "holder",
    "close",
)


class CountingStore:
    """Delegates every Store method to *inner*, counting calls and noting the first take."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.taken_at: float | None = None  # monotonic time a successful acquire returned
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.taken_at = None

    def _count(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1

    def acquire(self, name: str, owner: str, ttl: float) -> Any:
        self._count("acquire")
        lease = self.inner.acquire(name, owner, ttl)
        if lease is not None and self.taken_at is None:
            self.taken_at = time.monotonic()
        return lease

    def __getattr__(self, name: str) -> Any:  # anything not in the protocol, uncounted
        return getattr(self.inner, name)


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: CountingStore, *args: Any, **kwargs: Any) -> Any:
        self._count(name)
        return getattr(self.inner, name)(*args, **kwargs)

    method.__name__ = name
    return method


for _name in STORE_METHODS:
    if _name != "acquire":
        setattr(CountingStore, _name, _delegate(_name))


# -- holders: a lease that stops being renewed without being released --------------------------


class ProcessHolder:
    """The lease held by a process of its own, ended by SIGKILL."""

    def __init__(self, url: str, name: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, str(HOLDER), url, name, repr(TTL)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line.startswith("held "):
            self._process.kill()
            _, errors = self._process.communicate()
            raise RuntimeError(f"the holder did not take the lease: {line!r} {errors[-500:]}")
        self.held_at = time.monotonic()

    def crash(self) -> float:
        killed = time.monotonic()
        self._process.kill()  # SIGKILL
        return killed

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.communicate()


class _FreezingClock:
    """The system clock until :meth:`freeze`; then every wait on it lasts forever."""

    def __init__(self) -> None:
        self._frozen = threading.Event()
        self._never = threading.Event()

    def freeze(self) -> None:
        self._frozen.set()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        end = time.monotonic() + seconds
        while not self._frozen.is_set():
            if stop is not None and stop.is_set():
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            (stop or self._frozen).wait(min(left, 0.005))
        self._never.wait()  # a crashed process does nothing more (a daemon thread)
        return True


class ThreadHolder:
    """The lease held in this process (MemoryStore): the heartbeat's clock stops at the crash."""

    def __init__(self, store: Store, name: str) -> None:
        self._clock = _FreezingClock()
        self._lock = ProcessLock(store, name, ttl=TTL, clock=self._clock)
        self._lock.__enter__()  # never left: a crash does not release
        self.held_at = time.monotonic()

    def crash(self) -> float:
        killed = time.monotonic()
        self._clock.freeze()
        return killed

    def close(self) -> None:
        self._clock.freeze()


# -- one store ------------------------------------------------------------------------------------


class Bench:
    """Everything one store's rows need: how to make a holder, our standby and the peer's."""

    def __init__(self, label: str, url: str, dovecot: DovecotServer) -> None:
        self.label = label
        self.url = url
        self.shared = MemoryStore() if url == "memory:" else None
        self.dovecot = dovecot
        self.user = dovecot.add_user()
        dovecot.save(self.user, mail(0))  # the mailbox exists; this mail is the first catch-up's
        self.name = f"takeover-{label}"
        self.lease = f"listener:{self.name}"  # the name ImapListener leases its mailbox by
        self.stores: list[Store] = []
        self.sent = 0

    def store(self) -> Store:
        if self.shared is not None:
            return self.shared
        store = store_from_url(self.url)
        self.stores.append(store)
        return store

    def holder(self) -> ProcessHolder | ThreadHolder:
        if self.shared is not None:
            return ThreadHolder(self.shared, self.lease)
        return ProcessHolder(self.url, self.lease)

    def listener(self, store: CountingStore, handler: Callable[[Delivery], object]) -> ImapListener:
        settings = ImapSettings(
            "127.0.0.1",
            self.user,
            self.dovecot.password(self.user),
            port=self.dovecot.imap_port,
            security="plain",
        )
        return ImapListener(
            settings,
            handler,
            store=cast(Store, store),
            lease_ttl=TTL,
            name=self.name,
        )

    def close(self) -> None:
        for store in self.stores:
            store.close()


def mail(n: int) -> bytes:
    head = f"From: a@example.com\r\nSubject: {n}\r\nMessage-ID: <{n}@takeover>\r\n"
    return f"{head}\r\nbody\r\n".encode()


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.002)


def _kill_when_standing_by(
    holder: ProcessHolder | ThreadHolder, proxy: CountingStore, delay: float, who: str
) -> float:
    """Kill the holder *delay* into its renewal cycle, once *who* has tried and failed."""
    _wait_for(lambda: proxy.calls["acquire"] >= 1, 10, f"{who}'s first try")
    # The same moment of the holder's cycle for both contenders: SETTLE + delay after it took
    # the lease (delay in [0, BEAT): anywhere between two renewals).
    time.sleep(max(0.0, holder.held_at + SETTLE + delay - time.monotonic()))
    assert proxy.taken_at is None, f"{who} took a lease that was held"
    return holder.crash()


def ours_round(bench: Bench, proxy: CountingStore, delay: float) -> tuple[float, float]:
    """Kill -> lease held, and kill -> first mail handed out, by a standby ImapListener."""
    # The mail the standby is to hand out once it holds the mailbox (nobody reads it before).
    if bench.sent == 0:
        bench.sent = 1  # mail(0), saved at the start, is still waiting
    else:
        bench.dovecot.save(bench.user, mail(bench.sent))
        bench.sent += 1
    holder = bench.holder()
    try:
        handed: list[float] = []
        arrived = threading.Event()

        def handler(delivery: Delivery) -> None:
            if not handed:
                handed.append(time.monotonic())
            arrived.set()

        listener = bench.listener(proxy, handler)
        proxy.reset()
        listener.run_in_thread()
        killed = _kill_when_standing_by(holder, proxy, delay, "our standby")
        if not arrived.wait(BOUND * 3 + 10):
            raise RuntimeError(f"{bench.label}: our standby handed out nothing")
        listener.stop()
        assert proxy.taken_at is not None
        return proxy.taken_at - killed, handed[0] - killed
    finally:
        holder.close()


def peer_round(bench: Bench, proxy: CountingStore, delay: float) -> float:
    """Kill -> lease held, by ProcessLock's own waiter on the same lease."""
    holder = bench.holder()
    try:
        proxy.reset()

        def wait() -> None:
            with ProcessLock(cast(Store, proxy), bench.lease, ttl=TTL, timeout=BOUND * 3 + 10):
                pass

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        killed = _kill_when_standing_by(holder, proxy, delay, "ProcessLock")
        waiter.join(BOUND * 3 + 15)
        assert proxy.taken_at is not None, f"{bench.label}: ProcessLock never took the lease"
        return proxy.taken_at - killed
    finally:
        holder.close()


def polling_cost(bench: Bench) -> tuple[Counter[str], Counter[str]]:
    """Store calls per minute of both standbys waiting (at once) on a live holder."""
    holder = bench.holder()
    ours, theirs = CountingStore(bench.store()), CountingStore(bench.store())
    listener = bench.listener(ours, lambda delivery: None)
    settle = TTL + 0.5

    def wait() -> None:
        try:
            store = cast(Store, theirs)
            with ProcessLock(store, bench.lease, ttl=TTL, timeout=settle + WINDOW + 0.5):
                raise AssertionError("ProcessLock took a lease that was held")
        except LeaseUnavailable:
            pass

    try:
        listener.run_in_thread()
        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        time.sleep(settle)
        ours.reset()
        theirs.reset()
        time.sleep(WINDOW)
        counted = Counter(ours.calls), Counter(theirs.calls)
        assert ours.taken_at is None, "our standby took a lease that was held"
        assert theirs.taken_at is None, "ProcessLock took a lease that was held"
        listener.stop()
        waiter.join()
    finally:
        holder.close()
    scale = 60 / WINDOW
    return (
        Counter({k: round(v * scale) for k, v in counted[0].items()}),
        Counter({k: round(v * scale) for k, v in counted[1].items()}),
    )


def measure(bench: Bench, rounds: int) -> dict[str, Any]:
    draw = random.Random(14)
    delays = [draw.uniform(0, BEAT) for _ in range(rounds)]
    ours_proxy, peer_proxy = CountingStore(bench.store()), CountingStore(bench.store())
    ours_lease, ours_mail, peer = [], [], []
    for delay in delays:  # interleaved, with the same kill moments
        lease_at, mail_at = ours_round(bench, ours_proxy, delay)
        ours_lease.append(lease_at)
        ours_mail.append(mail_at)
        peer.append(peer_round(bench, peer_proxy, delay))
    calls_ours, calls_peer = polling_cost(bench)
    return {
        "ours": ours_lease,
        "mail": ours_mail,
        "peer": peer,
        "calls_ours": calls_ours,
        "calls_peer": calls_peer,
    }


def fmt(samples: list[float]) -> str:
    return f"{statistics.median(samples):5.2f} / {max(samples):5.2f}"


def report(rows: list[tuple[str, dict[str, Any]]], rounds: int) -> None:
    print(
        f"\ntakeover after SIGKILL of the holder, seconds from the kill, median / max of "
        f"{rounds};\nTTL {TTL:g} s, lease heartbeat {BEAT:.2f} s: bound TTL + heartbeat "
        f"= {BOUND:.2f} s"
    )
    head = (
        f"  {'store':<14}{'ours: lease':>15}{'ours: mail':>15}{'ProcessLock':>15}"
        f"{'ratio':>7}{'calls/min':>16}   max <= bound"
    )
    print(head)
    print(f"  {'':<14}{'':>15}{'':>15}{'':>15}{'o/p':>7}{'ours    peer':>16}   ours  peer")
    for label, r in rows:
        ratio = statistics.median(r["ours"]) / statistics.median(r["peer"])
        ok_ours = "yes" if max(r["ours"]) <= BOUND else "MISS"
        ok_peer = "yes" if max(r["peer"]) <= BOUND else "MISS"
        print(
            f"  {label:<14}{fmt(r['ours']):>15}{fmt(r['mail']):>15}{fmt(r['peer']):>15}"
            f"{ratio:>6.2f}x{r['calls_ours'].total():>8}{r['calls_peer'].total():>8}"
            f"   {ok_ours:<5} {ok_peer}"
        )
    print(f"\nstore calls per minute of standby, by method (over {WINDOW:g} s, live holder)")
    for label, r in rows:
        for who in ("ours", "peer"):
            calls = r[f"calls_{who}"]
            parts = ", ".join(f"{name} {n}" for name, n in sorted(calls.items()))
            print(f"  {label:<14}{who:<6}{parts}")


@contextmanager
def dovecot_server(tmp: Path) -> Iterator[DovecotServer | None]:
    try:
        server = DovecotServer(make_ca(tmp / "ca")).start()
    except ServerUnavailable as error:
        print(f"Dovecot: {error}")
        yield None
        return
    try:
        yield server
    finally:
        server.stop()


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    print(
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
        "absolute figures are noisy on a shared machine"
    )
    rows: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        dovecot = stack.enter_context(dovecot_server(Path(tmp)))
        if dovecot is None:
            print("our standby is an ImapListener: it needs Dovecot (scripts/install-test-servers)")
            return 1
        stores = [("MemoryStore", "memory:"), ("SQLiteStore", f"sqlite://{tmp}/takeover.db")]
        redis_port = stack.enter_context(redis_server())
        if redis_port is None:
            print("RedisStore: redis-server not installed; skipped")
        else:
            stores.append(("RedisStore", f"redis://127.0.0.1:{redis_port}/0?prefix=takeover"))
        postgres_dsn = stack.enter_context(postgres_server())
        if postgres_dsn is None:
            print("PostgresStore: PostgreSQL server binaries not found; skipped")
        else:
            stores.append(("PostgresStore", f"{postgres_dsn}?table_prefix=takeover"))
        for label, url in stores:
            bench = Bench(label, url, dovecot)
            started = time.monotonic()
            try:
                rows.append((label, measure(bench, rounds)))
            finally:
                bench.close()
            print(f"  {label}: done in {time.monotonic() - started:.0f} s", flush=True)
    report(rows, rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
