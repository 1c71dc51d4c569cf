"""``check``: walk a connection step by step and say, in one sentence, what is wrong."""

from __future__ import annotations

import base64
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

import attrs

from mailtether._settings import ImapSettings

__all__ = ["CheckReport", "CheckStep", "check"]

# Exit codes of `mailtether check`.
OK: Final = 0
UNREACHABLE: Final = 4
MISCONFIGURED: Final = 5


@attrs.frozen
class CheckStep:
    """One step of a connection check."""

    name: str
    """The step: ``dns``, ``tcp``, ``tls``, ``greeting``, ``capabilities``, ``starttls``,
    ``login`` or ``select``."""
    ok: bool
    seconds: float
    detail: str = ""


@attrs.frozen
class CheckReport:
    """The result of :func:`check`: every step, and one sentence for a person."""

    target: str
    """What was checked (no password)."""
    steps: tuple[CheckStep, ...]
    ok: bool
    sentence: str
    """What failed, the likely cause and what to do; or that all is well."""
    reachable: bool
    """``False`` when the server could not be reached at all (DNS, network, firewall)."""

    @property
    def exit_code(self) -> int:
        """0 when all is well, 4 when unreachable, 5 when reachable but misconfigured."""
        if self.ok:
            return OK
        return MISCONFIGURED if self.reachable else UNREACHABLE

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict (``mailtether check --json``)."""
        return {
            "target": self.target,
            "ok": self.ok,
            "reachable": self.reachable,
            "exit_code": self.exit_code,
            "sentence": self.sentence,
            "steps": [attrs.asdict(step) for step in self.steps],
        }


class _Failed(Exception):
    def __init__(self, sentence: str, *, reachable: bool, detail: str = "") -> None:
        super().__init__(sentence)
        self.sentence = sentence
        self.reachable = reachable
        self.detail = detail


class _Wire:
    """The smallest IMAP client: lines and tagged responses, with a deadline on each read."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket) -> None:
        self.sock = sock
        self.buffer = b""
        self.tag = 0

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def command(self, text: bytes) -> tuple[str, list[bytes]]:
        self.tag += 1
        tag = b"c%d" % self.tag
        self.sock.sendall(tag + b" " + text + b"\r\n")
        return self.until(tag)

    def until(self, tag: bytes) -> tuple[str, list[bytes]]:
        untagged: list[bytes] = []
        while True:
            line = self.line()
            if line.startswith(tag + b" "):
                status = line[len(tag) + 1 :].split(b" ", 1)[0].decode("ascii", "replace")
                untagged.append(line)
                return status, untagged
            if line.startswith(b"+"):
                return "+", [line]
            untagged.append(line)


