import math
import textwrap
from datetime import timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailtether import (
    DAY,
    Capped,
    ConfigError,
    Exponential,
    Fixed,
    ImmediateFirst,
    Jittered,
    Tiered,
    parse_duration,
    strategy_from_config,
)
from mailtether._durations import check_count, check_seconds
from mailtether.testing import check_strategy

# -- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("60", 60.0),
        ("1.5", 1.5),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("5min", 300.0),
        ("2h", 7200.0),
        ("7d", 7 * DAY),
        ("1w", 7 * DAY),
        ("1h30m", 5400.0),
        (" 1h 30m ", 5400.0),
        (12, 12.0),
        (0.5, 0.5),
        (timedelta(minutes=2), 120.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5 parsecs", "-5", "nan", "inf", True, None, [1]])
def test_parse_duration_refuses_nonsense(text):
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# -- check_seconds and check_count: the one check of every setting's numbers ------------------

finite_positive = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False)
not_finite = st.sampled_from([math.nan, math.inf, -math.inf, "nan", "inf", "-inf", "1e400"])
negative = st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False) | st.integers(
    max_value=-1
)
no_duration = st.sampled_from([True, False, "abc", "", "5 parsecs", [1], {}, b"15", object()])
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@given(finite_positive)
def test_check_seconds_takes_any_positive_finite_number(seconds):
    assert check_seconds(seconds, "f") == seconds
    assert (
        check_seconds(timedelta(seconds=seconds), "f") == timedelta(seconds=seconds).total_seconds()
    )


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(sorted(_UNITS)))
def test_check_seconds_reads_duration_strings(number, unit):
    assert check_seconds(f"{number}{unit}", "f") == pytest.approx(number * _UNITS[unit])
    assert isinstance(check_seconds(number, "f"), float)


@given(not_finite | negative | no_duration, st.booleans())
def test_check_seconds_refuses_non_durations_naming_the_field(value, allow_zero):
    with pytest.raises(ConfigError, match=r"^Thing\.field must be .*finite") as info:
        check_seconds(value, "Thing.field", allow_zero=allow_zero)
    assert "got " in str(info.value)


@pytest.mark.parametrize("zero", [0, 0.0, -0.0, "0", "0s", timedelta(0)])
def test_check_seconds_takes_zero_only_when_allowed(zero):
    with pytest.raises(ConfigError, match="t must be a positive number of seconds"):
        check_seconds(zero, "t")
    assert check_seconds(zero, "t", allow_zero=True) == 0.0


def test_check_seconds_bounds_and_none():
    assert check_seconds(None, "t", allow_none=True) is None
    with pytest.raises(ConfigError, match="t must be"):
        check_seconds(None, "t")
    assert check_seconds(Fraction(1, 4), "t") == 0.25
    with pytest.raises(ConfigError, match=r"t must be a number of seconds >= 0\.001"):
        check_seconds(0.0005, "t", minimum=0.001)
    assert check_seconds(0.001, "t", minimum=0.001) == 0.001
    with pytest.raises(ConfigError, match="at most 60"):
        check_seconds("61s", "t", maximum=60)
    assert check_seconds("1m", "t", maximum=60) == 60.0


def test_check_seconds_cuts_a_long_value_short():
    with pytest.raises(ConfigError) as info:
        check_seconds("x" * 10_000, "t")
    assert len(str(info.value)) < 200


@given(st.integers(min_value=1, max_value=2**64))
def test_check_count_takes_whole_numbers(count):
    assert check_count(count, "n") == count


@pytest.mark.parametrize("value", [0, -1, True, False, 2.0, 2.5, math.nan, math.inf, "3", None])
def test_check_count_refuses_the_rest_naming_the_field(value):
    with pytest.raises(ConfigError, match=r"^Thing\.count must be a whole number >= 1, got"):
        check_count(value, "Thing.count")


def test_check_count_bounds():
    assert check_count(0, "port", minimum=0, maximum=65535) == 0
    with pytest.raises(ConfigError, match="port must be a whole number from 0 to 65535"):
        check_count(65536, "port", minimum=0, maximum=65535)


