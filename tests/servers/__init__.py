"""Real servers for the integration tests: Dovecot, Redis, PostgreSQL, on loopback ports.

Each runner starts its server in a temporary directory on free ports, waits until it
answers (polling with a deadline, never a fixed sleep), and stops it cleanly. When a server
cannot start, :class:`ServerUnavailable` says why.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["ServerUnavailable", "as_service_user", "free_port", "make_temp_dir", "wait_until"]


class ServerUnavailable(RuntimeError):
    """A test server could not be started; the message says why and what to install."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process is not None and process.poll() is not None:
            raise ServerUnavailable(f"{what} exited with {process.returncode}{_tail(log)}")
        if time.monotonic() > deadline:
            raise ServerUnavailable(f"{what} did not answer within {timeout} s{_tail(log)}")
        time.sleep(0.02)


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    lines = log.read_text(errors="replace").splitlines()[-15:]
    return ":\n  " + "\n  ".join(lines)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def make_temp_dir(prefix: str) -> Path:
    """A directory the servers' unprivileged users can traverse (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=f"mailtether-{prefix}-"))
    path.chmod(0o755)
    return path


def as_service_user(user: str, command: Sequence[str]) -> list[str]:
    """Run *command* as *user* when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return list(command)
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ServerUnavailable("running as root needs runuser (util-linux) to drop privileges")
    return [runuser, "-u", user, "--", *command]
