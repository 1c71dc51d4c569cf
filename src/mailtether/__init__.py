"""mailtether: keep mail listeners connected and honest.

The public API is re-exported here; every other module is private.
"""

from mailtether._backoff import Backoff, BackoffState
from mailtether._clock import SYSTEM_CLOCK, Clock, SystemClock
from mailtether._config import ENTRY_POINT_GROUP, strategy_from_config
from mailtether._durations import DAY, HOUR, MINUTE, SECOND, WEEK, Duration, parse_duration
from mailtether._errors import ConfigError, MailtetherError
from mailtether._strategies import (
    Capped,
    Chain,
    Exponential,
    Fixed,
    ImmediateFirst,
    Jittered,
    JitterKind,
    ReconnectStrategy,
    Tiered,
)

__all__ = [
    "DAY",
    "ENTRY_POINT_GROUP",
    "HOUR",
    "MINUTE",
    "SECOND",
    "SYSTEM_CLOCK",
    "WEEK",
    "Backoff",
    "BackoffState",
    "Capped",
    "Chain",
    "Clock",
    "ConfigError",
    "Duration",
    "Exponential",
    "Fixed",
    "ImmediateFirst",
    "JitterKind",
    "Jittered",
    "MailtetherError",
    "ReconnectStrategy",
    "SystemClock",
    "Tiered",
    "parse_duration",
    "strategy_from_config",
]
