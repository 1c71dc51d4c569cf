"""Cost of computing the next reconnect delay: mailtether vs tenacity, side by side.

Run: ``.venv/bin/python benchmarks/strategies.py`` (tenacity comes with the ``dev`` extra).
Each figure is the median over several timeit repeats of the cost of one call, cycling
through attempts 1..12; the ratio is tenacity's time divided by ours (> 1: we are faster).

``Backoff.failed`` is set beside tenacity's ``wait_exponential`` call as well: it does more
(reads the clock, runs the strategy, records attempt, outage start, last delay and next
attempt time), and the goal is that all of it costs at most half of tenacity's wait. It runs
on the system clock, the default (a FakeClock's lock would be measured otherwise).
"""

from __future__ import annotations

import statistics
import sys
import timeit
from collections.abc import Callable
from importlib.metadata import version

import tenacity

from mailtether import SYSTEM_CLOCK, Backoff, Exponential

ATTEMPTS = 12
CALLS = 20_000
REPEATS = 7


def per_call(run: Callable[[], None]) -> float:
    """Median nanoseconds per call of *run* (which itself makes ATTEMPTS calls)."""
    loops = CALLS // ATTEMPTS
    times = timeit.repeat(run, number=loops, repeat=REPEATS)
    return statistics.median(times) / (loops * ATTEMPTS) * 1e9


def tenacity_states() -> list[tenacity.RetryCallState]:
    states = []
    for attempt in range(1, ATTEMPTS + 1):
        state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        states.append(state)
    return states


def main() -> int:
    states = tenacity_states()
    attempts = list(range(1, ATTEMPTS + 1))

    ours_exp = Exponential(1, growth=1, max_delay=600)
    theirs_exp = tenacity.wait_exponential(multiplier=1, max=600)
    ours_full = ours_exp.jittered("full", seed=1)
    theirs_full = tenacity.wait_random_exponential(multiplier=1, max=600)
    ours_decorrelated = ours_exp.jittered("decorrelated", seed=1)

    # Same schedule first: a ratio between different answers would mean nothing.
    ours = [ours_exp.delay(k, 0.0) for k in attempts]
    assert ours == [theirs_exp(state) for state in states], "the two schedules differ"

    def run_ours_exp() -> None:
        for k in attempts:
            ours_exp.delay(k, 0.0)

    def run_theirs_exp() -> None:
        for state in states:
            theirs_exp(state)

    def run_ours_full() -> None:
        for k in attempts:
            ours_full.delay(k, 0.0)

    def run_theirs_full() -> None:
        for state in states:
            theirs_full(state)

    def run_ours_decorrelated() -> None:
        for k in attempts:
            ours_decorrelated.delay(k, 0.0)

    backoff = Backoff(
        Exponential(1, growth=1, max_delay=600, max_attempts=ATTEMPTS), clock=SYSTEM_CLOCK
    )
    assert [backoff.failed() for _ in attempts] == ours, "Backoff follows another schedule"
    backoff.succeeded()

    def run_backoff() -> None:
        for _ in attempts:
            backoff.failed()
        backoff.succeeded()

    rows = [
        ("exponential", per_call(run_ours_exp), "wait_exponential", per_call(run_theirs_exp)),
        ("Backoff.failed", per_call(run_backoff), "wait_exponential", per_call(run_theirs_exp)),
        (
            "full jitter",
            per_call(run_ours_full),
            "wait_random_exponential",
            per_call(run_theirs_full),
        ),
    ]
    print(f"Python {sys.version.split()[0]}, tenacity {version('tenacity')}")
    print(f"{'case':<16}{'mailtether':>12}{'tenacity':>12}{'ratio':>8}{'ours/theirs':>13}")
    for case, ours, peer_name, theirs in rows:
        print(
            f"{case:<16}{ours:>10.0f}ns{theirs:>10.0f}ns{theirs / ours:>7.2f}x"
            f"{ours / theirs:>12.2f}   vs {peer_name}"
        )
    print(f"{'decorrelated':<16}{per_call(run_ours_decorrelated):>10.0f}ns{'(no peer)':>12}")
    print("(ns per call; ratio > 1: we are faster. Goal for Backoff.failed: ours/theirs <= 0.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
