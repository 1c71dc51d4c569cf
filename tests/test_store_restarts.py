"""The state store (Redis, PostgreSQL) stopped and started again under a running source.

A real server, really stopped and started again, under a running ``ImapListener`` and a
running ``Pop3Poller`` against Dovecot: the source's thread lives through the outage, nothing
is handed out or changed in the mailbox while the store is down, the mail that came meanwhile
is handled exactly once when the store is back (and marked seen, or deleted, only after its
outcome is recorded), and the source is ONLINE again by itself, on the same thread.

Both servers keep their data over the restart, as a production store must for "handled
once" to mean anything: PostgreSQL always does; the test Redis runs without persistence, and
its ``stop(remove=False)`` saves first (``SHUTDOWN SAVE``), as a Redis with RDB or AOF
persistence does on a clean restart. (A Redis restarted without persistence comes back
empty: the guard and the cursor are gone, and mail still in the mailbox is handed out again.
No library can tell "handled" from "never seen" on a wiped store.)
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import eventually
from mailtether import (
    Delivery,
    Fixed,
    GuardState,
    ImapListener,
    ImapSettings,
    Keepalive,
    MemoryStore,
    Pop3Poller,
    SourceState,
    SourceStatus,
    StatusBoard,
    Store,
    Write,
    store_from_url,
)

FAST = Keepalive(noop_interval=1, idle_renewal=1, response_timeout=1)
UNREACHABLE = "the state store is unreachable"


@pytest.fixture(params=["redis", "postgres"])
def remote(request: pytest.FixtureRequest) -> Iterator[tuple[Any, str]]:
    """(the session's Redis or PostgreSQL server, a URL with a fresh prefix).

    The server runs again after the test, whatever happened in it.
    """
    prefix = f"r{uuid.uuid4().hex[:10]}"
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        url = f"{server.url}?prefix={prefix}"
    else:
        server = request.getfixturevalue("postgres_server")
        url = f"{server.dsn}?table_prefix={prefix}"
    yield server, url
    if server.process is None:
        server.start()


@pytest.fixture
def store(remote) -> Iterator[Store]:  # type: ignore[no-untyped-def]
    _server, url = remote
    opened = store_from_url(url)
    yield opened
    opened.close()


def mail(n: int) -> tuple[str, bytes]:
    """(its Message-ID, the raw mail)."""
    message_id = f"<r{n}-{uuid.uuid4().hex}@example.com>"
    raw = (
        f"From: sender@example.com\r\nTo: support@example.com\r\nMessage-ID: {message_id}\r\n"
        f"Subject: mail {n}\r\n\r\nbody {n}\r\n"
    ).encode()
    return message_id, raw


class Handler:
    """Counts its calls per Message-ID, and remembers which guard key carried which."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.message_id_of: dict[str, str] = {}
        self.lock = threading.Lock()

    def __call__(self, delivery: Delivery) -> None:
        message_id = str(delivery.message["Message-ID"])
        with self.lock:
            self.calls[message_id] += 1
            self.message_id_of[delivery.key.id] = message_id

    def count(self) -> Counter[str]:
        with self.lock:
            return Counter(self.calls)


def in_mailbox(mailbox) -> dict[str, bool]:  # type: ignore[no-untyped-def]
    """Message-ID -> seen, of every mail in INBOX (over a read-only connection of our own)."""
    client = mailbox.client()
    try:
        client.select_folder("INBOX", readonly=True)
        fetched = client.fetch(
            client.search(["ALL"]), ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]
        )
    finally:
        client.logout()
    return {
        data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].decode().split(":", 1)[1].strip(): (
            b"\\Seen" in data[b"FLAGS"]
        )
        for data in fetched.values()
    }


