"""The listener and the poller through a path that splits everything into pieces of 1-7 bytes.

What a long path, a small MTU or a TLS record boundary does to any line, with no fault at
all. imapclient's ``idle_check`` loses a line that arrives in pieces (issue #519), so every
IDLE push used to end the connection. The listener reads IDLE itself now: through the
fragmenting proxy it must lose nothing, double nothing and never reconnect. The same holds
for the POP3 poller's sessions (UIDL, LIST, RETR, DELE, QUIT), one connection a poll.

``MAILTETHER_FULL=1`` runs the full sizes (200, 60 and 100 mails); CI runs 30, 12 and 15.
"""

from __future__ import annotations

import os
import threading
from collections import Counter

from helpers import Collector, eventually, flags_of
from mailtether import (
    Delivery,
    Fixed,
    ImapListener,
    ImapSettings,
    Keepalive,
    MemoryStore,
    Pop3Poller,
    SourceState,
    StatusBoard,
    StatusChange,
)
from mailtether.testing import FaultProxy

FULL = bool(os.environ.get("MAILTETHER_FULL"))
MAILS = 200 if FULL else 30
MOVED = 60 if FULL else 12  # the listener that moves mail, one of them failing once
POLLED = 100 if FULL else 15  # the running poller


def mail(n: int) -> bytes:
    return (
        f"From: a@example.com\r\nMessage-ID: <frag{n}@x>\r\nSubject: mail {n}\r\n\r\nbody {n}\r\n"
    ).encode()


class FailsOnce(Collector):
    """Records the subjects it handled; its first attempt at *subject* fails (then it works)."""

    def __init__(self, subject: str) -> None:
        super().__init__()
        self.subject = subject
        self.failures = 0

    def __call__(self, delivery: Delivery) -> None:
        with self.lock:
            fail = str(delivery.message["Subject"]) == self.subject and not self.failures
            if fail:
                self.failures += 1
        if fail:
            raise RuntimeError("the archive is busy")
        super().__call__(delivery)


def recording_status(store: MemoryStore) -> tuple[StatusBoard, list[StatusChange]]:
    """A status board that keeps every state change (none held back) in the list it returns."""
    changes: list[StatusChange] = []
    return StatusBoard(store, notifiers=[changes.append], quiet_period=0), changes


def in_folder(mailbox, folder: str) -> int:  # type: ignore[no-untyped-def]
    """How many mails *folder* holds (read-only: nothing changes)."""
    client = mailbox.client()
    try:
        client.select_folder(folder, readonly=True)
        return len(client.search(["ALL"]))
    finally:
        client.logout()


def test_idle_pushes_through_a_fragmenting_path_cost_no_reconnect(mailbox):
    handler = Collector()
    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as proxy:
        proxy.fragment(1, 7, gap=0.003, direction="both", seed=519)
        listener = ImapListener(
            ImapSettings(
                "127.0.0.1", mailbox.user, mailbox.password, port=proxy.port, security="plain"
            ),
            handler,
            store=MemoryStore(),
            keepalive=Keepalive(noop_interval=30, idle_renewal=30, response_timeout=5),
            reconnect=Fixed(0.1),
            poll_interval=600,  # only IDLE pushes bring the mail in
            lease_ttl=None,
            heartbeat=None,
        )
        listener.run_in_thread()
        try:
            assert listener.wait_for_catch_ups(1, timeout=20)
            other = mailbox.client()
            other.select_folder("INBOX")
            stop_toggling = threading.Event()

            def toggle_flags() -> None:  # FETCH pushes during IDLE, from another connection
                toggler = mailbox.client()
                toggler.select_folder("INBOX")
                while not stop_toggling.wait(0.05):
                    uids = toggler.search(["ALL"])
                    if uids:
                        toggler.add_flags(uids[-1:], [b"$Toggled"])
                        toggler.remove_flags(uids[-1:], [b"$Toggled"])
                toggler.logout()

            toggler = threading.Thread(target=toggle_flags, daemon=True)
            toggler.start()
            for n in range(1, MAILS + 1):
                other.append("INBOX", mail(n))
                if n % 5 == 0:  # in bursts, each seen by an IDLE push
                    eventually(lambda n=n: len(handler.handled) >= n)
            eventually(lambda: len(handler.handled) >= MAILS)
            stop_toggling.set()
            toggler.join(10)
            other.logout()
            eventually(lambda: sum(b"\\Seen" in f for f in flags_of(mailbox).values()) == MAILS)
            assert handler.count() == Counter({f"mail {n}": 1 for n in range(1, MAILS + 1)})
            assert proxy.accepted == 1, "no reconnect: a split line is not a broken connection"
        finally:
            listener.stop()


