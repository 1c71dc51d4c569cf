"""``Pop3Connection``: poplib with TLS by default, deadlines, and named errors."""

from __future__ import annotations

import contextlib
import poplib
import socket
import ssl
from collections.abc import Callable
from typing import Any, Final, TypeVar

from mailtether._errors import (
    AuthenticationFailed,
    CommandFailed,
    ConnectionLost,
    MailboxInUse,
    MailServerError,
    TLSFailure,
)
from mailtether._network_errors import error_detail, translate_network_error
from mailtether._sasl import ERROR_CHALLENGE_ANSWER, oauth2_mechanism, sasl_string
from mailtether._settings import OAUTH, ImapSettings, literal_password, tokens_of
from mailtether._step_deadlines import SLOWEST_RATE, StepDeadlines, overran

__all__ = ["Pop3Connection"]

_IN_USE: Final = b"[IN-USE]"
_SYS_TEMP: Final = b"[SYS/TEMP]"  # a refusal that is the server's passing trouble, not yours
_T = TypeVar("_T")


class Pop3Connection:
    """One POP3 session, opened by :meth:`open`, that fails only with named errors.

    STLS is required when asked for, POP3S verifies certificates, plaintext only by name;
    each step (connecting with its TLS handshake and greeting, each command and its whole
    answer) must finish within *timeout*, however slowly the server sends (a ``RETR`` of *n*
    bytes gets a second more for every 64 KiB). Nothing is deleted until :meth:`quit`
    (RFC 1939).
    """

    def __init__(self, settings: ImapSettings, timeout: float) -> None:
        self.settings = settings
        """Where it connects."""
        self.timeout = timeout
        """Seconds for connecting and for each command."""
        self._pop: poplib.POP3 | None = None
        self._deadlines = StepDeadlines()

    @classmethod
    def open(cls, settings: ImapSettings, timeout: float) -> Pop3Connection:
        """Connect, secure and log in.

        Raises:
            ServerUnreachable, TLSFailure, AuthenticationFailed, MailboxInUse,
            ConnectionLost: each with a sentence of what to do.
        """
        connection = cls(settings, timeout)
        try:
            connection._pop = connection._open()
        except BaseException:
            connection.close()
            raise
        return connection

    @property
    def pop(self) -> poplib.POP3:
        """The poplib session (use :meth:`call` to run its commands)."""
        if self._pop is None:
            raise ConnectionLost(f"the POP3 connection to {self.settings.host} is closed")
        return self._pop

    def abort(self) -> None:
        """Break the connection now, from any thread (nothing is deleted)."""
        pop = self._pop
        if pop is not None:
            with contextlib.suppress(Exception):
                pop.sock.shutdown(2)

    def quit(self) -> None:
        """QUIT: the server deletes what was marked with DELE, and the session ends."""
        self.call("QUIT", self.pop.quit)

    def close(self) -> None:
        """Close the socket (without QUIT nothing is deleted). Never raises."""
        pop, self._pop = self._pop, None
        if pop is not None:
            with contextlib.suppress(Exception):
                pop.close()
        self._deadlines.close()

    def call(
        self,
        doing: str,
        function: Callable[..., _T],
        *args: object,
        refused: type[MailServerError] = ConnectionLost,
        expected_bytes: int = 0,
    ) -> _T:
        """Run a poplib command; its errors become named errors (the password removed).

        An ``-ERR`` answer raises *refused*: ``ConnectionLost`` by default (the session is
        given up), ``CommandFailed`` where the session can go on (``RETR`` of one mail).
        The command and its whole answer must come within :attr:`timeout`, plus a second
        for every 64 KiB of *expected_bytes* (else :class:`~mailtether.ResponseTimeout`).
        """
        seconds = self.timeout + expected_bytes / SLOWEST_RATE
        with self._deadlines.step(doing, seconds) as step:
            try:
                result = function(*args)
                if step.finish():
                    raise step.error()  # what was read in time is not the whole answer
                return result
            except MailServerError:
                raise
            except Exception as error:  # KeyboardInterrupt and SystemExit pass as they are
                named = self._named(doing, overran(step, error), refused)
        # Raised here, not in the handler: poplib's error (which may quote the password) is
        # not kept as its context.
        raise named

    def _oauth2_login(self, pop: poplib.POP3) -> None:
        """``AUTH`` (RFC 5034) with a token, fresh if the first is refused; see IMAP's."""
        settings = self.settings
        try:
            offered = pop.capa().get("SASL", [])
        except poplib.error_proto:  # no CAPA: XOAUTH2, as Microsoft and Google take it
            offered = []
        capabilities = [f"AUTH={name.upper()}".encode() for name in offered]
        mechanism = oauth2_mechanism(settings.auth, capabilities)
        tokens = tokens_of(settings)

        def authenticate(token: str) -> None:
            answer = sasl_string(mechanism, settings.username, token)
            said: bytes = pop._shortcmd(f"AUTH {mechanism} {answer}")  # type: ignore[attr-defined]
            if not said.startswith(b"+OK"):  # "+ <challenge>": refused, the -ERR follows
                pop._putcmd(ERROR_CHALLENGE_ANSWER[mechanism])  # type: ignore[attr-defined]
                pop._getresp()  # type: ignore[attr-defined]  # -ERR: raised by poplib

        token = tokens.token()
        doing = f"logging in ({mechanism})"
        try:
            self.call(doing, authenticate, token.value, refused=AuthenticationFailed)
        except AuthenticationFailed:
            self.call(
                doing, authenticate, tokens.token(fresh=True).value, refused=AuthenticationFailed
            )

    def retr(self, number: int, *, expected_bytes: int, most: int) -> bytes:
        """``RETR`` *number*: the mail, read up to *most* bytes (``+OK``, lines, ``.``).

        poplib would read a mail of any size into memory; past *most* (the poller's
        ``max_message_bytes`` and some) the connection is given up instead, in bounded
        memory. The step deadline allows for *expected_bytes* (the size ``LIST`` gave).

        Raises:
            CommandFailed: the server answered ``-ERR`` (the session goes on).
            ConnectionLost: the connection broke, or the mail runs past *most* bytes.
        """

        def retrieve() -> bytes:
            pop: Any = self.pop  # poplib's line reader is private, and stable since 2.x
            pop._putcmd(f"RETR {number}")
            pop._getresp()
            lines: list[bytes] = []
            taken = 0
            while True:
                line, octets = pop._getline()
                if line == b".":
                    lines.append(b"")
                    return b"\r\n".join(lines)
                if line.startswith(b".."):
                    line = line[1:]
                taken += octets
                if taken > most:
                    raise ConnectionLost(
                        f"RETR {number}: the server sent more than {most} bytes (it gave the "
                        f"size as {expected_bytes}); the rest is not read"
                    )
                lines.append(line)

        return self.call("RETR", retrieve, refused=CommandFailed, expected_bytes=expected_bytes)

    def _named(
        self, doing: str, error: BaseException, refused: type[MailServerError]
    ) -> MailServerError:
        """The named error for what a poplib command raised (the password removed)."""
        if isinstance(error, poplib.error_proto):
            text = error.args[0] if error.args else b""
            detail = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
            if _IN_USE in (text if isinstance(text, bytes) else text.encode()):
                return MailboxInUse(f"{doing}: the mailbox is in use ({detail})")
            raw = text if isinstance(text, bytes) else text.encode()
            if _SYS_TEMP in raw and refused is not CommandFailed:  # RFC 3206, a session step
                return ConnectionLost(f"{doing}: the server cannot do it now ({detail})")
            if doing in ("USER", "PASS"):
                return AuthenticationFailed(
                    f"logging in: the server rejected the credentials ({detail})"
                )
            return refused(f"{doing}: the server said {detail}")
        secret = literal_password(self.settings)
        translated = translate_network_error(error, doing, secret=secret)
        if translated is None:
            detail = error_detail(error, secret=secret)
            translated = CommandFailed(f"{doing}: {type(error).__name__}: {detail}")
        return translated

    def _open(self) -> poplib.POP3:
        settings = self.settings
        context = settings.ssl_context or ssl.create_default_context()
        where = f"connecting to {settings.host}:{settings.port}"
        with self._deadlines.step(where, self.timeout) as step:  # TCP, TLS, greeting
            try:
                if settings.security == "tls":
                    pop: poplib.POP3 = _ClosingPOP3_SSL(
                        settings.host, settings.port, self.timeout, context, self._deadlines
                    )
                else:
                    pop = _ClosingPOP3(settings.host, settings.port, self.timeout, self._deadlines)
            except Exception as error:  # KeyboardInterrupt and SystemExit pass as they are
                raise self._named(where, overran(step, error), ConnectionLost) from None
            if step.finish():  # a greeting cut short is no greeting
                _close_quietly(pop)
                raise step.error()
        self._deadlines.attach(pop.sock, duplicate=False)  # no file descriptor more
        try:
            if settings.security == "starttls":
                capabilities = self.call("CAPA", pop.capa)
                if "STLS" not in capabilities:
                    raise TLSFailure(
                        f"{settings.host} does not offer STLS, and the password must not travel "
                        "in clear",
                        hint="use pop3s:// (port 995), or fix the server",
                    )
                self._deadlines.attach(pop.sock)  # TLS detaches the socket object
                self.call("STLS", pop.stls, context)
                self._deadlines.attach(pop.sock, duplicate=False)
            if settings.auth in OAUTH:
                self._oauth2_login(pop)
            elif settings.auth == "apop":
                if b"<" not in pop.getwelcome():
                    raise AuthenticationFailed(
                        f"{settings.host} offers no APOP (its greeting has no timestamp)",
                        hint="use auth=password (USER/PASS, inside TLS) for this server",
                    )
                self.call("PASS", pop.apop, settings.username, settings.password)
            else:
                self.call("USER", pop.user, settings.username)
                self.call("PASS", pop.pass_, settings.password)
        except BaseException:
            with contextlib.suppress(Exception):
                pop.close()
            raise
        return pop


