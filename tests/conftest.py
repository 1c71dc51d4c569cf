"""Session fixtures that start real servers: Dovecot, Redis, PostgreSQL.

In CI (the ``CI`` environment variable set, as ``.ci/run`` has it) a server that cannot start
makes every test that needs it fail with the reason: nothing is skipped silently. Outside CI
such tests are skipped, loudly, with what to install.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from servers import make_temp_dir
from servers import start_or_skip as _start
from servers.dovecot import DovecotServer
from servers.oauth2 import OAuth2Server
from servers.postgres import PostgresServer
from servers.redis import RedisServer
from servers.tls import TestCA, make_ca

_SERVER_FIXTURES = {"dovecot", "redis_server", "postgres_server", "mailbox"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)


@pytest.fixture(scope="session")
def tls_ca() -> Iterator[TestCA]:
    import shutil

    directory = make_temp_dir("ca")
    yield make_ca(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot(tls_ca: TestCA) -> Iterator[DovecotServer]:
    server = _start("Dovecot", DovecotServer(tls_ca).start)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = _start("Redis", RedisServer().start)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = _start("PostgreSQL", PostgresServer().start)
    yield server
    server.stop()


@attrs.frozen
class Mailbox:
    """A fresh Dovecot user with an empty INBOX."""

    server: DovecotServer
    user: str

    @property
    def password(self) -> str:
        return self.server.password(self.user)

    def append(self, raw: bytes, folder: str = "INBOX") -> int | None:
        return self.server.append(self.user, raw, folder)

    def save(self, raw: bytes, folder: str = "INBOX") -> None:
        self.server.save(self.user, raw, folder)

    def kick(self) -> None:
        self.server.kick(self.user)

    def client(self, **kwargs: object):  # type: ignore[no-untyped-def]
        return self.server.client(self.user, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def mailbox(dovecot: DovecotServer) -> Mailbox:
    return Mailbox(dovecot, dovecot.add_user())


@pytest.fixture
def tmp_dir() -> Iterator[Path]:
    """A temporary directory the servers' unprivileged users can read."""
    import shutil

    path = make_temp_dir("test")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def oauth2() -> Iterator[OAuth2Server]:
    """A local OAuth2 token and introspection endpoint; access tokens live 2 s."""
    with OAuth2Server(token_lifetime=2.0) as server:
        yield server


@pytest.fixture(scope="module")
def oauth2_dovecot(tls_ca: TestCA, oauth2: OAuth2Server) -> Iterator[DovecotServer]:
    """A Dovecot that takes the *oauth2* fixture's tokens (XOAUTH2, OAUTHBEARER) too."""
    server = _start("Dovecot", DovecotServer(tls_ca, oauth2=oauth2).start)
    yield server
    server.stop()


@pytest.fixture
def batches_of(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Make the listener's batches small: at most *most* mails."""
    import mailtether._pipeline as pipeline_module

    def set_sizes(most: int) -> None:
        monkeypatch.setattr(pipeline_module, "_FETCH_MOST", most)

    return set_sizes
