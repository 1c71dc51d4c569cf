"""A fleet across processes: `mailtether run` workers share Dovecot mailboxes through a store.

Issue 22's scenario: sources over worker processes on Redis, PostgreSQL (and SQLite, for
processes on one host), mail delivered to random mailboxes throughout. Every source is held
within a bound, shares are even (max - min <= 1); a worker joins and shares are even again;
a worker is killed (``kill -9``) and its sources are held by the others within the lease TTL
and a heartbeat (and a moment for the processes to act). At the end every mail was handled
once, and the fencing audit shows no two holders of a mailbox working it at once.

CI runs 20 mailboxes over 3 workers (then 4); ``MAILTETHER_FULL=1`` runs 200 over 4 (then 5).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from backends import BACKENDS, Backend, make_backend
from helpers import eventually
from mailtether._fleet_registry import read_workers

FULL = bool(os.environ.get("MAILTETHER_FULL"))
MAILBOXES, WORKERS = (200, 4) if FULL else (20, 3)
HEARTBEAT, LEASE_TTL = 1.0, 4.0
SLACK = 6.0  # seconds for processes to start, connect and log in, on a loaded 2-core machine

HANDLER = """
import json, os, time

def handle(delivery):
    line = json.dumps({
        "source": delivery.key.account,
        "subject": str(delivery.message["Subject"]),
        "token": delivery.token,
        "pid": os.getpid(),
        "at": time.time(),
    })
    with open(os.environ["FLEET_HANDLED"], "a") as out:
        out.write(line + "\\n")
"""


@pytest.fixture(params=[name for name in BACKENDS if name != "memory"])
def shared(request: pytest.FixtureRequest, tmp_path) -> Backend:
    made = make_backend(request.param, request, tmp_path, real_clock=True)
    yield made
    made.close()


def fleet_file(tmp_path: Path, dovecot, users: list[str], store_url: str) -> Path:  # type: ignore[no-untyped-def]
    lines = [
        "[fleet]",
        f'store = "{store_url}"',
        f'heartbeat = "{HEARTBEAT}s"',
        f'lease_ttl = "{LEASE_TTL}s"',
    ]
    for user in users:
        lines += [
            "",
            "[[source]]",
            f'name = "{user}"',
            f'url = "imap://{user}:{dovecot.password(user)}@127.0.0.1:{dovecot.imap_port}/INBOX'
            '?security=plain"',
            'handler = "fleet_handlers:handle"',
            'poll_interval = "2s"',
            'reconnect = "fixed 0.5s"',
        ]
    path = tmp_path / "fleet.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Workers:
    """`mailtether run` processes, started and stopped by the test."""

    def __init__(self, tmp_path: Path, fleet: Path) -> None:
        (tmp_path / "fleet_handlers.py").write_text(HANDLER)
        self.handled = tmp_path / "handled.jsonl"
        self.env = {
            **os.environ,
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "FLEET_HANDLED": str(self.handled),
        }
        self.fleet = fleet
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = open(self.tmp_path / f"worker-{len(self.processes)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "mailtether", "run", str(self.fleet)],
            cwd=self.tmp_path,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes.append(process)
        return process

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.processes if p.poll() is None]

    def stop_all(self) -> None:
        for process in self.alive():
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def lines(self) -> list[dict[str, object]]:
        if not self.handled.exists():
            return []
        return [json.loads(line) for line in self.handled.read_text().splitlines() if line]


def holdings(store, pids: set[int]) -> dict[int, list[str]]:  # type: ignore[no-untyped-def]
    """Sources held by each live worker process among *pids* (by its record)."""
    now = store.now()
    held: dict[int, list[str]] = {pid: [] for pid in pids}
    for info in read_workers(store):
        if info.alive(now) and info.pid in pids:
            held[info.pid] = sorted(info.held)
    return held


def wait_until_even(store, pids: set[int], sources: int, timeout: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds until every source is held once, by the live *pids*, in even shares."""
    started = time.monotonic()
    while True:
        held = holdings(store, pids)
        every = [source for sources_held in held.values() for source in sources_held]
        shares = [len(h) for h in held.values()]
        if len(every) == sources and len(set(every)) == sources and max(shares) - min(shares) <= 1:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not even after {timeout} s: {shares} of {sources}, {held}")
        time.sleep(0.1)


