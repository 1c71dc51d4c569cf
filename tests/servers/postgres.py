"""A throwaway PostgreSQL cluster, run as the postgres user when the tests run as root."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import attrs

from . import ServerUnavailable, free_port, make_temp_dir, service_user, stop_process, wait_until

PASSWORD = "pg-test-secret"
USER = "mailtether"
DATABASE = "mailtether"


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
    """A PostgreSQL cluster on a free loopback port with a password user ``mailtether``.

    ``dsn`` is ``postgresql://mailtether:<PASSWORD>@127.0.0.1:<port>/mailtether``; the
    superuser ``mailtether`` owns the database ``mailtether``.
    """

    port: int = 0
    directory: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return self.dsn_via("127.0.0.1", self.port)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def user(self) -> str:
        return USER

    @property
    def password(self) -> str:
        return PASSWORD

    @property
    def database(self) -> str:
        return DATABASE

    def dsn_via(self, host: str, port: int) -> str:
        """The DSN with another host and port (a FaultProxy in front of the server)."""
        return f"postgresql://{USER}:{PASSWORD}@{host}:{port}/{DATABASE}"

    def start(self) -> PostgresServer:
        """Start (or, after ``stop(remove=False)``, restart on the same port and data)."""
        bin_dir = _bin_dir()
        as_postgres = service_user("postgres")
        fresh = self.directory is None
        if self.directory is None:
            self.directory = make_temp_dir("postgres")
            if as_postgres:
                shutil.chown(self.directory, "postgres", "postgres")
        data = self.directory / "data"
        log = self.directory / "postgres.log"
        # PostgreSQL refuses to run as root: every child runs as the postgres user, in a
        # directory it can read (the caller's working directory may be closed to it).
        run = {"cwd": self.directory, "env": {**os.environ, "LC_ALL": "C"}, **as_postgres}
        if fresh:
            pwfile = self.directory / "pw"
            pwfile.write_text(PASSWORD + "\n")
            if as_postgres:
                shutil.chown(pwfile, "postgres", "postgres")
            initdb = subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    USER,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--no-instructions",
                ],
                capture_output=True,
                text=True,
                check=False,
                **run,
            )
            if initdb.returncode != 0:
                self.stop()
                raise ServerUnavailable(f"initdb failed: {initdb.stderr.strip()[-500:]}")
            self.port = free_port()
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
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
                stdout=out,
                stderr=subprocess.STDOUT,
                **run,
            )

        def psql(sql: str, database: str = "postgres") -> subprocess.CompletedProcess[str]:
            assert self.directory is not None
            return subprocess.run(  # over the Unix socket, where initdb set up trust
                [
                    str(bin_dir / "psql"),
                    "-X",
                    "-q",
                    "-h",
                    str(self.directory),
                    "-p",
                    str(self.port),
                    "-U",
                    USER,
                    "-d",
                    database,
                    "-c",
                    sql,
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
                **run,
            )

        try:
            # The port opens before recovery ends: wait for a query to succeed instead.
            wait_until(
                lambda: psql("select 1").returncode == 0,
                timeout=30,
                what="PostgreSQL",
                process=self.process,
                log=log,
            )
            if fresh:
                created = psql(f"CREATE DATABASE {DATABASE}")
                if created.returncode != 0:
                    raise ServerUnavailable(f"could not create the test database: {created.stderr}")
        except BaseException:
            self.stop(remove=fresh)
            raise
        return self

    def stop(self, *, remove: bool = True) -> None:
        """Stop the server; with ``remove=False`` keep its data so :meth:`start` resumes."""
        if self.process is not None:
            # SIGINT is PostgreSQL's "fast" shutdown: open sessions are ended, not waited for.
            stop_process(self.process, signal_number=signal.SIGINT, grace=15)
            self.process = None
        if remove and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
