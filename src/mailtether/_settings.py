"""``ImapSettings``: where and how to connect, from code or from one URL."""

from __future__ import annotations

import ssl
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, unquote

import attrs

from mailtether._durations import DAY, Duration, check_count, check_seconds
from mailtether._errors import ConfigError
from mailtether._redaction import remember_secret
from mailtether._tokens import TokenSource, token_source
from mailtether._url_errors import redact, split_url

__all__ = ["ImapSettings", "Security"]

Security = Literal["tls", "starttls", "plain"]
"""``"tls"``: implicit TLS (port 993); ``"starttls"``: STARTTLS required (143);
``"plain"``: no encryption, only when asked for explicitly."""

_DEFAULT_PORTS: Final = {"tls": 993, "starttls": 143, "plain": 143}


def _hidden(value: object) -> str:
    return "'***'" if value else "''"


def _connect_timeout(value: Duration | str) -> float:
    return check_seconds(value, "ImapSettings.connect_timeout", maximum=DAY)


def _text(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value or "\r" in value or "\n" in value:
        raise ValueError(
            f"ImapSettings.{attribute.name} must be non-empty text without line breaks"
        )


Auth = Literal["password", "oauth2", "xoauth2", "oauthbearer", "apop"]
_AUTHS: Final = ("password", "oauth2", "xoauth2", "oauthbearer", "apop")
OAUTH: Final = frozenset({"oauth2", "xoauth2", "oauthbearer"})
"""The ``auth`` values that log in with an OAuth2 access token."""


def literal_password(settings: ImapSettings) -> str:
    """The password as text, or ``""`` for a token source (whose tokens are redacted anyway)."""
    return settings.password if isinstance(settings.password, str) else ""


def with_tokens(settings: ImapSettings, tokens: TokenSource | None) -> ImapSettings:
    """*settings* logging in with *tokens* (OAuth2), or as they are for ``None``."""
    if tokens is None:
        return settings
    auth = settings.auth if settings.auth in OAUTH else "oauth2"
    return attrs.evolve(settings, password=tokens, auth=auth)


def tokens_of(settings: ImapSettings) -> TokenSource:
    """Where OAuth2 logins with *settings* get their token (a text password: a fixed one)."""
    return token_source(settings.password)


@attrs.frozen
class ImapSettings:
    """Where an IMAP mailbox is and how to log in. The secret never shows in ``repr``.

    Args:
        host: The server's host name (verified against its certificate).
        username: The login name.
        password: The password; with OAuth2 (``auth="oauth2"``), a
            :class:`~mailtether.TokenSource` asked for a fresh token before every login (or
            one fixed access token, as text).
        port: Default (or 0) 993 for ``"tls"``, 143 otherwise.
        security: ``"tls"`` (implicit TLS, the default), ``"starttls"`` (required: never
            falls back to plaintext), or ``"plain"`` (no encryption, only on explicit
            request, e.g. for a test server on loopback).
        folder: The folder to listen to.
        auth: ``"password"`` (LOGIN; USER/PASS for POP3), ``"oauth2"`` (Gmail, Microsoft
            365: OAUTHBEARER where the server offers it, else XOAUTH2), ``"xoauth2"`` or
            ``"oauthbearer"`` (that mechanism only), or ``"apop"`` (POP3's APOP challenge,
            where the server offers it).
        connect_timeout: Seconds for the TCP connect, TLS handshake and greeting (at most a
            day): a number, a :class:`~datetime.timedelta` or a string such as ``"15s"``.
        ssl_context: Certificate verification settings; default: the system's CAs, host
            name checked.

    Example:
        >>> from mailtether import ImapSettings
        >>> ImapSettings.from_url("imaps://support%40example.com:hunter2@mail.example.com/INBOX")
        ImapSettings(host='mail.example.com', username='support@example.com', password='***', port=993, security='tls', folder='INBOX', auth='password', connect_timeout=15.0)
    """  # noqa: E501

    host: str = attrs.field(validator=_text)
    username: str = attrs.field(validator=_text)
    password: str | TokenSource = attrs.field(repr=_hidden)
    port: int = attrs.field(default=0)
    security: Security = attrs.field(
        default="tls", validator=attrs.validators.in_(("tls", "starttls", "plain"))
    )
    folder: str = attrs.field(default="INBOX", validator=_text)
    auth: Auth = attrs.field(default="password", validator=attrs.validators.in_(_AUTHS))
    connect_timeout: float = attrs.field(default=15.0, converter=_connect_timeout)
    ssl_context: ssl.SSLContext | None = attrs.field(default=None, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.password, TokenSource) and not isinstance(self.password, str):
            if self.auth not in OAUTH:
                raise ConfigError(
                    "a token source logs in with OAuth2: give auth='oauth2' (or 'xoauth2', "
                    "'oauthbearer') with it"
                )
        elif not isinstance(self.password, str) or "\r" in self.password or "\n" in self.password:
            raise ValueError("ImapSettings.password must be text without line breaks")
        remember_secret(self.password if isinstance(self.password, str) else None)
        port = check_count(self.port, "ImapSettings.port", minimum=0, maximum=65535)
        # 0: the security's standard port
        object.__setattr__(self, "port", port or _DEFAULT_PORTS[self.security])

    @classmethod
    def from_url(cls, url: str, *, ssl_context: ssl.SSLContext | None = None) -> ImapSettings:
        """Read settings from ``imaps://user:password@host[:port][/folder][?options]``.

        ``imaps://`` is implicit TLS; ``imap://`` requires STARTTLS; plaintext needs
        ``imap://…?security=plain``. Percent-encode ``@ : / ? # %`` in the user name and
        password (``urllib.parse.quote(password, safe="")``), and ``@`` in the folder.
        Options: ``auth=xoauth2`` (the password part is the access token),
        ``connect_timeout=<seconds>`` (or a duration such as ``15s``).

        Raises:
            ConfigError: the URL cannot be used; the message names the part, shows the URL
                with the password as ``***`` and never holds the password or a piece of it.
        """
        return cls._from_url(url, "IMAP", ssl_context)

    @classmethod
    def from_pop3_url(cls, url: str, *, ssl_context: ssl.SSLContext | None = None) -> ImapSettings:
        """Read ``pop3s://user:password@host[:port]/`` (or ``pop3://``) with the same rules.

        ``pop3s://`` is implicit TLS (port 995); ``pop3://`` requires STLS (port 110);
        plaintext needs ``?security=plain``; ``?auth=apop`` logs in with APOP.

        Raises:
            ConfigError: the URL cannot be used (the message as for :meth:`from_url`).
        """
        return cls._from_url(url, "POP3", ssl_context)

    @classmethod
    def _from_url(
        cls, url: str, protocol: Literal["IMAP", "POP3"], ssl_context: ssl.SSLContext | None
    ) -> ImapSettings:
        tls, plain = ("imaps", "imap") if protocol == "IMAP" else ("pop3s", "pop3")
        starts = (
            f"{'an' if protocol == 'IMAP' else 'a'} {protocol} URL starts with {tls}:// "
            f"(implicit TLS) or {plain}:// ({'STARTTLS' if protocol == 'IMAP' else 'STLS'})"
        )
        if not isinstance(url, str) or "://" not in url:  # not shown: it may be no URL at all
            raise ConfigError(f"{starts}: write {tls}://user:password@host/")
        parts = split_url(url)  # a ConfigError that names the part and hides the password
        shown = redact(url)
        scheme = parts.scheme.lower()
        if scheme not in (tls, plain):
            raise ConfigError(f"the scheme of {shown} is not {tls}:// or {plain}://: {starts}")
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        security = options.pop("security", "tls" if scheme == tls else "starttls")
        if scheme == tls and security != "tls":
            raise ConfigError(
                f"the security option of {shown} does not go with {tls}://, which is implicit "
                f"TLS: use {plain}:// with security=starttls or security=plain"
            )
        if security not in ("tls", "starttls", "plain"):
            raise ConfigError(
                f"the security option of {shown} is {security!r}: use tls, starttls or plain"
            )
        auth = options.pop("auth", "password")
        timeout = options.pop("connect_timeout", "15")
        if options:
            raise ConfigError(
                f"the query of {shown} has unknown {protocol} URL option(s) "
                f"{', '.join(sorted(options))}: use security, auth or connect_timeout"
            )
        if not parts.hostname or parts.username is None:
            missing = "host" if not parts.hostname else "user name"
            raise ConfigError(
                f"the {missing} of {shown} is missing: write {scheme}://user:password@host/"
            )
        port = parts.port
        if protocol == "POP3" and port is None:
            port = 995 if security == "tls" else 110
        problem = None
        try:
            return cls(
                host=parts.hostname,
                username=unquote(parts.username),
                password=unquote(parts.password or ""),
                port=port or 0,
                security=security,  # type: ignore[arg-type]
                folder=unquote(parts.path.lstrip("/")) or "INBOX",
                auth=auth,  # type: ignore[arg-type]
                connect_timeout=timeout,
                ssl_context=ssl_context,
            )
        except (TypeError, ValueError) as error:  # no value of these messages is a secret
            problem = f"{shown} cannot be used: {error}"
        raise ConfigError(problem)  # outside the except: nothing chained
