"""A throwaway PostgreSQL cluster, run as the postgres user when the tests run as root."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import attrs

from . import ServerUnavailable, as_service_user, free_port, make_temp_dir, port_open, wait_until

PASSWORD = "pg-test-secret"


def _bin_dir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise ServerUnavailable(
        "PostgreSQL server binaries are not installed: run scripts/install-test-servers "
        "(Debian: apt-get install postgresql)"
    )


@attrs.define
class PostgresServer:
    """A PostgreSQL cluster on a free loopback port with a password user ``mailtether``."""

    port: int = 0
    directory: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://mailtether:{PASSWORD}@127.0.0.1:{self.port}/mailtether"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def dsn_via(self, host: str, port: int) -> str:
        """The DSN with another host and port (a FaultProxy in front of the server)."""
        return f"postgresql://mailtether:{PASSWORD}@{host}:{port}/mailtether"

    def start(self) -> PostgresServer:
        bin_dir = _bin_dir()
        self.directory = make_temp_dir("postgres")
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        data = self.directory / "data"
        pwfile = self.directory / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        log = self.directory / "postgres.log"
        initdb = subprocess.run(
            as_service_user(
                "postgres",
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "mailtether",
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--no-instructions",
                ],
            ),
            capture_output=True,
            text=True,
        )
        if initdb.returncode != 0:
            raise ServerUnavailable(f"initdb failed: {initdb.stderr.strip()[-500:]}")
        self.port = free_port()
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                as_service_user(
                    "postgres",
                    [
                        str(bin_dir / "postgres"),
                        "-D",
                        str(data),
                        "-p",
                        str(self.port),
                        "-k",
                        str(self.directory),
                        "-h",
                        "127.0.0.1",
                        "-c",
                        "fsync=off",
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                        "-c",
                        "max_connections=200",
                    ],
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(
            lambda: port_open(self.port),
            timeout=30,
            what="PostgreSQL",
            process=self.process,
            log=log,
        )
        created = subprocess.run(
            as_service_user(
                "postgres",
                [
                    str(bin_dir / "psql"),
                    "-h",
                    str(self.directory),
                    "-p",
                    str(self.port),
                    "-U",
                    "mailtether",
                    "-d",
                    "postgres",
                    "-c",
                    "CREATE DATABASE mailtether",
                ],
            ),
            capture_output=True,
            text=True,
        )
        if created.returncode != 0:
            raise ServerUnavailable(f"could not create the test database: {created.stderr}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
