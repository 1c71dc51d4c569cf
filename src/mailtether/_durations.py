"""Durations: the unit constants, and parsing of ``"30m"``-style strings from settings files."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Final, TypeAlias

from mailtether._errors import ConfigError

__all__ = ["DAY", "HOUR", "MINUTE", "SECOND", "WEEK", "Duration", "parse_duration"]

SECOND: Final = 1.0
"""One second, the unit of every duration in mailtether."""
MINUTE: Final = 60.0
"""One minute in seconds."""
HOUR: Final = 3_600.0
"""One hour in seconds."""
DAY: Final = 86_400.0
"""One day in seconds."""
WEEK: Final = 604_800.0
"""One week in seconds."""

Duration: TypeAlias = float | int | timedelta
"""What a duration argument accepts: seconds as a number, or a :class:`datetime.timedelta`."""

_UNITS: Final = {
    "ms": 0.001,
    "s": SECOND,
    "sec": SECOND,
    "m": MINUTE,
    "min": MINUTE,
    "h": HOUR,
    "d": DAY,
    "w": WEEK,
}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|sec|min|s|m|h|d|w)\s*")


def to_seconds(value: object) -> object:
    """Convert a :class:`timedelta` or int to float seconds; leave anything else for a validator."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def to_seconds_or_none(value: object) -> object:
    """Like :func:`to_seconds`, passing ``None`` through."""
    return None if value is None else to_seconds(value)


def parse_duration(text: str | float | int | timedelta) -> float:
    """Turn a duration from a settings file into seconds.

    Accepts a number of seconds, a :class:`~datetime.timedelta`, or a string made of
    number-unit parts with units ``ms``, ``s``, ``m``/``min``, ``h``, ``d``, ``w``
    (``"90s"``, ``"1h30m"``, ``"7d"``); a bare number string is seconds.

    Raises:
        ConfigError: the value is not a finite, non-negative duration.

    Example:
        >>> from mailtether import parse_duration
        >>> parse_duration("1h30m"), parse_duration("250ms"), parse_duration(12)
        (5400.0, 0.25, 12.0)
    """
    if isinstance(text, bool):
        raise ConfigError(f"a duration must be a number or a string like '30m', not {text!r}")
    if isinstance(text, timedelta | int | float):
        seconds = float(to_seconds(text))  # type: ignore[arg-type]
    elif isinstance(text, str):
        seconds = _parse_text(text)
    else:
        raise ConfigError(
            f"a duration must be a number or a string like '30m', not {type(text).__name__}"
        )
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise ConfigError(f"a duration must be finite and >= 0, got {text!r}")
    return seconds


def _parse_text(text: str) -> float:
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        pass
    pos, total = 0, 0.0
    while pos < len(stripped):
        match = _PART.match(stripped, pos)
        if match is None:
            raise ConfigError(
                f"cannot read {text!r} as a duration: use a number of seconds or parts like "
                "'250ms', '30s', '5m', '2h', '7d', '1w' (e.g. '1h30m')"
            )
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ConfigError("cannot read an empty string as a duration")
    return total
