"""``SmtpRelay``: an SMTP server mail is handed to, and how to log in to it.

Shared by the :class:`~mailtether.Outbox` sender and :class:`~mailtether.SmtpNotifier`:
implicit TLS, STARTTLS (required unless plaintext is asked for by name), a password or an
OAuth2 token source (``AUTH XOAUTH2``, or ``OAUTHBEARER`` where the server offers it; a
refused token is renewed once and tried again).
"""

from __future__ import annotations

import smtplib
import ssl
from typing import Any, Literal

import attrs

from mailtether._durations import check_seconds
from mailtether._errors import ConfigError
from mailtether._redaction import remember_secret
from mailtether._sasl import ERROR_CHALLENGE_ANSWER, oauth2_mechanism, sasl_string
from mailtether._tokens import TokenSource

__all__ = ["SmtpRelay", "smtp_login"]

Security = Literal["starttls", "tls", "plain"]
_PORTS: dict[str, int] = {"starttls": 587, "tls": 465, "plain": 25}


def _check_security(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if value not in _PORTS:
        raise ConfigError(f"security must be starttls, tls or plain, got {value!r}")


def _check_host(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise ConfigError(f"an SMTP relay's host is a host name, got {value!r}")


def _check_port(instance: object, attribute: attrs.Attribute[int | None], value: object) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535
    ):
        raise ConfigError(f"an SMTP relay's port is an int from 1 to 65535, got {value!r}")


def _remember(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    remember_secret(value if isinstance(value, str) else None)  # in no output


def _timeout(value: object) -> float:
    return check_seconds(value, "timeout", minimum=0.001)


@attrs.frozen
class SmtpRelay:
    """An SMTP server mail is handed to (a smarthost or submission server).

    Args:
        host: The server.
        port: Default 587 for ``"starttls"``, 465 for ``"tls"``, 25 for ``"plain"``.
        security: ``"starttls"`` (default: the server must offer it), ``"tls"`` (implicit),
            or ``"plain"`` (no TLS: only when asked for by name).
        username: Log in as this user, if given (with *password*).
        password: The password, or a :class:`~mailtether.TokenSource` to log in with OAuth2;
            never shown in ``repr``.
        timeout: Seconds for connecting and for each SMTP command.
        ssl_context: Certificate verification settings (default: the system's CAs).
        name: How it is called in status, logs and the queue (default: ``host:port``).

    Example:
        >>> from mailtether import SmtpRelay
        >>> SmtpRelay("smtp.example.com", username="bot@example.com", password="pw")
        SmtpRelay('smtp.example.com:587', starttls, user='bot@example.com')
    """

    host: str = attrs.field(validator=_check_host)
    port: int | None = attrs.field(default=None, kw_only=True, validator=_check_port)
    security: Security = attrs.field(default="starttls", kw_only=True, validator=_check_security)
    username: str | None = attrs.field(default=None, kw_only=True)
    password: str | TokenSource | None = attrs.field(
        default=None, kw_only=True, repr=False, validator=_remember
    )
    timeout: float = attrs.field(default=30.0, kw_only=True, converter=_timeout)
    ssl_context: ssl.SSLContext | None = attrs.field(
        default=None, kw_only=True, repr=False, eq=False
    )
    name: str = attrs.field(kw_only=True, default="")

    def __attrs_post_init__(self) -> None:
        if self.port is None:
            object.__setattr__(self, "port", _PORTS[self.security])
        if not self.name:
            object.__setattr__(self, "name", f"{self.host}:{self.port}")

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``."""
        assert self.port is not None
        return self.host, self.port

    def connect(self) -> smtplib.SMTP:
        """A connection to the relay, TLS set up and logged in; the caller closes it.

        Raises:
            OSError, smtplib.SMTPException: as smtplib raises them (the password never in
                them: smtplib does not echo it).
        """
        host, port = self.address
        smtp: smtplib.SMTP
        if self.security == "tls":
            smtp = smtplib.SMTP_SSL(host, port, timeout=self.timeout, context=self._context())
        else:
            smtp = smtplib.SMTP(host, port, timeout=self.timeout)
        try:
            if self.security == "starttls":
                smtp.starttls(context=self._context())
            smtp_login(smtp, self.username, self.password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()

    def __repr__(self) -> str:
        user = f", user={self.username!r}" if self.username else ""
        return f"SmtpRelay({self.name!r}, {self.security}{user})"


def smtp_login(
    smtp: smtplib.SMTP, username: str | None, password: str | TokenSource | None
) -> None:
    """Log in on *smtp* (nothing without a *username*): a password, or OAuth2 with a token."""
    if username is None:
        return
    if isinstance(password, str) or password is None:
        smtp.login(username, password or "")
        return
    smtp.ehlo_or_helo_if_needed()
    offered = smtp.esmtp_features.get("auth", "").upper().split()
    mechanism = oauth2_mechanism("oauth2", [f"AUTH={name}".encode() for name in offered])
    token = password.token()
    for attempt in (1, 2):  # a refused token is renewed once and tried again
        answer = sasl_string(mechanism, username, token.value)
        code, said = smtp.docmd("AUTH", f"{mechanism} {answer}")
        if code == 334:  # a refused token's error challenge: answered, 535 follows
            code, said = smtp.docmd(ERROR_CHALLENGE_ANSWER[mechanism])
        if code == 235:
            return
        if attempt == 1:
            token = password.token(fresh=True)
    raise smtplib.SMTPAuthenticationError(code, said)
