"""Started writes on Redis and PostgreSQL: sent now, answered later, exactly as ``put`` writes.

The outbox sends a mail's outcome once the next mail's ``MAIL FROM`` is sent and reads the
answer before that mail's content (``_outbox_handoff``), and claims the next 50 mails while
the 50 before them are sent. These tests hold the stores' side to ``put_many``'s contract on
real servers: the same records, the same refusals, the same errors (without the password),
the connection back in the pool, and a silent server a StoreError within the deadline, not
a hang.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mailtether import ConfigError, PostgresStore, RedisStore, Store, StoreError
from mailtether.stores._postgres_started import dollar_marks
from mailtether.stores._protocol import Write
from mailtether.stores._shared import put_many_started, put_started
from mailtether.testing import FaultProxy


@pytest.fixture(params=["redis", "postgres", "postgres-prepared"])
def remote(request: pytest.FixtureRequest) -> tuple[str, Any, Callable[..., Store]]:
    """(kind, server, open(host=None, port=None, timeout=5.0)) for each remote store."""
    prefix = f"s{uuid.uuid4().hex[:10]}"
    kind = request.param.removesuffix("-prepared")
    server = request.getfixturevalue(f"{kind}_server")

    def open_store(host: str | None = None, port: int | None = None, timeout: float = 5.0):  # type: ignore[no-untyped-def]
        host, port = host or server.address[0], port or server.address[1]
        if kind == "redis":
            url = f"redis://{host}:{port}/0?prefix={prefix}"
            return RedisStore(url, socket_timeout=timeout, connect_timeout=timeout)
        url = f"{server.dsn_via(host, port)}?table_prefix={prefix}"
        prepared = request.param == "postgres-prepared"
        return PostgresStore(
            url,
            statement_timeout=timeout,
            connect_timeout=timeout,
            prepared_statements=prepared,
        )

    return kind, server, open_store


@pytest.fixture
def store(remote) -> Iterator[Store]:  # type: ignore[no-untyped-def]
    opened = remote[2]()
    yield opened
    opened.close()


def test_a_started_write_gives_what_put_gives(store):
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
    assert store.get("outgoing", "m1") == upserted
    assert store.get("outgoing", "m2").data == {"é": "ü"}  # type: ignore[union-attr]


def test_started_writes_of_a_batch_give_what_put_many_gives(store):
    store.put_many([Write("outgoing", f"m{n}", "queued", {"n": n}) for n in range(60)])
    taken = store.put("outgoing", "m7", "sending", {"by": "another sender"})  # version 2
    assert taken is not None
    claims = [Write("outgoing", f"m{n}", "sending", {"n": n}, expect=1) for n in range(60)]
    records = put_many_started(store, claims)()
    assert [r is None for r in records] == [n == 7 for n in range(60)], "m7 was taken"
    assert all(r.version == 2 and r.state == "sending" for r in records if r is not None)
    assert store.count("outgoing") == {"sending": 60}
    # Mixed kinds (more than one statement on PostgreSQL) are applied at once, in order.
    mixed = [Write("outgoing", "n1", "queued", {}, expect=0), Write("outgoing", "m0", "sent", {})]
    assert [r.version for r in put_many_started(store, mixed)() if r is not None] == [1, 3]


def test_a_started_write_is_on_the_server_before_its_answer_is_read(remote, store):
    reader = remote[2]()
    try:
        answer = put_started(store, Write("outgoing", "m1", "sent", {"n": 1}))
        deadline = time.monotonic() + 10
        while reader.get("outgoing", "m1") is None:  # written while nobody waits for it
            assert time.monotonic() < deadline, "the write was not sent until its answer"
            threading.Event().wait(0.01)
        assert answer() is not None
    finally:
        reader.close()


def test_started_writes_give_their_connections_back(remote, store):
    opened: list[object] = []
    if remote[0] == "redis":
        pool: Any = store._client.connection_pool  # type: ignore[attr-defined]
        make = pool.make_connection
        pool.make_connection = lambda: opened.append(1) or make()
    else:
        connect = store._pool._connect  # type: ignore[attr-defined]
        store._pool._connect = lambda: opened.append(1) or connect()  # type: ignore[attr-defined]
    put_started(store, Write("outgoing", "m", "queued", {}))()  # one connection made
    opened.clear()
    for n in range(40):
        assert put_started(store, Write("outgoing", f"m{n}", "queued", {}))() is not None
    assert store.count("outgoing") == {"queued": 41}
    assert opened == [], "each write took the idle connection and put it back"


def test_a_bad_write_is_refused_before_anything_is_sent(store):
    with pytest.raises(ValueError, match="key"):
        put_started(store, Write("outgoing", "", "queued", {}))
    with pytest.raises(ValueError, match="JSON-serialisable"):
        put_started(store, Write("outgoing", "m1", "queued", {"x": object()}))
    assert store.count("outgoing") == {}


def test_a_write_the_server_refuses_is_a_store_error_without_secrets(remote, store):
    kind, server, _ = remote
    if kind == "redis":
        import redis

        client = redis.Redis(*server.address)
        prefix = store._base  # type: ignore[attr-defined]
        client.set(f"{prefix}:r:outgoing|m1", "not a record")  # the script's HSET fails
        client.close()
        expected = r"put failed: .*WRONGTYPE"
    else:
        import psycopg

        with psycopg.connect(server.dsn, autocommit=True) as connection:
            connection.execute(f"DROP TABLE {store._p}_records")  # type: ignore[attr-defined]
        expected = r"put failed: .*does not exist"
    with pytest.raises(StoreError, match=expected) as raised:  # (prepared: when sent)
        put_started(store, Write("outgoing", "m1", "queued", {}))()
    assert raised.value.__context__ is None, "the driver's error (it may quote) is not kept"
    if kind == "postgres":
        assert server.password not in str(raised.value)
    assert store.now() > 0, "the store goes on"


def test_a_trickled_answer_is_read_whole(remote):
    """Both ways in pieces of 1-7 bytes: the writes and their answers are exactly put_many's."""
    _, server, open_store = remote
    with FaultProxy(server.address) as proxy:
        store = open_store(proxy.host, proxy.port)
        try:
            store.put_many([Write("outgoing", f"m{n}", "queued", {"n": n}) for n in range(8)])
            proxy.fragment(1, 7, gap=0, direction="both", seed=7)
            claims = [Write("outgoing", f"m{n}", "sending", {"n": n}, expect=1) for n in range(8)]
            claims[3] = Write("outgoing", "m3", "sending", {}, expect=5)  # refused
            records = put_many_started(store, claims)()
            assert [r is None for r in records] == [n == 3 for n in range(8)]
            one = put_started(store, Write("outgoing", "m9", "sent", {"é": "ü" * 50}))()
            proxy.pass_through()
            assert one is not None
            assert store.get("outgoing", "m9") == one
            assert store.count("outgoing") == {"sending": 7, "queued": 1, "sent": 1}
        finally:
            proxy.pass_through()
            store.close()


