"""``WatchedIMAPClient``: imapclient whose socket is watched from its first byte.

imapclient reads the server's greeting (and, for implicit TLS, does the handshake) inside
its constructor, on a socket no caller can reach until the constructor returns. A server
that trickles its greeting a byte at a time would hold that constructor forever: each read
is within the socket timeout. This client hands its socket to a
:class:`~mailtether._step_deadlines.StepDeadlines` as soon as the TCP connection stands,
before the handshake and the greeting, so that step has a deadline like every other.

It replaces imapclient's ``_create_IMAP4`` (imapclient 3 and 4); where that is missing, the
plain constructor runs, and the greeting is bounded per read only.
"""

from __future__ import annotations

import imaplib
import socket
import ssl
from typing import Any

from imapclient import IMAPClient

from mailtether._step_deadlines import StepDeadlines

__all__ = ["WatchedIMAPClient"]


class WatchedIMAPClient(IMAPClient):  # type: ignore[misc]  # imapclient is untyped
    """:class:`imapclient.IMAPClient` whose socket goes to *deadlines* before the greeting."""

    def __init__(self, host: str, *, deadlines: StepDeadlines, **options: Any) -> None:
        self._deadlines = deadlines
        super().__init__(host, **options)

    def _create_IMAP4(self) -> imaplib.IMAP4:  # imapclient's name
        if self.stream:
            return super()._create_IMAP4()  # type: ignore[no-any-return]
        timeout = getattr(self._timeout, "connect", None)
        context = self.ssl_context if self.ssl else None
        if self.ssl and context is None:
            context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH)
        return _WatchedIMAP4(self.host, self.port, timeout, context, self._deadlines)


class _WatchedIMAP4(imaplib.IMAP4):
    """imaplib's IMAP4 over plain TCP or implicit TLS, its socket watched from the start."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float | None,
        context: ssl.SSLContext | None,
        deadlines: StepDeadlines,
    ) -> None:
        self._connect_timeout = timeout
        self._context = context
        self._deadlines = deadlines
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        sock = socket.create_connection(
            (self.host, self.port), timeout if timeout is not None else self._connect_timeout
        )
        try:
            self._deadlines.attach(sock)  # before the handshake and the greeting
            if self._context is not None:
                return self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return sock
