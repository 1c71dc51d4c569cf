"""SQLiteStore and its file: a file deleted or replaced under an open store is noticed at the
next call, nothing is written anywhere after that, and every file system error is a
StoreError naming the path."""

from __future__ import annotations

import errno
import io
import os
import sqlite3
from pathlib import Path

import pytest

from mailtether import DuplicateGuard, MessageKey, SQLiteStore, StoreError, Write, store_from_url
from mailtether.cli._main import main


def _files(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under *directory*, with its size and modification time in nanoseconds."""
    return {
        str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
    }


@pytest.fixture
def store(tmp_path):
    opened = SQLiteStore(tmp_path / "state.db")
    opened.put("status", "support@example.com", "online", {"processed": 1})
    yield opened
    opened.close()


def _every_call(store: SQLiteStore):
    guard = DuplicateGuard(store)
    key = MessageKey.imap("support@example.com", "INBOX", 7, 42)
    return [
        lambda: store.get("status", "support@example.com"),
        lambda: store.put("status", "support@example.com", "offline", {}),
        lambda: store.put_many([Write("status", "sales@example.com", "online", {})]),
        lambda: store.scan("status"),
        lambda: store.count("status"),
        lambda: store.acquire("poll", "worker", 60),
        lambda: store.holder("poll"),
        lambda: guard.claim(key),
    ]


def test_a_deleted_file_is_noticed_and_nothing_is_written_after(tmp_path, store):
    path = tmp_path / "state.db"
    os.remove(path)
    before = _files(tmp_path)
    for call in _every_call(store):
        with pytest.raises(StoreError, match="was deleted while in use") as info:
            call()
        assert str(path) in str(info.value)
        assert "restart" in str(info.value), "the error says what to do"
    assert _files(tmp_path) == before, "no file made again, none written to"
    assert not path.exists()


def test_a_replaced_file_is_noticed_and_neither_file_is_written(tmp_path, store):
    path = tmp_path / "state.db"
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE unrelated (x)")
    connection.close()
    os.replace(other, path)
    before = _files(tmp_path)
    for call in _every_call(store):
        with pytest.raises(StoreError, match="was replaced by another file while in use") as info:
            call()
        assert str(path) in str(info.value)
    # (Reading the new file now would replay the old one's WAL into it: SQLite's own hazard
    # of a file replaced under its -wal, which only not writing on can keep from growing.)
    assert _files(tmp_path) == before, "neither the new file nor the old one's WAL written"


def test_the_same_file_moved_back_is_used_again(tmp_path, store):
    path = tmp_path / "state.db"
    os.rename(path, tmp_path / "aside.db")
    with pytest.raises(StoreError):
        store.get("status", "support@example.com")
    os.rename(tmp_path / "aside.db", path)
    assert store.get("status", "support@example.com").data == {"processed": 1}


def test_new_connections_after_a_deletion_do_not_make_the_file_again(tmp_path):
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    store._pool.close()  # no idle connection left: the next call would open a new one
    store._pool.closed = False
    os.remove(path)
    with pytest.raises(StoreError, match="deleted"):
        store.get("status", "x")
    assert not path.exists()


def test_a_directory_that_cannot_be_made_is_a_store_error(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create its directory") as info:
        SQLiteStore(tmp_path / "a-file" / "state.db")
    assert str(tmp_path / "a-file") in str(info.value)


def test_a_read_only_mount_is_a_store_error(tmp_path, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(StoreError, match="Read-only file system") as info:
        SQLiteStore(tmp_path / "new" / "state.db")
    assert str(tmp_path / "new") in str(info.value)


def test_a_file_sqlite_cannot_open_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="unable to open database file") as info:
        SQLiteStore(tmp_path)  # a directory
    assert str(tmp_path) in str(info.value)
    (tmp_path / "junk.db").write_bytes(b"this is no database, not even an empty one" * 100)
    with pytest.raises(StoreError, match="not a database") as info:
        SQLiteStore(tmp_path / "junk.db")
    assert "junk.db" in str(info.value)


# -- opening without creating -----------------------------------------------------------------


def test_create_false_refuses_a_missing_file_and_makes_nothing(tmp_path):
    with pytest.raises(StoreError, match="does not exist") as info:
        SQLiteStore(tmp_path / "nowhere" / "state.db", create=False)
    assert str(tmp_path / "nowhere" / "state.db") in str(info.value)
    with pytest.raises(StoreError, match="does not exist"):
        store_from_url(f"sqlite://{tmp_path}/state.db", create=False)
    assert list(tmp_path.iterdir()) == []


def test_create_false_refuses_a_database_that_is_not_a_store(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE unrelated (x)")
    connection.close()
    with pytest.raises(StoreError, match="is not a mailtether store"):
        SQLiteStore(path, create=False)
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT name FROM sqlite_master").fetchall() == [("unrelated",)]
    connection.close()


def test_create_false_opens_an_existing_store(tmp_path, store):
    again = SQLiteStore(tmp_path / "state.db", create=False)
    assert again.get("status", "support@example.com").state == "online"
    again.close()


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["resume", "support@example.com/INBOX"],
        ["release", "some-key"],
        ["drop", "some-key"],
    ],
)
def test_read_only_commands_never_create_a_store(tmp_path, argv):
    path = tmp_path / "typo" / "state.db"
    out = io.StringIO()
    assert main([*argv, "--store", f"sqlite://{path}"], out=out) == 3
    assert out.getvalue().count("\n") == 1
    assert out.getvalue().startswith("mailtether: ")
    assert f"{path} does not exist" in out.getvalue()
    assert list(tmp_path.iterdir()) == []


# -- the file's page size ------------------------------------------------------------------------


def _page_size(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        size = int(connection.execute("PRAGMA page_size").fetchone()[0])
    connection.close()
    return size


def test_a_new_file_has_small_pages_and_an_existing_one_keeps_its_own(tmp_path):
    store = SQLiteStore(tmp_path / "new.db")
    store.put("guard", "k", "done", {})
    store.close()
    assert _page_size(tmp_path / "new.db") == 2048
    older = tmp_path / "older.db"
    with sqlite3.connect(older) as connection:  # as a store made with SQLite's default pages
        connection.execute("PRAGMA page_size = 4096")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("CREATE TABLE unrelated (x)")
    connection.close()
    store = SQLiteStore(older)
    assert store.put("guard", "k", "done", {"n": 1}).version == 1
    lease = store.acquire("poll", "me", 60)
    assert lease is not None
    assert store.release(lease)
    store.close()
    assert _page_size(older) == 4096
