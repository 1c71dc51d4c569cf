"""A listener process that writes every notification it is given to a file.

Usage: notify_worker.py HOST PORT USER PASSWORD DB OUT

Run by tests/test_notifications_processes.py: two of these, one after the other (the first
killed in an outage), tell a person of the outage once and of its end once, between them.
"""

from __future__ import annotations

import sys
import threading

from mailtether import (
    Fixed,
    ImapListener,
    ImapSettings,
    Keepalive,
    SQLiteStore,
    StatusBoard,
    StatusChange,
)


def main() -> None:
    host, port, user, password, db, out = sys.argv[1:]
    store = SQLiteStore(db)

    def tell(change: StatusChange) -> None:
        with open(out, "a") as handle:
            handle.write(change.sentence() + "\n")

    listener = ImapListener(
        ImapSettings(host, user, password, port=int(port), security="plain", connect_timeout=1),
        lambda delivery: None,
        store=store,
        status=StatusBoard(store, notifiers=[tell]),
        keepalive=Keepalive(noop_interval=1, idle_renewal=1, response_timeout=1),
        reconnect=Fixed(0.2),
        lease_ttl=1.5,
        poll_interval=0.5,
        name="support",
    )
    listener.run_in_thread()
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main()
