"""Real servers for the integration tests: Dovecot, Redis, PostgreSQL, on loopback ports.

Each runner starts its server in a temporary directory on free ports, waits until it
answers (polling with a deadline, never a fixed sleep), and stops it cleanly. When a server
cannot start, :class:`ServerUnavailable` says why.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")

__all__ = [
    "ServerUnavailable",
    "free_port",
    "in_ci",
    "make_temp_dir",
    "port_open",
    "service_user",
    "start_or_skip",
    "stop_process",
    "tail",
    "wait_until",
]


class ServerUnavailable(RuntimeError):
    """A test server could not be started; the message says why and what to install."""


def in_ci() -> bool:
    """Whether the ``CI`` environment variable is set (as ``.ci/run`` has it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def start_or_skip(what: str, start: Callable[[], _T]) -> _T:
    """*start()*; a server that cannot start fails the test in CI and skips it elsewhere."""
    import pytest

    try:
        return start()
    except ServerUnavailable as error:
        reason = str(error)
    # Outside the except block, so the report shows the reason and not a chained traceback.
    if in_ci():
        pytest.fail(f"{what} could not start, and CI must not skip it: {reason}", pytrace=False)
    pytest.skip(f"{what} unavailable (outside CI this skips): {reason}")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """*count* distinct free loopback ports (probes held open together, so none repeats)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | Sequence[Path] = (),
) -> None:
    """Poll *ready* until it is true; raise with the tail of the *log* files when it is not.

    Fails early when *process* exits, and at the latest after *timeout* seconds.
    """
    logs = [log] if isinstance(log, Path) else list(log)
    deadline = time.monotonic() + timeout
    while not ready():
        if process is not None and process.poll() is not None:
            raise ServerUnavailable(f"{what} exited with {process.returncode}{tail(logs)}")
        if time.monotonic() > deadline:
            raise ServerUnavailable(f"{what} did not answer within {timeout} s{tail(logs)}")
        time.sleep(0.02)


def tail(logs: Sequence[Path], lines: int = 15) -> str:
    """The last *lines* of each non-empty log file, indented, for an error message."""
    parts = []
    for log in logs:
        if log.exists() and (text := log.read_text(errors="replace").strip()):
            last = text.splitlines()[-lines:]
            parts.append(f"\n  -- {log.name}:\n  " + "\n  ".join(last))
    return "".join(parts)


def stop_process(
    process: subprocess.Popen[bytes], *, signal_number: int = signal.SIGTERM, grace: float = 10
) -> None:
    """Send *signal_number*, wait up to *grace* seconds, then SIGKILL and reap."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal_number)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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


def service_user(user: str) -> dict[str, str]:
    """``subprocess`` keyword arguments that run a child as *user* when we are root.

    Unlike a ``runuser`` wrapper, the child is then the process we signal: a SIGINT reaches
    the server itself, and no wrapper waits and kills it on its own schedule.
    """
    if os.geteuid() != 0:
        return {}
    return {"user": user, "group": user}
