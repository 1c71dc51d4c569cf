"""Small helpers shared by the listener and poller integration tests."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from mailtether import Delivery, ImapSettings, SourceState


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


def state_of(source) -> SourceState | None:  # type: ignore[no-untyped-def]
    """The state a listener or poller shows on its status board (None before its first)."""
    status = source.status.get(source.name)
    return None if status is None else status.state


def survives_a_server_restart(  # type: ignore[no-untyped-def]
    source, server, deliver: Callable[[], object], handled: Callable[[], bool]
) -> None:
    """The server stops: *source* goes RETRYING; it comes back: new mail is handled."""
    eventually(lambda: state_of(source) is SourceState.ONLINE)
    server.stop(remove=False)
    try:
        eventually(lambda: state_of(source) is SourceState.RETRYING)
    finally:
        server.start()
    deliver()
    eventually(handled)
    eventually(lambda: state_of(source) is SourceState.ONLINE)


def settings_for(mailbox, port: int | None = None, **options) -> ImapSettings:  # type: ignore[no-untyped-def]
    """The test mailbox's IMAP settings, in plain text (*port*: a FaultProxy's, POP3's)."""
    return ImapSettings(
        "127.0.0.1",
        mailbox.user,
        mailbox.password,
        port=port or mailbox.server.imap_port,
        security="plain",
        **options,
    )
