"""The exceptions mailtether raises, as one tree users can catch at any level.

::

    MailtetherError                 anything mailtether raises on purpose
    ├── ConfigError (ValueError)    a setting, URL or strategy description is not usable
    ├── RepeatedMessage             a mail handled before is back (repeat policy "block")
    ├── ClaimLost                   a claim expired and was taken over before its outcome
    ├── StoreError                  a state store failed or is unreachable
    │   └── SchemaError             the store's schema is from another mailtether version
    ├── LeaseError                  a lease or process lock could not be had or kept
    │   ├── LeaseUnavailable        another owner holds it (and kept it past the timeout)
    │   └── LeaseLost               it expired or was taken over while you thought you held it
    └── MailServerError             talking to an IMAP or POP3 server failed
        ├── ConnectionLost          reset, EOF, BYE, or no answer in time: reconnect (retry)
        │   ├── ServerUnreachable   DNS, refused, or connect timed out: retry later
        │   ├── ResponseTimeout     the server did not answer within the response timeout
        │   ├── PeerClosed          the server closed the connection in the middle of an answer
        │   ├── MailboxInUse        another POP3 session holds the mailbox ([IN-USE])
        │   └── TokenUnavailable    no OAuth2 token now: the token endpoint is down or slow
        ├── TLSFailure              certificate not trusted, wrong host, STARTTLS missing
        ├── AuthenticationFailed    credentials rejected: do not retry (accounts get locked)
        │   └── TokenRevoked        the OAuth2 grant is gone: a person must authorise again
        ├── FolderMissing           the folder does not exist (or is not selectable)
        ├── MailboxUnchangeable     handled mail cannot be marked, moved or deleted
        ├── LineTooLong             the server sent a line over the reader's bound
        └── CommandFailed           the server answered NO or BAD to a command

Every :class:`MailServerError` carries :attr:`~MailServerError.hint`, one sentence of what to
do, and never the password or token.

Constructors of value classes (strategies, states) raise the built-in :class:`ValueError`
or :class:`TypeError` naming the field, as attrs validators do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailtether._redaction import redact

if TYPE_CHECKING:  # a type only: the base layer imports nothing above it at run time
    from mailtether._message_key import MessageKey

__all__ = [
    "AuthenticationFailed",
    "ClaimLost",
    "CommandFailed",
    "ConfigError",
    "ConnectionLost",
    "FolderMissing",
    "ForwardFailed",
    "LeaseError",
    "LeaseLost",
    "LeaseUnavailable",
    "LineTooLong",
    "MailServerError",
    "MailboxInUse",
    "MailboxUnchangeable",
    "MailtetherError",
    "PeerClosed",
    "RepeatedMessage",
    "ResponseTimeout",
    "SchemaError",
    "ServerUnreachable",
    "StoreError",
    "TLSFailure",
    "TokenRevoked",
    "TokenUnavailable",
]


class MailtetherError(Exception):
    """Base class of every exception mailtether raises on purpose.

    Its text never holds a secret the process was given (see :mod:`mailtether._redaction`):
    every string argument is redacted as the exception is made.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(arg) if isinstance(arg, str) else arg for arg in args))


class ConfigError(MailtetherError, ValueError):
    """A configuration value (a strategy description, a duration, a URL) cannot be used.

    The message names the offending key and says what would be accepted.
    """


class RepeatedMessage(MailtetherError):
    """A message already processed is in the mailbox again (repeat policy ``block``).

    Reprocessing it would repeat forever (it could not be removed from the mailbox), so the
    listener blocks the source until a person acts, as a help-desk mail handler does.

    Attributes:
        key: The message.
        done_at: When it was processed (store clock).
    """

    def __init__(self, key: MessageKey, done_at: float) -> None:
        self.key = key
        self.done_at = done_at
        super().__init__(
            f"message {key} was already processed and is in the mailbox again (it could not "
            "be removed, or the post-action failed): remove or move it, then resume the source"
        )


class ForwardFailed(MailtetherError):
    """A held mail could not be queued for review (``on_poison="forward:ADDRESS"``).

    The mail stays in the mailbox and the source is BLOCKED with this sentence: once the
    outbox takes mail again, resume the source and the forward is tried again.
    """


class ClaimLost(MailtetherError):
    """A claim expired and was taken by another worker before its outcome was recorded.

    The message may have been handled twice: raise the claim TTL above your longest handler
    run, or call :meth:`Claim.extend` during long work.
    """


class StoreError(MailtetherError):
    """A state store failed: it is unreachable, timed out, or answered something unusable.

    The message names the store (without its password) and the operation.
    """


