"""Hypothesis strategies that build mailtether's reconnect strategies (and wrappers of them)."""

from __future__ import annotations

from hypothesis import strategies as st

from mailtether import (
    DAY,
    Capped,
    Chain,
    Exponential,
    Fixed,
    ImmediateFirst,
    Jittered,
    ReconnectStrategy,
    Tiered,
)

seconds = st.floats(min_value=0.001, max_value=2 * DAY, allow_nan=False, allow_infinity=False)
attempt_caps = st.none() | st.integers(min_value=0, max_value=50)


@st.composite
def fixed(draw: st.DrawFn) -> Fixed:
    return Fixed(draw(seconds), max_attempts=draw(attempt_caps))


@st.composite
def exponential(draw: st.DrawFn) -> Exponential:
    initial = draw(seconds)
    growth = draw(st.floats(min_value=0, max_value=10))
    max_delay = None
    if growth > 0 and draw(st.booleans()):
        max_delay = draw(st.floats(min_value=initial, max_value=max(initial, 3 * DAY)))
    return Exponential(initial, growth=growth, max_delay=max_delay, max_attempts=draw(attempt_caps))


@st.composite
def tiered(draw: st.DrawFn) -> Tiered:
    bounds = sorted(
        draw(st.sets(st.floats(min_value=1, max_value=60 * DAY), min_size=1, max_size=4))
    )
    tiers: list[tuple[float | None, float]] = [(bound, draw(seconds)) for bound in bounds]
    if draw(st.booleans()):
        tiers.append((None, draw(seconds)))
    return Tiered(*tiers)


plain = fixed() | exponential() | tiered()


@st.composite
def wrapped(draw: st.DrawFn, inner: st.SearchStrategy[ReconnectStrategy]) -> ReconnectStrategy:
    strategy = draw(inner)
    wrapper = draw(st.sampled_from(["immediate", "capped", "jitter", "chain"]))
    if wrapper == "immediate":
        return ImmediateFirst(strategy)
    if wrapper == "capped":
        return Capped(
            strategy,
            max_attempts=draw(st.none() | st.integers(min_value=0, max_value=40)),
            max_offline_for=draw(st.floats(min_value=0, max_value=30 * DAY)),
            max_delay=draw(st.none() | seconds),
        )
    if wrapper == "jitter":
        kind = draw(st.sampled_from(["none", "full", "equal", "decorrelated"]))
        first = strategy.delay(1, 0.0)
        if kind == "decorrelated" and not first:
            kind = "full"
        return Jittered(strategy, kind, seed=draw(st.integers(min_value=0, max_value=2**64 - 1)))
    other = draw(plain)
    return Chain((strategy, draw(st.integers(min_value=1, max_value=20))), (other, None))


any_strategy = plain | wrapped(plain) | wrapped(wrapped(plain))
