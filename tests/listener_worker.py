"""A listener process that dies on one mail; run by tests/test_listener_batches.py.

Usage: listener_worker.py HOST PORT USER PASSWORD DB OUT KILLER COMMIT_WINDOW CLOCK_OFFSET
[BATCH BEHIND]

It runs ``ImapListener.poll_once`` once, appending each handled subject to OUT, and exits
the hard way (``os._exit``, no clean-up, as kill -9 or a crash in C code would) when it is
handed the mail whose subject is KILLER. The store's clock runs CLOCK_OFFSET seconds ahead,
so claims a previous run left behind are already expired without waiting for them. BATCH:
the most mails a fetch asks for; BEHIND ``1``: the store is treated as one that writes in
parallel, so a batch's outcomes are recorded behind while the next one is handled.
"""

from __future__ import annotations

import os
import sys

from mailtether import Delivery, DuplicateGuard, ImapListener, ImapSettings, SQLiteStore
from mailtether.testing import FakeClock


def main() -> None:
    host, port, user, password, db, out, killer, window, offset = sys.argv[1:10]
    batch, behind = [*sys.argv[10:], "", ""][:2]
    import time

    import mailtether._pipeline as pipeline

    if batch:
        pipeline._FETCH_MOST = int(batch)  # type: ignore[misc]
    clock = FakeClock(wall=time.time() + float(offset))
    store = SQLiteStore(db, clock=clock)
    if behind == "1":
        store._parallel_writes = True  # type: ignore[attr-defined]

    def handler(delivery: Delivery) -> None:
        subject = str(delivery.message["Subject"])
        with open(out, "a") as handle:
            handle.write(subject + "\n")
        if subject == killer:
            os._exit(3)

    listener = ImapListener(
        ImapSettings(host, user, password, port=int(port), security="plain"),
        handler,
        store=store,
        guard=DuplicateGuard(store, max_failures=3, claim_ttl=60),
        lease_ttl=None,
        commit_window=float(window),
    )
    listener.poll_once()
    store.close()


if __name__ == "__main__":
    main()