def test_the_poller_through_a_fragmenting_path_needs_one_session_a_poll(mailbox):
    for n in range(1, 11):
        mailbox.append(mail(n))
    handler = Collector()
    with FaultProxy(("127.0.0.1", mailbox.server.pop3_port)) as proxy:
        proxy.fragment(1, 7, gap=0.002, direction="both", seed=464)
        poller = Pop3Poller(
            ImapSettings(
                "127.0.0.1", mailbox.user, mailbox.password, port=proxy.port, security="plain"
            ),
            handler,
            store=MemoryStore(),
            lease_ttl=None,
            heartbeat=None,
        )
        assert poller.poll_once() == 10
        assert proxy.accepted == 1
    assert handler.count() == Counter({f"mail {n}": 1 for n in range(1, 11)})


def test_moving_and_a_retry_through_a_fragmenting_path_cost_no_reconnect(mailbox):
    """MOVE (its EXPUNGE answers in pieces), a failed mail tried again, IDLE left every poll."""
    creator = mailbox.client()
    creator.create_folder("Done")
    creator.logout()
    store = MemoryStore()
    status, changes = recording_status(store)
    handler = FailsOnce("mail 3")
    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as proxy:
        proxy.fragment(1, 7, gap=0.003, direction="both", seed=6851)
        listener = ImapListener(
            ImapSettings(
                "127.0.0.1", mailbox.user, mailbox.password, port=proxy.port, security="plain"
            ),
            handler,
            store=store,
            status=status,
            after="move:Done",
            keepalive=Keepalive(noop_interval=30, idle_renewal=30, response_timeout=5),
            reconnect=Fixed(0.1),
            poll_interval=0.5,  # IDLE is left (DONE) and the folder looked at twice a second
            lease_ttl=None,
            heartbeat=None,
        )
        listener.run_in_thread()
        try:
            assert listener.wait_for_catch_ups(1, timeout=20)
            for n in range(1, MOVED + 1):
                mailbox.append(mail(n))
                if n % 4 == 0:
                    eventually(lambda n=n: len(handler.handled) >= n)
            eventually(lambda: len(handler.handled) >= MOVED)
            eventually(lambda: in_folder(mailbox, "Done") == MOVED)
            assert in_folder(mailbox, "INBOX") == 0
            assert handler.failures == 1, "mail 3 failed once, and was tried again"
            assert handler.count() == Counter({f"mail {n}": 1 for n in range(1, MOVED + 1)})
            assert proxy.accepted == 1, "no reconnect: a split line is not a broken connection"
            assert [change.current.state for change in changes] == [SourceState.ONLINE]
        finally:
            listener.stop()


def test_the_running_poller_through_a_fragmenting_path_never_reconnects(mailbox):
    """Polls in a thread: mail arriving between polls, one failing once, DELE and QUIT in pieces.

    The poller opens one connection a poll, so "no reconnect" is: no state but ONLINE (a
    session that broke anywhere, QUIT included, is RETRYING), and as many connections as
    catch-ups.
    """
    for n in range(1, 6):
        mailbox.append(mail(n))
    store = MemoryStore()
    status, changes = recording_status(store)
    handler = FailsOnce("mail 2")
    with FaultProxy(("127.0.0.1", mailbox.server.pop3_port)) as proxy:
        proxy.fragment(1, 7, gap=0.002, direction="both", seed=1939)
        poller = Pop3Poller(
            ImapSettings(
                "127.0.0.1", mailbox.user, mailbox.password, port=proxy.port, security="plain"
            ),
            handler,
            store=store,
            status=status,
            reconnect=Fixed(0.1),
            poll_interval=0.2,
            timeout=5,
            lease_ttl=None,
            heartbeat=None,
        )
        thread = poller.run_in_thread()
        try:
            eventually(lambda: len(handler.handled) >= 5)  # mail 2 on the poll after its failure
            for n in range(6, POLLED + 1):
                mailbox.append(mail(n))
                if n % 4 == 0:  # a few at a time, over several polls
                    eventually(lambda n=n: len(handler.handled) >= n)
            eventually(lambda: len(handler.handled) >= POLLED)
            eventually(lambda: in_folder(mailbox, "INBOX") == 0)  # deleted, each after its QUIT
        finally:
            poller.stop()
        assert not thread.is_alive()
    assert handler.failures == 1, "mail 2 failed once, and was tried again"
    assert handler.count() == Counter({f"mail {n}": 1 for n in range(1, POLLED + 1)})
    assert [change.current.state for change in changes] == [SourceState.ONLINE]
    assert poller.catch_ups >= 3, "several polls, each its own session"
    # A poll that broke before its catch-up ended would have cost a second connection.
    assert proxy.accepted == poller.catch_ups, "one connection a poll"
