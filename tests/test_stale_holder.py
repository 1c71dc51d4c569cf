"""A lease holder paused past its TTL (SIGSTOP, a long GC, a VM migration) and then resumed.

It must hand out nothing more once it wakes up, and every mail must end up handled once and
marked, whoever handled it: the fresh holder finishes what the stale one left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from helpers import Collector, eventually, flags_of
from mailtether import ImapListener, ImapSettings, Keepalive, SQLiteStore

WORKER = Path(__file__).parent / "paused_worker.py"
MAILS = 6


def mail(n: int) -> bytes:
    head = f"From: a@example.com\r\nMessage-ID: <stale{n}@x>\r\nSubject: mail {n}\r\n"
    return (head + "\r\nb\r\n").encode()


def stopped(pid: int) -> bool:
    """Whether process *pid* is stopped (state ``T`` in ``/proc/PID/stat``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_holder_paused_past_its_lease_hands_out_nothing_more(mailbox, tmp_path):
    for n in range(1, MAILS + 1):
        mailbox.append(mail(n))
    db, out = tmp_path / "state.db", tmp_path / "handled.txt"
    server = mailbox.server
    stale = subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            "127.0.0.1",
            str(server.imap_port),
            mailbox.user,
            mailbox.password,
            str(db),
            str(out),
        ]
    )
    fresh = None
    try:
        eventually(lambda: sum(line.startswith("end ") for line in lines(out)) >= 2)
        os.kill(stale.pid, signal.SIGSTOP)
        # The signal stops the process soon, not at once: what it wrote is read once it has
        # stopped (else a mail it began just after the kill is missed here, and then the
        # fresh holder never gets it: the stale one handles it on waking).
        eventually(lambda: stopped(stale.pid))
        started_before_the_pause = [line for line in lines(out) if line.startswith("start ")]
        time.sleep(1.5)  # the injected fault: paused past its 1 s lease

        handler = Collector()
        store = SQLiteStore(db)
        fresh = ImapListener(
            ImapSettings(
                "127.0.0.1", mailbox.user, mailbox.password, port=server.imap_port, security="plain"
            ),
            handler,
            store=store,
            keepalive=Keepalive(noop_interval=1, idle_renewal=1, response_timeout=1),
            lease_ttl=1.0,
            poll_interval=0.3,
            name="shared",
        )
        fresh.run_in_thread()
        # The fresh holder takes the mailbox; the mails the stale one claimed stay its own
        # (it may be in the middle of one) until it gives them back or its claims expire.
        assert fresh.wait_for_catch_ups(2, timeout=20)
        stale_subjects = [" ".join(line.split()[1:3]) for line in started_before_the_pause]

        os.kill(stale.pid, signal.SIGCONT)  # it wakes up, believing it still holds the mailbox
        eventually(lambda: len(handler.handled) + len(stale_subjects) >= MAILS, timeout=20)
        eventually(lambda: all(b"\\Seen" in f for f in flags_of(mailbox).values()), timeout=20)

        started = [line for line in lines(out) if line.startswith("start ")]
        assert started == started_before_the_pause, "no handler call after the loss"
        everyone = Counter(handler.handled) + Counter(stale_subjects)
        assert everyone == Counter({f"mail {n}": 1 for n in range(1, MAILS + 1)})
        tokens = {int(line.split()[3]) for line in started}
        assert len(tokens) == 1, "the stale holder's deliveries carry its own token"
    finally:
        for process in (stale,):
            process.kill()
            process.wait()
        if fresh is not None:
            fresh.stop()
