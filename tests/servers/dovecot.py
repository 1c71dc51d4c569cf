"""A throwaway Dovecot (IMAP + POP3, plain and TLS) with passwd-file users and maildirs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
from imapclient import IMAPClient

from . import ServerUnavailable, free_ports, make_temp_dir, port_open, stop_process, wait_until
from .tls import TestCA

if TYPE_CHECKING:
    from .oauth2 import OAuth2Server

_POOL = 1000

_CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain login apop
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 1
mail_uid = dovecot
mail_gid = dovecot
mail_location = maildir:{root}/mail/%u
mail_max_userip_connections = {max_connections}
imap_idle_notify_interval = {idle_notify}
auth_failure_delay = 0
login_greeting = mailtether test server ready.
mail_plugins =
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={root}/mail/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s}
    ssl = yes
  }}
}}
# No per-IP penalty after a failed login (up to 15 s per attempt): tests log in with wrong
# passwords on purpose, all from 127.0.0.1.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
protocol pop3 {{
  pop3_uidl_format = %08Xu%08Xv
  # One POP3 session per maildrop, as many servers do: a second one gets [IN-USE].
  pop3_lock_session = yes
}}
"""

# With ``DovecotServer(ca, process_limit=N)``: many sessions at once (benchmarks/fleet.py).
_LIMITS = """\
default_process_limit = {processes}
default_client_limit = {clients}
service imap {{
  process_limit = {imap}
}}
"""

# With ``DovecotServer(ca, oauth2=server)``: the changes to _CONFIG (the module docstring of
# tests/test_oauth2_testbed.py says why each is needed). The password file answers only the
# password mechanisms (and "none": doveadm's user lookups, which the static userdb checks with a
# passdb), the OAuth2 passdb only the token ones, so a token is never compared with a password,
# nor a wrong password sent to the introspection endpoint.
_OAUTH2_MECHANISMS = "plain login apop xoauth2 oauthbearer"
_OAUTH2_PASSWD_MECHANISMS = "  mechanisms = plain login apop none\n"
_OAUTH2_CONFIG = """\
# Every login asks the introspection endpoint again: a cached success would let an expired
# or revoked token in (0 is Dovecot's default; stated so a later change cannot slip past).
auth_cache_size = 0
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {root}/dovecot-oauth2.conf.ext
}}
"""
_OAUTH2_EXT = """\
# RFC 7662 introspection: POST token=<access token>, Basic credentials from the URL.
introspection_mode = post
introspection_url = {url}
# The introspection answer names the token's owner in "username"; it must equal the login name.
username_attribute = username
# The RFC 7662 flag, checked by name ({{"active": false}} fails a login on 2.3.19 even without).
active_attribute = active
active_value = true
timeout_msecs = {timeout_msecs}
"""


