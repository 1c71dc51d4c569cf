import math
import random
from datetime import timedelta

import pytest

from mailtether import (
    DAY,
    HOUR,
    MINUTE,
    Backoff,
    Capped,
    Chain,
    Exponential,
    Fixed,
    ImmediateFirst,
    Jittered,
    ReconnectStrategy,
    Tiered,
)
from mailtether.testing import FakeClock, simulate

# -- the seeds' schedules, exactly ---------------------------------------------------------


def test_seed_001_retries_every_60_seconds_until_it_succeeds():
    schedule = simulate(Fixed(60), max_steps=500)
    assert schedule.waits == [60.0] * 500
    assert not schedule.gave_up


def test_seed_002_exponential_doubles_from_one_second_and_stops_after_12():
    schedule = simulate(Exponential(initial=1, growth=1, max_attempts=12))
    assert schedule.waits == [2.0**k for k in range(12)]
    assert schedule.waits[-1] == 2048.0
    assert schedule.gave_up


def test_seed_002_first_reconnect_is_immediate_and_12_attempts_in_all():
    """The write-up's RECONNECT_ATTEMPTS=12, the first at once (our reading: scenarios.md)."""
    schedule = simulate(Exponential(initial=1, growth=1, max_attempts=11).immediate_first())
    assert schedule.waits == [0.0] + [2.0**k for k in range(11)]
    assert len(schedule.waits) == 12
    assert schedule.gave_up


def test_seed_002_fractional_growth():
    waits = simulate(Exponential(initial=1, growth=0.5, max_attempts=4)).waits
    assert waits == [1.0, 1.5, 2.25, 3.375]


def test_seed_000_every_30_minutes_for_7_days_then_daily():
    helpdesk = Tiered((7 * DAY, 30 * MINUTE), (None, DAY))
    schedule = simulate(helpdesk, until_offline_for=30 * DAY)
    in_first_week = [step for step in schedule if step.offline_for - step.wait < 7 * DAY]
    assert {step.wait for step in in_first_week} == {30 * MINUTE}
    assert len(in_first_week) == 7 * 24 * 2
    later = schedule[len(in_first_week) :]
    assert later, "the schedule must go on after the first week"
    assert {step.wait for step in later} == {DAY}
    assert not schedule.gave_up


def test_seed_000_survives_a_restart_on_day_8():
    """A process restarted mid-outage keeps the outage clock: it stays on the daily tier."""
    helpdesk = Tiered((7 * DAY, 30 * MINUTE), (None, DAY))
    clock = FakeClock()
    first = Backoff(helpdesk, clock=clock)
    first.failed()
    clock.advance(8 * DAY)
    saved = first.state.to_dict()
    restarted = Backoff(helpdesk, clock=clock, state=type(first.state).from_dict(saved))
    assert restarted.failed() == DAY


# -- Fixed / Exponential / Tiered ------------------------------------------------------------


def test_fixed_accepts_timedelta_and_caps_attempts():
    strategy = Fixed(timedelta(minutes=1), max_attempts=2)
    assert [strategy.delay(k, 0.0) for k in (1, 2, 3)] == [60.0, 60.0, None]


def test_exponential_max_delay_caps_each_wait():
    strategy = Exponential(10, growth=1, max_delay=60)
    assert [strategy.delay(k, 0.0) for k in range(1, 6)] == [10.0, 20.0, 40.0, 60.0, 60.0]


def test_exponential_growth_zero_is_fixed():
    strategy = Exponential(7, growth=0)
    assert {strategy.delay(k, 0.0) for k in range(1, 100)} == {7.0}


def test_exponential_without_cap_never_exceeds_a_day_and_never_overflows():
    strategy = Exponential(1, growth=1)
    assert strategy.delay(17, 0.0) == 65536.0
    assert strategy.delay(18, 0.0) == DAY
    assert strategy.delay(10**9, 0.0) == DAY


def test_exponential_explicit_max_delay_can_exceed_a_day():
    strategy = Exponential(1, growth=1, max_delay=3 * DAY)
    assert strategy.delay(10**6, 0.0) == 3 * DAY


def test_tiered_with_a_finite_last_tier_gives_up():
    strategy = Tiered((HOUR, 60), (DAY, 600))
    assert strategy.delay(1, 0.0) == 60.0
    assert strategy.delay(1, HOUR) == 600.0
    assert strategy.delay(1, DAY - 1) == 600.0
    assert strategy.delay(1, DAY) is None


