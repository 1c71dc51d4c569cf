"""``check``: walk a connection step by step and say, in one sentence, what is wrong.

:func:`check` runs a probe: :class:`Probe` holds what every protocol shares (DNS, TCP, TLS,
a deadline per step, timing, the report); ``ImapProbe`` (:mod:`mailtether.imap._probe`),
``Pop3Probe`` (:mod:`mailtether.pop3._probe`) and ``SmtpProbe``
(:mod:`mailtether.smtp._probe`) add the greeting, capabilities, STARTTLS, login and the
mailbox (or, for SMTP, the envelope) in their protocol's words. This module imports them only
inside :func:`check`, so they can build on it.
"""

from __future__ import annotations

import abc
import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Final, TypeAlias

import attrs

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._errors import ConnectionLost, LineTooLong, MailServerError, ResponseTimeout
from mailtether._lines import LineReader
from mailtether._redaction import redact
from mailtether._settings import ImapSettings, tokens_of, with_tokens
from mailtether._tokens import AccessToken, TokenSource

__all__ = ["CheckReport", "CheckStep", "Probe", "Step", "StepFailed", "check"]

# Exit codes of `mailtether check`.
OK: Final = 0
UNREACHABLE: Final = 4
MISCONFIGURED: Final = 5

_VERIFY_NAME_MISMATCH: Final = (62, 64)  # X509_V_ERR_HOSTNAME / IP_ADDRESS_MISMATCH


@attrs.frozen
class CheckStep:
    """One step of a connection check."""

    name: str
    """The step: ``dns``, ``tcp``, ``tls``, ``greeting``, ``capabilities``, ``starttls``,
    ``login``, then ``select`` (IMAP) or ``stat`` (POP3); for SMTP ``dns``, ``tcp``, ``tls``,
    ``greeting``, ``ehlo``, ``starttls``, ``auth``, ``mail``, ``rcpt``."""
    ok: bool
    seconds: float
    detail: str = attrs.field(default="", converter=redact)
    """What the step saw (the server's words: one line, no secret)."""


@attrs.frozen
class CheckReport:
    """The result of :func:`check`: every step, and one sentence for a person."""

    target: str
    """What was checked (no password)."""
    steps: tuple[CheckStep, ...]
    ok: bool
    sentence: str = attrs.field(converter=redact)
    """What failed, the likely cause and what to do; or that all is well (no secret in it,
    whatever the server said)."""
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


class StepFailed(Exception):
    """A step of a check failed: what to tell a person, and whether the server was reached.

    Args:
        sentence: The cause and what to do, without the step's name (the runner adds it).
        reachable: ``False`` when the server could not be reached at all.
        detail: What the failed step shows beside its name.
    """

    def __init__(self, sentence: str, *, reachable: bool, detail: str = "") -> None:
        super().__init__(sentence)
        self.sentence = sentence
        self.reachable = reachable
        self.detail = detail


Step: TypeAlias = tuple[str, Callable[[], str]]
"""A step of a probe: its name, and the method that takes it and returns its detail."""


