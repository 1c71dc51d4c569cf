"""PostgresStore's started writes: sent now, answered later, exactly as ``put`` would write.

The outbox sends a mail's outcome before the relay answers the next mail's ``MAIL FROM`` and
reads the answer before that mail's content (``_outbox_handoff``). These tests hold the store
side to ``put``'s contract on a real PostgreSQL: the same records, the same refusals, the
same errors (without the DSN or the password), the connection back in the pool, and a
silent server a StoreError within the deadline, not a hang.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from mailtether import PostgresStore, StoreError
from mailtether.stores._postgres_started import dollar_marks
from mailtether.stores._protocol import Write
from mailtether.stores._shared import put_started
from mailtether.testing import FaultProxy


@pytest.fixture
def url(postgres_server) -> str:  # type: ignore[no-untyped-def]
    return f"{postgres_server.dsn}?table_prefix=s{uuid.uuid4().hex[:10]}"


def test_a_started_write_gives_what_put_gives(url):
    store = PostgresStore(url)
    try:
        # Create-only: once, then refused.
        created = put_started(store, Write("outgoing", "m1", "queued", {"n": 1}, expect=0))()
        assert created is not None
        assert (created.state, created.version, created.data) == ("queued", 1, {"n": 1})
        assert put_started(store, Write("outgoing", "m1", "queued", {}, expect=0))() is None
        # Compare-and-set: the right version writes, a stale one is refused.
        updated = put_started(store, Write("outgoing", "m1", "sent", {"n": 2}, expect=1))()
        assert updated is not None
        assert (updated.state, updated.version) == ("sent", 2)
        assert put_started(store, Write("outgoing", "m1", "failed", {}, expect=1))() is None
        # Unconditional: a new key and an existing one.
        assert put_started(store, Write("outgoing", "m2", "queued", {"é": "ü"}))() is not None
        upserted = put_started(store, Write("outgoing", "m1", "held", {"n": 3}))()
        assert upserted is not None
        assert upserted.version == 3
        # What a reader sees is what the answers said, to the version and the time.
        stored = store.get("outgoing", "m1")
        assert stored == upserted
        assert store.get("outgoing", "m2").data == {"é": "ü"}  # type: ignore[union-attr]
    finally:
        store.close()


def test_a_started_write_is_on_the_server_before_its_answer_is_read(url):
    store, reader = PostgresStore(url), PostgresStore(url)
    try:
        answer = put_started(store, Write("outgoing", "m1", "sent", {"n": 1}))
        deadline = time.monotonic() + 10
        while reader.get("outgoing", "m1") is None:  # written while nobody waits for it
            assert time.monotonic() < deadline, "the write was not sent until its answer"
            threading.Event().wait(0.01)
        assert answer() is not None
    finally:
        store.close()
        reader.close()


def test_started_writes_give_their_connections_back(url):
    store = PostgresStore(url)
    opened: list[object] = []
    connect = store._pool._connect
    store._pool._connect = lambda: opened.append(1) or connect()  # type: ignore[method-assign]
    try:
        for n in range(40):
            assert put_started(store, Write("outgoing", f"m{n}", "queued", {}))() is not None
        assert store.count("outgoing") == {"queued": 40}
        assert opened == [], "each write took the idle connection and put it back"
    finally:
        store.close()


def test_a_bad_write_is_refused_before_anything_is_sent(url):
    store = PostgresStore(url)
    try:
        with pytest.raises(ValueError, match="key"):
            put_started(store, Write("outgoing", "", "queued", {}))
        with pytest.raises(ValueError, match="JSON-serialisable"):
            put_started(store, Write("outgoing", "m1", "queued", {"x": object()}))
        assert store.count("outgoing") == {}
    finally:
        store.close()


def test_a_statement_the_server_refuses_is_a_store_error_without_secrets(postgres_server, url):
    import psycopg

    store = PostgresStore(url)
    try:
        prefix = url.rsplit("table_prefix=", 1)[1]
        with psycopg.connect(postgres_server.dsn, autocommit=True) as connection:
            connection.execute(f"DROP TABLE {prefix}_records")
        answer = put_started(store, Write("outgoing", "m1", "queued", {}))
        with pytest.raises(StoreError, match=r"put failed: .*does not exist") as raised:
            answer()
        assert postgres_server.password not in str(raised.value)
        assert raised.value.__context__ is None, (
            "psycopg's error (it may quote the DSN) is not kept"
        )
        # The store goes on: the next call has a connection of its own.
        assert store.now() > 0
    finally:
        store.close()


def test_a_silent_server_is_a_store_error_within_the_deadline(postgres_server):
    prefix = f"s{uuid.uuid4().hex[:10]}"
    with FaultProxy(postgres_server.address) as proxy:
        url = postgres_server.dsn_via(proxy.host, proxy.port)
        store = PostgresStore(f"{url}?table_prefix={prefix}", statement_timeout=0.5)
        try:
            assert store.get("outgoing", "m1") is None  # a connection in the pool
            write = Write("outgoing", "m1", "queued", {})
            started = time.monotonic()
            proxy.blackhole()
            answer = put_started(store, write)  # sent into the void: no error yet
            with pytest.raises(StoreError, match="no answer within") as raised:
                answer()
            assert time.monotonic() - started < 4, "the deadline bounds a started write"
            assert url not in str(raised.value)
            proxy.pass_through()
            assert store.get("outgoing", "nothing") is None, "the store recovers by itself"
        finally:
            proxy.pass_through()
            store.close()


def test_only_percent_s_marks_are_numbered():
    assert dollar_marks("SELECT %s, %s") == b"SELECT $1, $2"
    with pytest.raises(ValueError, match="only %s"):
        dollar_marks("SELECT '100%' || %s")
