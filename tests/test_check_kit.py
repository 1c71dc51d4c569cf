"""check_strategy must fail on each kind of broken strategy, and simulate must be exact."""

from __future__ import annotations

import random

import pytest

from mailtether import Exponential, Fixed, Tiered
from mailtether.testing import ScheduleStep, StrategyCheckError, check_strategy, simulate


class Negative:
    def delay(self, attempt: int, offline_for: float) -> float | None:
        return -1.0


class Infinite:
    def delay(self, attempt: int, offline_for: float) -> float | None:
        return float("inf")


class Boolean:
    def delay(self, attempt: int, offline_for: float) -> float | None:
        return True


class Raising:
    def delay(self, attempt: int, offline_for: float) -> float | None:
        if attempt > 10:
            raise ZeroDivisionError("oops")
        return 1.0


class SharedRandom:
    def __init__(self) -> None:
        self.rng = random.Random(1)

    def delay(self, attempt: int, offline_for: float) -> float | None:
        return self.rng.random()


class IgnoresItsCap:
    max_attempts = 3

    def delay(self, attempt: int, offline_for: float) -> float | None:
        return 5.0


class OverItsMaxDelay:
    max_delay = 10.0

    def delay(self, attempt: int, offline_for: float) -> float | None:
        return 2.0**attempt


class PastTheDeadline:
    max_offline_for = 100.0

    def delay(self, attempt: int, offline_for: float) -> float | None:
        return None if offline_for > 100.0 else 60.0


class ComesBack:
    def delay(self, attempt: int, offline_for: float) -> float | None:
        return None if attempt == 3 else 1.0


class ComesBackLater:
    def delay(self, attempt: int, offline_for: float) -> float | None:
        return None if 50.0 <= offline_for < 1000.0 else 1.0


@pytest.mark.parametrize(
    ("strategy", "rule"),
    [
        (object(), "rule 1"),
        (Negative(), "rule 2"),
        (Infinite(), "rule 2"),
        (Boolean(), "rule 2"),
        (Raising(), "rule 2"),
        (SharedRandom(), "rule 3"),
        (IgnoresItsCap(), "rule 5"),
        (OverItsMaxDelay(), "rule 5"),
        (PastTheDeadline(), "rule 5"),
        (ComesBack(), "rule 4"),
        (ComesBackLater(), "rule 4"),
    ],
)
def test_check_strategy_fails_a_broken_strategy(strategy, rule):
    with pytest.raises(StrategyCheckError, match=rule):
        check_strategy(strategy)


def test_check_strategy_error_is_an_assertion_error():
    assert issubclass(StrategyCheckError, AssertionError)


def test_check_strategy_passes_the_seed_schedules():
    check_strategy(Fixed(60))
    check_strategy(Exponential(1, growth=1, max_attempts=12).immediate_first())
    check_strategy(Tiered((7 * 86400, 1800), (None, 86400)))


def test_simulate_reports_attempt_wait_and_offline_for():
    schedule = simulate(Fixed(10, max_attempts=3), attempt_takes=2)
    assert list(schedule) == [
        ScheduleStep(attempt=1, wait=10.0, offline_for=10.0),
        ScheduleStep(attempt=2, wait=10.0, offline_for=22.0),
        ScheduleStep(attempt=3, wait=10.0, offline_for=34.0),
    ]
    assert schedule.gave_up


def test_simulate_stops_at_its_limits_without_giving_up():
    assert len(simulate(Fixed(10), max_steps=7)) == 7
    schedule = simulate(Fixed(10), until_offline_for=35)
    assert schedule.offline_fors == [10.0, 20.0, 30.0]
    assert not schedule.gave_up


def test_simulate_refuses_nonsense_limits():
    with pytest.raises(ValueError, match="max_steps"):
        simulate(Fixed(1), max_steps=-1)
    with pytest.raises(ValueError, match="attempt_takes"):
        simulate(Fixed(1), attempt_takes=float("nan"))
