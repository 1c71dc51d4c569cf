"""`mailtether watch`: a listener from the command line, stopped cleanly by Ctrl-C."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mailtether.cli._main import main

HANDLER = """
from pathlib import Path

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
