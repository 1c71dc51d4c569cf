"""``store_from_url``: a store from one setting."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._errors import ConfigError
from mailtether.stores._memory import MemoryStore
from mailtether.stores._protocol import Store
from mailtether.stores._shared import redact_url
from mailtether.stores._sqlite import SQLiteStore

__all__ = ["store_from_url"]

_SCHEME: Final = re.compile(r"[\x00-\x20]*([A-Za-z][A-Za-z0-9+.\-]*):")


def store_from_url(url: str, *, clock: Clock = SYSTEM_CLOCK, create: bool = True) -> Store:
    """Open the store a URL names.

    - ``memory:`` — a :class:`~mailtether.MemoryStore`;
    - ``sqlite:///absolute/path.db`` (or SQLAlchemy's ``sqlite:////absolute/path.db``) or
      ``sqlite:relative/path.db`` — a
      :class:`~mailtether.SQLiteStore`;
    - ``redis://[:password@]host[:port][/db][?prefix=name]`` (``rediss://`` for TLS) — a
      :class:`~mailtether.RedisStore` (needs ``mailtether[redis]``);
    - ``postgresql://user:password@host[:port]/database[?table_prefix=name]`` (and
      ``prepared_statements=true``) — a :class:`~mailtether.PostgresStore` (needs
      ``mailtether[postgres]``).

    With ``create=False`` a SQLite file that does not exist is not created but refused (the
    read-only commands of ``mailtether`` open their store so); the other stores ignore it.

    Raises:
        ConfigError: the URL's scheme is unknown or its path is missing; the message never
            shows the password.
        StoreError: the store cannot be opened (with ``create=False``: the SQLite file does
            not exist, or is not a mailtether store).

    Example:
        >>> from mailtether import store_from_url
        >>> store_from_url("memory:")
        MemoryStore()
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("a store URL is a non-empty string such as 'sqlite:///var/lib/x.db'")
    # The scheme without urlsplit, which can fail on the rest and quote the password doing so.
    found = _SCHEME.match(url)
    scheme = found.group(1).lower() if found else ""
    if scheme == "memory":
        return MemoryStore(clock=clock)
    if scheme == "sqlite":
        try:
            path = urlsplit(url).path
        except ValueError:
            path = ""  # a host part urllib refuses: sqlite URLs have none
        if path.startswith("//"):  # sqlite:////abs/path.db, SQLAlchemy's spelling: the same
            path = "/" + path.lstrip("/")
        if not path or path == "/":
            raise ConfigError(
                f"{redact_url(url)!r} names no file: write sqlite:///absolute/path.db or "
                "sqlite:relative/path.db"
            )
        return SQLiteStore(path, clock=clock, create=create)
    if scheme in ("redis", "rediss", "unix"):
        from mailtether.stores._redis import RedisStore

        return RedisStore(url)
    if scheme in ("postgres", "postgresql"):
        from mailtether.stores._postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError(
        f"unknown store URL {redact_url(url)!r}: use memory:, sqlite:///path.db, "
        "redis://host/0 or postgresql://user@host/db"
    )
