"""A listener against servers that leave mail out, refuse it, garble it or break mid-answer.

Each test runs a real ``ImapListener`` against ``mailtether.testing.ScriptedImapServer`` with
one fault turned on, and checks the promise: every mail handled once or held with a reason
naming it, the rest of the mailbox handled, nothing handled twice, and no more reconnects
than the fault explains.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator

import pytest

from helpers import eventually
from mailtether import (
    Delivery,
    DuplicateGuard,
    Fixed,
    ImapConnection,
    ImapListener,
    ImapSettings,
    Keepalive,
    MemoryStore,
)
from mailtether.testing import ScriptedImapServer

USER, PASSWORD = "someone", "a-long-secret"
FAST = Keepalive(noop_interval=5, idle_renewal=5, response_timeout=1)


def mail(n: int) -> bytes:
    return (
        f"From: a@example.com\r\nMessage-ID: <m{n}@example.com>\r\nSubject: mail {n}\r\n\r\n"
        f"the secret body of mail {n}\r\n"
    ).encode()


class Handled:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __call__(self, delivery: Delivery) -> None:
        self.calls[str(delivery.message["Subject"])] += 1


@pytest.fixture
def server() -> Iterator[ScriptedImapServer]:
    with ScriptedImapServer(user=USER, password=PASSWORD) as running:
        for n in range(1, 7):
            running.append(mail(n))
        yield running


def listen(server: ScriptedImapServer, handler: Handled, **kwargs) -> ImapListener:  # type: ignore[no-untyped-def]
    settings = ImapSettings(server.host, USER, PASSWORD, port=server.port, security="plain")
    kwargs.setdefault("store", MemoryStore())
    listener = ImapListener(
        settings,
        handler,
        keepalive=FAST,
        reconnect=Fixed(0.05),
        poll_interval=0.2,
        lease_ttl=None,
        heartbeat=None,
        on_poison="flag",
        **kwargs,
    )
    listener.run_in_thread()
    return listener


def everyone_but(bad: int) -> Counter[str]:
    return Counter({f"mail {n}": 1 for n in range(1, 7) if n != bad})


def held(listener: ImapListener) -> dict[int, str]:
    return {entry.key.uid or 0: entry.reason for entry in listener.guard.held()}


@pytest.mark.parametrize("fault", ["omit", "no", "parenthesis"])
def test_one_bad_mail_is_held_with_its_uid_and_the_rest_flows_on_one_connection(server, fault):
    if fault == "omit":
        server.omit_from_fetch(4)
    elif fault == "no":
        server.fetch_no(4)
    else:
        server.malformed_item(4, how="parenthesis")
    handler = Handled()
    listener = listen(server, handler, guard=None)
    try:
        eventually(lambda: 4 in held(listener))
        assert listener.wait_for_catch_ups(1, timeout=10)
        assert handler.calls == everyone_but(4), "nothing lost, nothing doubled"
        reason = held(listener)[4]
        assert "UID 4" in reason
        assert "secret body" not in reason, "the server's words, never the mail's"
        assert "\n" not in reason
        assert server.connections == 1, "a bad mail costs a failed attempt, not the connection"
        assert b"\\Flagged" in server.flags(4), "put aside"
        assert all(b"\\Seen" in server.flags(uid) for uid in (1, 2, 3, 5, 6))
    finally:
        listener.stop()


@pytest.mark.parametrize("fault", ["literal", "huge", "bye"])
def test_a_mail_that_breaks_the_connection_every_time_is_found_and_held(server, fault):
    if fault == "literal":
        server.malformed_item(4, how="literal")
    elif fault == "huge":
        server.huge_literal(4, then="close")
    else:
        server.bye_during_fetch(after_items=0, times=None)  # on every FETCH of a body...
    handler = Handled()
    guard = DuplicateGuard(MemoryStore(), max_failures=2)
    listener = listen(server, handler, guard=guard, store=guard.store)
    try:
        if fault == "bye":  # ... a server that never gives a body: every mail held, none lost
            eventually(lambda: len(held(listener)) == 6, timeout=30)
            assert handler.calls == Counter()
            assert server.connections <= 1 + 6 * 3, "one batch, then each mail alone twice"
            return
        eventually(lambda: 4 in held(listener), timeout=30)
        eventually(lambda: handler.calls == everyone_but(4))
        assert listener.wait_for_catch_ups(1, timeout=10)
        assert handler.calls == everyone_but(4)
        assert "UID 4 was being fetched, again" in held(listener)[4]
        assert server.connections <= 5, "the batch, then mail 4 alone twice, then the rest"
    finally:
        listener.stop()


def test_a_bye_in_the_middle_of_a_fetch_loses_and_doubles_nothing(server):
    server.bye_during_fetch(after_items=2, times=1)
    handler = Handled()
    listener = listen(server, handler)
    try:
        eventually(lambda: sum(handler.calls.values()) == 6)
        assert listener.wait_for_catch_ups(1, timeout=10)
        assert handler.calls == everyone_but(0)
        assert server.connections == 2
    finally:
        listener.stop()


def test_a_fetch_never_answered_is_a_dead_connection_replaced_in_time(server):
    server.never_answer("UID FETCH", times=1)
    handler = Handled()
    listener = listen(server, handler)
    try:
        eventually(lambda: sum(handler.calls.values()) == 6, timeout=15)
        assert handler.calls == everyone_but(0)
        assert server.connections == 2
    finally:
        listener.stop()


def test_a_new_uidvalidity_hands_nothing_out_again(server):
    handler = Handled()
    listener = listen(server, handler)
    try:
        eventually(lambda: sum(handler.calls.values()) == 6)
        server.change_uidvalidity(99)  # the same six mails, numbered again from 1
        server.append(mail(7))
        eventually(lambda: handler.calls["mail 7"] == 1, timeout=15)
        assert listener.wait_for_catch_ups(1, timeout=10)
        assert handler.calls == Counter({f"mail {n}": 1 for n in range(1, 8)})
    finally:
        listener.stop()


def test_a_flood_of_expunge_noise_changes_nothing(server):
    server.flood_expunge(2000)
    handler = Handled()
    listener = listen(server, handler)
    try:
        eventually(lambda: sum(handler.calls.values()) == 6)
        assert listener.wait_for_catch_ups(1, timeout=10)
        assert handler.calls == everyone_but(0)
    finally:
        listener.stop()


def test_a_literal_announced_as_two_gigabytes_is_refused_before_it_is_read(server):
    server.huge_literal(4, announced=2_000_000_000, then="stall")
    handler = Handled()
    guard = DuplicateGuard(MemoryStore(), max_failures=1)
    listener = listen(server, handler, guard=guard, store=guard.store)
    try:
        eventually(lambda: 4 in held(listener), timeout=30)
        eventually(lambda: handler.calls == everyone_but(4))
        # Refused on the announcement: not after a response timeout of waiting for 2 GB.
        assert "announced a literal of 2000000000 bytes" in held(listener)[4]
    finally:
        listener.stop()


CHILD = textwrap.dedent(
    """
    import sys
    from mailtether import Fixed, ImapListener, ImapSettings, MemoryStore

    seen = []
    listener = ImapListener(
        ImapSettings("127.0.0.1", "someone", "a-long-secret", port=int(sys.argv[1]),
                     security="plain"),
        lambda delivery: seen.append(len(delivery.raw)),
        store=MemoryStore(), lease_ttl=None, heartbeat=None, reconnect=Fixed(0.05),
    )
    assert listener.poll_once() == 4
    # VmHWM: this program's peak (ru_maxrss would count the parent's pages before exec).
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(int(peak.split()[1]) // 1024, len(seen))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_big_mails_are_fetched_within_the_byte_budget_in_bounded_memory():
    """Four 30 MB mails: fetched one at a time. Measured in a child process (the listener
    alone; the server and its 120 MB stay in this one)."""
    body = (b"x" * 998 + b"\r\n") * 30_000
    with ScriptedImapServer(user=USER, password=PASSWORD) as big:
        for n in range(1, 5):
            big.append(b"Subject: big %d\r\n\r\n" % n + body)
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(big.port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        fetches = [c for c in big.commands if "BODY" in c and "FETCH" in c]
    assert result.returncode == 0, result.stderr[-2000:]
    peak_mib, handled = map(int, result.stdout.split())
    assert handled == 4
    assert len(fetches) == 4, "one mail a fetch: each is past the 16 MiB budget"
    assert peak_mib < 150, f"peak RSS {peak_mib} MiB (all four at once would be over 150)"


def test_untagged_noise_is_not_kept_and_new_mail_in_it_is_not_missed(server):
    settings = ImapSettings(server.host, USER, PASSWORD, port=server.port, security="plain")
    with ImapConnection.open(settings, keepalive=FAST) as connection:
        client = connection.client
        server.flood_expunge(5000)
        connection.call("searching", client.search, ["ALL"])
        assert client._imap.untagged_responses == {}, "nothing kept after the command"
        server.append(mail(7))
        connection.call("searching", client.search, ["ALL"])  # its answer carries EXISTS
        changes = connection.wait(5)
        assert changes, "the EXISTS in another command's answer is a change for wait()"
        assert changes[0][1] == b"EXISTS"


@pytest.mark.parametrize(
    ("after", "store"),
    [("seen", "+FLAGS.SILENT (\\Seen)"), ("delete", "+FLAGS.SILENT (\\Deleted)")],
)
def test_the_mailbox_is_changed_with_silent_stores(server, after, store):
    """The server answers a silent STORE with OK alone, not a FETCH per mail to parse."""
    handler = Handled()
    listener = listen(server, handler, after=after)
    try:
        assert listener.wait_for_catch_ups(1, timeout=10)
        eventually(lambda: any(store in command for command in server.commands))
    finally:
        listener.stop()
    assert handler.calls == everyone_but(0)
    stores = [command for command in server.commands if " STORE " in f" {command}"]
    assert stores, server.commands
    assert all(".SILENT" in command for command in stores), stores


def test_answers_mixed_by_a_server_working_on_pipelined_commands_lose_nothing(monkeypatch):
    """A STORE sent behind a FETCH is answered amid the FETCH's items, or the other way."""
    import mailtether._pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "_FETCH_MOST", 10)
    with ScriptedImapServer(user=USER, password=PASSWORD) as server:
        for n in range(1, 41):
            server.append(mail(n))
        server.answer_out_of_order(wait=0.5)
        handler = Handled()
        # Batches of 10 on a connection whose STOREs go out while FETCHes are on their way.
        listener = listen(server, handler, guard=None)
        try:
            assert listener.wait_for_catch_ups(1, timeout=30)
        finally:
            listener.stop()
        assert handler.calls == Counter({f"mail {n}": 1 for n in range(1, 41)})
        assert all(b"\\Seen" in server.flags(uid) for uid in range(1, 41))
        assert held(listener) == {}
        assert server.connections == 1
        mixed = [c for c in server.commands if "STORE" in c or "FETCH" in c]
        assert any("STORE" in a and "BODY" in b for a, b in itertools.pairwise(mixed)), mixed
        fetches = [c for c in mixed if "BODY.PEEK" in c]
        assert len(fetches) == 4, "each batch asked for once: no answer was lost or misread"
