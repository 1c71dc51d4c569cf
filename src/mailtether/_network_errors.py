"""Socket, TLS and DNS failures as mailtether's named errors, whatever the mail protocol.

IMAP and POP3 fail the same way underneath: :func:`translate_network_error` names those
failures, and each protocol adds only the cases of its own library on top.
"""

from __future__ import annotations

import socket
import ssl

from mailtether._errors import (
    ConnectionLost,
    MailServerError,
    ResponseTimeout,
    ServerUnreachable,
    TLSFailure,
)

__all__ = ["error_detail", "translate_network_error"]


def error_detail(error: BaseException, *, secret: str = "") -> str:
    """The text of *error* for a message: its only argument (bytes decoded), else ``str()``.

    *secret* (the password or token) is replaced by ``***``, whatever the library put in it.
    """
    value: object = error.args[0] if len(error.args) == 1 else error
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text.replace(secret, "***") if secret else text


def translate_network_error(
    error: BaseException, doing: str, *, secret: str = ""
) -> MailServerError | None:
    """Name a socket, TLS or DNS failure; ``None`` if *error* is none of those.

    A :class:`~mailtether.MailServerError` is already named and comes back as it is.
    *doing* names the step in the message ("fetching new mail"); *secret* (the password or
    token) never appears in it.
    """
    if isinstance(error, MailServerError):
        return error
    if isinstance(error, ssl.SSLCertVerificationError):
        # Set by the ssl module on a failed handshake; absent on one raised by hand.
        why = (
            error.verify_message
            if hasattr(error, "verify_message")
            else error_detail(error, secret=secret)
        )
        return TLSFailure(f"{doing}: the server's certificate is not trusted ({why})")
    if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return ConnectionLost(f"{doing}: the server closed the TLS connection")
    if isinstance(error, ssl.SSLError):
        why = getattr(error, "reason", None) or error_detail(error, secret=secret)
        return TLSFailure(f"{doing}: TLS failed ({why})")
    if isinstance(error, socket.gaierror):
        detail = error_detail(error, secret=secret)
        return ServerUnreachable(f"{doing}: the host name cannot be resolved ({detail})")
    if isinstance(error, ConnectionRefusedError):
        return ServerUnreachable(f"{doing}: connection refused")
    if isinstance(error, TimeoutError | socket.timeout):
        return ResponseTimeout(f"{doing}: no answer in time")
    if isinstance(error, ConnectionError | EOFError | OSError):
        detail = error_detail(error, secret=secret)
        return ConnectionLost(f"{doing}: the connection broke ({type(error).__name__}: {detail})")
    return None
