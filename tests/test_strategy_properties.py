"""Every built-in strategy, and any composition of them, passes the public conformance checks."""

from hypothesis import given, settings

from mailtether import ReconnectStrategy
from mailtether.testing import check_strategy, simulate
from strategies import any_strategy, plain


@settings(max_examples=150, deadline=None)
@given(plain)
def test_plain_strategies_pass_check_strategy(strategy: ReconnectStrategy):
    check_strategy(strategy, attempts=60)


@settings(max_examples=150, deadline=None)
@given(any_strategy)
def test_composed_strategies_pass_check_strategy(strategy: ReconnectStrategy):
    check_strategy(strategy, attempts=60)


@settings(max_examples=100, deadline=None)
@given(any_strategy)
def test_simulation_is_repeatable(strategy: ReconnectStrategy):
    assert simulate(strategy, max_steps=50) == simulate(strategy, max_steps=50)
