"""IMAP errors named: what imapclient, imaplib, ssl or socket raised, as mailtether's errors."""

from __future__ import annotations

import imaplib
from typing import Final

from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from mailtether._errors import (
    AuthenticationFailed,
    CommandFailed,
    ConnectionLost,
    MailServerError,
    ResponseTimeout,
)
from mailtether._network_errors import error_detail, translate_network_error

__all__ = ["translate_error"]


def translate_error(error: BaseException, doing: str, *, secret: str = "") -> MailServerError:
    """Turn whatever imapclient, imaplib, ssl or socket raised into a named error.

    *secret* (the password or token) is removed from the message, whatever the library put
    in it.
    """
    network = translate_network_error(error, doing, secret=secret)
    if network is not None:
        return network
    detail = error_detail(error, secret=secret)
    logging_in = isinstance(error, LoginError) or "LOGGING IN" in doing.upper()
    if logging_in and _temporary(detail):  # not a mail's fault: one mail's NO is its own
        return ConnectionLost(f"{doing}: the server cannot do it now ({detail})")
    if isinstance(error, LoginError):
        return AuthenticationFailed(f"{doing}: the server rejected the credentials ({detail})")
    if isinstance(error, IMAPClientAbortError | imaplib.IMAP4.abort):
        if "timed out" in detail:
            return ResponseTimeout(f"{doing}: no answer in time ({detail})")
        return ConnectionLost(f"{doing}: the connection broke ({detail})")
    if isinstance(error, imaplib.IMAP4.error) and detail.startswith("got more than"):
        # imaplib's line bound: the rest of that line is still on its way, so the
        # connection cannot be read further.
        return ConnectionLost(f"{doing}: the server sent a line too long ({detail})")
    if isinstance(error, IMAPClientError | imaplib.IMAP4.error):
        if "AUTHENTICATIONFAILED" in detail.upper() or "LOGIN" in doing.upper():
            return AuthenticationFailed(f"{doing}: the server rejected the credentials ({detail})")
        return CommandFailed(f"{doing}: the server said {detail}")
    return CommandFailed(f"{doing}: {type(error).__name__}: {detail}")


# RFC 5530 response codes of a refusal that is not the credentials' fault: the server (or what
# it asks, such as an OAuth2 introspection endpoint) is unavailable or overloaded. Retried,
# never blocked. Microsoft 365 and Gmail say so in words when they throttle.
_TEMPORARY: Final = ("[UNAVAILABLE]", "[INUSE]", "[LIMIT]", "THROTTL", "TRY AGAIN")


def _temporary(detail: str) -> bool:
    upper = detail.upper()
    return any(word in upper for word in _TEMPORARY)
