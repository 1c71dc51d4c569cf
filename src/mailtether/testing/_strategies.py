"""The plug-in author kit for reconnect strategies: ``simulate`` and ``check_strategy``."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import attrs

from mailtether._backoff import Backoff
from mailtether._durations import DAY, HOUR, MINUTE, WEEK
from mailtether._strategies import ReconnectStrategy
from mailtether.testing._clock import FakeClock

__all__ = ["Schedule", "ScheduleStep", "StrategyCheckError", "check_strategy", "simulate"]


@attrs.frozen
class ScheduleStep:
    """One attempt in a simulated outage.

    Attributes:
        attempt: The attempt number, from 1.
        wait: Seconds waited before it.
        offline_for: Seconds since the connection was lost when the attempt starts.
    """

    attempt: int
    wait: float
    offline_for: float


@attrs.frozen
class Schedule(Sequence[ScheduleStep]):
    """What :func:`simulate` returns: the attempts made, and whether the strategy gave up.

    It is a sequence of :class:`ScheduleStep`; :attr:`waits` and :attr:`offline_fors` are
    the columns.
    """

    steps: tuple[ScheduleStep, ...]
    gave_up: bool
    """``True`` if the strategy answered ``None`` (rather than the simulation hitting a limit)."""

    @property
    def waits(self) -> list[float]:
        """The wait before each attempt."""
        return [step.wait for step in self.steps]

    @property
    def offline_fors(self) -> list[float]:
        """The time offline at the start of each attempt."""
        return [step.offline_for for step in self.steps]

    @overload
    def __getitem__(self, index: int) -> ScheduleStep: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ScheduleStep]: ...
    def __getitem__(self, index: int | slice) -> ScheduleStep | Sequence[ScheduleStep]:
        return self.steps[index]

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[ScheduleStep]:
        return iter(self.steps)


def simulate(
    strategy: ReconnectStrategy,
    *,
    max_steps: int = 1_000,
    until_offline_for: float | None = None,
    attempt_takes: float = 0.0,
) -> Schedule:
    """Play an outage through *strategy* without sleeping and return the schedule.

    The connection is lost at time 0 and every attempt fails. The strategy is run by a
    real :class:`~mailtether.Backoff` on a :class:`FakeClock`, so what you see is exactly
    what a listener would do.

    Args:
        strategy: The strategy to play.
        max_steps: Stop after this many attempts.
        until_offline_for: Stop before an attempt that would start later than this.
        attempt_takes: Seconds each failed attempt itself takes (a connect timeout, say).

    Example:
        >>> from mailtether import Exponential
        >>> from mailtether.testing import simulate
        >>> schedule = simulate(Exponential(10, growth=0.5, max_attempts=4))
        >>> schedule.waits, schedule.offline_fors, schedule.gave_up
        ([10.0, 15.0, 22.5, 33.75], [10.0, 25.0, 47.5, 81.25], True)
    """
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps!r}")
    if attempt_takes < 0 or not math.isfinite(attempt_takes):
        raise ValueError(f"attempt_takes must be finite and >= 0, got {attempt_takes!r}")
    clock = FakeClock()
    backoff = Backoff(strategy, clock=clock)
    steps: list[ScheduleStep] = []
    gave_up = False
    while len(steps) < max_steps:
        wait = backoff.failed()
        if wait is None:
            gave_up = True
            break
        offline_for = backoff.offline_for + wait
        if until_offline_for is not None and offline_for > until_offline_for:
            break
        clock.sleep(wait)
        steps.append(
            ScheduleStep(attempt=backoff.state.attempt, wait=wait, offline_for=offline_for)
        )
        clock.advance(attempt_takes)
    return Schedule(steps=tuple(steps), gave_up=gave_up)


class StrategyCheckError(AssertionError):
    """A strategy broke one of the rules :func:`check_strategy` checks; the message says which."""


_OFFLINE_GRID = (
    0.0,
    0.5,
    1.0,
    59.0,
    MINUTE,
    HOUR - 1,
    HOUR,
    DAY,
    WEEK - 1,
    WEEK,
    WEEK + 1,
    30 * DAY,
    365 * DAY,
)


def check_strategy(
    strategy: ReconnectStrategy,
    *,
    attempts: int = 200,
    offline_fors: Iterable[float] = _OFFLINE_GRID,
) -> None:
    """Check the rules every reconnect strategy must follow; raise on the first broken one.

    The rules, for every attempt in ``1..attempts`` and every time offline in
    *offline_fors*:

    1. It is a :class:`~mailtether.ReconnectStrategy` (has ``delay``).
    2. The answer is ``None`` or a finite, non-negative number (not a bool).
    3. It is deterministic: asking twice, or asking a deep copy, gives the same answer
       (jitter must come from a seed, not from a shared random generator).
    4. Giving up is final: once it answers ``None`` for an attempt, it answers ``None`` for
       every later attempt, and for a longer time offline.
    5. It respects its own caps, if it has them as attributes: nothing after
       ``max_attempts``; no wait over ``max_delay``; no attempt started at or past
       ``max_offline_for`` (``offline_for + wait <= max_offline_for``).
    6. A simulated outage (:func:`simulate`) runs without error.

    Use it in your plug-in's tests, ideally under hypothesis over your strategy's arguments.

    Raises:
        StrategyCheckError: a rule is broken; the message names the rule, the attempt and
            the time offline.

    Example:
        >>> from mailtether import Fixed
        >>> from mailtether.testing import check_strategy
        >>> check_strategy(Fixed(60, max_attempts=5))
        >>> class Broken:
        ...     def delay(self, attempt: int, offline_for: float) -> float | None:
        ...         return -1.0
        >>> check_strategy(Broken())
        Traceback (most recent call last):
        ...
        mailtether.testing._strategies.StrategyCheckError: rule 2: ... answered -1.0 for attempt 1 at offline_for=0.0; a wait must be finite and >= 0
    """  # noqa: E501
    if not isinstance(strategy, ReconnectStrategy):
        raise StrategyCheckError(f"rule 1: {strategy!r} has no delay(attempt, offline_for) method")
    grid = sorted(set(float(value) for value in offline_fors))
    if not grid or any(value < 0 or not math.isfinite(value) for value in grid):
        raise ValueError("offline_fors must be finite values >= 0")
    try:
        twin = copy.deepcopy(strategy)
    except Exception as error:
        raise StrategyCheckError(f"rule 3: {strategy!r} cannot be deep-copied: {error}") from error
    max_attempts = _cap(strategy, "max_attempts")
    max_delay = _cap(strategy, "max_delay")
    max_offline_for = _cap(strategy, "max_offline_for")

    gave_up_at: dict[float, int] = {}
    for offline_for in grid:
        for attempt in range(1, attempts + 1):
            where = f"for attempt {attempt} at offline_for={offline_for!r}"
            try:
                wait = strategy.delay(attempt, offline_for)
            except Exception as error:
                raise StrategyCheckError(
                    f"rule 2: {strategy!r} raised {error!r} {where}"
                ) from error
            _check_value(strategy, wait, where)
            again = strategy.delay(attempt, offline_for)
            copied = twin.delay(attempt, offline_for)
            if again != wait or copied != wait:
                raise StrategyCheckError(
                    f"rule 3: {strategy!r} is not deterministic {where}: answered {wait!r}, "
                    f"then {again!r}, and a copy answered {copied!r}"
                )
            if wait is None:
                gave_up_at.setdefault(offline_for, attempt)
            elif offline_for in gave_up_at:
                raise StrategyCheckError(
                    f"rule 4: {strategy!r} gave up at attempt {gave_up_at[offline_for]} but "
                    f"answered {wait!r} {where}; giving up must be final"
                )
            if wait is None:
                continue
            if max_attempts is not None and attempt > max_attempts:
                raise StrategyCheckError(
                    f"rule 5: {strategy!r} has max_attempts={max_attempts} but answered "
                    f"{wait!r} {where}"
                )
            if max_delay is not None and wait > max_delay:
                raise StrategyCheckError(
                    f"rule 5: {strategy!r} has max_delay={max_delay} but answered {wait!r} {where}"
                )
            if max_offline_for is not None and (
                offline_for >= max_offline_for or offline_for + wait > max_offline_for
            ):
                raise StrategyCheckError(
                    f"rule 5: {strategy!r} has max_offline_for={max_offline_for} but answered "
                    f"{wait!r} {where}: that attempt would start past the deadline"
                )
    for attempt in range(1, attempts + 1):
        stopped_at = None
        for offline_for in grid:
            if attempt >= gave_up_at.get(offline_for, attempts + 1):
                stopped_at = offline_for if stopped_at is None else stopped_at
            elif stopped_at is not None:
                raise StrategyCheckError(
                    f"rule 4: {strategy!r} gave up for attempt {attempt} at "
                    f"offline_for={stopped_at!r} but answered "
                    f"{strategy.delay(attempt, offline_for)!r} at the longer "
                    f"offline_for={offline_for!r}; giving up must be final"
                )
    try:
        simulate(strategy, max_steps=attempts, until_offline_for=2 * 365 * DAY)
    except Exception as error:
        raise StrategyCheckError(f"rule 6: simulating {strategy!r} raised {error!r}") from error


def _cap(strategy: object, name: str) -> float | None:
    value = getattr(strategy, name, None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _check_value(strategy: object, wait: object, where: str) -> None:
    if wait is None:
        return
    if isinstance(wait, bool) or not isinstance(wait, int | float):
        raise StrategyCheckError(
            f"rule 2: {strategy!r} answered {wait!r} {where}; a wait is a number or None"
        )
    if not math.isfinite(wait) or wait < 0:
        raise StrategyCheckError(
            f"rule 2: {strategy!r} answered {wait!r} {where}; a wait must be finite and >= 0"
        )
