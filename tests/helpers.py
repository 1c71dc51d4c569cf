"""Small helpers shared by the listener and poller integration tests."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from mailtether import Delivery


class Collector:
    """A handler that records the subjects it handled, and can be told to fail on some."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.handled: list[str] = []
        self.lock = threading.Lock()
        self.fail_on = fail_on

    def __call__(self, delivery: Delivery) -> None:
        subject = str(delivery.message["Subject"])
        if self.fail_on and self.fail_on in subject:
            raise ValueError(f"cannot handle {subject}")
        with self.lock:
            self.handled.append(subject)

    def count(self) -> Counter[str]:
        with self.lock:
            return Counter(self.handled)


def eventually(condition: Callable[[], object], timeout: float = 20.0) -> None:
    """Wait for a background thread to get there (real network time, bounded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def flags_of(mailbox) -> dict[int, tuple[bytes, ...]]:  # type: ignore[no-untyped-def]
    """The flags of every mail in the mailbox's INBOX, by UID (read-only: nothing changes)."""
    client = mailbox.client()
    client.select_folder("INBOX", readonly=True)
    flags = client.get_flags(client.search(["ALL"]))
    client.logout()
    return dict(flags)
