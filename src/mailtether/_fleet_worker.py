"""``FleetWorker``: runs a fair share of a fleet's sources, taking over from workers that die.

Each round (every ``fleet.heartbeat`` seconds) a worker:

1. writes its record (alive until three heartbeats from now, the sources it holds);
2. renews the lease of each source it holds (``fleet:<source>``); a lease it lost (it was
   paused longer than the TTL) stops that source's listener at once;
3. lets go of the sources whose listener has stopped for a hand-over (their lease released);
4. computes its fair share from the live workers' records (the same for every worker:
   ``sources // workers``, one more for the first ``sources % workers`` by name), then hands
   over the sources above its share — the ones it prefers least — or takes free ones, most
   preferred first (:func:`~mailtether._fleet_registry.affinity`), up to its share.

A hand-over happens at a clean point: the listener is asked to stop, finishes the catch-up
in hand (claims and outcomes recorded, its mailbox lease released), and only then is the
source's lease released for another worker to take. A worker that dies holds its sources
until their leases expire: they are taken over within ``lease_ttl`` and one heartbeat.
Two workers never work one source at once: besides the fleet lease, each listener holds the
mailbox's own lease, whose fencing token every :class:`~mailtether.Delivery` carries.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Final

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._errors import LeaseLost, StoreError
from mailtether._fleet import Fleet, FleetSource
from mailtether._fleet_registry import (
    WORKERS,
    FleetWorkerInfo,
    affinity,
    fair_share,
    live_workers,
    read_workers,
)
from mailtether._outbox import Outbox
from mailtether._redaction import redacting_logger
from mailtether._runner import SourceRunner
from mailtether._status import StatusBoard
from mailtether.stores._protocol import Lease, Store, default_owner

__all__ = ["FleetWorker", "lease_name"]

log = redacting_logger("mailtether.fleet")

_ALIVE_BEATS: Final = 3  # a worker's record vouches for it this many heartbeats
_PRUNE_AFTER: Final = 10  # a dead worker's record is deleted after this many lease TTLs


def lease_name(source: FleetSource) -> str:
    """The lease a source is worked under: the one its listener would take by itself."""
    return f"listener:{source.name}"


class _LeaseFence:
    """A source's lease as its listener sees it: the token, and whether it still holds.

    Renewed by the worker's rounds. The lease is believed lost no later than the store
    believes it expired: its TTL counts from when the renewal was *sent*.
    """

    def __init__(self, lease: Lease, sent_at: float, clock: Clock) -> None:
        self.lease = lease
        self.sent_at = sent_at
        self.clock = clock
        self.lost = False

    @property
    def token(self) -> int:
        """The lease's fencing token."""
        return self.lease.token

    def renewed(self, lease: Lease, sent_at: float) -> None:
        self.lease, self.sent_at = lease, sent_at

    def check(self) -> None:
        """Raise :class:`~mailtether.LeaseLost` once the lease is lost or may have expired."""
        if self.lost or self.clock.monotonic() - self.sent_at >= self.lease.ttl:
            raise LeaseLost(f"the fleet lease {self.lease.name!r} is lost or expired")


class _Held:
    """A source this worker holds: its lease and its running listener."""

    def __init__(
        self, source: FleetSource, fence: _LeaseFence, runner: SourceRunner, since: float
    ) -> None:
        self.source = source
        self.fence = fence
        self.runner = runner
        self.since = since
        self.leaving = False

    @property
    def lease(self) -> Lease:
        return self.fence.lease


