"""``Keepalive``: the deadlines that find a dead connection in bounded time."""

from __future__ import annotations

import attrs

from mailtether._durations import MINUTE, Duration, check_seconds
from mailtether._errors import ConfigError

__all__ = ["Keepalive"]


# One named converter per field: mypy's attrs plugin types __init__ from named functions only.
def _noop_interval(value: Duration | str) -> float:
    return check_seconds(value, "Keepalive.noop_interval", allow_zero=True)


def _idle_renewal(value: Duration | str) -> float:
    return check_seconds(value, "Keepalive.idle_renewal")


def _response_timeout(value: Duration | str) -> float:
    return check_seconds(value, "Keepalive.response_timeout")


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

    Each takes seconds, a :class:`~datetime.timedelta` or a string such as ``"9m"``; NaN,
    infinities, negatives and (but for *noop_interval*) zero raise
    :class:`~mailtether.ConfigError` naming the field.

    A black-holed connection is therefore found within
    ``max(noop_interval, idle_renewal) + response_timeout`` (:attr:`detection_bound`),
    whatever the server does.

    Example:
        >>> from mailtether import Keepalive, MINUTE
        >>> office365 = Keepalive(idle_renewal=9 * MINUTE, response_timeout=20)
        >>> office365.detection_bound / MINUTE
        25.333333333333332
    """

    noop_interval: float = attrs.field(default=25 * MINUTE, converter=_noop_interval)
    idle_renewal: float = attrs.field(default=25 * MINUTE, converter=_idle_renewal)
    response_timeout: float = attrs.field(default=30.0, converter=_response_timeout)

    def __attrs_post_init__(self) -> None:
        if self.idle_renewal >= 29 * MINUTE:
            raise ConfigError(
                f"Keepalive.idle_renewal ({self.idle_renewal:g} s) must be under 29 minutes: "
                "RFC 2177 servers may drop an IDLE older than that"
            )

    @property
    def detection_bound(self) -> float:
        """The longest a dead connection can go unnoticed, in seconds, while it is waited on.

        For a connection in :meth:`~mailtether.ImapConnection.wait`: in IDLE, or polling with
        NOOPs. With ``noop_interval=0`` and no IDLE nothing is sent while waiting: the
        connection is tested when next used. A listener's own bound, which counts its
        ``poll_interval``, is :attr:`ImapListener.detection_bound`.
        """
        return max(self.noop_interval, self.idle_renewal) + self.response_timeout
