"""``mailtether status``: every source's state and the held messages, as tables or JSON.

The states are read as of now: a source whose heartbeat expired shows as STALE, since its
last heartbeat, with no next attempt (nobody is there to make it).
"""

from __future__ import annotations

import argparse
from typing import TextIO

from mailtether._fleet_registry import FleetWorkerInfo, read_workers
from mailtether._guard import DuplicateGuard
from mailtether._guard_states import GuardEntry
from mailtether._status import SourceState, SourceStatus, StatusBoard
from mailtether.cli._config_file import add_store_arguments
from mailtether.cli._outcome import OK, when, write_json, write_table
from mailtether.stores._protocol import Store

__all__ = ["add_status_arguments", "run_status"]


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mailtether status``."""
    add_store_arguments(parser)
    parser.add_argument("--guard", default=None, help="the guard's name, if it has one")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def run_status(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    """Print the sources, the message counts and the held messages of *store*."""
    sources = StatusBoard(store, notifiers=[]).snapshot()
    guard = DuplicateGuard(store, name=args.guard)
    held = guard.held()
    workers = read_workers(store)
    now = store.now()
    holders = {
        source: (info, since)
        for info in workers
        if info.alive(now)
        for source, since in info.held.items()
    }
    if args.json:
        write_json(
            out,
            {
                "sources": [
                    _with_holder(status.to_dict(), holders.get(status.source)) for status in sources
                ],
                "workers": [{**info.to_dict(), "alive": info.alive(now)} for info in workers],
                "messages": guard.counts(),
                "held": [
                    {
                        "key": entry.key.id,
                        "message": str(entry.key),
                        "attempts": entry.attempts,
                        "since": entry.since,
                        "reason": entry.reason,
                    }
                    for entry in held
                ],
            },
            indent=2,
        )
        return OK
    if sources and workers:  # a fleet: who holds each source
        write_table(
            out,
            ["SOURCE", "STATE", "SINCE", "HELD BY", "HELD SINCE", "OK/FAILED", "REASON"],
            [_fleet_row(status, holders.get(status.source)) for status in sources],
        )
    elif sources:
        write_table(
            out,
            ["SOURCE", "STATE", "SINCE", "ATTEMPTS", "NEXT", "OK/FAILED", "REASON"],
            [_status_row(status) for status in sources],
        )
        if any(status.state is SourceState.STALE for status in sources):
            out.write(
                "\nSTALE: the process that ran the source stopped or hangs (no heartbeat); "
                "start it again, or look at why it stopped.\n"
            )
    if any(status.state is SourceState.PAUSED for status in sources):
        out.write(
            "\nPAUSED: stopped on purpose by a person (REASON says who, SINCE when); "
            "`mailtether resume SOURCE` lets it go on.\n"
        )
    if not sources:
        out.write("no sources have reported to this store yet\n")
    if workers:
        out.write("\nfleet workers:\n")
        write_table(
            out,
            ["WORKER", "HOST", "PID", "ALIVE", "STARTED", "SOURCES"],
            [
                [
                    info.worker,
                    info.host,
                    str(info.pid),
                    f"yes, until {when(info.alive_until)}"
                    if info.alive(now)
                    else f"no, since {when(info.alive_until)}",
                    when(info.started_at),
                    str(len(info.held)),
                ]
                for info in workers
            ],
        )
    counts = guard.counts()
    out.write("\nmessages: " + ", ".join(f"{state} {n}" for state, n in counts.items()) + "\n")
    if held:
        out.write("\nheld messages (release or drop them):\n")
        write_table(
            out, ["KEY", "MESSAGE", "ATTEMPTS", "SINCE", "REASON"], [_held_row(e) for e in held]
        )
    return OK


def _status_row(status: SourceStatus) -> list[str]:
    return [
        status.source,
        status.state.value.upper(),
        when(status.since),
        str(status.attempts),
        when(status.next_attempt_at),
        f"{status.processed}/{status.failed}",
        status.reason or "-",
    ]


def _fleet_row(status: SourceStatus, holder: tuple[FleetWorkerInfo, float] | None) -> list[str]:
    return [
        status.source,
        status.state.value.upper(),
        when(status.since),
        f"{holder[0].host}:{holder[0].pid}" if holder else "-",
        when(holder[1]) if holder else "-",
        f"{status.processed}/{status.failed}",
        status.reason or "-",
    ]


def _with_holder(
    data: dict[str, object], holder: tuple[FleetWorkerInfo, float] | None
) -> dict[str, object]:
    if holder is not None:
        data["held_by"] = {"worker": holder[0].worker, "since": holder[1]}
    return data


def _held_row(entry: GuardEntry) -> list[str]:
    return [
        entry.key.id,
        str(entry.key),
        str(entry.attempts),
        when(entry.since),
        entry.reason or "-",
    ]
