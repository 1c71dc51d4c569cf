"""What only Redis and PostgreSQL stores can meet: URLs, passwords, schema, outages."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid

import pytest

from mailtether import (
    ConfigError,
    LeaseLost,
    PostgresStore,
    ProcessLock,
    RedisStore,
    SchemaError,
    StoreError,
    Write,
    store_from_url,
)
from mailtether.testing import FaultProxy


@pytest.fixture(params=["redis", "postgres"])
def remote(request: pytest.FixtureRequest):
    """(kind, server, url-for(host, port)) for each remote backend."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        return (
            "redis",
            server,
            lambda host, port: f"redis://:s3cret-pw@{host}:{port}/0?prefix={prefix}",
        )
    server = request.getfixturevalue("postgres_server")
    return (
        "postgres",
        server,
        lambda host, port: f"{server.dsn_via(host, port)}?table_prefix={prefix}",
    )


def test_password_never_shows(remote, caplog):
    kind, server, url_for = remote
    caplog.set_level(logging.DEBUG)
    if kind == "redis":
        url = f"redis://:pg-test-secret@127.0.0.1:{server.port}/0"  # this server has no password
    else:
        url = url_for(*server.address)
    store = store_from_url(url)  # (redis-py accepts a password the server does not need)
    shown = repr(store)
    store.close()
    assert "pg-test-secret" not in shown
    assert "***" in shown
    assert "pg-test-secret" not in caplog.text


def test_an_unreachable_server_is_a_store_error_without_the_password(remote):
    _kind, _server, url_for = remote
    with FaultProxy(("127.0.0.1", 9)) as proxy:  # nothing listens behind it
        proxy.refuse_new()
        url = url_for(proxy.host, proxy.port).replace("pg-test-secret", "hunter2-secret")
        url = url.replace("s3cret-pw", "hunter2-secret")
        with pytest.raises(StoreError) as info:
            store_from_url(url)
    assert "hunter2-secret" not in str(info.value)
    assert "failed" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:1/0?prefix=has space",
        "redis://127.0.0.1:1/0?prefix=",
        "postgresql://u:p@127.0.0.1:1/db?table_prefix=Robert'); DROP TABLE x;--",
        "postgresql://u:p@127.0.0.1:1/db?table_prefix=1abc",
        "postgresql://u:p@127.0.0.1:port/db",
        "redis://127.0.0.1:port/0",
        "ftp://example.com/state",
        "sqlite:///",
        "",
    ],
)
def test_bad_urls_are_config_errors(url):
    with pytest.raises(ConfigError) as info:
        store_from_url(url)
    assert ":p@" not in str(info.value)


def test_a_newer_schema_is_refused(remote):
    kind, server, url_for = remote
    url = url_for(*server.address)
    store_from_url(url).close()
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(f"{server.url}")
        prefix = url.rsplit("prefix=", 1)[1]
        client.hset("{" + prefix + "}:meta", "schema_version", 999)
        client.close()
    else:
        import psycopg

        prefix = url.rsplit("table_prefix=", 1)[1]
        with psycopg.connect(server.dsn, autocommit=True) as connection:
            connection.execute(f"UPDATE {prefix}_meta SET value = '999'")
    with pytest.raises(SchemaError, match="newer mailtether"):
        store_from_url(url)


@pytest.mark.parametrize("fault", ["blackhole", "reset"])
def test_an_outage_during_renewal_is_lock_lost_not_a_hang(remote, fault):
    kind, server, url_for = remote
    with FaultProxy(server.address) as proxy:
        url = url_for(proxy.host, proxy.port)
        if kind == "redis":
            url = url.replace(":s3cret-pw@", "")
        store = store_from_url(url)
        lost: list[LeaseLost] = []
        lock = ProcessLock(store, "outage", ttl=1.0, heartbeat=0.3, on_lost=lost.append)
        with lock:
            lock.check()
            if fault == "blackhole":
                proxy.blackhole()
            else:
                proxy.reset_all()
                proxy.refuse_new()
            assert lock.lost_event.wait(3.0), "the holder must be told within the TTL (+ slack)"
            with pytest.raises(LeaseLost):
                lock.check()
        assert len(lost) == 1
        proxy.pass_through()
        threading.Event().wait(0)  # leaving the block did not raise or hang
        store.close()


def _open(kind: str, url: str, timeout: float):
    if kind == "redis":
        return RedisStore(url, socket_timeout=timeout, connect_timeout=timeout)
    return PostgresStore(url, statement_timeout=timeout, connect_timeout=timeout)


