"""Throwaway Redis and PostgreSQL for benchmark runs: the test suite's own server runners."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import ServerUnavailable
from servers.postgres import PostgresServer
from servers.redis import RedisServer


@contextlib.contextmanager
def redis_server() -> Iterator[int | None]:
    """Yield the port of a fresh redis-server, or None if Redis is not installed."""
    try:
        server = RedisServer().start()
    except ServerUnavailable:
        yield None
        return
    try:
        yield server.port
    finally:
        server.stop()


@contextlib.contextmanager
def postgres_server() -> Iterator[str | None]:
    """Yield the DSN of a fresh PostgreSQL cluster, or None if PostgreSQL is not installed."""
    try:
        server = PostgresServer().start()
    except ServerUnavailable:
        yield None
        return
    try:
        yield server.dsn
    finally:
        server.stop()