class SchemaError(StoreError):
    """The store holds data in a schema this version of mailtether does not know.

    Upgrade mailtether on every worker sharing the store, or point it at a new store.
    """


class LeaseError(MailtetherError):
    """A lease or process lock could not be had or kept."""


class LeaseUnavailable(LeaseError):
    """Another owner holds the lease, and did not let go within the timeout."""


class LeaseLost(LeaseError):
    """The lease expired or was taken over: stop the work it protected.

    Raised by :meth:`mailtether.ProcessLock.check` and by renewals; never followed by a
    silent re-acquire.
    """


class MailServerError(MailtetherError):
    """Talking to an IMAP or POP3 server failed.

    Attributes:
        message: What happened, without the hint.
        hint: One sentence: what to do about it.
        retryable: Whether reconnecting later may help: the listener retries these on its
            reconnect strategy (and BLOCKs on the others that need a person).
    """

    retryable = False
    default_hint = "check the server settings"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = redact(message)
        self.hint = redact(hint or self.default_hint)
        super().__init__(f"{self.message}: {self.hint}" if self.hint else self.message)


class ConnectionLost(MailServerError):
    """The connection broke: reset, closed (EOF), server BYE, or no answer in time."""

    retryable = True
    default_hint = "the listener reconnects by its reconnect strategy"


class ServerUnreachable(ConnectionLost):
    """No connection could be made: unknown host, connection refused, or connect timed out."""

    default_hint = "check the host name and port, and that no firewall blocks the way"


class ResponseTimeout(ConnectionLost):
    """The server did not answer a command within the response timeout (a dead connection)."""

    default_hint = "the connection is treated as dead and replaced"


class MailboxInUse(ConnectionLost):
    """Another POP3 session holds the mailbox (``-ERR [IN-USE]``): try again later."""

    default_hint = "another client reads this mailbox; the poller tries again later"


class LineTooLong(MailServerError):
    """The peer sent a line longer than the reader's ``max_line`` bound.

    The rest of that line is still on its way, so the connection cannot be read further:
    close it.
    """

    default_hint = (
        "close the connection: the server does not speak the protocol, or something on the "
        "way garbles the stream"
    )


class MalformedReply(ConnectionLost):
    """The server's answer does not follow the protocol (a garbled line, a missing field).

    Retried on the reconnect strategy like a broken connection: the answer may have been
    garbled on the way, and a fresh connection asks again. Nothing is handed out on it.
    """

    default_hint = (
        "the connection is replaced and the command asked again; if it repeats, the server "
        "does not speak the protocol (check it with mailtether check)"
    )


class PeerClosed(ConnectionLost):
    """The peer closed the connection (EOF) before a whole line or byte count arrived."""


class TLSFailure(MailServerError):
    """TLS could not be set up safely: untrusted certificate, wrong host name, no STARTTLS."""

    default_hint = (
        "give the server's CA in ssl_context, fix the host name, or use implicit TLS (imaps://)"
    )


class AuthenticationFailed(MailServerError):
    """The server rejected the credentials. Not retried: retrying locks accounts."""

    default_hint = "check the user name and password (or token), then resume the source"


class FolderMissing(MailServerError):
    """The folder does not exist on the server, or cannot be selected."""

    default_hint = "create the folder or fix its name (folder names are case-sensitive)"


class MailboxUnchangeable(MailServerError):
    """A handled mail could not be marked, moved or deleted (its outcome is recorded).

    Left as it is, the mail would be seen again and again, so the source is BLOCKED.
    """

    default_hint = (
        "the mail could not be marked or moved (is the mailbox read-only?); fix the mailbox "
        "permissions or remove the mail by hand, then resume the source"
    )


class CommandFailed(MailServerError):
    """The server answered NO or BAD to a command.

    Retryable: a listener reconnects on its schedule (a server busy, a mailbox being
    repaired); a mail that makes every fetch fail is found and held on its own.
    """

    retryable = True
    default_hint = "see the server's answer above"


def one_line(text: str, limit: int = 200) -> str:
    """*text* made fit for a status sentence: one line, printable, at most *limit* characters.

    Server answers can carry anything (a mail's bytes in a parser's complaint, control
    characters); a status, a log line or a notification shows only this much of them.
    """
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


class TokenRevoked(AuthenticationFailed):
    """The OAuth2 grant is no longer valid (revoked, expired, the app's secret changed).

    Retrying cannot help: a person must authorise the app for the account again. The
    source is BLOCKED with this sentence.
    """

    default_hint = "authorise the app for this account again, then resume the source"


class TokenUnavailable(ConnectionLost):
    """No token could be had now: the token endpoint is down, slow, or throttling."""

    default_hint = "retried on the reconnect strategy"