def test_strategies_are_frozen_hashable_values():
    assert Fixed(60) == Fixed(60.0)
    assert hash(Exponential(1, max_attempts=3)) == hash(Exponential(1.0, max_attempts=3))
    with pytest.raises(AttributeError):
        Fixed(60).max_attempts = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("strategy", "text"),
    [
        (Fixed(60), "Fixed(delay=60.0)"),
        (
            Exponential(1, growth=1, max_attempts=12),
            "Exponential(initial=1.0, growth=1.0, max_attempts=12)",
        ),
        (Tiered((7 * DAY, 1800), (None, DAY)), "Tiered((604800.0, 1800.0), (None, 86400.0))"),
        (Fixed(1).immediate_first(), "Fixed(delay=1.0).immediate_first()"),
        (Fixed(1).capped(max_offline_for=10), "Fixed(delay=1.0).capped(max_offline_for=10.0)"),
        (Fixed(1).jittered("full", seed=3), "Fixed(delay=1.0).jittered('full', seed=3)"),
    ],
)
def test_repr_reads_like_the_code_that_built_it(strategy, text):
    assert repr(strategy) == text


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error", "words"),
    [
        (lambda: Fixed(-1), ValueError, "Fixed.delay must be >= 0"),
        (lambda: Fixed(math.nan), ValueError, "Fixed.delay must be finite"),
        (lambda: Fixed(math.inf), ValueError, "Fixed.delay must be finite"),
        (lambda: Fixed("60"), TypeError, "Fixed.delay must be a number"),  # type: ignore[arg-type]
        (lambda: Fixed(True), TypeError, "Fixed.delay must be a number"),
        (lambda: Fixed(0), ValueError, "tight loop"),
        (lambda: Fixed(5, max_attempts=-1), ValueError, "Fixed.max_attempts must be >= 0"),
        (lambda: Fixed(5, max_attempts=2.5), TypeError, "Fixed.max_attempts must be an int"),  # type: ignore[arg-type]
        (lambda: Exponential(0), ValueError, "Exponential.initial must be > 0"),
        (lambda: Exponential(1, growth=-1), ValueError, "Exponential.growth must be >= 0"),
        (lambda: Exponential(1, growth=math.nan), ValueError, "Exponential.growth must be finite"),
        (lambda: Exponential(10, max_delay=5), ValueError, "max_delay (5.0) is below initial"),
        (lambda: Exponential(1, growth=0, max_delay=5), ValueError, "no effect with growth=0"),
        (lambda: Tiered(), ValueError, "at least one"),
        (lambda: Tiered((None, 60), (DAY, 60)), ValueError, "must be the last tier"),
        (lambda: Tiered((DAY, 60), (HOUR, 60)), ValueError, "must be greater than"),
        (lambda: Tiered((DAY, 0)), ValueError, "every must be finite and > 0"),
        (lambda: Tiered((DAY,)), TypeError, "must be a pair"),  # type: ignore[arg-type]
        (lambda: Capped(Fixed(1)), ValueError, "at least one of"),
        (lambda: Capped(Fixed(1), max_offline_for=-3), ValueError, "max_offline_for must be >= 0"),
        (lambda: Capped(object()), TypeError, "must be a ReconnectStrategy"),  # type: ignore[arg-type]
        (lambda: Jittered(Fixed(1), "fuzzy"), ValueError, "must be one of"),  # type: ignore[arg-type]
        (lambda: Jittered(Fixed(1), seed=1, rng=random.Random(1)), TypeError, "not both"),
        (lambda: Fixed(0, max_attempts=1).jittered("decorrelated"), ValueError, "positive"),
        (lambda: Chain(), ValueError, "at least one"),
        (lambda: Chain((Fixed(1), None), (Fixed(2), 3)), ValueError, "must be last"),
        (lambda: Chain((Fixed(1), 0)), ValueError, "attempts must be an int >= 1"),
        (lambda: Fixed(1).then(Fixed(2)), TypeError, "after=N"),
    ],
)
def test_bad_arguments_are_refused_at_construction_naming_the_field(build, error, words):
    with pytest.raises(error) as info:
        build()
    assert words in str(info.value)


@pytest.mark.parametrize("strategy", [Fixed(1), Exponential(1), Tiered((None, 5))])
def test_attempt_counts_from_one(strategy: ReconnectStrategy):
    with pytest.raises(ValueError, match="attempt counts from 1"):
        strategy.delay(0, 0.0)


# -- composition -----------------------------------------------------------------------------


