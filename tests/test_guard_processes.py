"""The guard across processes: 8 workers, 1 000 keys, each handled exactly once; kill -9."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from backends import BACKENDS, Backend, make_backend
from mailtether import ClaimStatus, DuplicateGuard, MessageKey

WORKER = Path(__file__).with_name("guard_worker.py")


@pytest.fixture(params=[name for name in BACKENDS if name != "memory"])
def shared(request: pytest.FixtureRequest, tmp_path) -> Backend:
    made = make_backend(request.param, request, tmp_path, real_clock=True)
    yield made
    made.close()


def test_eight_processes_claim_1000_keys_each_handled_exactly_once(shared, tmp_path):
    outputs = [tmp_path / f"handled-{index}.txt" for index in range(8)]
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "claim", shared.url, "1000", str(index), str(out)]
        )
        for index, out in enumerate(outputs)
    ]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    handled = Counter(int(line) for out in outputs for line in out.read_text().split())
    busy = sum(1 for out in outputs if out.read_text())
    print(f"\n{shared.name}: {sum(handled.values())} handled by {busy} workers")
    assert set(handled) == set(range(1, 1001)), "no key lost"
    assert max(handled.values()) == 1, "no key handled twice"
    guard = DuplicateGuard(shared.store)
    assert guard.counts()["done"] == 1000


def test_a_worker_killed_mid_claim_loses_nothing(shared):
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), "hang", shared.url, "5", "0.5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout.readline().strip() == "claimed"
    finally:
        worker.kill()  # kill -9 in the middle of handling
        worker.wait()
        worker.stdout.close()
    key = MessageKey.imap("support@example.com", "INBOX", 7, 5)
    guard = DuplicateGuard(shared.store, claim_ttl=30)
    assert guard.claim(key).status is ClaimStatus.BUSY
    shared.pass_time(0.6)
    with guard.claim(key) as claim:
        assert claim.acquired, "the key is retried, not lost"
        assert claim.attempt == 2
    assert guard.lookup(key).state == "done"
