"""A throwaway redis-server without persistence (but for a restart that keeps its data)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import attrs

from . import ServerUnavailable, free_port, make_temp_dir, stop_process, wait_until


@attrs.define
class RedisServer:
    """A redis-server on a free loopback port, without persistence; ``url`` is ``redis://...``.

    Stopped and started again as it is, its data is gone; :meth:`stop` with ``remove=False``
    saves it first (``SHUTDOWN SAVE``), so :meth:`start` resumes with it, like a server
    that persists.
    """

    port: int = 0
    directory: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self) -> RedisServer:
        """Start (or, after ``stop(remove=False)``, restart on the same port and data)."""
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise ServerUnavailable(
                "redis-server is not installed: run scripts/install-test-servers "
                "(Debian: apt-get install redis-server)"
            )
        if self.directory is None:
            self.directory = make_temp_dir("redis")
            self.port = free_port()
        log = self.directory / "redis.log"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(self._pong, timeout=15, what="redis-server", process=self.process, log=log)
        except ServerUnavailable:
            self.stop()
            raise
        return self

    def _pong(self) -> bool:
        try:
            with socket.create_connection(self.address, timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, *, remove: bool = True) -> None:
        """Stop the server; with ``remove=False`` save its data so :meth:`start` resumes."""
        if self.process is not None:
            if not remove and self.process.poll() is None:
                with socket.create_connection(self.address, timeout=10) as conn:
                    conn.sendall(b"SHUTDOWN SAVE\r\n")
                    answer = conn.recv(256)  # nothing: it saved, and closed the connection
                if answer:
                    raise RuntimeError(f"redis-server did not save its data: {answer!r}")
            stop_process(self.process)
            self.process = None
        if remove and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