def test_workers_share_mailboxes_take_over_from_a_killed_one_and_handle_every_mail_once(
    shared, dovecot, tmp_path
):
    users = [dovecot.add_user() for _ in range(MAILBOXES)]
    workers = Workers(tmp_path, fleet_file(tmp_path, dovecot, users, shared.url))
    sent: list[tuple[str, str]] = []
    delivering = threading.Event()
    delivering.set()
    rng = random.Random(22)

    def deliver() -> None:
        n = 0
        while delivering.is_set():
            user = rng.choice(users)
            n += 1
            subject = f"fleet mail {n}"
            dovecot.save(user, f"Subject: {subject}\r\n\r\nbody {n}\r\n".encode())
            sent.append((user, subject))
            time.sleep(0.02)

    sender = threading.Thread(target=deliver, daemon=True)
    try:
        for _ in range(WORKERS):
            workers.start()
        pids = {p.pid for p in workers.alive()}
        assigned = wait_until_even(shared.store, pids, MAILBOXES, timeout=60)
        sender.start()

        joining = workers.start()  # a worker joins: the others hand sources over
        pids.add(joining.pid)
        rebalanced = wait_until_even(shared.store, pids, MAILBOXES, timeout=60)

        victim = next(p for p in workers.alive() if p is not joining)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed_at = time.monotonic()
        pids.discard(victim.pid)
        wait_until_even(shared.store, pids, MAILBOXES, timeout=60)
        taken_over = time.monotonic() - killed_at
        print(
            f"\n{shared.name}: {MAILBOXES} sources on {WORKERS} workers: assigned in "
            f"{assigned:.1f} s, rebalanced after a join in {rebalanced:.1f} s, taken over "
            f"after kill -9 in {taken_over:.1f} s (TTL {LEASE_TTL} s + heartbeat {HEARTBEAT} s)"
        )
        assert taken_over <= LEASE_TTL + HEARTBEAT + SLACK

        more = len(sent) + 20
        eventually(lambda: len(sent) >= more, timeout=30)  # more mail while the survivors work
        delivering.clear()
        sender.join()
        expected = Counter(subject for _, subject in sent)

        def all_handled() -> bool:
            return set(Counter(str(line["subject"]) for line in workers.lines())) >= set(expected)

        eventually(all_handled, timeout=60)  # else: some mail was never handled
    finally:
        delivering.clear()
        workers.stop_all()
    lines = workers.lines()
    handled = Counter(str(line["subject"]) for line in lines)
    assert set(handled) == set(expected), "no mail lost"
    doubled = {subject: n for subject, n in handled.items() if n > 1}
    assert not doubled, f"mail handled twice: {doubled}"
    # The fencing audit: per mailbox, each fencing token's work ends before a greater
    # token's begins; each token belongs to one process.
    by_source: dict[str, dict[int, list[tuple[float, int]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for line in lines:
        token = line["token"]
        assert isinstance(token, int), "every delivery carries its lease's fencing token"
        by_source[str(line["source"])][token].append((float(line["at"]), int(line["pid"])))  # type: ignore[arg-type]
    for source, tokens in by_source.items():
        spans = sorted(
            (min(t for t, _ in work), max(t for t, _ in work), token)
            for token, work in tokens.items()
        )
        for token, work in tokens.items():
            assert len({pid for _, pid in work}) == 1, f"{source}: token {token} in two processes"
        for (_, end, token), (start, _, later) in itertools.pairwise(spans):
            assert token < later, f"{source}: a smaller token began after a greater one"
            assert end <= start, f"{source}: tokens {token} and {later} worked it at once"
    print(f"{shared.name}: {len(lines)} mails handled once each over {len(by_source)} mailboxes")