def _quoted(text: str) -> bytes:
    return b'"' + text.encode("utf-8").replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def check(
    target: str | ImapSettings, *, timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None
) -> CheckReport:
    """Walk DNS, TCP, TLS/STARTTLS, greeting, capabilities, login and select, timing each.

    Stops at the first step that fails and says which, why, and what to do, in one
    sentence. Never raises for a connection problem, and never shows the password.

    Args:
        target: An ``imaps://``/``imap://`` URL (or ``pop3s://``/``pop3://``, whose last
            step is STAT instead of SELECT), or :class:`~mailtether.ImapSettings`.
        timeout: Seconds each step may take.
        ssl_context: Certificate verification settings (default: the system's CAs).

    Example:
        >>> from mailtether import check
        >>> report = check("imap://user:pw@127.0.0.1:9/INBOX?security=plain", timeout=2)
        >>> report.ok, report.exit_code, [step.name for step in report.steps]
        (False, 4, ['dns', 'tcp'])
        >>> print(report.sentence)
        tcp: connection refused by 127.0.0.1:9: nothing listens there (wrong port, or the server is down); check the port and that the server runs
    """  # noqa: E501
    pop3 = isinstance(target, str) and target.lower().startswith(("pop3://", "pop3s://"))
    if isinstance(target, ImapSettings):
        settings = target
    else:
        settings = ImapSettings.from_pop3_url(target) if pop3 else ImapSettings.from_url(target)
    context = ssl_context or settings.ssl_context or ssl.create_default_context()
    where = f"{settings.host}:{settings.port}"
    shown = f"{settings.security} {settings.username}@{where}/{settings.folder}"
    if pop3:
        shown = f"pop3 {settings.security} {settings.username}@{where}"
    steps: list[CheckStep] = []
    state: dict[str, Any] = {}

    def step(name: str, action: Callable[[], str]) -> None:
        started = time.perf_counter()
        try:
            detail = action()
        except _Failed as failure:
            steps.append(CheckStep(name, False, time.perf_counter() - started, failure.detail))
            raise _Failed(f"{name}: {failure.sentence}", reachable=failure.reachable) from None
        steps.append(CheckStep(name, True, time.perf_counter() - started, detail))

    def dns() -> str:
        try:
            infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise _Failed(
                f"the host name {settings.host!r} cannot be resolved ({error.strerror}); check "
                "its spelling and your DNS",
                reachable=False,
            ) from None
        state["address"] = infos[0][4]
        return str(infos[0][4][0])

    def tcp() -> str:
        try:
            sock = socket.create_connection(state["address"][:2], timeout=timeout)
        except ConnectionRefusedError:
            raise _Failed(
                f"connection refused by {where}: nothing listens there (wrong port, or the "
                "server is down); check the port and that the server runs",
                reachable=False,
            ) from None
        except TimeoutError:
            raise _Failed(
                f"connecting to {where} timed out: a firewall probably drops the packets, or "
                "the host is down; check firewalls on both sides",
                reachable=False,
            ) from None
        except OSError as error:
            raise _Failed(f"cannot connect to {where} ({error})", reachable=False) from None
        sock.settimeout(timeout)
        state["sock"] = sock
        return "connected"

    def wrap() -> str:
        try:
            state["sock"] = context.wrap_socket(state["sock"], server_hostname=settings.host)
        except ssl.SSLCertVerificationError as error:
            if error.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME / IP_ADDRESS_MISMATCH
                sentence = (
                    f"the certificate is for another host name than {settings.host!r} "
                    f"({error.verify_message}); connect with the name in the certificate"
                )
            else:
                sentence = (
                    f"the server's certificate is not trusted ({error.verify_message}); give "
                    "its CA (--cafile) or fix the server's certificate chain"
                )
            raise _Failed(sentence, reachable=True) from None
        except (ssl.SSLError, OSError) as error:
            raise _Failed(
                f"the TLS handshake failed ({error}); is this a TLS port? (993 is implicit "
                "TLS, 143 is STARTTLS)",
                reachable=True,
            ) from None
        return str(state["sock"].version())

    def read_greeting(protocol: str) -> bytes:
        article = "an" if protocol == "IMAP" else "a"
        wire = state["wire"] = _Wire(state["sock"])
        try:
            return wire.line()
        except TimeoutError:
            raise _Failed(
                f"connected to {where}, but the server never greeted within {timeout:g} s: a "
                "firewall or proxy that accepts but forwards nothing, or an overloaded server",
                reachable=False,
            ) from None
        except (EOFError, ConnectionError):
            raise _Failed(
                "the server closed the connection before greeting (too many connections, your "
                f"address blocked, or not {article} {protocol} server); check the server's "
                "limits and logs",
                reachable=True,
            ) from None

    def greeting() -> str:
        line = read_greeting("IMAP")
        text = line.decode("utf-8", "replace")
        if line.startswith(b"* BYE"):
            raise _Failed(f"the server refused the session: {text}", reachable=True)
        if not line.startswith((b"* OK", b"* PREAUTH")):
            raise _Failed(f"this does not look like an IMAP server: {text[:80]!r}", reachable=True)
        return text[:80]

    def capabilities() -> str:
        _, lines = _talk(state["wire"], b"CAPABILITY")
        words = b" ".join(line for line in lines if line.startswith(b"* CAPABILITY")).split()
        state["caps"] = {word.upper() for word in words}
        return " ".join(sorted(word.decode() for word in state["caps"] - {b"*", b"CAPABILITY"}))

    def starttls() -> str:
        if b"STARTTLS" not in state["caps"]:
            raise _Failed(
                f"{settings.host} does not offer STARTTLS, so the password would travel in "
                "clear: use imaps:// (port 993), or find what strips STARTTLS on the way",
                reachable=True,
            )
        status, _ = _talk(state["wire"], b"STARTTLS")
        if status != "OK":
            raise _Failed("the server refused STARTTLS", reachable=True)
        wrap()
        state["wire"] = _Wire(state["sock"])
        capabilities()
        return "upgraded"

    def login() -> str:
        wire: _Wire = state["wire"]
        if settings.auth == "xoauth2":
            secret = f"user={settings.username}\x01auth=Bearer {settings.password}\x01\x01"
            mechanism = b"XOAUTH2"
        else:
            secret = f"\x00{settings.username}\x00{settings.password}"
            mechanism = b"PLAIN"
        payload = base64.b64encode(secret.encode("utf-8"))
        status, lines = _talk(wire, b"AUTHENTICATE " + mechanism)
        if status == "+":
            wire.sock.sendall(payload + b"\r\n")
            status, lines = wire.until(b"c%d" % wire.tag)
            if status == "+":  # XOAUTH2 error challenge: send an empty line to finish
                wire.sock.sendall(b"\r\n")
                status, lines = wire.until(b"c%d" % wire.tag)
        if status != "OK":
            said = lines[-1].decode("utf-8", "replace").split(" ", 2)[-1] if lines else ""
            raise _Failed(
                f"the server rejected the credentials of {settings.username!r} ({said}); check "
                "the user name and password (or token); a locked or expired account says the same",
                reachable=True,
            )
        return f"{mechanism.decode()} as {settings.username}"

    def select() -> str:
        status, lines = _talk(state["wire"], b"SELECT " + _quoted(settings.folder))
        if status != "OK":
            said = lines[-1].decode("utf-8", "replace").split(" ", 2)[-1] if lines else ""
            raise _Failed(
                f"folder {settings.folder!r} cannot be selected ({said}); create it or fix its "
                "name (folder names are case-sensitive)",
                reachable=True,
            )
        exists = next(
            (line.split()[1].decode() for line in lines if line.endswith(b" EXISTS")), "?"
        )
        return f"{exists} messages"

    def pop3_greeting() -> str:
        line = read_greeting("POP3")
        if not line.startswith(b"+OK"):
            raise _Failed(
                f"this does not look like a POP3 server: {line[:80].decode('utf-8', 'replace')!r}",
                reachable=True,
            )
        return line[:80].decode("utf-8", "replace")

    def pop3_send(command: bytes, multiline: bool = False) -> list[bytes]:
        wire: _Wire = state["wire"]
        try:
            wire.sock.sendall(command + b"\r\n")
            lines = [wire.line()]
            if multiline and lines[0].startswith(b"+OK"):
                while lines[-1] != b".":
                    lines.append(wire.line())
        except TimeoutError:
            raise _Failed(
                f"the server did not answer {command.split()[0].decode()} in time", reachable=True
            ) from None
        except (EOFError, ConnectionError, ssl.SSLError):
            raise _Failed(
                f"the server closed the connection during {command.split()[0].decode()}",
                reachable=True,
            ) from None
        return lines

    def pop3_capabilities() -> str:
        lines = pop3_send(b"CAPA", multiline=True)
        state["caps"] = {line.split()[0].upper() for line in lines[1:-1] if line.strip()}
        return " ".join(sorted(word.decode() for word in state["caps"]))

    def pop3_stls() -> str:
        if b"STLS" not in state["caps"]:
            raise _Failed(
                f"{settings.host} does not offer STLS, so the password would travel in clear: "
                "use pop3s:// (port 995), or find what strips STLS on the way",
                reachable=True,
            )
        if not pop3_send(b"STLS")[0].startswith(b"+OK"):
            raise _Failed("the server refused STLS", reachable=True)
        wrap()
        state["wire"] = _Wire(state["sock"])
        return "upgraded"

    def pop3_login() -> str:
        if not pop3_send(b"USER " + settings.username.encode("utf-8"))[0].startswith(
            b"+OK"
        ) or not (answer := pop3_send(b"PASS " + settings.password.encode("utf-8"))[0]).startswith(
            b"+OK"
        ):
            raise _Failed(
                f"the server rejected the credentials of {settings.username!r}; check the user "
                "name and password; a locked or expired account says the same",
                reachable=True,
            )
        return answer[:60].decode("utf-8", "replace")

    def pop3_stat() -> str:
        answer = pop3_send(b"STAT")[0]
        if not answer.startswith(b"+OK"):
            raise _Failed(
                f"the mailbox cannot be opened ({answer.decode('utf-8', 'replace')})",
                reachable=True,
            )
        return f"{answer.split()[1].decode()} messages"

    try:
        try:
            step("dns", dns)
            step("tcp", tcp)
            if settings.security == "tls":
                step("tls", wrap)
            if pop3:
                step("greeting", pop3_greeting)
                step("capabilities", pop3_capabilities)
                if settings.security == "starttls":
                    step("starttls", pop3_stls)
                step("login", pop3_login)
                step("stat", pop3_stat)
            else:
                step("greeting", greeting)
                step("capabilities", capabilities)
                if settings.security == "starttls":
                    step("starttls", starttls)
                step("login", login)
                step("select", select)
        finally:
            sock = state.get("sock")
            if sock is not None:
                try:
                    if "wire" in state and steps and steps[-1].ok:
                        if pop3:
                            state["wire"].sock.sendall(b"QUIT\r\n")
                        else:
                            state["wire"].command(b"LOGOUT")
                except (OSError, EOFError):
                    pass
                sock.close()
    except _Failed as failure:
        return CheckReport(shown, tuple(steps), False, failure.sentence, failure.reachable)
    total = sum(step.seconds for step in steps)
    return CheckReport(
        shown,
        tuple(steps),
        True,
        f"all well: {shown} answered every step in {total * 1000:.0f} ms",
        True,
    )


def _talk(wire: _Wire, command: bytes) -> tuple[str, list[bytes]]:
    try:
        return wire.command(command)
    except TimeoutError:
        raise _Failed(
            f"the server did not answer {command.split()[0].decode()} in time", reachable=True
        ) from None
    except (EOFError, ConnectionError, ssl.SSLError):
        raise _Failed(
            f"the server closed the connection during {command.split()[0].decode()}",
            reachable=True,
        ) from None
