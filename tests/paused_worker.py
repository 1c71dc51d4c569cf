"""A listener process that a test pauses (SIGSTOP) past its lease; run by test_stale_holder.py.

Usage: paused_worker.py HOST PORT USER PASSWORD DB OUT

It runs an ``ImapListener`` (lease TTL 1 s, name "shared") until killed. Its handler writes
"start SUBJECT TOKEN" to OUT when it begins a mail and "end SUBJECT" when it is done, taking
0.3 s per mail, so the test can pause it in the middle of its work.
"""

from __future__ import annotations

import sys
import threading
import time

from mailtether import Delivery, ImapListener, ImapSettings, Keepalive, SQLiteStore


def main() -> None:
    host, port, user, password, db, out = sys.argv[1:]

    def handler(delivery: Delivery) -> None:
        subject = str(delivery.message["Subject"])
        with open(out, "a") as handle:
            handle.write(f"start {subject} {delivery.token}\n")
        time.sleep(0.3)  # the work the test pauses the process in the middle of
        with open(out, "a") as handle:
            handle.write(f"end {subject}\n")

    listener = ImapListener(
        ImapSettings(host, user, password, port=int(port), security="plain"),
        handler,
        store=SQLiteStore(db),
        keepalive=Keepalive(noop_interval=1, idle_renewal=1, response_timeout=1),
        lease_ttl=1.0,
        poll_interval=0.3,
        name="shared",
    )
    listener.run_in_thread()
    threading.Event().wait()


if __name__ == "__main__":
    main()