class Probe(abc.ABC):
    """One connection check: DNS, TCP, TLS, then a protocol's steps, each timed and bounded.

    A subclass speaks one protocol: it names the server (:attr:`server_kind`), says what
    was checked (:attr:`target`), and takes the steps :meth:`plan` lists. Each step is a
    method that returns its detail or raises :class:`StepFailed`; each runs against its own
    deadline, *timeout* seconds from its start, held across every read it makes.

    Args:
        settings: Where to connect and how to log in.
        timeout: Seconds each step may take.
        ssl_context: Certificate verification (default: the settings', else the system's).
        clock: Where step times and deadlines are read.
    """

    tls_ports: ClassVar[str]
    """The protocol's ports, named when a TLS handshake fails (is it a TLS port?)."""
    server_kind: ClassVar[str]
    """The server in a sentence: ``"an IMAP server"``."""
    address: tuple[str, int]
    """Where the server is, from the dns step on."""
    sock: socket.socket
    """The connection, plain or TLS, from the tcp step on."""
    reader: LineReader
    """Reads :attr:`sock`'s lines; a new one after each TLS handshake."""

    def __init__(
        self,
        settings: ImapSettings,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self.timeout = timeout
        self.context = ssl_context or settings.ssl_context or ssl.create_default_context()
        self.clock = clock
        self.where = f"{settings.host}:{settings.port}"
        self.steps: list[CheckStep] = []
        self.deadline = clock.monotonic() + timeout
        self.offered: frozenset[bytes] = frozenset()
        """The capabilities the server listed, upper case."""
        self._opened: list[socket.socket] = []

    @property
    @abc.abstractmethod
    def target(self) -> str:
        """What is checked, for the report (never the password)."""

    @abc.abstractmethod
    def greeting(self) -> str:
        """Read the server's greeting; fail if it is not this protocol's."""

    @abc.abstractmethod
    def capabilities(self) -> str:
        """Ask what the server offers; set :attr:`offered`."""

    @abc.abstractmethod
    def starttls(self) -> str:
        """Upgrade the connection to TLS (see :meth:`upgrade`)."""

    @abc.abstractmethod
    def login(self) -> str:
        """Log in with the settings' credentials."""

    @abc.abstractmethod
    def mailbox_step(self) -> Step:
        """The last step, which opens the mailbox: ``select`` or ``stat``."""

    @abc.abstractmethod
    def goodbye(self) -> None:
        """End the session politely (after every step passed)."""

    def plan(self) -> Iterator[Step]:
        """The steps, in order, as the settings' security asks."""
        yield "dns", self.dns
        yield "tcp", self.tcp
        if self.settings.security == "tls":
            yield "tls", self.tls
        yield "greeting", self.greeting
        yield "capabilities", self.capabilities
        if self.settings.security == "starttls":
            yield "starttls", self.starttls
        yield "login", self.login
        yield self.mailbox_step()

    def run(self) -> CheckReport:
        """Take every step until one fails, and report; never raises for a server problem."""
        try:
            for name, action in self.plan():
                self._step(name, action)
            self.deadline = self.clock.monotonic() + self.timeout
            with contextlib.suppress(OSError, MailServerError, StepFailed):
                self.goodbye()
        except StepFailed as failure:
            steps = tuple(self.steps)
            return CheckReport(self.target, steps, False, failure.sentence, failure.reachable)
        finally:
            for sock in self._opened:  # a socket wrapped in TLS is closed already: no matter
                sock.close()
        total = sum(step.seconds for step in self.steps)
        sentence = f"all well: {self.target} answered every step in {total * 1000:.0f} ms"
        return CheckReport(self.target, tuple(self.steps), True, sentence, True)

    # -- the steps every protocol shares -----------------------------------------------------

    def dns(self) -> str:
        """Resolve the host name."""
        host, port = self.settings.host, self.settings.port
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise StepFailed(
                f"the host name {host!r} cannot be resolved ({error.strerror}); check its "
                "spelling and your DNS",
                reachable=False,
            ) from None
        address = infos[0][4]
        self.address = (str(address[0]), int(address[1]))
        return self.address[0]

    def tcp(self) -> str:
        """Connect to the address DNS gave."""
        try:
            sock = socket.create_connection(self.address, timeout=self.timeout)
        except ConnectionRefusedError:
            raise StepFailed(
                f"connection refused by {self.where}: nothing listens there (wrong port, or the "
                "server is down); check the port and that the server runs",
                reachable=False,
            ) from None
        except TimeoutError:
            raise StepFailed(
                f"connecting to {self.where} timed out: a firewall probably drops the packets, "
                "or the host is down; check firewalls on both sides",
                reachable=False,
            ) from None
        except ConnectionResetError:  # something answered, and dropped the connection at once
            raise StepFailed(
                f"{self.where} reset the connection as it was made: the server (or a firewall "
                "in front of it) turns this client away: too many connections, or this "
                "address is blocked",
                reachable=True,
            ) from None
        except OSError as error:
            raise StepFailed(f"cannot connect to {self.where} ({error})", reachable=False) from None
        self._use(sock)
        return "connected"

    def tls(self) -> str:
        """Do the TLS handshake on the connection (implicit TLS, or after STARTTLS)."""
        host = self.settings.host
        try:
            self.sock.settimeout(self._remaining())
            wrapped = self.context.wrap_socket(self.sock, server_hostname=host)
        except ssl.SSLCertVerificationError as error:
            if error.verify_code in _VERIFY_NAME_MISMATCH:
                sentence = (
                    f"the certificate is for another host name than {host!r} "
                    f"({error.verify_message}); connect with the name in the certificate"
                )
            else:
                sentence = (
                    f"the server's certificate is not trusted ({error.verify_message}); give "
                    "its CA (--cafile) or fix the server's certificate chain"
                )
            raise StepFailed(sentence, reachable=True) from None
        except (ssl.SSLError, OSError) as error:
            raise StepFailed(
                f"the TLS handshake failed ({error}); is this a TLS port? ({self.tls_ports})",
                reachable=True,
            ) from None
        self._use(wrapped)
        return str(wrapped.version())

    # -- what the protocols' steps build on ---------------------------------------------------

    def readline(self) -> bytes:
        """The server's next line, by this step's deadline."""
        return self.reader.readline(self.deadline)

    def send(self, data: bytes) -> None:
        """Send *data*, by this step's deadline."""
        self.sock.settimeout(self._remaining())
        self.sock.sendall(data)

    def read_greeting(self) -> bytes:
        """The server's first line; fail, in words, if it never comes."""
        try:
            return self.readline()
        except ResponseTimeout:
            raise StepFailed(
                f"connected to {self.where}, but the server never greeted within "
                f"{self.timeout:g} s: a firewall or proxy that accepts but forwards nothing, or "
                "an overloaded server",
                reachable=False,
            ) from None
        except LineTooLong:
            raise StepFailed(
                f"this does not look like {self.server_kind}: its first line is longer than "
                f"{self.reader.max_line} bytes",
                reachable=True,
            ) from None
        except ConnectionLost:
            raise StepFailed(
                "the server closed the connection before greeting (too many connections, your "
                f"address blocked, or not {self.server_kind}); check the server's limits and "
                "logs",
                reachable=True,
            ) from None

    def foreign(self, line: bytes) -> StepFailed:
        """The failure for a greeting that is not this protocol's, quoting its start."""
        text = redact(line.decode("utf-8", "replace"))[:80]  # cut after redaction
        return StepFailed(f"this does not look like {self.server_kind}: {text!r}", reachable=True)

    @contextlib.contextmanager
    def answering(self, command: str) -> Iterator[None]:
        """Turn a broken exchange inside the block into the step's sentence about *command*."""
        try:
            yield
        except (ResponseTimeout, TimeoutError):
            raise StepFailed(
                f"the server did not answer {command} in time", reachable=True
            ) from None
        except LineTooLong:
            raise StepFailed(
                f"the server answered {command} with a line longer than "
                f"{self.reader.max_line} bytes: it does not speak the protocol, or something on "
                "the way garbles the stream",
                reachable=True,
            ) from None
        except (ConnectionLost, OSError):
            raise StepFailed(
                f"the server closed the connection during {command}", reachable=True
            ) from None

    def upgrade(self, word: str, secure: str, accepted: Callable[[], bool]) -> None:
        """STARTTLS (or POP3's STLS): insist it is offered, ask for it, shake hands.

        Args:
            word: The command, as the capabilities name it.
            secure: The implicit-TLS way to connect instead, for the sentence.
            accepted: Sends the command; whether the server agreed.
        """
        if word.encode("ascii") not in self.offered:
            raise StepFailed(
                f"{self.settings.host} does not offer {word}, so the password would travel in "
                f"clear: use {secure}, or find what strips {word} on the way",
                reachable=True,
            )
        if not accepted():
            raise StepFailed(f"the server refused {word}", reachable=True)
        self.tls()

    # -- running ------------------------------------------------------------------------------

    def _step(self, name: str, action: Callable[[], str]) -> None:
        started = self.clock.monotonic()
        self.deadline = started + self.timeout
        try:
            detail = action()
        except StepFailed as failure:
            seconds = self.clock.monotonic() - started
            self.steps.append(CheckStep(name, False, seconds, failure.detail))
            raise StepFailed(f"{name}: {failure.sentence}", reachable=failure.reachable) from None
        self.steps.append(CheckStep(name, True, self.clock.monotonic() - started, detail))

    def _use(self, sock: socket.socket) -> None:
        # A new reader after the TLS handshake drops whatever came in clear before it.
        self._opened.append(sock)
        self.sock = sock
        self.reader = LineReader(sock, clock=self.clock)

    def _remaining(self) -> float:
        return max(self.deadline - self.clock.monotonic(), 1e-3)


def oauth2_token(settings: ImapSettings) -> AccessToken:
    """A token from the settings' token source, or the login step's failure in words."""
    try:
        return tokens_of(settings).token()
    except MailServerError as error:
        raise StepFailed(
            f"no OAuth2 token for {settings.username!r}: {error}", reachable=True
        ) from None


def token_expiry(token: AccessToken) -> str:
    """``", token expires in 3540 s"`` (nothing when the token's expiry is not known)."""
    if token.expires_at is None:
        return ""
    return f", token expires in {max(0.0, token.expires_at - time.time()):.0f} s"


def check(
    target: str | ImapSettings,
    *,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    tokens: TokenSource | None = None,
) -> CheckReport:
    """Walk DNS, TCP, TLS/STARTTLS, greeting, capabilities, login and select, timing each.

    Stops at the first step that fails and says which, why, and what to do, in one
    sentence. Never raises for a connection problem, and never shows the password.

    Args:
        target: An ``imaps://``/``imap://`` URL (or ``pop3s://``/``pop3://``, whose last
            step is STAT instead of SELECT), or :class:`~mailtether.ImapSettings`; or an
            ``smtps://``/``smtp://`` URL, ``smtps://user:password@host/?from=a@example.com&to=b@example.com``,
            whose steps are EHLO, AUTH, MAIL FROM and RCPT TO (then RSET: nothing is
            sent); without a user name, or without ``from``/``to``, those steps are not
            taken and the sentence says so.
        timeout: Seconds each step may take.
        ssl_context: Certificate verification settings (default: the system's CAs).
        tokens: Log in with OAuth2 tokens from this source (the URL then needs no
            password); its login step says the mechanism and when the token expires.

    Example:
        >>> from mailtether import check
        >>> report = check("imap://user:pw@127.0.0.1:9/INBOX?security=plain", timeout=2)
        >>> report.ok, report.exit_code, [step.name for step in report.steps]
        (False, 4, ['dns', 'tcp'])
        >>> print(report.sentence)
        tcp: connection refused by 127.0.0.1:9: nothing listens there (wrong port, or the server is down); check the port and that the server runs
    """  # noqa: E501
    # The probes build on this module, so they are imported here, not at its top.
    if isinstance(target, str) and target.lower().startswith(("smtp://", "smtps://")):
        from mailtether.smtp._probe import check_smtp

        return check_smtp(target, timeout=timeout, ssl_context=ssl_context, tokens=tokens)
    if isinstance(target, str) and target.lower().startswith(("pop3://", "pop3s://")):
        from mailtether.pop3._probe import Pop3Probe

        settings = with_tokens(ImapSettings.from_pop3_url(target), tokens)
        return Pop3Probe(settings, timeout=timeout, ssl_context=ssl_context).run()
    from mailtether.imap._probe import ImapProbe

    settings = target if isinstance(target, ImapSettings) else ImapSettings.from_url(target)
    settings = with_tokens(settings, tokens)
    return ImapProbe(settings, timeout=timeout, ssl_context=ssl_context).run()
