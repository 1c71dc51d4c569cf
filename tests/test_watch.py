"""`mailtether watch`: a listener from the command line, stopped cleanly by Ctrl-C."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailtether.cli._main import main

HANDLER = """
from pathlib import Path

import pytest

def handle(delivery):
    with open(Path(__file__).with_name("handled.txt"), "a") as out:
        out.write(str(delivery.message["Subject"]) + "\\n")
"""


def _start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    (tmp_path / "my_handlers.py").write_text(HANDLER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.Popen(
        [sys.executable, "-m", "mailtether", "watch", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _handled(tmp_path: Path) -> list[str]:
    path = tmp_path / "handled.txt"
    return path.read_text().splitlines() if path.exists() else []


def _wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _url(mailbox) -> str:
    return (
        f"imap://{mailbox.user}:{mailbox.password}@127.0.0.1:{mailbox.server.imap_port}/INBOX"
        "?security=plain"
    )


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    output, _ = process.communicate(timeout=10)
    assert process.returncode == 0, output
    assert time.monotonic() - started < 3, "Ctrl-C stops it promptly"
    return output


def test_watch_handles_mail_and_stops_on_ctrl_c(mailbox, tmp_path):
    process = _start(
        tmp_path,
        _url(mailbox),
        "--handler",
        "my_handlers:handle",
        "--store",
        f"sqlite:{tmp_path / 'state.db'}",
        "--poll-interval",
        "1s",
        "--idle-renewal",
        "1s",
        "--response-timeout",
        "1s",
    )
    try:
        mailbox.append(b"Subject: from the command line\r\n\r\nhi\r\n")
        _wait_for(lambda: _handled(tmp_path) == ["from the command line"])
    finally:
        output = _stop(process)
    assert "ONLINE" in output
    assert "stopped in" in output
    assert mailbox.password not in output


def test_watch_from_a_toml_file(mailbox, tmp_path):
    (tmp_path / "watch.toml").write_text(
        "[watch]\n"
        f'url = "{_url(mailbox)}"\n'
        'handler = "my_handlers:handle"\n'
        f'store = "sqlite:{tmp_path / "state.db"}"\n'
        'reconnect = "fixed 1s"\n'
        'poll_interval = "1s"\n'
    )
    process = _start(tmp_path, "--config", "watch.toml", "--quiet")
    try:
        mailbox.append(b"Subject: from a TOML file\r\n\r\nhi\r\n")
        _wait_for(lambda: _handled(tmp_path) == ["from a TOML file"])
    finally:
        _stop(process)


def test_watch_needs_a_handler_it_can_import(tmp_path):
    out = io.StringIO()
    code = main(
        [
            "watch",
            "imaps://u:p@example.com/",
            "--handler",
            "nope_module:handle",
            "--store",
            f"sqlite:{tmp_path / 's.db'}",
        ],
        out=out,
    )
    assert code == 2
    assert "cannot import handler module 'nope_module'" in out.getvalue()
    out = io.StringIO()
    assert main(["watch", "imaps://u:p@example.com/"], out=out) == 2
    assert "--handler" in out.getvalue()


# -- numbers are checked before anything starts ---------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--lease-ttl", "0"),
        ("--lease-ttl", "-1"),
        ("--poll-interval", "nan"),
        ("--poll-interval", "inf"),
        ("--noop-interval", "-1"),
        ("--idle-renewal", "0"),
        ("--response-timeout", "abc"),
        ("--response-timeout", "1e400"),
        ("--max-failures", "0"),
        ("--max-failures", "2.5"),
        ("--max-failures", "nan"),
    ],
)
def test_a_bad_number_is_refused_naming_its_flag(tmp_path, capsys, flag, value):
    argv = ["watch", "imaps://u:p@example.com/", "--handler", "my_handlers:handle"]
    store = tmp_path / "s.db"
    out = io.StringIO()
    assert main([*argv, "--store", f"sqlite:{store}", f"{flag}={value}"], out=out) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    assert error.startswith(f"mailtether watch: argument {flag}: the value must be")
    assert f"got {value}" in error.replace("'", "")
    assert not store.exists(), "refused before the store is opened"


def test_zero_disables_the_noop_and_durations_take_units(tmp_path, capsys):
    out = io.StringIO()
    argv = ["watch", "imaps://u:p@example.com/", "--handler", "nope_module:handle"]
    flags = ["--noop-interval", "0", "--lease-ttl", "2m", "--poll-interval", "90s"]
    assert main([*argv, *flags, "--store", f"sqlite:{tmp_path / 's.db'}"], out=out) == 2
    assert capsys.readouterr().err == ""
    assert "cannot import handler module" in out.getvalue(), "got past the flags"


def test_lease_ttl_zero_exits_2_in_one_line_without_a_traceback(tmp_path):
    process = _start(tmp_path, "imaps://u:p@example.com/", "--handler", "x:y", "--lease-ttl", "0")
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 2, output
    assert output.splitlines() == [
        "mailtether watch: argument --lease-ttl: the value must be a positive number of seconds "
        "(finite: a number, a timedelta, or a string like '15s' or '2m'), got '0' "
        "(see mailtether watch --help)"
    ]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("lease_ttl = nan", "lease_ttl in watch.toml must be a positive number of seconds"),
        ("poll_interval = -5", "poll_interval in watch.toml must be a positive number"),
        ('idle_renewal = "soon"', "idle_renewal in watch.toml must be a positive number"),
        ("noop_interval = inf", "noop_interval in watch.toml must be a number of seconds >= 0"),
        ("max_failures = true", "max_failures in watch.toml must be a whole number >= 1"),
        ("max_failures = 2.5", "max_failures in watch.toml must be a whole number >= 1"),
    ],
)
def test_a_bad_number_in_the_settings_file_is_refused_naming_it(tmp_path, monkeypatch, line, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "watch.toml").write_text(
        f'[watch]\nurl = "imaps://u:p@example.com/"\nhandler = "json:dumps"\n{line}\n'
    )
    out = io.StringIO()
    code = main(
        ["watch", "--config", "watch.toml", "--store", f"sqlite:{tmp_path}/s.db"],
        out=out,
    )
    assert code == 2
    assert out.getvalue().startswith(f"mailtether: {words}"), out.getvalue()
    assert out.getvalue().count("\n") == 1
    assert not (tmp_path / "s.db").exists()


def test_watch_forwards_a_held_mail_for_review_through_its_relay(mailbox, tmp_path):
    from servers.smtp import Scripted, smtp_server

    (tmp_path / "picky.py").write_text(
        "def handle(delivery):\n"
        "    if 'poison' in str(delivery.message['Subject']):\n"
        "        raise ValueError('not a ticket')\n"
    )
    scripted = Scripted()
    with smtp_server(scripted) as port:
        process = _start(
            tmp_path,
            _url(mailbox),
            "--handler",
            "picky:handle",
            "--store",
            f"sqlite:{tmp_path / 'state.db'}",
            "--max-failures",
            "1",
            "--on-poison",
            "forward:admin@example.com",
            "--relay",
            f"smtp://127.0.0.1:{port}/?security=plain",
            "--poll-interval",
            "1s",
            "--quiet",
        )
        try:
            mailbox.append(b"Subject: poison pill\r\n\r\nhi\r\n")
            _wait_for(lambda: len(scripted.received) == 1)
        finally:
            _stop(process)
    ((_, to, review),) = scripted.received
    assert to == ("admin@example.com",)
    assert b"held for review: poison pill" in review
    assert b"ValueError: not a ticket" in review


def test_watch_refuses_forward_without_a_relay(tmp_path, capsys):
    (tmp_path / "my_handlers.py").write_text(HANDLER)
    sys.path.insert(0, str(tmp_path))
    try:
        code = main(
            [
                "watch",
                "imap://u:p@127.0.0.1:1/INBOX?security=plain",
                "--handler",
                "my_handlers:handle",
                "--store",
                "memory:",
                "--on-poison",
                "forward:admin@example.com",
            ]
        )
    finally:
        sys.path.remove(str(tmp_path))
    assert code == 2
    said = capsys.readouterr()
    assert "needs --relay" in said.out + said.err
