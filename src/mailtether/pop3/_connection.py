"""``Pop3Connection``: poplib with TLS by default, deadlines, and named errors."""

from __future__ import annotations

import contextlib
import poplib
import ssl
from collections.abc import Callable
from typing import Final, TypeVar

from mailtether._errors import (
    AuthenticationFailed,
    CommandFailed,
    ConnectionLost,
    MailboxInUse,
    MailServerError,
    TLSFailure,
)
from mailtether._network_errors import error_detail, translate_network_error
from mailtether._settings import ImapSettings

__all__ = ["Pop3Connection"]

_IN_USE: Final = b"[IN-USE]"
_T = TypeVar("_T")


class Pop3Connection:
    """One POP3 session, opened by :meth:`open`, that fails only with named errors.

    STLS is required when asked for, POP3S verifies certificates, plaintext only by name;
    every command has *timeout*. Nothing is deleted until :meth:`quit` (RFC 1939).
    """

    def __init__(self, settings: ImapSettings, timeout: float) -> None:
        self.settings = settings
        """Where it connects."""
        self.timeout = timeout
        """Seconds for connecting and for each command."""
        self._pop: poplib.POP3 | None = None

    @classmethod
    def open(cls, settings: ImapSettings, timeout: float) -> Pop3Connection:
        """Connect, secure and log in.

        Raises:
            ServerUnreachable, TLSFailure, AuthenticationFailed, MailboxInUse,
            ConnectionLost: each with a sentence of what to do.
        """
        connection = cls(settings, timeout)
        connection._pop = connection._open()
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

    def call(
        self,
        doing: str,
        function: Callable[..., _T],
        *args: object,
        refused: type[MailServerError] = ConnectionLost,
    ) -> _T:
        """Run a poplib command; its errors become named errors (the password removed).

        An ``-ERR`` answer raises *refused*: ``ConnectionLost`` by default (the session is
        given up), ``CommandFailed`` where the session can go on (``RETR`` of one mail).
        """
        try:
            return function(*args)
        except poplib.error_proto as error:
            text = error.args[0] if error.args else b""
            detail = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
            if _IN_USE in (text if isinstance(text, bytes) else text.encode()):
                raise MailboxInUse(f"{doing}: the mailbox is in use ({detail})") from None
            if doing in ("USER", "PASS"):
                raise AuthenticationFailed(
                    f"logging in: the server rejected the credentials ({detail})"
                ) from None
            raise refused(f"{doing}: the server said {detail}") from None
        except MailServerError:
            raise
        except Exception as error:  # KeyboardInterrupt and SystemExit pass as they are
            secret = self.settings.password
            translated = translate_network_error(error, doing, secret=secret)
            if translated is None:
                detail = error_detail(error, secret=secret)
                translated = CommandFailed(f"{doing}: {type(error).__name__}: {detail}")
            raise translated from None

    def _open(self) -> poplib.POP3:
        settings = self.settings
        context = settings.ssl_context or ssl.create_default_context()
        where = f"connecting to {settings.host}:{settings.port}"
        if settings.security == "tls":
            pop: poplib.POP3 = self.call(
                where,
                lambda: _ClosingPOP3_SSL(settings.host, settings.port, self.timeout, context),
            )
        else:
            pop = self.call(where, lambda: _ClosingPOP3(settings.host, settings.port, self.timeout))
        try:
            if settings.security == "starttls":
                capabilities = self.call("CAPA", pop.capa)
                if "STLS" not in capabilities:
                    raise TLSFailure(
                        f"{settings.host} does not offer STLS, and the password must not travel "
                        "in clear",
                        hint="use pop3s:// (port 995), or fix the server",
                    )
                self.call("STLS", pop.stls, context)
            if settings.auth == "apop":
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
    """poplib.POP3 that closes its socket when the greeting fails (poplib leaks it)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        try:
            super().__init__(host, port, timeout=timeout)
        except BaseException:
            _close_quietly(self)
            raise


class _ClosingPOP3_SSL(poplib.POP3_SSL):
    """poplib.POP3_SSL that closes its socket when the handshake or greeting fails."""

    def __init__(self, host: str, port: int, timeout: float, context: ssl.SSLContext) -> None:
        try:
            super().__init__(host, port, timeout=timeout, context=context)
        except BaseException:
            _close_quietly(self)
            raise


def _close_quietly(pop: poplib.POP3) -> None:
    for name in ("file", "sock"):
        resource = getattr(pop, name, None)
        if resource is not None:
            with contextlib.suppress(Exception):
                resource.close()
