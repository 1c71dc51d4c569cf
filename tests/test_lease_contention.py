"""Many processes against one lease: no overlaps, tokens strictly increasing; take-overs."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from backends import BACKENDS, Backend, make_backend

WORKER = Path(__file__).with_name("lease_worker.py")
PROCESSES = 8
SECONDS = 3.0


@pytest.fixture(params=[name for name in BACKENDS if name != "memory"])
def shared(request: pytest.FixtureRequest, tmp_path) -> Backend:
    made = make_backend(request.param, request, tmp_path, real_clock=True)
    yield made
    made.close()


def check_sections(lines: list[str]) -> tuple[int, int]:
    sections = sorted(
        (float(entered), float(left), int(token), int(overlap))
        for token, entered, left, overlap in (line.split() for line in lines)
    )
    overlaps = sum(overlap for *_, overlap in sections)
    for (_, left, token, _), (entered, _, next_token, _) in itertools.pairwise(sections):
        if entered < left:
            overlaps += 1
        assert next_token > token, "tokens must strictly increase in time order"
    return len(sections), overlaps


def test_processes_hammering_one_lease_never_overlap(shared: Backend, tmp_path):
    sentinel = tmp_path / "inside"
    outputs = [tmp_path / f"worker-{index}.txt" for index in range(PROCESSES)]
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "hammer",
                shared.url,
                "hammered",
                str(SECONDS),
                str(out),
                str(sentinel),
            ]
        )
        for out in outputs
    ]
    for worker in workers:
        assert worker.wait(timeout=60) == 0
    lines = [line for out in outputs for line in out.read_text().splitlines()]
    sections, overlaps = check_sections(lines)
    print(
        f"\n{shared.name}: {PROCESSES} processes, {sections} critical sections, {overlaps} overlaps"
    )
    assert overlaps == 0
    assert sections >= 50, "the workers must actually have contended"
    assert sum(1 for out in outputs if out.read_text()) >= 2, "more than one worker got in"


def test_threads_hammering_a_memory_lease_never_overlap(tmp_path):
    from mailtether import MemoryStore, default_owner

    store = MemoryStore()
    inside = threading.Lock()
    lines: list[str] = []
    deadline = time.monotonic() + 1.0

    def hammer() -> None:
        owner = default_owner()
        while time.monotonic() < deadline:
            lease = store.acquire("hammered", owner, 5.0)
            if lease is None:
                continue
            entered = time.monotonic()
            overlap = 0 if inside.acquire(blocking=False) else 1
            if not overlap:
                inside.release()
            left = time.monotonic()
            overlap |= 0 if store.release(lease) else 1
            lines.append(f"{lease.token} {entered!r} {left!r} {overlap}")

    threads = [threading.Thread(target=hammer) for _ in range(PROCESSES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sections, overlaps = check_sections(lines)
    assert overlaps == 0
    assert sections >= 50


def test_a_paused_holder_loses_to_a_new_one(shared: Backend):
    holder = subprocess.Popen(
        [sys.executable, str(WORKER), "hold", shared.url, "paused", "0.5"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first_token = int(holder.stdout.readline())
        os.kill(holder.pid, signal.SIGSTOP)
        lease = shared.store.holder("paused")
        assert lease is not None
        assert lease.token == first_token
        shared.expire(lease)
        taker = shared.store.acquire("paused", "taker", 30)
        assert taker is not None
        assert taker.token > first_token
        os.kill(holder.pid, signal.SIGCONT)
        holder.stdin.write("renew\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "lost"
        holder.stdin.write("release\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "refused"
        assert shared.store.holder("paused") == taker
        holder.stdin.write("quit\n")
        holder.stdin.flush()
        assert holder.wait(timeout=30) == 0
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
            holder.wait()
        holder.stdin.close()
        holder.stdout.close()


def test_a_killed_holder_is_taken_over_after_its_ttl(shared: Backend):
    holder = subprocess.Popen(
        [sys.executable, str(WORKER), "hold", shared.url, "killed", "0.5"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    first_token = int(holder.stdout.readline())
    holder.kill()  # kill -9: no release, no clean-up
    holder.wait()
    holder.stdin.close()
    holder.stdout.close()
    assert shared.store.acquire("killed", "taker", 30) is None, "not before the TTL"
    shared.expire(shared.store.holder("killed"))
    taker = shared.store.acquire("killed", "taker", 30)
    assert taker is not None
    assert taker.token == first_token + 1
