"""Durations: the unit constants, and parsing of ``"30m"``-style strings from settings files."""

from __future__ import annotations

import math
import numbers
import re
from datetime import timedelta
from typing import Final, Literal, TypeAlias, overload

from mailtether._errors import ConfigError

__all__ = [
    "DAY",
    "HOUR",
    "MINUTE",
    "SECOND",
    "WEEK",
    "Duration",
    "check_count",
    "check_seconds",
    "parse_duration",
]

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


# -- checks of settings: one place, so every constructor refuses the same values alike ----------

_DURATION_FORMS: Final = "finite: a number, a timedelta, or a string like '15s' or '2m'"


@overload
def check_seconds(
    value: object,
    field: str,
    *,
    minimum: float = ...,
    maximum: float | None = ...,
    allow_zero: bool = ...,
    allow_none: Literal[False] = ...,
) -> float: ...


@overload
def check_seconds(
    value: object,
    field: str,
    *,
    minimum: float = ...,
    maximum: float | None = ...,
    allow_zero: bool = ...,
    allow_none: bool,
) -> float | None: ...


def check_seconds(
    value: object,
    field: str,
    *,
    minimum: float = 0.0,
    maximum: float | None = None,
    allow_zero: bool = False,
    allow_none: bool = False,
) -> float | None:
    """Return a duration setting as float seconds, or raise naming *field*.

    The one check of every duration a constructor or a command-line flag takes. Accepted: an
    int or float (not a bool), a :class:`~datetime.timedelta`, or a duration string read by
    :func:`parse_duration` (``"15s"``, ``"2m"``, ``"1h30m"``, ``"0.5"``). Refused: NaN and the
    infinities, negatives, values under *minimum* or over *maximum*, and zero unless
    *allow_zero* (``0`` usually means "never", which a timeout cannot mean).

    Args:
        value: What the user gave.
        field: How the user named it, for the message: ``"ImapSettings.connect_timeout"``,
            ``"--lease-ttl"``, ``"lease_ttl in watch.toml"``.
        minimum: The smallest accepted value (inclusive); zero is still refused unless
            *allow_zero*.
        maximum: The largest accepted value (inclusive), or ``None`` for no bound.
        allow_zero: Whether ``0`` is accepted (when it means "disabled" or "try once").
        allow_none: Whether ``None`` is accepted (and returned as it is).

    Raises:
        ConfigError: the value is not such a duration; the message names *field*, says
            what is accepted and shows what was given.

    Example:
        >>> from datetime import timedelta
        >>> check_seconds("2m", "lease_ttl"), check_seconds(timedelta(seconds=15), "timeout")
        (120.0, 15.0)
        >>> check_seconds(float("nan"), "lease_ttl")
        Traceback (most recent call last):
        ...
        mailtether._errors.ConfigError: lease_ttl must be a positive number of seconds ...
    """
    if value is None and allow_none:
        return None
    seconds = _seconds_of(value)
    if (
        seconds is None
        or not math.isfinite(seconds)
        or seconds < minimum
        or (seconds == 0 and not allow_zero)
        or (maximum is not None and seconds > maximum)
    ):
        raise ConfigError(
            f"{field} must be {_rule(minimum, maximum, allow_zero)} ({_DURATION_FORMS}), "
            f"got {_shown(value)}"
        )
    return seconds


def _seconds_of(value: object) -> float | None:
    """*value* as float seconds (maybe NaN or negative), or ``None`` if it is no duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):  # the common case first
        return value
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, numbers.Real):  # int, Fraction, numpy's numbers
        return float(value)
    if isinstance(value, str):
        try:
            return _parse_text(value)
        except (ConfigError, OverflowError):
            return None
    return None


def _rule(minimum: float, maximum: float | None, allow_zero: bool) -> str:
    if minimum > 0:
        rule = f"a number of seconds >= {minimum:g}"
    else:
        rule = "a number of seconds >= 0" if allow_zero else "a positive number of seconds"
    return rule if maximum is None else f"{rule}, at most {maximum:g}"


def check_count(value: object, field: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """Return a count setting (attempts, a port, a size) as int, or raise naming *field*.

    Accepted: an int (or another integral number) from *minimum* to *maximum*. Refused:
    bools, floats (``2.5`` and ``2.0`` alike: a count is never a measurement), NaN, strings.

    Raises:
        ConfigError: the value is not such a count; the message names *field*.

    Example:
        >>> check_count(3, "max_failures")
        3
        >>> check_count(0, "max_failures")
        Traceback (most recent call last):
        ...
        mailtether._errors.ConfigError: max_failures must be a whole number >= 1, got 0
    """
    count = int(value) if isinstance(value, numbers.Integral) else None
    if (
        isinstance(value, bool)
        or count is None
        or count < minimum
        or (maximum is not None and count > maximum)
    ):
        rule = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ConfigError(f"{field} must be a whole number {rule}, got {_shown(value)}")
    return count


def _shown(value: object) -> str:
    """*value* as the message shows it: its repr, cut short (a setting may be anything)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
