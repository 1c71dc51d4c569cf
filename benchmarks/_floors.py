"""Floors: the least a first sync with mailtether's guarantees costs, in raw code, per store.

A first sync that never loses or doubles a mail needs, per batch: the look-up of the keys
and of the contents (which mail is new), a claim per new mail (create-only, before it is
handled), and then, in one transaction, each mail's outcome and its content record; the
mailbox change (``\\Seen``) only after that. The writers below do exactly those writes as
raw SQL or raw Redis commands (batched as far as each server allows, no Python of ours in
between), on tables of the stores' shape. Beside imaplib fetching ``BODY.PEEK[]`` and
storing ``+FLAGS.SILENT`` in batches of 500, they give the throughput no implementation of
these guarantees can beat on this machine: if a floor is under a target, the target cannot
be met here, whatever the library does.
"""

from __future__ import annotations

import hashlib
import imaplib
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from mailtether import SQLiteStore

_CLAIMED = json.dumps({"owner": "host:1:0123abcd", "expires_at": 2e9}, separators=(",", ":"))
_DONE = "{}"


class Writer(Protocol):
    """The writes of one batch: claim (after the look-ups), then finish."""

    def claim(self, keys: list[str], contents: list[str]) -> None: ...

    def finish(self, keys: list[str], contents: list[str]) -> None: ...

    def close(self) -> None: ...


def first_sync(
    port: int, user: str, password: str, writer: Writer | None, batch: int = 500
) -> float:
    """Messages per second of a raw first sync (imaplib) with *writer*'s writes (or none)."""
    started = time.perf_counter()
    imap = imaplib.IMAP4("127.0.0.1", port)
    imap.login(user, password)
    imap.select("INBOX")
    uids = imap.uid("SEARCH", "ALL")[1][0].split()
    for start in range(0, len(uids), batch):
        chosen = uids[start : start + batch]
        wanted = b",".join(chosen).decode()
        answer = imap.uid("FETCH", wanted, "(BODY.PEEK[])")[1]
        mails = [item[1] for item in answer if isinstance(item, tuple)]
        keys = [f"INBOX,{uid.decode()}" for uid in chosen]
        contents = [hashlib.sha256(raw.replace(b"\r\n", b"\n")).hexdigest() for raw in mails]
        if writer is not None:
            writer.claim(keys, contents)
            writer.finish(keys, contents)
        imap.uid("STORE", wanted, "+FLAGS.SILENT", "(\\Seen)")
    imap.logout()
    return len(uids) / (time.perf_counter() - started)


class SQLiteWriter:
    """Raw SQLite, the store's schema and settings; *each*: every outcome its own commit."""

    def __init__(self, path: Path, *, each: bool = False) -> None:
        SQLiteStore(path).close()  # the same schema and page size
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.each = each

    def claim(self, keys: list[str], contents: list[str]) -> None:
        db = self.db
        for namespace, ids in (("guard", keys), ("guard-content", contents)):
            marks = ",".join("?" * len(ids))
            db.execute(
                f"SELECT key FROM mailtether_records WHERE namespace = ? AND key IN ({marks})",
                [namespace, *ids],
            ).fetchall()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO mailtether_records (namespace, key, state, data, version, updated_at) "
            "VALUES ('guard', ?, 'processing', ?, 1, ?) ON CONFLICT DO NOTHING",
            [(key, _CLAIMED, now) for key in keys],
        )
        db.execute("COMMIT")

    def finish(self, keys: list[str], contents: list[str]) -> None:
        db = self.db
        now = time.time()
        update = (
            "UPDATE mailtether_records SET state = 'done', data = ?, version = version + 1, "
            "updated_at = ? WHERE namespace = 'guard' AND key = ? AND version = 1"
        )
        insert = (
            "INSERT INTO mailtether_records (namespace, key, state, data, version, updated_at) "
            "VALUES ('guard-content', ?, 'done', ?, 1, ?) ON CONFLICT DO NOTHING"
        )
        if self.each:
            for key, content in zip(keys, contents, strict=True):
                db.execute("BEGIN IMMEDIATE")
                db.execute(update, (_DONE, now, key))
                db.execute(insert, (content, json.dumps({"id": key}), now))
                db.execute("COMMIT")
            return
        db.execute("BEGIN IMMEDIATE")
        db.executemany(update, [(_DONE, now, key) for key in keys])
        db.executemany(
            insert, [(c, json.dumps({"id": k}), now) for k, c in zip(keys, contents, strict=True)]
        )
        db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


_CLAIM_LUA = """
local claimed = 0
for i, key in ipairs(KEYS) do
  redis.call('EXISTS', ARGV[i + 1])
  if redis.call('HSETNX', key, 'v', 1) == 1 then
    redis.call('HSET', key, 's', 'processing', 'd', ARGV[1])
    claimed = claimed + 1
  end
end
return claimed
"""
_FINISH_LUA = """
local n = #KEYS
for i, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'v') == '1' then  -- compare-and-set: still our claim
    redis.call('HSET', key, 's', 'done', 'd', '{}', 'v', 2)
  end
  redis.call('HSET', ARGV[i + 1], 's', 'done', 'd', key, 'v', 1)
end
return n
"""


