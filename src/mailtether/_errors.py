"""The exceptions mailtether raises, as one tree users can catch at any level.

::

    MailtetherError                 anything mailtether raises on purpose
    ├── ConfigError (ValueError)    a setting, URL or strategy description is not usable
    ├── StoreError                  a state store failed or is unreachable
    │   └── SchemaError             the store's schema is from another mailtether version
    └── LeaseError                  a lease or process lock could not be had or kept
        ├── LeaseUnavailable        another owner holds it (and kept it past the timeout)
        └── LeaseLost               it expired or was taken over while you thought you held it

Constructors of value classes (strategies, states) raise the built-in :class:`ValueError`
or :class:`TypeError` naming the field, as attrs validators do.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "LeaseError",
    "LeaseLost",
    "LeaseUnavailable",
    "MailtetherError",
    "SchemaError",
    "StoreError",
]


class MailtetherError(Exception):
    """Base class of every exception mailtether raises on purpose."""


class ConfigError(MailtetherError, ValueError):
    """A configuration value (a strategy description, a duration, a URL) cannot be used.

    The message names the offending key and says what would be accepted.
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