def test_an_answer_cut_off_is_a_store_error_and_the_store_goes_on(remote):
    """The connection reset three bytes into the answer: no half-read answer is taken."""
    _, server, open_store = remote
    with FaultProxy(server.address) as proxy:
        store = open_store(proxy.host, proxy.port)
        try:
            assert store.get("outgoing", "m1") is None  # a connection in the pool
            proxy.cut_after(3, direction="down")
            with pytest.raises(StoreError, match="put failed"):  # (prepared: when sent)
                put_started(store, Write("outgoing", "m1", "queued", {}))()
            proxy.pass_through()
            record = put_started(store, Write("outgoing", "m2", "queued", {}))()
            assert record is not None, "the next call has a connection of its own"
            assert store.get("outgoing", "m2") == record
        finally:
            proxy.pass_through()
            store.close()


def test_a_script_the_server_lost_is_loaded_again(redis_server):
    import redis

    store = RedisStore(f"redis://{redis_server.address[0]}:{redis_server.port}/0?prefix=lost")
    try:
        store.put("outgoing", "m0", "queued", {})  # the script loaded
        client = redis.Redis(*redis_server.address)
        client.script_flush()  # a restart, a failover: the script's SHA is unknown now
        client.close()
        assert put_started(store, Write("outgoing", "m1", "queued", {}))() is not None
        assert store.get("outgoing", "m1") is not None
    finally:
        store.close()