@attrs.define
class DovecotServer:
    """A Dovecot on free loopback ports: IMAP, IMAPS, POP3, POP3S (STARTTLS/STLS offered)."""

    ca: TestCA
    idle_notify: str = "2 mins"
    """``imap_idle_notify_interval``: how often IDLE hears ``* OK Still here``."""
    max_connections: int = 20
    """``mail_max_userip_connections``: IMAP sessions per user and IP."""
    binary: str | None = None
    """The ``dovecot`` executable; found on PATH or in /usr/sbin when not given."""
    root: Path | None = None
    imap_port: int = 0
    imaps_port: int = 0
    pop3_port: int = 0
    pop3s_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    _users: dict[str, str] = attrs.field(factory=dict)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _counter: int = 0
    _version: int = 0
    _epoch: float = attrs.field(factory=lambda: float(int(time.time()) - 100_000))
    oauth2: OAuth2Server | None = attrs.field(default=None, kw_only=True)
    """An OAuth2 server to check tokens with: adds XOAUTH2 and OAUTHBEARER and a ``passdb
    oauth2`` asking its introspection endpoint (the password users keep working). It must be
    started before this server; its introspection port is written into the configuration."""
    oauth2_timeout_msecs: int = attrs.field(default=5000, kw_only=True)
    """With :attr:`oauth2`: how long Dovecot waits for the introspection endpoint."""
    process_limit: int | None = attrs.field(default=None, kw_only=True)
    """How many sessions may log in at once and stay open: ``default_process_limit`` (each
    login is an ``imap-login`` process of its own, 100 at most by default: past them,
    connections wait unanswered) and the ``imap`` service's limit (one process a session,
    1024 by default), with the client limits of the services every process talks to (log,
    anvil, stats). ``None``: Dovecot's defaults."""

    @property
    def config(self) -> Path:
        assert self.root is not None
        return self.root / "dovecot.conf"

    @property
    def log(self) -> Path:
        assert self.root is not None
        return self.root / "dovecot.log"

    @property
    def stderr_log(self) -> Path:
        """Where the master's stderr goes: configuration errors land here, not in :attr:`log`."""
        assert self.root is not None
        return self.root / "dovecot.stderr"

    @property
    def imap_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.imap_port)

    @property
    def imaps_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.imaps_port)

    @property
    def pop3_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.pop3_port)

    @property
    def pop3s_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.pop3s_port)

    def start(self) -> DovecotServer:
        """Start (or, after ``stop(remove=False)``, restart) and wait until logins work."""
        binary = self.binary or shutil.which("dovecot") or "/usr/sbin/dovecot"
        if not Path(binary).is_file():
            raise ServerUnavailable(
                "Dovecot is not installed: run scripts/install-test-servers "
                "(Debian: apt-get install dovecot-imapd dovecot-pop3d)"
            )
        if self.root is None:
            self.root = make_temp_dir("dovecot")
            for sub in ("run", "state", "mail"):
                (self.root / sub).mkdir(mode=0o755)
            if os.geteuid() == 0:
                shutil.chown(self.root / "mail", "dovecot", "dovecot")
            ports = free_ports(4)
            self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = ports
            certs = self.root / "certs"
            certs.mkdir(mode=0o755)
            cert, key = certs / "server.pem", certs / "server.key"
            shutil.copy(self.ca.cert_pem, cert)
            shutil.copy(self.ca.key_pem, key)
            self._users = {f"user{n}": "secret-pw" for n in range(1, _POOL + 1)}
            self._write_passwd()
            config = _CONFIG.format(
                root=self.root,
                cert=cert,
                key=key,
                imap=self.imap_port,
                imaps=self.imaps_port,
                pop3=self.pop3_port,
                pop3s=self.pop3s_port,
                idle_notify=self.idle_notify,
                max_connections=self.max_connections,
            )
            if self.oauth2 is not None:
                config = self._with_oauth2(config, self.oauth2)
            if self.process_limit is not None:
                config += _LIMITS.format(
                    processes=self.process_limit,
                    imap=max(1024, self.process_limit),
                    clients=max(1000, 4 * self.process_limit),
                )
            self.config.write_text(config)
        with open(self.stderr_log, "wb") as stderr:
            self.process = subprocess.Popen(
                [binary, "-F", "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,  # its own process group: stop() ends every child too
            )
        try:
            wait_until(
                self._ready,
                timeout=20,
                what="Dovecot",
                process=self.process,
                log=(self.stderr_log, self.log),
            )
        except ServerUnavailable:
            self.stop(remove=False)
            raise
        return self

    def _with_oauth2(self, config: str, oauth2: OAuth2Server) -> str:
        assert self.root is not None
        ext = self.root / "dovecot-oauth2.conf.ext"
        ext.write_text(
            _OAUTH2_EXT.format(
                url=oauth2.introspection_url_with_auth, timeout_msecs=self.oauth2_timeout_msecs
            )
        )
        ext.chmod(0o644)
        mechanisms = "auth_mechanisms = plain login apop\n"
        passwd = "  driver = passwd-file\n"
        assert mechanisms in config
        assert passwd in config
        config = config.replace(mechanisms, f"auth_mechanisms = {_OAUTH2_MECHANISMS}\n")
        config = config.replace(passwd, passwd + _OAUTH2_PASSWD_MECHANISMS)
        return config + _OAUTH2_CONFIG.format(root=self.root)

    def _ready(self) -> bool:
        # A login process sends its greeting only once the auth process answers it, so a
        # greeting on both plain ports means logins work; the TLS ports need only listen.
        return (
            _greets(self.imap_port, b"* OK")
            and _greets(self.pop3_port, b"+OK")
            and port_open(self.imaps_port)
            and port_open(self.pop3s_port)
        )

    def stop(self, *, remove: bool = True) -> None:
        """Stop the server; with ``remove=False`` keep the mail so :meth:`start` resumes."""
        if self.process is not None:
            # SIGTERM first, so sessions hear BYE as on a real shutdown. The master waits up
            # to 6 s for children that ignore it, so do not wait that long.
            stop_process(self.process, grace=3)
            # Session processes outlive the master (as on a real server); a stopped test
            # server takes them along, like a host going down.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process = None
        if remove and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    # -- users and mail ------------------------------------------------------------------------

    def add_user(self) -> str:
        """Hand out a fresh user (with an empty INBOX) and return its name.

        Users come from a pool written before the server started: Dovecot notices a changed
        passwd-file only about a second later.
        """
        with self._lock:
            self._counter += 1
            if self._counter > _POOL:
                raise RuntimeError(f"the test Dovecot has only {_POOL} users")
            return f"user{self._counter}"

    def set_password(self, user: str, password: str) -> None:
        """Change a user's password (an expired or rotated password), effective at once."""
        with self._lock:
            self._users[user] = password
            self._write_passwd()
        self.doveadm("reload")  # a new auth process reads the file now, not seconds later
        # Wait (bounded) until Dovecot has re-read the file: logins fail without delay here.
        deadline = time.monotonic() + 5
        while True:
            try:
                self.client(user).logout()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def password(self, user: str) -> str:
        return self._users[user]

    def _write_passwd(self) -> None:
        assert self.root is not None
        # "nodelay": a failed login is answered at once, and costs no penalty for the IP.
        lines = "".join(
            f"{user}:{{PLAIN}}{pw}::::::nodelay=y\n" for user, pw in self._users.items()
        )
        path = self.root / "passwd"
        temporary = path.with_suffix(".new")
        temporary.write_text(lines)
        temporary.chmod(0o644)
        # Dovecot re-reads a passwd-file when its mtime changes, at one-second resolution:
        # give every version its own second so no change goes unnoticed.
        self._version += 1
        stamp = self._epoch + self._version
        os.utime(temporary, (stamp, stamp))
        temporary.replace(path)  # atomic: Dovecot never reads half a file

    def doveadm(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run ``doveadm -c CONFIG ARGS...`` against this server; raise if it fails."""
        doveadm = shutil.which("doveadm") or "/usr/bin/doveadm"
        result = subprocess.run(
            [doveadm, "-c", str(self.config), *args],
            input=input,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)} failed: {result.stderr.decode()}")
        return result

    def save(self, user: str, raw: bytes, folder: str = "INBOX") -> None:
        """Deliver *raw* into *folder* server-side (doveadm save), as local delivery would."""
        self.doveadm("save", "-u", user, "-m", folder, input=raw)

    def append(self, user: str, raw: bytes, folder: str = "INBOX") -> int | None:
        """Deliver *raw* by IMAP APPEND over a second connection; return its UID."""
        with self.client(user) as client:
            response = client.append(folder, raw)
        # "[APPENDUID <uidvalidity> <uid>] Append completed."
        text = response.decode() if isinstance(response, bytes) else str(response)
        if "APPENDUID" in text:
            return int(text.split("APPENDUID", 1)[1].split()[1].rstrip("]"))
        return None

    def kick(self, user: str) -> None:
        """Disconnect every session of *user* server-side (the server says BYE)."""
        self.doveadm("kick", user)

    def client(self, user: str, *, ssl: bool = False, timeout: float = 10) -> IMAPClient:
        """A logged-in imapclient connection (plain, or IMAPS verified by the test CA)."""
        if ssl:
            client = IMAPClient(
                "127.0.0.1",
                port=self.imaps_port,
                ssl=True,
                ssl_context=self.ca.client_context(),
                timeout=timeout,
            )
        else:
            client = IMAPClient("127.0.0.1", port=self.imap_port, ssl=False, timeout=timeout)
        client.login(user, self._users[user])
        return client


def _greets(port: int, greeting: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            return conn.recv(256).startswith(greeting)
    except OSError:
        return False
