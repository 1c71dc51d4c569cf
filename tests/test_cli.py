"""The mailtether command line: status, resume, release, drop."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from mailtether import DuplicateGuard, MessageKey, SourceState, SQLiteStore, StatusBoard
from mailtether.cli._main import main


@pytest.fixture
def url(tmp_path) -> str:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    board = StatusBoard(store, notifiers=[])
    board.set("support@example.com/INBOX", SourceState.ONLINE, processed=12)
    board.set(
        "sales@example.com/INBOX", SourceState.BLOCKED, reason="the server rejected the credentials"
    )
    guard = DuplicateGuard(store, max_failures=1)
    for uid in (7, 8):
        with (
            pytest.raises(ValueError, match="cannot parse"),
            guard.claim(MessageKey.imap("support@example.com", "INBOX", 3, uid)),
        ):
            raise ValueError("cannot parse the attachment")
    store.close()
    return f"sqlite://{path}"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def test_status_table(url):
    code, text = run("status", "--store", url)
    assert code == 0
    assert "sales@example.com/INBOX" in text
    assert "BLOCKED" in text
    assert "the server rejected the credentials" in text
    assert "12/0" in text
    assert "held messages" in text
    assert "cannot parse the attachment" in text


def test_status_json(url):
    code, text = run("status", "--store", url, "--json")
    data = json.loads(text)
    assert code == 0
    assert {s["source"]: s["state"] for s in data["sources"]} == {
        "sales@example.com/INBOX": "blocked",
        "support@example.com/INBOX": "online",
    }
    assert data["messages"]["held"] == 2
    assert len(data["held"]) == 2


def test_resume(url):
    assert run("resume", "sales@example.com/INBOX", "--store", url) == (
        0,
        "sales@example.com/INBOX: resume requested\n",
    )
    assert run("resume", "support@example.com/INBOX", "--store", url)[0] == 1


def test_release_and_drop(url):
    held = json.loads(run("status", "--store", url, "--json")[1])["held"]
    first, second = held[0]["key"], held[1]["key"]
    assert run("release", first, "--store", url)[0] == 0
    assert run("drop", second, "--store", url, "--by", "alice")[0] == 0
    assert run("drop", second, "--store", url)[0] == 1, "already dropped"
    data = json.loads(run("status", "--store", url, "--json")[1])
    assert data["messages"]["held"] == 0
    assert data["messages"]["dropped"] == 1


def test_bad_store_and_usage():
    assert run("status", "--store", "ftp://nowhere")[0] == 3
    assert run("frobnicate")[0] == 2


def test_python_dash_m(url):
    result = subprocess.run(
        [sys.executable, "-m", "mailtether", "status", "--store", url, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout)["messages"]["held"] == 2


def test_json_on_every_command(url):
    code, text = run("resume", "sales@example.com/INBOX", "--store", url, "--json")
    assert code == 0
    assert json.loads(text) == {
        "source": "sales@example.com/INBOX",
        "ok": True,
        "result": "resume requested",
    }
    key = json.loads(run("status", "--store", url, "--json")[1])["held"][0]["key"]
    code, text = run("drop", key, "--store", url, "--json")
    assert json.loads(text)["ok"] is True
    code, text = run("release", "no-such-key", "--store", url, "--json")
    assert code == 1
    assert json.loads(text)["ok"] is False


def test_unexpected_errors_are_one_line_unless_debug(tmp_path, monkeypatch):
    import mailtether.cli._main as cli

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "store_from_url", explode)
    code, text = run("status", "--store", "sqlite:x.db")
    assert code == 3
    assert text == "mailtether: unexpected RuntimeError: boom (rerun with --debug)\n"
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "status", "--store", "sqlite:x.db"], out=io.StringIO())


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "abc"])
def test_check_timeout_must_be_a_duration(capsys, value):
    assert run("check", "imaps://u:p@example.com/", f"--timeout={value}")[0] == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("mailtether check: argument --timeout: the value must be a positive")


def test_usage_errors_are_one_line_saying_where_help_is(capsys):
    assert run("release")[0] == 2
    assert capsys.readouterr().err == (
        "mailtether release: the following arguments are required: key "
        "(see mailtether release --help)\n"
    )


def test_a_missing_sqlite_store_is_not_created_by_status(tmp_path):
    path = tmp_path / "stat.db"  # a typo of state.db
    code, text = run("status", "--store", f"sqlite://{path}")
    assert code == 3
    assert text == (
        f"mailtether: the SQLiteStore file {path} does not exist: check the path, or start a "
        "listener on it first\n"
    )
    assert not path.exists()
