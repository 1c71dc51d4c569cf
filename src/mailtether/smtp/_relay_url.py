"""An :class:`~mailtether.SmtpRelay` from the URL form ``mailtether check`` takes for SMTP."""

from __future__ import annotations

import ssl

from mailtether._settings import OAUTH, tokens_of
from mailtether._smtp_relay import SmtpRelay
from mailtether.smtp._probe import SmtpCheckTarget

__all__ = ["relay_from_url"]


def relay_from_url(url: str, *, ssl_context: ssl.SSLContext | None = None) -> SmtpRelay:
    """``smtps://[user:password@]host[:port]/`` (or ``smtp://``, STARTTLS) as a relay.

    The rules of ``mailtether check``'s SMTP URLs: ``smtps://`` is implicit TLS (465),
    ``smtp://`` requires STARTTLS (587), ``?security=plain`` (25) only when asked for;
    ``?auth=xoauth2`` (or ``oauthbearer``, ``oauth2``): the password part is an access token.
    The relay is named by its host and port.

    Raises:
        ConfigError: the URL cannot be used (the message never holds the password).
    """
    target = SmtpCheckTarget.from_url(url, ssl_context=ssl_context)
    settings = target.settings
    password = tokens_of(settings) if settings.auth in OAUTH else settings.password
    return SmtpRelay(
        settings.host,
        port=settings.port,
        security=settings.security,
        username=settings.username if target.login else None,
        password=password if target.login else None,
        ssl_context=ssl_context,
    )
