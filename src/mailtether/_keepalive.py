"""``Keepalive``: the deadlines that find a dead connection in bounded time."""

from __future__ import annotations

import math
from typing import Any

import attrs

from mailtether._durations import MINUTE, to_seconds

__all__ = ["Keepalive"]


def _interval(*, allow_zero: bool) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        where = f"Keepalive.{attribute.name}"
        if isinstance(value, bool) or not isinstance(value, float):
            raise TypeError(f"{where} must be seconds or a timedelta, not {type(value).__name__}")
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0 (0 disables)" if allow_zero else "> 0"
            raise ValueError(f"{where} must be finite and {bound}, got {value!r}")

    return check


@attrs.frozen
class Keepalive:
    """How a connection is kept alive, and how soon a dead one is found.

    Args:
        noop_interval: Send NOOP after this long without any command, when not in IDLE
            (seed 002: 25 minutes; 0 disables). It keeps the server's autologout timer
            (at least 30 minutes, RFC 9051) from firing, and proves the connection alive.
        idle_renewal: End and re-issue IDLE after this long. RFC 2177 asks for less than 29
            minutes; Gmail and Microsoft 365 drop IDLE connections after about 10 minutes
            without a word, so use ``9 * MINUTE`` for them.
        response_timeout: Any command, or the end of IDLE, unanswered for this long marks the
            connection dead (a half-open connection answers nothing, ever).

    A black-holed connection is therefore found within
    ``max(noop_interval, idle_renewal) + response_timeout`` (:attr:`detection_bound`),
    whatever the server does.

    Example:
        >>> from mailtether import Keepalive, MINUTE
        >>> office365 = Keepalive(idle_renewal=9 * MINUTE, response_timeout=20)
        >>> office365.detection_bound / MINUTE
        25.333333333333332
    """

    noop_interval: float = attrs.field(
        default=25 * MINUTE, converter=to_seconds, validator=_interval(allow_zero=True)
    )
    idle_renewal: float = attrs.field(
        default=25 * MINUTE, converter=to_seconds, validator=_interval(allow_zero=False)
    )
    response_timeout: float = attrs.field(
        default=30.0, converter=to_seconds, validator=_interval(allow_zero=False)
    )

    def __attrs_post_init__(self) -> None:
        if self.idle_renewal >= 29 * MINUTE:
            raise ValueError(
                f"Keepalive.idle_renewal ({self.idle_renewal:g} s) must be under 29 minutes: "
                "RFC 2177 servers may drop an IDLE older than that"
            )

    @property
    def detection_bound(self) -> float:
        """The longest a dead connection can go unnoticed, in seconds."""
        return max(self.noop_interval, self.idle_renewal) + self.response_timeout
