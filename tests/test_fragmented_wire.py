"""The listener through a path that splits every answer into pieces of 1 to 7 bytes.

What a long path, a small MTU or a TLS record boundary does to any line, with no fault at
all. imapclient's ``idle_check`` loses a line that arrives in pieces (issue #519), so every
IDLE push used to end the connection. The listener reads IDLE itself now: through the
fragmenting proxy it must lose nothing, double nothing and never reconnect.

``MAILTETHER_FULL=1`` runs the full size (200 mails); CI runs 30.
"""

from __future__ import annotations

import os
import threading
from collections import Counter

from helpers import Collector, eventually, flags_of
from mailtether import Fixed, ImapListener, ImapSettings, Keepalive, MemoryStore, Pop3Poller
from mailtether.testing import FaultProxy

MAILS = 200 if os.environ.get("MAILTETHER_FULL") else 30


def mail(n: int) -> bytes:
    return (
        f"From: a@example.com\r\nMessage-ID: <frag{n}@x>\r\nSubject: mail {n}\r\n\r\nbody {n}\r\n"
    ).encode()


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
