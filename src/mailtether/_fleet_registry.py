"""The fleet's workers, as the store knows them: who is alive, what each holds, fair shares.

A fleet needs no server of its own: every worker writes one record (namespace
``fleet-worker``, keyed by its owner name ``host:pid:random``) each heartbeat, saying until
when it vouches for itself and which sources it holds since when. Everyone reads the same
records, so every worker computes the same shares: the sources divided by the live workers,
the first ``sources % workers`` workers (by name) taking one more. Shares therefore differ by
one at most, and add up to the number of sources exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

from mailtether.stores._protocol import Store

__all__ = ["WORKERS", "FleetWorkerInfo", "affinity", "fair_share", "live_workers", "read_workers"]

WORKERS: Final = "fleet-worker"
"""The store namespace of the workers' records."""


@attrs.frozen
class FleetWorkerInfo:
    """One worker of a fleet, as its last heartbeat described it.

    Attributes:
        worker: Its owner name (``host:pid:random``), which its leases carry too.
        host: The host it runs on.
        pid: Its process id there.
        started_at: When it started (store clock).
        alive_until: Until when its last heartbeat vouches for it (store clock); past this,
            it is dead and its sources are taken over once their leases expire.
        held: The sources it holds, each with since when (store clock).
    """

    worker: str
    host: str
    pid: int
    started_at: float
    alive_until: float
    held: Mapping[str, float] = attrs.field(factory=dict)

    def alive(self, now: float) -> bool:
        """Whether its heartbeat vouches for it at *now* (store clock)."""
        return now <= self.alive_until

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict (the store record, and ``--json``)."""
        return {
            "worker": self.worker,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "alive_until": self.alive_until,
            "held": dict(self.held),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FleetWorkerInfo:
        """Read a record written by :meth:`to_dict`."""
        held = data.get("held")
        return cls(
            worker=str(data["worker"]),
            host=str(data.get("host", "")),
            pid=int(data.get("pid", 0)),
            started_at=float(data.get("started_at", 0.0)),
            alive_until=float(data.get("alive_until", 0.0)),
            held={str(k): float(v) for k, v in held.items()} if isinstance(held, dict) else {},
        )


def read_workers(store: Store) -> list[FleetWorkerInfo]:
    """Every worker that has a record, by name (dead ones too, until they are pruned)."""
    return sorted(
        (FleetWorkerInfo.from_dict(record.data) for record in store.scan(WORKERS)),
        key=lambda info: info.worker,
    )


def live_workers(workers: Iterable[FleetWorkerInfo], now: float) -> list[str]:
    """The names of the workers alive at *now*, sorted."""
    return sorted(info.worker for info in workers if info.alive(now))


def fair_share(worker: str, live: Sequence[str], sources: int) -> int:
    """How many of *sources* *worker* should hold among the *live* workers (sorted names).

    ``sources // len(live)``, and one more for the first ``sources % len(live)`` workers: the
    shares add up to *sources* and differ by one at most. A worker not (yet) among *live*
    counts as the last one.
    """
    everyone = sorted({*live, worker})
    base, extra = divmod(sources, len(everyone))
    return base + (1 if everyone.index(worker) < extra else 0)


def affinity(worker: str, source: str) -> int:
    """How much *worker* prefers *source* (rendezvous hashing): highest taken first.

    Each worker ranks the sources its own way, so workers starting together reach for
    different sources instead of all contending for the first ones.
    """
    digest = hashlib.blake2b(f"{worker}\0{source}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