# -- built-in types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"type": "fixed", "delay": 60}, Fixed(60)),
        ({"type": "fixed", "delay": "1m", "max_attempts": 3}, Fixed(60, max_attempts=3)),
        ("fixed 60s", Fixed(60)),
        ("fixed delay=60 max_attempts=5", Fixed(60, max_attempts=5)),
        (
            {"type": "exponential", "initial": "1s", "growth": 1, "max_attempts": 12},
            Exponential(1, growth=1, max_attempts=12),
        ),
        (
            "exponential 1s growth=1 max_attempts=12 immediate_first",
            ImmediateFirst(Exponential(1, growth=1, max_attempts=12)),
        ),
        ("Exponential 2 growth=0.5 max_delay=10m", Exponential(2, growth=0.5, max_delay=600)),
        ("tiered 30m until 7d, then 1d", Tiered((7 * DAY, 1800), (None, DAY))),
        (
            {"type": "tiered", "tiers": [["7d", "30m"], [None, "1d"]]},
            Tiered((7 * DAY, 1800), (None, DAY)),
        ),
        ("tiered 1m until 1h, 10m until 1d", Tiered((3600, 60), (DAY, 600))),
        (
            {
                "type": "chain",
                "steps": [["fixed 5s", 3], [{"type": "exponential", "initial": 30}, None]],
            },
            Fixed(5).then(Exponential(30), after=3),
        ),
        (
            {"type": "fixed", "delay": 60, "max_offline_for": "2h"},
            Capped(Fixed(60), max_offline_for=7200),
        ),
        (
            {"type": "fixed", "delay": 60, "jitter": "equal", "seed": 4},
            Jittered(Fixed(60), "equal", seed=4),
        ),
        (
            "exponential 1 max_delay=1h jitter=full seed=9 max_offline_for=7d immediate_first",
            ImmediateFirst(
                Jittered(
                    Capped(Exponential(1, max_delay=3600), max_offline_for=7 * DAY), "full", seed=9
                )
            ),
        ),
    ],
)
def test_strategy_from_config_builds_the_same_value_as_code(config, expected):
    built = strategy_from_config(config)
    assert built == expected
    check_strategy(built, attempts=30)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({}, "needs a 'type'"),
        ({"delay": 5}, "needs a 'type'"),
        ("", "empty string"),
        ({"type": "warp"}, "unknown strategy type 'warp'"),
        ({"type": "fixed"}, "missing required key 'delay'"),
        ({"type": "fixed", "delay": "soon"}, "delay: cannot read 'soon'"),
        ({"type": "fixed", "delay": 5, "retries": 3}, "unknown key(s) retries"),
        ({"type": "fixed", "delay": -5}, "must be finite and >= 0"),
        ({"type": "fixed", "delay": 0}, "tight loop"),
        ({"type": "exponential", "initial": 1, "growth": "fast"}, "growth must be a number"),
        ({"type": "exponential", "initial": 1, "max_attempts": 2.5}, "whole number"),
        ({"type": "fixed", "delay": 5, "jitter": "wobbly"}, "jitter must be one of"),
        ({"type": "fixed", "delay": 5, "seed": 3}, "only meaningful with jitter"),
        ({"type": "fixed", "delay": 5, "immediate_first": "maybe"}, "immediate_first"),
        ("tiered 30m for a while", "write tiers like"),
        ({"type": "tiered", "tiers": [["1d"]]}, "each tier is"),
        ({"type": "tiered", "tiers": [[None, "1m"], ["1d", "1h"]]}, "must be the last tier"),
        ({"type": "chain", "steps": []}, "steps must be"),
        ("fixed 5 6 7 max_attempts=2 delay=3", "cannot place"),
        (42, "mapping or a string"),
        ({1: "fixed"}, "keys must be strings"),
    ],
)
def test_strategy_from_config_errors_say_what_is_wrong(config, words):
    with pytest.raises(ConfigError) as info:
        strategy_from_config(config)
    assert words in str(info.value)


def test_unknown_type_lists_the_known_ones():
    with pytest.raises(ConfigError, match="chain, exponential, fixed, tiered"):
        strategy_from_config("warp 9")


# -- plug-ins through the entry-point group ----------------------------------------------------


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Install a real (tiny) distribution that registers strategies in mailtether.strategies."""
    (tmp_path / "office_hours.py").write_text(
        textwrap.dedent(
            """
            import attrs

            @attrs.frozen
            class OfficeHours:
                every: float = 60.0

                def delay(self, attempt, offline_for):
                    return float(self.every)

            def broken(**options):
                return "not a strategy"
            """
        )
    )
    info = tmp_path / "office_hours-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: office-hours\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[mailtether.strategies]\n"
        "office-hours = office_hours:OfficeHours\n"
        "broken = office_hours:broken\n"
        "missing = office_hours_gone:Nothing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return


@pytest.mark.usefixtures("plugin")
def test_a_third_party_strategy_is_found_by_name():
    strategy = strategy_from_config(
        {"type": "office-hours", "every": 120, "jitter": "none", "seed": 1}
    )
    assert isinstance(strategy, Jittered)
    assert strategy.delay(1, 0.0) == 120.0
    assert type(strategy.strategy).__name__ == "OfficeHours"
    assert strategy_from_config("office_hours").delay(5, 0.0) == 60.0


@pytest.mark.usefixtures("plugin")
def test_plugins_appear_in_the_known_types():
    with pytest.raises(ConfigError, match="office-hours"):
        strategy_from_config("warp")


@pytest.mark.usefixtures("plugin")
@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"type": "broken"}, "has no delay(attempt, offline_for) method"),
        ({"type": "missing"}, "could not be loaded"),
        ({"type": "office-hours", "colour": "red"}, "office-hours strategy:"),
    ],
)
def test_broken_plugins_are_reported_clearly(config, words):
    with pytest.raises(ConfigError) as info:
        strategy_from_config(config)
    assert words in str(info.value)
