"""Cost of computing the next reconnect delay: mailtether vs tenacity, side by side.

Run: ``.venv/bin/python benchmarks/strategies.py`` (tenacity comes with the ``dev`` extra).
Each figure is the median over several timeit repeats of the cost of one call, cycling
through attempts 1..12; the ratio is tenacity's time divided by ours (> 1: we are faster).
"""

from __future__ import annotations

import statistics
import sys
import timeit
from collections.abc import Callable
from importlib.metadata import version

import tenacity

from mailtether import Backoff, Exponential
from mailtether.testing import FakeClock

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

    clock = FakeClock()
    backoff = Backoff(Exponential(1, growth=1, max_delay=600, max_attempts=ATTEMPTS), clock=clock)

    def run_backoff() -> None:
        for _ in attempts:
            backoff.failed()
        backoff.succeeded()

    rows = [
        ("exponential", per_call(run_ours_exp), "wait_exponential", per_call(run_theirs_exp)),
        (
            "full jitter",
            per_call(run_ours_full),
            "wait_random_exponential",
            per_call(run_theirs_full),
        ),
    ]
    print(f"Python {sys.version.split()[0]}, tenacity {version('tenacity')}")
    print(f"{'case':<14}{'mailtether':>14}{'tenacity':>14}{'ratio':>9}   (ns per next-delay call)")
    for case, ours, peer_name, theirs in rows:
        print(f"{case:<14}{ours:>12.0f}ns{theirs:>12.0f}ns{theirs / ours:>8.2f}x   vs {peer_name}")
    print(f"{'decorrelated':<14}{per_call(run_ours_decorrelated):>12.0f}ns{'(no peer)':>14}")
    print(
        f"{'Backoff.failed':<14}{per_call(run_backoff):>12.0f}ns{'(no peer)':>14}"
        "   incl. state + clock"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
