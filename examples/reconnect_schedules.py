"""Print the reconnect schedules of the three products in the project's seed write-ups.

Run it with ``./scripts/demo`` (or ``python examples/reconnect_schedules.py`` where
mailtether is installed). Nothing sleeps: the schedules are played on a FakeClock.
"""

from __future__ import annotations

from mailtether import DAY, MINUTE, Exponential, Fixed, ReconnectStrategy, Tiered
from mailtether.testing import simulate


def human(seconds: float) -> str:
    """Seconds as the largest sensible unit: 90 -> '1.5 min'."""
    for unit, size in (("d", DAY), ("h", 3600.0), ("min", MINUTE)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def show(title: str, strategy: ReconnectStrategy, until: float) -> None:
    """Print the schedule: its first and last attempts, and every change of pace."""
    schedule = simulate(strategy, until_offline_for=until)
    print(f"\n{title}\n  {strategy!r}")
    steps = list(schedule)
    keep = {0, 1, 2, len(steps) - 2, len(steps) - 1}
    keep |= {i for i in range(1, len(steps)) if steps[i].wait != steps[i - 1].wait}
    keep |= {i - 1 for i in keep if i > 0}
    previous = -1
    for index in sorted(i for i in keep if 0 <= i < len(steps)):
        if index > previous + 1:
            print(f"  ... {index - previous - 1} more attempts like these ...")
        step = steps[index]
        print(
            f"  attempt {step.attempt:>4}: wait {human(step.wait):>9}, "
            f"offline for {human(step.offline_for)}"
        )
        previous = index
    ending = "then gives up: the source is BLOCKED until a person resumes it"
    print(f"  {ending if schedule.gave_up else 'and so on, until the connection is back'}")


def main() -> None:
    show(
        "Integration platform's email adapter: retry every 60 s until it succeeds",
        Fixed(60),
        until=10 * MINUTE,
    )
    show(
        "RPA server's IMAP listener: at once, then 1 s, 2 s, 4 s ... (12 waits)",
        Exponential(initial=1, growth=1, max_attempts=12).immediate_first(),
        until=30 * DAY,
    )
    show(
        "Help-desk mail handler: every 30 min while offline < 7 days, then daily",
        Tiered((7 * DAY, 30 * MINUTE), (None, DAY)),
        until=10 * DAY,
    )


if __name__ == "__main__":
    main()
