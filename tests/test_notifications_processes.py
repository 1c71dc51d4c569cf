"""What a person is told across processes (issue 20): one outage, told once, its end once.

A listener process is killed during an outage of its server; another takes the mailbox over
and sees the outage end. Between them, the notifiers hear "retrying" once and "online again
after N s" once — the second process knows the outage from the store, not from its memory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import eventually
from mailtether import SourceState, SQLiteStore, StatusBoard
from mailtether.testing import FaultProxy

WORKER = Path(__file__).with_name("notify_worker.py")


def test_an_outage_across_two_processes_is_told_once_and_its_end_once(mailbox, tmp_path):
    db, told = tmp_path / "state.db", tmp_path / "told.txt"
    store = SQLiteStore(db)
    board = StatusBoard(store, notifiers=[])

    def state() -> SourceState | None:
        status = board.get("support")
        return None if status is None else status.state

    def start(port: int) -> subprocess.Popen[bytes]:
        args = ["127.0.0.1", str(port), mailbox.user, mailbox.password, str(db), str(told)]
        return subprocess.Popen([sys.executable, str(WORKER), *args])

    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as proxy:
        first = start(proxy.port)
        try:
            eventually(lambda: state() is SourceState.ONLINE)
            proxy.refuse_new()
            proxy.reset_all()  # the server is gone: an outage
            eventually(lambda: state() is SourceState.RETRYING)
        finally:
            first.kill()  # kill -9 in the middle of the outage
            first.wait()
        tried = board.get("support").reconnects
        second = start(proxy.port)  # takes over once the first's lease runs out
        try:
            eventually(lambda: board.get("support").reconnects > tried)  # it tried, in vain
            proxy.pass_through()  # the outage ends
            eventually(lambda: state() is SourceState.ONLINE)
            eventually(lambda: "online again" in told.read_text())
        finally:
            second.kill()
            second.wait()
    store.close()
    lines = told.read_text().splitlines()
    assert len(lines) == 3, lines
    assert lines[0] == "support is online"
    assert lines[1].startswith("support is retrying (was online): ")
    assert lines[2].startswith("support is online again after ")
    assert lines[2].endswith(" (was retrying)"), "the second process knew the outage"