class StatusLog(StatusBoard):
    """A status board that keeps every status it wrote, in order."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, notifiers=[])
        self.written: list[SourceStatus] = []

    def set(self, source: str, state: SourceState, **fields: Any) -> SourceStatus:
        status = super().set(source, state, **fields)
        self.written.append(status)
        return status


def start(kind: str, mailbox, store: Store, status: StatusBoard, handler=None, every=0.2):  # type: ignore[no-untyped-def]
    """A running ImapListener or Pop3Poller on *mailbox*, reconnecting every *every* s."""
    settings = ImapSettings(
        "127.0.0.1",
        mailbox.user,
        mailbox.password,
        port=mailbox.server.imap_port if kind == "imap" else mailbox.server.pop3_port,
        security="plain",
        connect_timeout=2,
    )
    common: dict[str, Any] = {
        "store": store,
        "status": status,
        "reconnect": Fixed(every),
        "poll_interval": 0.3,
        "heartbeat": None,
    }
    handler = handler or Handler()
    if kind == "imap":
        source = ImapListener(settings, handler, keepalive=FAST, lease_ttl=1.0, **common)
    else:
        source = Pop3Poller(settings, handler, timeout=2, **common)
    return source, source.run_in_thread()


def retries(caplog: pytest.LogCaptureFixture) -> int:
    """Reconnect attempts the source logged for an unreachable store."""
    return sum(
        "reconnect attempt" in message and UNREACHABLE in message
        for message in (record.getMessage() for record in list(caplog.records))
    )


def unsaved(caplog: pytest.LogCaptureFixture) -> int:
    """Status writes the source logged as not saved: each is followed by its reconnect wait."""
    return sum("RETRYING (not saved: " in record.getMessage() for record in list(caplog.records))


def outage(kind, server, mailbox, store, status, caplog, every=0.2, times=3):  # type: ignore[no-untyped-def]
    """Start a source, stop the store under it, wait until it retried *times*; the source."""
    caplog.set_level(logging.INFO, logger="mailtether")
    source, thread = start(kind, mailbox, store, status, every=every)
    eventually(lambda: source.catch_ups >= 1)
    server.stop(remove=False)
    try:
        eventually(lambda: retries(caplog) >= times)
        assert thread.is_alive()
    except BaseException:
        source.stop()
        raise
    return source


@pytest.mark.parametrize("kind", ["imap", "pop3"])
def test_mail_that_came_while_the_store_was_down_is_handled_once_after(
    remote, store, mailbox, kind, caplog
):
    server, url = remote
    caplog.set_level(logging.INFO, logger="mailtether")
    handler = Handler()
    changed_too_early: list[str] = []
    looked: list[int] = []  # mails recorded done, by write: the check ran
    guard_writes = store.put_many

    def put_many(writes):  # type: ignore[no-untyped-def]
        """The store's; right after mail is recorded done, is it still unchanged?"""
        writes = list(writes)
        results = guard_writes(writes)
        check(writes, results)
        return results

    def check(writes, results):  # type: ignore[no-untyped-def]
        recorded = [
            handler.message_id_of.get(write.key, write.key)
            for write, result in zip(writes, results, strict=True)
            if write.namespace == source.guard.namespace and write.state == GuardState.DONE
            if result is not None
        ]
        if recorded:
            try:
                now = in_mailbox(mailbox)
            except Exception as error:  # said in the test's failure, not in the listener's
                changed_too_early.append(f"(could not look: {error!r})")
            else:
                changed_too_early.extend(m for m in recorded if m not in now or now[m])
            looked.append(len(recorded))

    store.put_many = put_many  # type: ignore[method-assign]
    if hasattr(store, "put_rows"):  # the guard's batches go this way (RowWrites)
        row_writes = store.put_rows

        def put_rows(rows):  # type: ignore[no-untyped-def]
            rows = list(rows)
            versions = row_writes(rows)
            check([Write(*row) for row in rows], versions)
            return versions

        store.put_rows = put_rows  # type: ignore[method-assign]
    status = StatusLog(store)
    first, raw = mail(1)
    mailbox.save(raw)
    source, thread = start(kind, mailbox, store, status, handler)
    try:
        eventually(lambda: handler.count()[first] == 1)
        assert source.wait_for_catch_ups(1, timeout=10)
        assert status.written[-1].state is SourceState.ONLINE

        server.stop(remove=False)
        during = []
        for n in (2, 3, 4):
            message_id, raw = mail(n)
            during.append(message_id)
            mailbox.save(raw)
        eventually(lambda: retries(caplog) >= 3)  # it noticed, and keeps trying
        catch_ups, written = source.catch_ups, len(status.written)
        assert thread.is_alive()
        assert handler.count() == Counter({first: 1}), "nothing is handed out"
        now = in_mailbox(mailbox)
        assert all(now.get(m) is False for m in during), "nothing is marked or deleted"
        assert len(status.written) == written, "no status can be written"

        server.start()
        eventually(lambda: all(handler.count()[m] == 1 for m in during))
        assert source.wait_for_catch_ups(2, timeout=10)  # and nothing comes again after
        assert thread.is_alive()  # the listener was never restarted: it recovered by itself
    finally:
        source.stop()
    assert handler.count() == Counter(dict.fromkeys([first, *during], 1))
    assert changed_too_early == []
    assert sum(looked) == 4, "every mail recorded done was looked at"
    now = in_mailbox(mailbox)
    if kind == "imap":
        assert now == dict.fromkeys([first, *during], True)
    else:
        assert now == {}
    # The first status it could write again says how long (and why) none could be saved.
    assert source.catch_ups > catch_ups
    back = status.written[written:]
    assert re.search(r"\(status could not be saved for \d+ s: StoreError: ", back[0].reason)
    assert back[-1].state is SourceState.ONLINE
    reader = store_from_url(url)  # a connection opened after the restart
    try:
        assert StatusBoard(reader).get(source.name).state is SourceState.ONLINE
    finally:
        reader.close()