def test_a_silent_server_is_a_store_error_within_the_deadline(remote):
    _, server, open_store = remote
    with FaultProxy(server.address) as proxy:
        store = open_store(proxy.host, proxy.port, timeout=0.5)
        try:
            assert store.get("outgoing", "m1") is None  # a connection in the pool
            started = time.monotonic()
            proxy.blackhole()
            with pytest.raises(StoreError, match="put failed"):  # (prepared: when sent)
                put_started(store, Write("outgoing", "m1", "queued", {}))()
            assert time.monotonic() - started < 4, "the deadline bounds a started write"
            proxy.pass_through()
            assert store.get("outgoing", "nothing") is None, "the store recovers by itself"
        finally:
            proxy.pass_through()
            store.close()


def test_prepared_statements_are_prepared_once_a_connection(postgres_server):
    url = f"{postgres_server.dsn}?table_prefix=p{uuid.uuid4().hex[:10]}"
    store = PostgresStore(f"{url}&prepared_statements=true")
    try:
        for n in range(3):
            assert put_started(store, Write("outgoing", f"m{n}", "queued", {}))() is not None
        assert store.get("outgoing", "m0") is not None
        connection = store._pool.take()  # type: ignore[attr-defined]  # the one used above
        names = [row[0] for row in connection.execute("SELECT name FROM pg_prepared_statements")]
        store._pool.put_back(connection)  # type: ignore[attr-defined]
        ours = [name for name in names if name.startswith("mailtether_put_")]
        assert ours == ["mailtether_put_1"], "the one-row upsert, prepared once"
        assert any(name.startswith("_pg3_") for name in names), "psycopg prepares the rest"
    finally:
        store.close()
    plain = PostgresStore(url)  # the default: nothing prepared (a transaction-pooling
    try:  # PgBouncer before 1.21 would lose them)
        put_started(plain, Write("outgoing", "m9", "queued", {}))()
        connection = plain._pool.take()  # type: ignore[attr-defined]
        assert connection.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        plain._pool.put_back(connection)  # type: ignore[attr-defined]
    finally:
        plain.close()


@pytest.mark.parametrize(("value", "prepared"), [("true", True), (" Yes", True), ("off", False)])
def test_prepared_statements_takes_the_yes_or_no_words_of_the_settings(
    postgres_server, value, prepared
):
    store = PostgresStore(f"{postgres_server.dsn}?prepared_statements={value}")
    try:
        assert (store._prepared is not None) is prepared  # type: ignore[attr-defined]
    finally:
        store.close()


@pytest.mark.parametrize("value", ["maybe", ""])
def test_a_prepared_statements_value_that_is_not_true_or_false_is_refused(postgres_server, value):
    url = postgres_server.dsn.replace("mailtether@", "mailtether:pw-secret@", 1)
    with pytest.raises(ConfigError, match="prepared_statements must be true or false") as raised:
        PostgresStore(f"{url}?prepared_statements={value}")
    assert "pw-secret" not in str(raised.value)
    with pytest.raises(ConfigError, match="True or False"):
        PostgresStore(postgres_server.dsn, prepared_statements="yes")  # type: ignore[arg-type]


def test_only_percent_s_marks_are_numbered():
    assert dollar_marks("SELECT %s, %s") == b"SELECT $1, $2"
    with pytest.raises(ValueError, match="only %s"):
        dollar_marks("SELECT '100%' || %s")