def _call_with_deadline(call, seconds: float):
    """Run *call* in a thread; fail the test (instead of hanging it) if it does not end."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as error:  # reported below
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert outcome, f"the call still hangs after {seconds} s"
    return outcome[0], time.monotonic() - started


@pytest.mark.parametrize("fault", ["blackhole", "reset"])
def test_a_silent_or_dropped_server_is_a_store_error_not_a_hang(remote, fault):
    kind, server, url_for = remote
    with FaultProxy(server.address) as proxy:
        url = url_for(proxy.host, proxy.port).replace(":s3cret-pw@", "")
        store = _open(kind, url, 0.5)
        store.put("guard", "k", "done", {})
        if fault == "blackhole":
            proxy.blackhole()
        else:
            proxy.reset_all()
            proxy.refuse_new()
        error, took = _call_with_deadline(lambda: store.get("guard", "k"), 10)
        assert isinstance(error, StoreError), error
        assert "get failed" in str(error)
        assert took < 4, "the timeout bounds a call to a silent server"
        proxy.pass_through()
        # The store recovers by itself: the next call opens a new connection.
        assert store.get("guard", "k") is not None
        store.close()


def test_a_connection_the_server_dropped_while_idle_is_replaced_quietly(remote):
    kind, server, url_for = remote
    with FaultProxy(server.address) as proxy:
        store = _open(kind, url_for(proxy.host, proxy.port).replace(":s3cret-pw@", ""), 2.0)
        lease = store.acquire("idle-drop", "me", 30)
        assert proxy.reset_all() >= 1  # a server restart, an idle timeout, a killed backend
        # No call fails for it (one failed renewal would cost a process lock).
        assert store.renew(lease).token == lease.token
        assert store.get("guard", "nothing") is None
        store.close()


def test_updated_at_and_expiry_are_exactly_what_the_index_holds(remote):
    _kind, server, url_for = remote
    store = store_from_url(url_for(*server.address).replace(":s3cret-pw@", ""))
    try:
        for n in range(20):
            record = store.put("guard", f"k{n}", "done", {"n": n})
            assert store.get("guard", record.key).updated_at == record.updated_at
            # scan's cutoff is strict, and compares the very value the record carries.
            keys = {r.key for r in store.scan("guard", updated_before=record.updated_at)}
            assert record.key not in keys
            after = math.nextafter(record.updated_at, math.inf)
            assert record.key in {r.key for r in store.scan("guard", updated_before=after)}
            # Everything but this record (the previous one, as each round prunes).
            assert store.prune("guard", state="done", updated_before=record.updated_at) == min(n, 1)
            assert store.count("guard") == {"done": 1}
        lease = store.acquire("exact", "me", 0.123456789)
        assert lease is not None
        assert store.holder("exact") == lease
        renewed = store.renew(lease, 7.25)
        assert store.holder("exact") == renewed
    finally:
        store.close()


def test_a_password_in_the_query_string_is_hidden_too(remote):
    kind, server, _url_for = remote
    if kind == "redis":
        # (redis-py accepts a password the server does not need.)
        store = store_from_url(f"{server.url}?password=query-secret&prefix=q{uuid.uuid4().hex[:8]}")
        shown = repr(store)
        store.close()
        assert "query-secret" not in shown
        assert "password=***" in shown
        with FaultProxy(("127.0.0.1", 9)) as proxy:
            proxy.refuse_new()
            with pytest.raises(StoreError) as info:
                store_from_url(f"redis://{proxy.host}:{proxy.port}/0?password=query-secret")
    else:
        host, port = server.address
        url = (
            f"postgresql://{server.user}@{host}:{port}/{server.database}"
            f"?password={server.password}&table_prefix=q{uuid.uuid4().hex[:8]}"
        )
        store = store_from_url(url)
        shown = repr(store)
        store.close()
        assert server.password not in shown
        assert "password=***" in shown
        with pytest.raises(StoreError) as info:
            store_from_url(url.replace(server.password, "query-secret"))
    assert "query-secret" not in str(info.value)
    assert "query-secret" not in repr(info.value)


def test_a_wrong_postgres_password_is_a_store_error_that_does_not_repeat_it(postgres_server):
    host, port = postgres_server.address
    user, database = postgres_server.user, postgres_server.database
    url = f"postgresql://{user}:wrong-secret-pw@{host}:{port}/{database}"
    with pytest.raises(StoreError, match="password authentication failed") as info:
        PostgresStore(url)
    assert "wrong-secret-pw" not in str(info.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RedisStore("redis://127.0.0.1:1/0", socket_timeout=0),
        lambda: RedisStore("redis://127.0.0.1:1/0", connect_timeout=float("nan")),
        lambda: PostgresStore("postgresql://u:p@127.0.0.1:1/db", statement_timeout=-1),
        lambda: PostgresStore("postgresql://u:p@127.0.0.1:1/db", connect_timeout=0),
    ],
)
def test_timeouts_must_be_positive(make):
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        make()


def test_postgres_asks_the_server_for_the_statement_timeout_and_keeps_other_options(
    postgres_server,
):
    url = (
        f"{postgres_server.dsn}?options=-c%20application_name%3Dmine"
        f"&table_prefix=o{uuid.uuid4().hex[:8]}"
    )
    store = PostgresStore(url, statement_timeout=0.25)
    try:
        assert store._one("show", "SHOW statement_timeout", ()) == ("250ms",)
        assert store._one("show", "SHOW application_name", ()) == ("mine",)
        # Ask for more than the server may take: it cancels, and the caller hears of it.
        with pytest.raises(StoreError, match="statement timeout"):
            store._one("sleep", "SELECT pg_sleep(2)", ())
        assert store.get("guard", "k") is None
    finally:
        store.close()


def test_postgres_starting_again_runs_no_ddl(postgres_server):
    prefix = f"d{uuid.uuid4().hex[:8]}"
    PostgresStore(f"{postgres_server.dsn}?table_prefix={prefix}").close()
    import psycopg

    with psycopg.connect(postgres_server.dsn, autocommit=True) as connection:
        # A role that may use the tables but not create any still opens the store.
        connection.execute(f"DROP ROLE IF EXISTS {prefix}_user")
        connection.execute(f"CREATE ROLE {prefix}_user LOGIN PASSWORD 'pw-{prefix}'")
        connection.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {prefix}_meta, {prefix}_records, "
            f"{prefix}_leases TO {prefix}_user"
        )
        connection.execute(f"REVOKE CREATE ON SCHEMA public FROM {prefix}_user")
    host, port = postgres_server.address
    url = f"postgresql://{prefix}_user:pw-{prefix}@{host}:{port}/{postgres_server.database}"
    store = PostgresStore(f"{url}?table_prefix={prefix}")
    try:
        assert store.put("guard", "k", "done", {}) is not None
    finally:
        store.close()
        with psycopg.connect(postgres_server.dsn, autocommit=True) as connection:
            connection.execute(f"DROP OWNED BY {prefix}_user")
            connection.execute(f"DROP ROLE {prefix}_user")


def test_redact_url_hides_every_password_form():
    from mailtether.stores._shared import redact_url

    assert redact_url("redis://:pw1@h:6379/0?password=pw2&prefix=p") == (
        "redis://:***@h:6379/0?password=***&prefix=p"
    )
    assert redact_url("host=h password=pw3 dbname=d") == "host=h password=*** dbname=d"
    assert redact_url("sqlite:///var/x.db") == "sqlite:///var/x.db"


def test_redis_scripts_the_server_forgot_are_loaded_again(redis_server):
    # A restarted or failed-over server has no scripts: each call must load its own again
    # (NOSCRIPT: the script did not run, so sending it once more cannot run it twice).
    redis = pytest.importorskip("redis")

    store = store_from_url(f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:10]}")
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.script_flush()
        lease = store.acquire("forgotten", "me", 30)
        assert lease is not None
        assert lease.token == 1
        client.script_flush()
        assert store.put_many([]) == []
        assert store.put("guard", "k", "done", {"n": 1}).version == 1
        client.script_flush()
        assert store.existing("guard", ["k", "j"]) == {"k"}
        client.script_flush()
        assert store.get_many("guard", ["k"])["k"].data == {"n": 1}
        client.script_flush()
        assert store.release(lease) is True
        assert store.acquire("forgotten", "me", 30).token == 2
    finally:
        client.close()
        store.close()


def _redis_layout_holds(client, base: str, namespace: str) -> dict[str, str]:
    """Check the indexes of *namespace* against its records; return each key's state.

    The namespace index and each state's index hold exactly the records (in that state), at
    their ``updated_at``; the states set holds every state that has a record (and may hold
    states left empty: count skips them).
    """
    records = {
        name.split("|", 1)[1]: client.hgetall(name)
        for name in client.scan_iter(f"{base}:r:{namespace}|*", count=1000)
    }
    times = {key: float(fields["updated_at"]) for key, fields in records.items()}
    assert dict(client.zrange(f"{base}:i:{namespace}", 0, -1, withscores=True)) == times
    states = {fields["state"] for fields in records.values()}
    for name in client.scan_iter(f"{base}:s:{namespace}|*", count=1000):
        state = name.split("|", 1)[1]
        held = {key: times[key] for key, fields in records.items() if fields["state"] == state}
        assert dict(client.zrange(name, 0, -1, withscores=True)) == held
    assert states <= client.smembers(f"{base}:states:{namespace}")
    return {key: fields["state"] for key, fields in records.items()}


def test_redis_put_many_keeps_the_index_layout_of_one_write_at_a_time(redis_server):
    # put_many writes the indexes once per script; they must end as one put after another
    # left them (the layout older versions read), for long runs too (more values than one
    # command takes from Lua at once) and keys changing state more than once in a run.
    from mailtether.stores._redis_scripts import SCRIPTS

    redis = pytest.importorskip("redis")
    prefix = f"t{uuid.uuid4().hex[:10]}"
    base = "{" + prefix + "}"
    store = store_from_url(f"{redis_server.url}?prefix={prefix}")
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        store.put_many(Write("guard", f"k{n}", "processing", {}) for n in range(0, 2500, 2))
        fields: list[str] = []
        count = 0
        for n in range(2500):  # one call of 2,500 (put_many sends 500): two namespaces in turn
            # each write a run of one: namespace, state, expect, how many, then key and data
            fields += ["guard", "failed" if n % 3 else "done", "", "1", f"k{n}", "{}"]
            fields += ["guard-content", "done", "0", "1", f"c{n}", "{}"]
            count += 2
            if n % 5 == 0:
                fields += ["guard", "held", "", "1", f"k{n}", "{}"]
                count += 1
        answer = client.eval(SCRIPTS["put_many"], 0, base, "\x00".join(fields) + "\x00", count)
        assert len(answer.split(" ")) == count + 1
        states = _redis_layout_holds(client, base, "guard")
        assert states == {
            f"k{n}": "held" if n % 5 == 0 else "failed" if n % 3 else "done" for n in range(2500)
        }
        assert store.count("guard") == {
            state: list(states.values()).count(state) for state in ("held", "failed", "done")
        }
        assert _redis_layout_holds(client, base, "guard-content") == {
            f"c{n}": "done" for n in range(2500)
        }
        # processing is empty now; the set may still name it, count leaves it out.
        assert "processing" not in store.count("guard")
        assert store.delete("guard", "k1")
        assert store.prune("guard", state="held", updated_before=store.now() + 1) == 500
        left = _redis_layout_holds(client, base, "guard")
        assert store.count("guard") == {"failed": 1332, "done": 667}
        assert len(left) == 1999
    finally:
        client.close()
        store.close()


def test_redis_lease_calls_from_many_threads_share_one_line_safely(redis_server):
    # The lease calls go over one connection: one call at a time, each its own answer.
    store = store_from_url(f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:10]}")
    tokens: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(index: int) -> None:
        try:
            barrier.wait()
            for n in range(150):
                name = f"lock-{(index + n) % 3}"
                lease = store.acquire(name, f"worker-{index}", 30)
                if lease is not None:
                    assert store.holder(name) == lease
                    tokens.setdefault(name, []).append(lease.token)
                    assert store.renew(lease).token == lease.token
                    assert store.release(lease) is True
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    assert errors == []
    for taken in tokens.values():
        assert sorted(taken) == list(range(1, len(taken) + 1)), "every token once, none lost"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_redis_lease_connection(redis_server):
    store = store_from_url(f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:10]}")
    lease = store.acquire("parent", "me", 30)  # the line is connected before the fork
    assert lease is not None
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        ok = 0
        try:
            for _ in range(300):
                held = store.holder("parent")  # renewed meanwhile: the same token and owner
                ok += held is not None and (held.owner, held.token) == ("me", lease.token)
        finally:
            os.write(write, str(ok).encode())
            os._exit(0)
    os.close(write)
    for _ in range(300):  # at the same time, on the parent's connection
        assert store.renew(lease, 30).token == lease.token
    _, status = os.waitpid(child, 0)
    with os.fdopen(read) as answer:
        assert answer.read() == "300", "the child read its own answers"
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.release(lease) is True
    store.close()


def test_sqlalchemys_four_slash_sqlite_url_names_the_same_absolute_file(tmp_path):
    """``sqlite:////abs/x.db`` failed with "invalid uri authority" (issue 20's users)."""
    path = tmp_path / "four.db"
    store = store_from_url(f"sqlite:///{path}")
    store.put("n", "k", "s", {"v": 1})
    store.close()
    again = store_from_url(f"sqlite:////{str(path).lstrip('/')}")
    record = again.get("n", "k")
    again.close()
    assert record is not None
    assert record.data == {"v": 1}