class _ClosingPOP3(poplib.POP3):
    """poplib.POP3 that closes its socket when the greeting fails (poplib leaks it).

    Its socket goes to *deadlines* as soon as it stands, before the greeting is read.
    """

    def __init__(self, host: str, port: int, timeout: float, deadlines: StepDeadlines) -> None:
        self._deadlines = deadlines
        try:
            super().__init__(host, port, timeout=timeout)
        except BaseException:
            _close_quietly(self)
            raise

    def _create_socket(self, timeout: float) -> socket.socket:
        return _watched_socket(self.host, self.port, timeout, self._deadlines)


class _ClosingPOP3_SSL(poplib.POP3_SSL):
    """poplib.POP3_SSL that closes its socket when the handshake or greeting fails.

    Its socket goes to *deadlines* as soon as it stands, before the TLS handshake.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float,
        context: ssl.SSLContext,
        deadlines: StepDeadlines,
    ) -> None:
        self._deadlines = deadlines
        self._context = context
        try:
            super().__init__(host, port, timeout=timeout, context=context)
        except BaseException:
            _close_quietly(self)
            raise

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = _watched_socket(self.host, self.port, timeout, self._deadlines)
        try:  # the handshake is part of the watched step
            return self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def _watched_socket(
    host: str, port: int, timeout: float, deadlines: StepDeadlines
) -> socket.socket:
    """A TCP connection, handed to *deadlines* before anything is read from it."""
    sock = socket.create_connection((host, port), timeout)
    try:
        deadlines.attach(sock)
    except BaseException:
        sock.close()
        raise
    return sock


def _close_quietly(pop: poplib.POP3) -> None:
    for name in ("file", "sock"):
        resource = getattr(pop, name, None)
        if resource is not None:
            with contextlib.suppress(Exception):
                resource.close()