class FleetWorker:
    """Runs its fair share of *fleet*'s sources, coordinating with the others through *store*.

    Start as many workers as you like, in any processes on any hosts that share *store*
    (Redis or PostgreSQL across hosts; SQLite for processes on one host; a
    :class:`~mailtether.MemoryStore` only for workers in one process). Shares stay even
    (they differ by one at most); a worker that joins is handed sources; a worker that dies
    has its sources taken over within ``fleet.lease_ttl`` and one ``fleet.heartbeat``.

    Args:
        fleet: The sources and the timing.
        store: Where the workers, leases, guard, cursors and statuses live.
        status: The status board every source reports on; default ``StatusBoard(store)``.
        outbox: For sources with ``on_poison="forward:…"``.
        worker: This worker's name; default ``host:pid:random``.
        clock: The clock of the rounds (tests pass a :class:`~mailtether.testing.FakeClock`
            and call :meth:`step`).
    """

    def __init__(
        self,
        fleet: Fleet,
        store: Store,
        *,
        status: StatusBoard | None = None,
        outbox: Outbox | None = None,
        worker: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.fleet = fleet
        self.store = store
        self.status = status or StatusBoard(store, clock=clock)
        self.outbox = outbox
        self.worker = worker or default_owner()
        """This worker's name (its leases' owner)."""
        self.clock = clock
        self._held: dict[str, _Held] = {}
        self._started_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # step() against stop()
        self._slots = threading.Semaphore(fleet.concurrency)
        self.rounds = 0
        """Rounds made so far."""

    # -- what it holds ---------------------------------------------------------------------------

    @property
    def held(self) -> list[str]:
        """The names of the sources this worker holds (hand-overs in progress included)."""
        return sorted(self._held)

    @property
    def handing_over(self) -> list[str]:
        """The sources being handed over: their listeners are stopping at a clean point."""
        return sorted(name for name, held in self._held.items() if held.leaving)

    def runner(self, source: str) -> SourceRunner | None:
        """The listener (or poller) of a source this worker holds, else ``None``."""
        held = self._held.get(source)
        return None if held is None else held.runner

    # -- one round ---------------------------------------------------------------------------------

    def step(self) -> None:
        """One round: say it is alive, renew, hand over or take sources to keep shares even.

        Every fault ends in the log and the next round, never in a dead worker: a store that
        is down leaves the sources running as they are (their own leases and run loops deal
        with it, and a lease not renewed in time stops its source).
        """
        with self._lock:
            if self._stop.is_set() and self._thread is not None:
                return
            self.rounds += 1
            try:
                self._round()
            except StoreError as error:
                log.warning(
                    "fleet worker %s: this round failed (the store): %s", self.worker, error
                )
            except Exception as error:  # a bug, here or in a store: never a dead worker
                log.error(
                    "fleet worker %s: this round failed (tried again next round): %s",
                    self.worker,
                    error,
                    exc_info=error,
                )

    def _round(self) -> None:
        now = self.store.now()
        if self._started_at is None:
            self._started_at = now
        self._renew()
        self._finish_hand_overs()
        self._beat(now, sources=False)  # alive, before the shares are worked out
        held_before = set(self._held)
        workers = read_workers(self.store)
        live = live_workers(workers, now)
        self._prune(workers, now)
        share = fair_share(self.worker, live, len(self.fleet.sources))
        staying = [held for held in self._held.values() if not held.leaving]
        if len(staying) > share:
            staying.sort(key=lambda held: affinity(self.worker, held.source.name))
            for held in staying[: len(staying) - share]:
                self._hand_over(held)
        elif len(staying) < share and not any(held.leaving for held in self._held.values()):
            self._take(share - len(staying))
        self._beat(self.store.now(), record=set(self._held) != held_before)

    def _renew(self) -> None:
        """Renew each lease a third of its TTL old (the rounds come at least that often)."""
        for held in list(self._held.values()):
            sent = self.clock.monotonic()
            if sent - held.fence.sent_at < self.fleet.lease_ttl / 3:
                continue
            try:
                held.fence.renewed(self.store.renew(held.lease, self.fleet.lease_ttl), sent)
            except LeaseLost:
                log.warning(
                    "fleet worker %s: lost the lease of %s (paused too long?); stopping it",
                    self.worker,
                    held.source.name,
                )
                held.fence.lost = True
                held.runner.stop(timeout=0)
                del self._held[held.source.name]

    def _finish_hand_overs(self) -> None:
        """Release the lease of each source whose listener has stopped for a hand-over."""
        for held in list(self._held.values()):
            if held.leaving and not held.runner.running:
                self.store.release(held.lease)
                del self._held[held.source.name]
                log.info("fleet worker %s: handed %s over", self.worker, held.source.name)

    def _hand_over(self, held: _Held) -> None:
        """Ask a source's listener to stop at a clean point; its lease goes when it has."""
        held.leaving = True
        held.runner.stop(timeout=0)

    def _take(self, wanted: int) -> None:
        """Take up to *wanted* free sources, the ones this worker prefers first."""
        free = [s for s in self.fleet.sources if s.name not in self._held]
        free.sort(key=lambda source: affinity(self.worker, source.name), reverse=True)
        for source in free:
            if wanted <= 0:
                return
            sent = self.clock.monotonic()
            lease = self.store.acquire(lease_name(source), self.worker, self.fleet.lease_ttl)
            if lease is None:
                continue  # another worker (or a listener of its own) holds it
            fence = _LeaseFence(lease, sent, self.clock)
            try:
                runner = source.build(
                    store=self.store,
                    status=self.status,
                    lease_ttl=self.fleet.lease_ttl,
                    outbox=self.outbox,
                    heartbeat=None,  # the worker's rounds beat for every source at once
                )
                runner.work_under(fence, self._slots)
                runner.run_in_thread()
            except Exception as error:  # checked when the fleet was made: a bug, or memory
                log.error("fleet worker %s: cannot start %s: %s", self.worker, source.name, error)
                self.store.release(lease)
                continue
            self._held[source.name] = _Held(source, fence, runner, self.store.now())
            log.info("fleet worker %s: took %s", self.worker, source.name)
            wanted -= 1

    def _beat(self, now: float, *, record: bool = True, sources: bool = True) -> None:
        """Write this worker's record (*record*) and its running sources' heartbeats."""
        alive_for = min(_ALIVE_BEATS * self.fleet.heartbeat, self.fleet.lease_ttl)
        info = FleetWorkerInfo(
            worker=self.worker,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self._started_at if self._started_at is not None else now,
            alive_until=now + alive_for,
            held={name: held.since for name, held in sorted(self._held.items())},
        )
        if record:
            self.store.put(WORKERS, self.worker, "alive", info.to_dict())
        running = [name for name, held in self._held.items() if held.runner.running]
        if running and sources:  # the sources' liveness, one write for all (their loops run)
            for status in self.status.heartbeat_many(running, alive_for):
                held = self._held.get(status.source)
                if held is not None:
                    held.runner.noticed(status)  # a pause ends the source's session now

    def _prune(self, workers: list[FleetWorkerInfo], now: float) -> None:
        """Delete the records of workers dead for long (``mailtether status`` shows the rest)."""
        for info in workers:
            if now - info.alive_until > _PRUNE_AFTER * self.fleet.lease_ttl:
                self.store.delete(WORKERS, info.worker)

    # -- running -----------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Make a round every ``fleet.heartbeat`` until *stop* (or :meth:`stop`); blocking.

        On the way out every source is stopped and handed back (its lease released) and the
        worker's record deleted, so the others take its sources at once.
        """
        stop = stop or self._stop
        try:
            while not stop.is_set() and not self._stop.is_set():
                self.step()
                if self.clock.sleep(self.fleet.heartbeat, stop if stop is self._stop else None):
                    break
                if stop.is_set():
                    break
        finally:
            self._leave()

    def run_in_thread(self) -> threading.Thread:
        """Start :meth:`run` in a daemon thread; :meth:`stop` ends it."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"fleet worker {self.worker} is already running")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run, name=f"mailtether-fleet-{self.worker}", daemon=True
        )
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every source (each at a clean point), release their leases, and leave."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        else:
            self._leave(timeout)

    def _leave(self, timeout: float = 10.0) -> None:
        with self._lock:
            held, self._held = list(self._held.values()), {}
            for each in held:  # all asked at once: they stop side by side
                each.runner.stop(timeout=0)
            for each in held:
                each.runner.stop(timeout=timeout)
                try:
                    self.store.release(each.lease)
                except StoreError as error:
                    log.warning(
                        "fleet worker %s: could not release %s: %s", self.worker, each, error
                    )
            try:
                self.store.delete(WORKERS, self.worker)
            except StoreError as error:
                log.warning("fleet worker %s: could not delete its record: %s", self.worker, error)

    def __repr__(self) -> str:
        return f"FleetWorker({self.worker!r}, holds {len(self._held)} of {len(self.fleet.sources)})"
