"""``Backoff``: runs a reconnect strategy for one mail source, with state that survives restarts."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._strategies import ReconnectStrategy

__all__ = ["Backoff", "BackoffState"]


def _non_negative_int(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"BackoffState.{attribute.name} must be an int >= 0, got {value!r}")


def _optional_time(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"BackoffState.{attribute.name} must be a number or None, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"BackoffState.{attribute.name} must be finite and >= 0, got {value!r}")


@attrs.frozen
class BackoffState:
    """Where one source stands in its reconnect schedule: a plain value to save and restore.

    Times are wall-clock seconds since the epoch, so a process restarted a day later still
    knows the source has been offline for a day.

    Attributes:
        attempt: Reconnect attempts scheduled since the connection was lost (0 = online).
        offline_since: When the connection was lost, or ``None`` while online.
        last_delay: The last wait the strategy asked for, or ``None``.
        next_attempt_at: When the next attempt is due, or ``None``.
        gave_up: ``True`` once the strategy answered ``None``: only a reset (a person
            resuming the source) starts the schedule again.
    """

    attempt: int = attrs.field(default=0, validator=_non_negative_int)
    offline_since: float | None = attrs.field(default=None, validator=_optional_time)
    last_delay: float | None = attrs.field(default=None, validator=_optional_time)
    next_attempt_at: float | None = attrs.field(default=None, validator=_optional_time)
    gave_up: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    def to_dict(self) -> dict[str, Any]:
        """Return the state as a JSON-compatible dict."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackoffState:
        """Rebuild a state saved with :meth:`to_dict`.

        Raises:
            ValueError: *data* has unknown keys or values a state cannot hold.
        """
        names = {field.name for field in attrs.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"BackoffState has no field(s) {', '.join(sorted(unknown))}")
        return cls(**data)


_ONLINE = BackoffState()
_INF = math.inf


class Backoff:
    """Runs a :class:`~mailtether.ReconnectStrategy` for one source.

    Call :meth:`failed` each time the connection is lost or an attempt fails: it returns the
    seconds to wait before the next attempt, or ``None`` when the strategy gives up. Call
    :meth:`succeeded` once connected. :attr:`state` is a plain value; pass it back in after
    a restart so the schedule continues where it stood.

    A ``Backoff`` is meant for one source driven by one thread. :meth:`failed` costs little
    more than the strategy's own ``delay``: the fields live in the runner, and the
    :class:`BackoffState` value is built (and validated) only when :attr:`state` is read.

    Example:
        >>> from mailtether import Backoff, Exponential
        >>> from mailtether.testing import FakeClock
        >>> clock = FakeClock()
        >>> backoff = Backoff(Exponential(1, growth=1, max_attempts=3), clock=clock)
        >>> [backoff.failed() for _ in range(4)]
        [1.0, 2.0, 4.0, None]
        >>> backoff.state.gave_up
        True
        >>> backoff.succeeded()
        >>> backoff.state.attempt
        0
    """

    __slots__ = (
        "_attempt",
        "_clock",
        "_delay",
        "_gave_up",
        "_last_delay",
        "_next_attempt_at",
        "_now",
        "_since",
        "_state",
        "_strategy",
    )

    def __init__(
        self,
        strategy: ReconnectStrategy,
        *,
        clock: Clock = SYSTEM_CLOCK,
        state: BackoffState | None = None,
    ) -> None:
        self.strategy = strategy
        if state is not None and not isinstance(state, BackoffState):
            raise TypeError(f"state must be a BackoffState, not {type(state).__name__}")
        self.clock = clock
        self._restore(state if state is not None else _ONLINE)

    @property
    def strategy(self) -> ReconnectStrategy:
        """The schedule being followed."""
        return self._strategy

    @strategy.setter
    def strategy(self, strategy: ReconnectStrategy) -> None:
        delay = getattr(strategy, "delay", None)
        if not callable(delay):
            raise TypeError(f"Backoff needs a ReconnectStrategy, not {type(strategy).__name__}")
        self._strategy = strategy
        self._delay: Callable[[int, float], float | None] = delay

    @property
    def clock(self) -> Clock:
        """Where the time comes from."""
        return self._clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self._clock = clock
        self._now: Callable[[], float] = clock.time

    def _restore(self, state: BackoffState) -> None:
        self._state: BackoffState | None = state
        self._attempt = state.attempt
        self._since = state.offline_since
        self._last_delay = state.last_delay
        self._next_attempt_at = state.next_attempt_at
        self._gave_up = state.gave_up

    @property
    def state(self) -> BackoffState:
        """The current state, to save (``state.to_dict()``) and restore later."""
        state = self._state
        if state is None:
            state = self._state = BackoffState(
                attempt=self._attempt,
                offline_since=self._since,
                last_delay=self._last_delay,
                next_attempt_at=self._next_attempt_at,
                gave_up=self._gave_up,
            )
        return state

    @property
    def offline_for(self) -> float:
        """Seconds since the connection was lost; 0 while online."""
        since = self._since
        if since is None:
            return 0.0
        # A wall clock stepped backwards must not produce a negative outage.
        return max(0.0, self._now() - since)

    def failed(self) -> float | None:
        """Record a lost connection or failed attempt; return the wait before the next one.

        Returns:
            Seconds to wait, or ``None`` if the strategy gives up (it keeps answering
            ``None`` until :meth:`reset`).

        Raises:
            ValueError: the strategy answered a negative, infinite or NaN wait.
        """
        if self._gave_up:
            return None
        now = self._now()
        since = self._since
        if since is None:
            since = now
        attempt = self._attempt + 1
        # A wall clock stepped backwards must not produce a negative outage.
        delay = self._delay(attempt, now - since if now > since else 0.0)
        if delay is None:
            self._since, self._next_attempt_at, self._gave_up = since, None, True
            self._state = None
            return None
        if delay.__class__ is not float:
            delay = float(delay)
        if not 0.0 <= delay < _INF:
            raise ValueError(
                f"{self._strategy!r} answered {delay!r} for attempt {attempt}: a wait must be "
                "finite and >= 0 (run mailtether.testing.check_strategy on it)"
            )
        self._attempt, self._since, self._last_delay = attempt, since, delay
        self._next_attempt_at = now + delay
        self._state = None
        return delay

    def succeeded(self) -> None:
        """Record a successful connection: the next failure starts the schedule over."""
        self._restore(_ONLINE)

    def reset(self) -> None:
        """Start the schedule over, e.g. when a person resumes a source that gave up."""
        self._restore(_ONLINE)

    def __repr__(self) -> str:
        return f"Backoff({self._strategy!r}, state={self.state!r})"
