"""``SmtpNotifier``: status changes e-mailed to administrators (seed 000's system notifications)."""

from __future__ import annotations

import queue
import ssl
import threading
from collections.abc import Iterable
from email.message import EmailMessage
from typing import Literal

from mailtether._errors import ConfigError
from mailtether._pending import Pending
from mailtether._redaction import redacting_logger
from mailtether._smtp_relay import SmtpRelay
from mailtether._status import StatusChange
from mailtether._status_mail import status_mail
from mailtether._tokens import TokenSource

__all__ = ["SmtpNotifier"]

log = redacting_logger("mailtether.status")

_QUEUE: int = 100


class SmtpNotifier:
    """E-mails every status change it is given to *recipients*, through an SMTP server.

    Use it among a :class:`~mailtether.StatusBoard`'s notifiers; the board already holds back
    repeats (a flapping source does not flood the admins). Mail is sent by a background
    thread, in order: a slow or unreachable mail server (often down in the same outage) never
    delays a listener's reconnect. Sending failures are logged (``mailtether.status``) and
    the next change is tried afresh; at most 100 changes wait, further ones are logged and
    dropped. :meth:`flush` waits for the queue to drain.

    It is best effort: a notice the server refuses, or that finds it down, is logged, not
    sent later. For notices kept in the store and retried on a schedule until the mail server
    takes them, use :class:`~mailtether.OutboxNotifier` (through an
    :class:`~mailtether.Outbox`); :class:`~mailtether.WebhookNotifier` retries its POSTs too.

    Args:
        host: The SMTP server.
        sender: The From address.
        recipients: Who is told.
        port: Default 587 for ``"starttls"``, 465 for ``"tls"``, 25 for ``"plain"``.
        security: ``"starttls"`` (default), ``"tls"`` (implicit), or ``"plain"`` (only on
            explicit request).
        username: Log in with this user (and *password*), if given.
        password: The password; never shown in ``repr``. A
            :class:`~mailtether.TokenSource` logs in with OAuth2 (``AUTH XOAUTH2``, or
            ``OAUTHBEARER`` where the server offers it), a fresh token for every mail.
        timeout: Seconds for connecting and each SMTP command.
        ssl_context: Certificate verification settings (default: system CAs).
        only: Send only changes into these states (default: all), e.g. ``{"blocked",
            "offline"}``. Notices (:meth:`StatusBoard.notice`: a mail in an error queue, a
            held mail) are sent whatever *only* says.
    """

    def __init__(
        self,
        host: str,
        sender: str,
        recipients: Iterable[str],
        *,
        port: int | None = None,
        security: Literal["starttls", "tls", "plain"] = "starttls",
        username: str | None = None,
        password: str | TokenSource | None = None,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        only: Iterable[str] | None = None,
    ) -> None:
        self.recipients = [address for address in recipients]
        if not self.recipients:
            raise ConfigError("SmtpNotifier needs at least one recipient")
        self._relay = SmtpRelay(
            host,
            port=port,
            security=security,
            username=username,
            password=password,
            timeout=timeout,
            ssl_context=ssl_context,
        )
        self.host = host
        self.sender = sender
        self.security = security
        self.port: int = self._relay.address[1]
        self.username = username
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.only = None if only is None else {state.lower() for state in only}
        self._queue: queue.Queue[EmailMessage] = queue.Queue(_QUEUE)
        self._pending = Pending()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __call__(self, change: StatusChange) -> None:
        """Queue one e-mail about *change* (unless filtered out by *only*); returns at once."""
        if (
            self.only is not None
            and not change.event
            and change.current.state.value not in self.only
        ):
            return
        message = status_mail(change, self.sender, self.recipients)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._sender, name="mailtether-smtp-notifier", daemon=True
                )
                self._thread.start()
        self._pending.add()
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self._pending.done()
            log.warning(
                "SMTP notifier: %d changes wait already; not mailed: %s", _QUEUE, change.sentence()
            )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued change is mailed (or failed); ``False`` at the timeout."""
        return self._pending.wait(timeout)

    def _sender(self) -> None:
        while True:
            message = self._queue.get()
            try:
                self._send(message)
            except Exception as error:  # never the password: smtplib does not echo it
                log.warning(
                    "SMTP notifier: could not mail %r to %s:%d: %s",
                    message["Subject"],
                    self.host,
                    self.port,
                    error,
                )
            finally:
                self._pending.done()

    def _send(self, message: EmailMessage) -> None:
        with self._relay.connect() as smtp:
            smtp.send_message(message)

    def __repr__(self) -> str:
        return (
            f"SmtpNotifier({self.host}:{self.port}, {self.security}, to={self.recipients!r}"
            f"{', user=' + repr(self.username) if self.username else ''})"
        )