@pytest.mark.parametrize("kind", ["imap", "pop3"])
def test_a_status_board_kept_elsewhere_shows_the_outage_as_retrying(
    remote, store, mailbox, kind, caplog
):
    """The in-memory view: a board the outage does not reach sees it as it happens."""
    server, _url = remote
    status = StatusBoard(MemoryStore(), notifiers=[])
    source = outage(kind, server, mailbox, store, status, caplog)
    try:
        eventually(lambda: status.get(source.name).state is SourceState.RETRYING)
        assert status.get(source.name).reason.startswith(f"{UNREACHABLE}: ")
        server.start()
        eventually(lambda: status.get(source.name).state is SourceState.ONLINE)
    finally:
        source.stop()


@pytest.mark.parametrize("kind", ["imap", "pop3"])
def test_the_status_the_store_missed_is_written_once_it_is_back(
    remote, store, mailbox, kind, caplog
):
    """The board in the store itself cannot take RETRYING while it is down: it must later,
    so that the board (and its notifiers) show the outage."""
    server, _url = remote
    status = StatusLog(store)
    # Restarted while the source waits out a 1 s reconnect delay: no call of it sees the
    # store come back half-way (a call failing just before a write that works would write a
    # RETRYING by chance, not because the missed status is written).
    source = outage(kind, server, mailbox, store, status, caplog, every=1.0, times=1)
    written = len(status.written)
    try:
        waits = unsaved(caplog)
        eventually(lambda: unsaved(caplog) > waits)  # it has just begun a reconnect wait
        catch_ups = source.catch_ups
        server.start()
        eventually(lambda: source.catch_ups > catch_ups)
    finally:
        source.stop()
    back = status.written[written:]
    missed = [s for s in back if s.state is SourceState.RETRYING]
    assert missed, f"written after the restart: {[(s.state.name, s.reason) for s in back]}"
    assert missed[0].reason.startswith(f"{UNREACHABLE}: ")
    assert "(status could not be saved for " in missed[0].reason
    assert back[-1].state is SourceState.ONLINE