def test_immediate_first_shifts_the_wrapped_schedule():
    strategy = ImmediateFirst(Fixed(30, max_attempts=2))
    assert [strategy.delay(k, 0.0) for k in (1, 2, 3, 4)] == [0.0, 30.0, 30.0, None]


def test_capped_max_attempts_and_max_delay():
    strategy = Exponential(1).capped(max_attempts=3, max_delay=3)
    assert [strategy.delay(k, 0.0) for k in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, None]


def test_no_attempt_starts_past_the_offline_deadline():
    schedule = simulate(Fixed(HOUR).capped(max_offline_for=2.5 * HOUR))
    assert schedule.offline_fors == [HOUR, 2 * HOUR, 2.5 * HOUR]
    assert schedule.waits[-1] == 0.5 * HOUR
    assert schedule.gave_up


def test_deadline_holds_when_attempts_themselves_take_time():
    schedule = simulate(Fixed(60).capped(max_offline_for=300), attempt_takes=25)
    assert max(schedule.offline_fors) <= 300
    assert schedule.gave_up


def test_chain_runs_each_step_for_its_attempts():
    chain = Chain((Fixed(0, max_attempts=1), 1), (Fixed(5), 2), (Exponential(60), None))
    assert [chain.delay(k, 0.0) for k in range(1, 7)] == [0.0, 5.0, 5.0, 60.0, 120.0, 240.0]


def test_chain_with_a_bounded_last_step_gives_up():
    chain = Chain((Fixed(5), 2), (Fixed(10), 1))
    assert [chain.delay(k, 0.0) for k in range(1, 5)] == [5.0, 5.0, 10.0, None]


def test_then_uses_max_attempts_and_reads_left_to_right():
    chain = Fixed(5, max_attempts=3).then(Exponential(30, max_delay=600))
    assert chain == Chain((Fixed(5, max_attempts=3), 3), (Exponential(30, max_delay=600), None))
    assert [chain.delay(k, 0.0) for k in (3, 4, 5)] == [5.0, 30.0, 60.0]
    assert Fixed(5).then(Fixed(9), after=1).delay(2, 0.0) == 9.0


# -- jitter ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["full", "equal", "decorrelated"])
def test_jitter_is_reproducible_from_a_seed_and_differs_between_seeds(kind):
    base = Exponential(1, growth=1, max_delay=600)
    a = [base.jittered(kind, seed=1).delay(k, 0.0) for k in range(1, 30)]
    b = [base.jittered(kind, seed=1).delay(k, 0.0) for k in range(1, 30)]
    c = [base.jittered(kind, seed=2).delay(k, 0.0) for k in range(1, 30)]
    assert a == b
    assert a != c


def test_jitter_from_an_injected_rng_is_reproducible():
    a = Fixed(100).jittered("full", rng=random.Random(42))
    b = Fixed(100).jittered("full", rng=random.Random(42))
    assert a == b
    assert [a.delay(k, 0.0) for k in range(1, 10)] == [b.delay(k, 0.0) for k in range(1, 10)]


def test_full_jitter_spreads_over_zero_to_the_wait():
    waits = [Fixed(100).jittered("full", seed=s).delay(1, 0.0) for s in range(2000)]
    assert all(0 <= w <= 100 for w in waits)
    assert min(waits) < 5
    assert max(waits) > 95
    assert 45 < sum(waits) / len(waits) < 55


def test_equal_jitter_keeps_half_the_wait():
    waits = [Fixed(100).jittered("equal", seed=s).delay(1, 0.0) for s in range(2000)]
    assert all(50 <= w <= 100 for w in waits)
    assert 70 < sum(waits) / len(waits) < 80


def test_decorrelated_jitter_stays_between_base_and_the_envelope():
    strategy = Exponential(2, growth=1, max_delay=300).jittered("decorrelated", seed=9)
    waits = [strategy.delay(k, 0.0) for k in range(1, 200)]
    assert all(2.0 <= w <= 300.0 for w in waits if w is not None)
    assert len(set(waits[10:])) > 100, "decorrelated waits must vary once under the ceiling"


def test_none_jitter_changes_nothing():
    assert Fixed(7).jittered("none", seed=1).delay(3, 0.0) == 7.0


def test_jitter_gives_up_when_the_wrapped_strategy_does():
    strategy = Fixed(7, max_attempts=1).jittered("full", seed=1)
    assert strategy.delay(2, 0.0) is None


def test_unseeded_jitter_picks_different_seeds():
    assert Fixed(1).jittered().seed != Fixed(1).jittered().seed
