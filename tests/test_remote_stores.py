"""What only Redis and PostgreSQL stores can meet: URLs, passwords, schema, outages."""

from __future__ import annotations

import logging
import threading
import uuid

import pytest

from mailtether import (
    ConfigError,
    LeaseLost,
    ProcessLock,
    SchemaError,
    StoreError,
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