# With *indexed*: the indexes a store needs to scan a namespace, or one state of it, oldest
# update first (what RedisStore keeps): one sorted set per namespace and one per state, each
# written with one ZADD (and ZREM) per script.
_INDEX_CLAIMS_LUA = """
local stamp = redis.call('TIME')[1]
local members = {}
for i, key in ipairs(KEYS) do
  members[#members + 1] = stamp
  members[#members + 1] = key
end
redis.call('ZADD', ARGV[#ARGV] .. ':i:guard', unpack(members))
redis.call('ZADD', ARGV[#ARGV] .. ':s:guard|processing', unpack(members))
"""
_INDEX_DONE_LUA = """
local stamp = redis.call('TIME')[1]
local members, contents = {}, {}
for i, key in ipairs(KEYS) do
  members[#members + 1] = stamp
  members[#members + 1] = key
  contents[#contents + 1] = stamp
  contents[#contents + 1] = ARGV[i + 1]
end
redis.call('ZREM', ARGV[1] .. ':s:guard|processing', unpack(KEYS))
redis.call('ZADD', ARGV[1] .. ':i:guard', unpack(members))
redis.call('ZADD', ARGV[1] .. ':s:guard|done', unpack(members))
redis.call('ZADD', ARGV[1] .. ':i:content', unpack(contents))
redis.call('ZADD', ARGV[1] .. ':s:content|done', unpack(contents))
"""


class RedisWriter:
    """Raw Redis: one script for a batch's look-ups and claims, one for its outcomes.

    *indexed*: the same scripts then keep the scan indexes too (see above).
    """

    def __init__(self, port: int, prefix: str, *, indexed: bool = False) -> None:
        import redis

        self.client = redis.Redis(port=port)
        self.prefix = prefix
        index_claims = _INDEX_CLAIMS_LUA.replace('"""', "") if indexed else ""
        index_done = _INDEX_DONE_LUA if indexed else ""
        self.claim_script = self.client.register_script(
            _CLAIM_LUA.replace("return claimed", index_claims + "return claimed")
        )
        self.finish_script = self.client.register_script(
            _FINISH_LUA.replace("return n", index_done + "return n")
        )

    def claim(self, keys: list[str], contents: list[str]) -> None:
        p = self.prefix
        names = [f"{p}:guard:{key}" for key in keys]
        self.claim_script(names, [_CLAIMED, *(f"{p}:guard-content:{c}" for c in contents), p])

    def finish(self, keys: list[str], contents: list[str]) -> None:
        p = self.prefix
        names = [f"{p}:guard:{key}" for key in keys]
        self.finish_script(names, [p, *(f"{p}:guard-content:{c}" for c in contents)])

    def close(self) -> None:
        self.client.close()


class PostgresWriter:
    """Raw PostgreSQL, the store's table shape: one statement per look-up, claim, finish."""

    def __init__(self, dsn: str, table: str) -> None:
        import psycopg

        self.db = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
        self.table = table
        self.db.execute(
            f'CREATE TABLE {table} (namespace text COLLATE "C", key text COLLATE "C", '
            'state text COLLATE "C", data text, version bigint, updated_at float8, '
            "PRIMARY KEY (namespace, key))"
        )
        self.db.execute(f"CREATE INDEX ON {table} (namespace, state, updated_at)")

    def claim(self, keys: list[str], contents: list[str]) -> None:
        t = self.table
        for namespace, ids in (("guard", keys), ("guard-content", contents)):
            self.db.execute(
                f"SELECT key FROM {t} WHERE namespace = %s AND key = ANY(%s)",
                (namespace, ids),
            ).fetchall()
        self.db.execute(
            f"INSERT INTO {t} SELECT 'guard', k, 'processing', %s, 1, "
            "date_part('epoch', statement_timestamp()) FROM unnest(%s::text[]) k "
            "ON CONFLICT DO NOTHING",
            (_CLAIMED, keys),
        )

    def finish(self, keys: list[str], contents: list[str]) -> None:
        t = self.table
        with self.db.transaction():
            self.db.execute(
                f"UPDATE {t} SET state = 'done', data = %s, version = version + 1, "
                "updated_at = date_part('epoch', statement_timestamp()) "
                "WHERE namespace = 'guard' AND key = ANY(%s) AND version = 1",
                (_DONE, keys),
            )
            self.db.execute(
                f"INSERT INTO {t} SELECT 'guard-content', c, 'done', k, 1, "
                "date_part('epoch', statement_timestamp()) FROM unnest(%s::text[], %s::text[]) "
                "AS u(c, k) ON CONFLICT DO NOTHING",
                (contents, keys),
            )

    def close(self) -> None:
        self.db.execute(f"DROP TABLE {self.table}")
        self.db.close()


Opener = Callable[[str], Writer]


def floor(port: int, user: str, password: str, open_writer: Opener | None, name: str) -> float:
    """One round of a floor: a fresh writer (named *name*), the sync, the writer closed."""
    writer: Any = None if open_writer is None else open_writer(name)
    try:
        return first_sync(port, user, password, writer)
    finally:
        if writer is not None:
            writer.close()
