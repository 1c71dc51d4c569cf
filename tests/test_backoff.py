import math

import pytest

from mailtether import Backoff, BackoffState, Exponential, Fixed, Tiered
from mailtether.testing import FakeClock


def test_first_failure_starts_the_outage_clock():
    clock = FakeClock(wall=5_000.0)
    backoff = Backoff(Fixed(30), clock=clock)
    assert backoff.offline_for == 0.0
    assert backoff.failed() == 30.0
    assert backoff.state == BackoffState(
        attempt=1, offline_since=5_000.0, last_delay=30.0, next_attempt_at=5_030.0
    )
    clock.advance(40)
    assert backoff.offline_for == 40.0


def test_strategy_sees_attempt_and_offline_for():
    seen = []

    class Recorder:
        def delay(self, attempt: int, offline_for: float) -> float | None:
            seen.append((attempt, offline_for))
            return 10.0

    clock = FakeClock()
    backoff = Backoff(Recorder(), clock=clock)
    for _ in range(3):
        clock.sleep(backoff.failed() or 0)
        clock.advance(1)  # the attempt itself takes a second
    assert seen == [(1, 0.0), (2, 11.0), (3, 22.0)]


def test_giving_up_is_sticky_until_reset():
    backoff = Backoff(Fixed(1, max_attempts=1), clock=FakeClock())
    assert backoff.failed() == 1.0
    assert backoff.failed() is None
    assert backoff.state.gave_up
    assert backoff.failed() is None
    backoff.reset()
    assert backoff.failed() == 1.0


def test_success_starts_the_schedule_over():
    backoff = Backoff(Exponential(1, growth=1), clock=FakeClock())
    assert [backoff.failed() for _ in range(3)] == [1.0, 2.0, 4.0]
    backoff.succeeded()
    assert backoff.state == BackoffState()
    assert backoff.failed() == 1.0


def test_state_round_trips_through_a_dict():
    backoff = Backoff(Fixed(5), clock=FakeClock())
    backoff.failed()
    backoff.failed()
    restored = BackoffState.from_dict(backoff.state.to_dict())
    assert restored == backoff.state
    again = Backoff(Fixed(5), clock=FakeClock(), state=restored)
    again.failed()
    assert again.state.attempt == 3


def test_restored_outage_keeps_its_age_across_a_restart():
    clock = FakeClock()
    strategy = Tiered((7 * 86400, 1800), (None, 86400))
    backoff = Backoff(strategy, clock=clock)
    backoff.failed()
    state = backoff.state
    clock.advance(7 * 86400)
    assert Backoff(strategy, clock=clock, state=state).failed() == 86400.0
    assert Backoff(strategy, clock=clock).failed() == 1800.0


def test_a_wall_clock_stepping_back_never_makes_a_negative_outage():
    clock = FakeClock(wall=10_000.0)
    backoff = Backoff(Fixed(5), clock=clock, state=BackoffState(attempt=1, offline_since=20_000.0))
    assert backoff.offline_for == 0.0
    assert backoff.failed() == 5.0


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"attempt": -1}, ValueError),
        ({"attempt": 1.5}, ValueError),
        ({"offline_since": math.nan}, ValueError),
        ({"offline_since": "yesterday"}, TypeError),
        ({"gave_up": "yes"}, TypeError),
        ({"password": "x"}, ValueError),
    ],
)
def test_bad_saved_state_is_refused(data, error):
    with pytest.raises(error):
        BackoffState.from_dict(data)


def test_a_strategy_answering_nonsense_is_reported():
    class Bad:
        def delay(self, attempt: int, offline_for: float) -> float | None:
            return -5.0

    with pytest.raises(ValueError, match="check_strategy"):
        Backoff(Bad(), clock=FakeClock()).failed()


def test_backoff_refuses_a_non_strategy():
    with pytest.raises(TypeError, match="ReconnectStrategy"):
        Backoff(42)  # type: ignore[arg-type]


def test_giving_up_is_sticky_even_if_the_strategy_would_answer_again():
    class ChangesItsMind:
        def delay(self, attempt: int, offline_for: float) -> float | None:
            return None if attempt == 2 else 1.0

    backoff = Backoff(ChangesItsMind(), clock=FakeClock())
    assert backoff.failed() == 1.0
    assert backoff.failed() is None
    assert backoff.failed() is None, "a source that gave up stays BLOCKED until reset"


def test_failed_builds_no_state_value_until_one_is_asked_for(monkeypatch):
    import mailtether._backoff as module

    built = []

    class Counting(BackoffState):
        def __init__(self, **fields: object) -> None:
            built.append(fields)
            super().__init__(**fields)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "BackoffState", Counting)
    clock = FakeClock(wall=1_000.0)
    backoff = Backoff(Exponential(1, growth=1, max_attempts=100), clock=clock)
    for _ in range(10):
        backoff.failed()
    assert built == []
    state = backoff.state
    assert len(built) == 1
    assert backoff.state is state, "read twice, built once"
    assert state.attempt == 10
    assert state.offline_since == 1_000.0
    assert state.last_delay == 2.0**9
    assert state.next_attempt_at == 1_000.0 + 2.0**9
    backoff.failed()
    assert backoff.state.attempt == 11, "a failure after a read gives a new value"


def test_a_restored_state_is_kept_as_given():
    state = BackoffState(attempt=3, offline_since=10.0, last_delay=4.0, next_attempt_at=14.0)
    backoff = Backoff(Fixed(5), clock=FakeClock(), state=state)
    assert backoff.state is state
    backoff.succeeded()
    assert backoff.state == BackoffState()


def test_the_state_after_giving_up_keeps_the_outage_and_the_last_delay():
    clock = FakeClock(wall=2_000.0)
    backoff = Backoff(Fixed(7, max_attempts=1), clock=clock)
    backoff.failed()
    clock.advance(7)
    assert backoff.failed() is None
    assert backoff.state == BackoffState(
        attempt=1, offline_since=2_000.0, last_delay=7.0, next_attempt_at=None, gave_up=True
    )


@pytest.mark.parametrize("answer", [math.nan, math.inf, -0.5])
def test_a_wait_that_is_not_finite_and_positive_is_refused(answer):
    class Bad:
        def delay(self, attempt: int, offline_for: float) -> float | None:
            return answer

    backoff = Backoff(Bad(), clock=FakeClock())
    with pytest.raises(ValueError, match="finite and >= 0"):
        backoff.failed()
    assert backoff.state == BackoffState(), "a refused answer changes nothing"


def test_an_int_wait_comes_back_as_a_float():
    class Whole:
        def delay(self, attempt: int, offline_for: float) -> float | None:
            return 3  # type: ignore[return-value]

    delay = Backoff(Whole(), clock=FakeClock()).failed()
    assert delay == 3.0
    assert type(delay) is float


def test_strategy_and_clock_can_be_swapped():
    first, second = FakeClock(wall=100.0), FakeClock(wall=500.0)
    backoff = Backoff(Fixed(1), clock=first)
    backoff.failed()
    backoff.clock = second
    backoff.strategy = Fixed(9)
    assert backoff.clock is second
    assert backoff.failed() == 9.0
    assert backoff.offline_for == 400.0
    with pytest.raises(TypeError, match="ReconnectStrategy"):
        backoff.strategy = "fixed:5"  # type: ignore[assignment]
    assert backoff.failed() == 9.0
