"""Start a throwaway redis-server on a free loopback port for a benchmark run."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[int | None]:
    """Yield the port of a fresh redis-server, or None if redis-server is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                        conn.sendall(b"PING\r\n")
                        if conn.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            yield port
        finally:
            process.terminate()
            process.wait(10)


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@contextlib.contextmanager
def postgres_server() -> Iterator[str | None]:
    """Yield the DSN of a fresh PostgreSQL cluster, or None if the binaries are missing.

    PostgreSQL refuses to run as root: as root, the cluster runs as the ``postgres`` user.
    """
    bin_dir = _postgres_bin()
    if bin_dir is None:
        yield None
        return
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="mailtether-bench-pg-")
    os.chmod(tmp, 0o777)
    data = Path(tmp) / "data"
    try:
        subprocess.run(
            [
                *as_user,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "bench",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        process = subprocess.Popen(
            [
                *as_user,
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                tmp,
                "-h",
                "127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while (
                subprocess.run(
                    [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                    stdout=subprocess.DEVNULL,
                ).returncode
                != 0
            ):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("PostgreSQL did not start")
                time.sleep(0.05)
            yield f"postgresql://bench@127.0.0.1:{port}/postgres"
        finally:
            process.terminate()
            process.wait(30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
