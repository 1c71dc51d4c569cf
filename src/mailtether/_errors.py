"""The exceptions mailtether raises, as one tree users can catch at any level.

::

    MailtetherError                 anything mailtether raises on purpose
    └── ConfigError (ValueError)    a setting, URL or strategy description is not usable

Constructors of value classes (strategies, states) raise the built-in :class:`ValueError`
or :class:`TypeError` naming the field, as attrs validators do.
"""

from __future__ import annotations

__all__ = ["ConfigError", "MailtetherError"]


class MailtetherError(Exception):
    """Base class of every exception mailtether raises on purpose."""


class ConfigError(MailtetherError, ValueError):
    """A configuration value (a strategy description, a duration, a URL) cannot be used.

    The message names the offending key and says what would be accepted.
    """
