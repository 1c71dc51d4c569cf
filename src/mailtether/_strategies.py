r"""Reconnect strategies: pure values that say how long to wait before the next attempt.

A strategy answers one question, ``delay(attempt, offline_for)``: *attempt* counts
reconnect attempts since the connection was lost (1 is the first), *offline_for* is how
many seconds ago it was lost. The answer is the number of seconds to wait before that
attempt, or ``None``: give up (the source becomes BLOCKED until a person resumes it).

Strategies never sleep and never read a clock, and the same question always gets the same
answer (jitter included: it is drawn from a seed), so a schedule can be printed, tested and
persisted. :class:`mailtether.Backoff` runs a strategy for one source.

Why one module of about 650 lines: the fluent methods every strategy has (``.capped()``,
``.jittered()``, ``.then()``) build the wrapper classes, which are strategies themselves with
the same methods, on the same validators; split, they would import each other in a cycle.
"""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Callable
from typing import Any, Final, Literal, Protocol, TypeAlias, runtime_checkable

import attrs

from mailtether._durations import DAY, Duration, to_seconds, to_seconds_or_none

__all__ = [
    "Capped",
    "Chain",
    "Exponential",
    "Fixed",
    "ImmediateFirst",
    "JitterKind",
    "Jittered",
    "ReconnectStrategy",
    "Tiered",
]

JitterKind: TypeAlias = Literal["none", "full", "equal", "decorrelated"]
"""The names of the jitter formulas :class:`Jittered` knows."""

_JITTER_KINDS: Final = ("none", "full", "equal", "decorrelated")
_CEILING: Final = DAY
"""No built-in strategy waits longer than this unless its own ``max_delay`` says so."""
_DECORRELATED_WINDOW: Final = 64


@runtime_checkable
class ReconnectStrategy(Protocol):
    """What every reconnect strategy is: a pure function from an attempt to a wait.

    Implement this (any object with a matching ``delay`` method will do) to plug in your own
    schedule; :func:`mailtether.testing.check_strategy` tells you whether it behaves.
    """

    def delay(self, attempt: int, offline_for: float) -> float | None:
        """Return the seconds to wait before reconnect *attempt*, or ``None`` to give up.

        Args:
            attempt: The reconnect attempt about to be made, counted from 1 since the
                connection was lost.
            offline_for: Seconds since the connection was lost, at the time of asking.
        """
        ...


# -- validation ---------------------------------------------------------------------------


def _where(instance: object, attribute: attrs.Attribute[Any]) -> str:
    return f"{type(instance).__name__}.{attribute.alias or attribute.name}"


def _seconds(*, positive: bool = False) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        where = _where(instance, attribute)
        if value is None and attribute.default is None:
            return
        if not isinstance(value, float):
            raise TypeError(
                f"{where} must be a number of seconds or a timedelta, not {type(value).__name__}"
            )
        if math.isnan(value) or math.isinf(value):
            raise ValueError(f"{where} must be finite, got {value!r}")
        if value < 0 or (positive and value == 0):
            bound = "> 0" if positive else ">= 0"
            raise ValueError(f"{where} must be {bound}, got {value!r}")

    return check


def _count(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    where = _where(instance, attribute)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where} must be an int or None, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{where} must be >= 0, got {value!r}")


def _check_strategy(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not callable(getattr(value, "delay", None)):
        raise TypeError(
            f"{_where(instance, attribute)} must be a ReconnectStrategy (an object with a "
            f"delay(attempt, offline_for) method), not {type(value).__name__}"
        )


def _check_attempt(attempt: int) -> None:
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt!r}")


_TABLE_SIZE: Final = 64  # attempts whose wait Exponential works out once, when it is made


def _first_capped(log_factor: float, max_exponent: float) -> float:
    """The first attempt *n* with ``(n - 1) * log_factor >= max_exponent``; infinity if none.

    Found once, with the very comparison :meth:`Exponential.delay` would make on each call.
    ``0.0`` when floating point leaves it unsure (a growth so small that the attempt is past
    2**53): ``delay`` then makes that comparison on each call.
    """
    if log_factor <= 0.0:
        return math.inf if max_exponent > 0.0 else 1.0
    estimate = max_exponent / log_factor + 1.0
    if not estimate < 2.0**53:
        return 0.0
    attempt = max(1, math.floor(estimate))
    for _ in range(64):  # a step or two from the estimate, by rounding
        if attempt > 1 and (attempt - 2) * log_factor >= max_exponent:
            attempt -= 1
        elif (attempt - 1) * log_factor < max_exponent:
            attempt += 1
        else:
            return float(attempt)
    return 0.0


def _repr(self: attrs.AttrsInstance) -> str:
    """``Name(field=value, ...)`` with aliases as users type them, unset limits left out."""
    parts = []
    for field in attrs.fields(type(self)):
        if not field.repr:
            continue
        value = getattr(self, field.name)
        if value is None and field.default is None:
            continue
        parts.append(f"{field.alias or field.name}={value!r}")
    return f"{type(self).__name__}({', '.join(parts)})"


# -- composition --------------------------------------------------------------------------


class _Composable:
    """Methods that wrap a built-in strategy in another, so schedules read left to right."""

    __slots__ = ()

    def immediate_first(self) -> ImmediateFirst:
        """Make the first reconnect attempt at once, then follow this schedule.

        See :class:`ImmediateFirst`.
        """
        return ImmediateFirst(self)  # type: ignore[arg-type]

    def capped(
        self,
        *,
        max_attempts: int | None = None,
        max_offline_for: Duration | None = None,
        max_delay: Duration | None = None,
    ) -> Capped:
        """Give up after *max_attempts* or *max_offline_for*; never wait over *max_delay*.

        See :class:`Capped`.
        """
        return Capped(
            self,  # type: ignore[arg-type]
            max_attempts=max_attempts,
            max_offline_for=max_offline_for,
            max_delay=max_delay,
        )

    def jittered(
        self,
        kind: JitterKind = "full",
        *,
        seed: int | None = None,
        rng: random.Random | None = None,
    ) -> Jittered:
        """Spread the waits randomly (but reproducibly) so workers do not reconnect in step.

        See :class:`Jittered`.
        """
        return Jittered(self, kind, seed=seed, rng=rng)  # type: ignore[arg-type]

    def then(self, other: ReconnectStrategy, *, after: int | None = None) -> Chain:
        """Follow this schedule for *after* attempts, then *other* (counting from 1 again).

        *after* defaults to this strategy's ``max_attempts``. See :class:`Chain`.
        """
        if after is None:
            after = getattr(self, "max_attempts", None)
            if after is None:
                raise TypeError(
                    f"{self!r} has no max_attempts: say how many attempts it covers with "
                    "then(..., after=N)"
                )
        return Chain((self, after), (other, None))  # type: ignore[arg-type]


# -- the schedules ------------------------------------------------------------------------


@attrs.frozen(repr=False)
class Fixed(_Composable):
    """The same wait before every attempt: seed 001's "retry every 60 s until it succeeds".

    Args:
        delay: Seconds (or a timedelta) to wait before each attempt.
        max_attempts: Give up after this many attempts; ``None`` retries forever.

    A zero delay is allowed only with ``max_attempts``: reconnecting in a tight loop forever
    would hammer the server (and trip limits such as Dovecot's
    ``mail_max_userip_connections``).

    Example:
        >>> from mailtether import Fixed
        >>> every_minute = Fixed(60)
        >>> every_minute.delay(1, 0.0), every_minute.delay(500, 30_000.0)
        (60.0, 60.0)
        >>> Fixed(5, max_attempts=2).delay(3, 10.0) is None
        True
    """

    interval: float = attrs.field(alias="delay", converter=to_seconds, validator=_seconds())
    max_attempts: int | None = attrs.field(default=None, validator=_count, kw_only=False)

    def __attrs_post_init__(self) -> None:
        if self.interval == 0 and self.max_attempts is None:
            raise ValueError(
                "Fixed.delay is 0 and max_attempts is None: that reconnects in a tight loop "
                "forever; give a delay > 0 or a max_attempts"
            )

    def delay(self, attempt: int, offline_for: float) -> float | None:
        """Return the fixed wait, or ``None`` once *attempt* exceeds ``max_attempts``."""
        _check_attempt(attempt)
        if self.max_attempts is not None and attempt > self.max_attempts:
            return None
        return self.interval

    __repr__ = _repr


@attrs.frozen(repr=False)
class Exponential(_Composable):
    r"""Waits that grow geometrically, as in seed 002's RPA mail listener.

    Attempt :math:`k` waits

    .. math:: \min(\text{max\_delay},\ \text{initial} \cdot (1 + \text{growth})^{k-1})

    so ``Exponential(initial=1, growth=1, max_attempts=12)`` waits 1 s, 2 s, 4 s, … 2048 s,
    then gives up. ``growth=0`` is a fixed delay. Without ``max_delay`` a wait still never
    exceeds one day: no mail listener should sleep longer than the slowest seed schedule
    (seed 000 retries daily); set ``max_delay`` to go beyond.

    Args:
        initial: Seconds to wait before the first attempt (> 0).
        growth: How much each wait grows relative to the last (>= 0); 1 doubles.
        max_delay: The longest single wait, or ``None`` for one day.
        max_attempts: Give up after this many attempts; ``None`` retries forever.

    Example:
        >>> from mailtether import Exponential
        >>> seed_002 = Exponential(initial=1, growth=1, max_attempts=12)
        >>> [seed_002.delay(k, 0.0) for k in (1, 2, 3, 12, 13)]
        [1.0, 2.0, 4.0, 2048.0, None]
    """

    initial: float = attrs.field(converter=to_seconds, validator=_seconds(positive=True))
    growth: float = attrs.field(default=1.0, converter=to_seconds, validator=_seconds())
    max_delay: float | None = attrs.field(
        default=None, converter=to_seconds_or_none, validator=_seconds(positive=True)
    )
    max_attempts: int | None = attrs.field(default=None, validator=_count)
    _ceiling: float = attrs.field(init=False, repr=False, eq=False)
    _log_factor: float = attrs.field(init=False, repr=False, eq=False)
    _max_exponent: float = attrs.field(init=False, repr=False, eq=False)
    _ratio: float = attrs.field(init=False, repr=False, eq=False)
    _capped_from: float = attrs.field(init=False, repr=False, eq=False)
    _table: tuple[float, ...] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.max_delay is not None and self.max_delay < self.initial:
            raise ValueError(
                f"Exponential.max_delay ({self.max_delay!r}) is below initial "
                f"({self.initial!r}): every wait would be max_delay; use Fixed"
                f"({self.max_delay!r}) instead"
            )
        if self.growth == 0 and self.max_delay is not None:
            raise ValueError(
                "Exponential.max_delay has no effect with growth=0 (the wait never grows); "
                f"use Fixed({self.initial!r}) or a growth > 0"
            )
        ceiling = self.max_delay if self.max_delay is not None else max(_CEILING, self.initial)
        object.__setattr__(self, "_ceiling", ceiling)
        log_factor = math.log1p(self.growth)
        max_exponent = math.log(ceiling / self.initial)
        object.__setattr__(self, "_log_factor", log_factor)
        object.__setattr__(self, "_max_exponent", max_exponent)
        object.__setattr__(self, "_ratio", 1.0 + self.growth)
        object.__setattr__(self, "_capped_from", _first_capped(log_factor, max_exponent))
        object.__setattr__(self, "_table", ())
        # The first waits, worked out once by delay itself (index = attempt; 0 unused).
        table = tuple(self._compute(k) if k else 0.0 for k in range(_TABLE_SIZE))
        object.__setattr__(self, "_table", table)

    def delay(self, attempt: int, offline_for: float) -> float | None:
        """Return ``initial * (1 + growth) ** (attempt - 1)``, capped; ``None`` past the cap."""
        if attempt < 1:
            _check_attempt(attempt)
        max_attempts = self.max_attempts
        if max_attempts is not None and attempt > max_attempts:
            return None
        table = self._table
        if attempt < len(table):
            return table[attempt]
        return self._compute(attempt)

    def _compute(self, attempt: int) -> float:
        # From this attempt on the wait is the ceiling: (1 + growth) ** n is never computed
        # there, as it overflows a float long before an attempt count stops being an int.
        capped_from = self._capped_from
        if capped_from:
            if attempt >= capped_from:
                return self._ceiling
        elif (attempt - 1) * self._log_factor >= self._max_exponent:
            return self._ceiling
        return min(self._ceiling, self.initial * self._ratio ** (attempt - 1))

    __repr__ = _repr


def _tiers(value: object) -> tuple[tuple[float | None, float], ...]:
    if not isinstance(value, tuple | list):
        return value  # type: ignore[return-value]
    out = []
    for tier in value:
        if isinstance(tier, tuple | list) and len(tier) == 2:
            out.append((to_seconds_or_none(tier[0]), to_seconds(tier[1])))
        else:
            out.append(tier)
    return tuple(out)  # type: ignore[arg-type]


def _check_tiers(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    where = _where(instance, attribute)
    if not isinstance(value, tuple) or not value:
        raise ValueError(f"{where} needs at least one (until_offline_for, every) pair")
    previous = 0.0
    for index, tier in enumerate(value):
        if not isinstance(tier, tuple) or len(tier) != 2:
            raise TypeError(
                f"{where}[{index}] must be a pair (until_offline_for, every), got {tier!r}"
            )
        until, every = tier
        for name, number in (("every", every), ("until_offline_for", until)):
            if number is None and name == "until_offline_for":
                continue
            if not isinstance(number, float):
                raise TypeError(
                    f"{where}[{index}].{name} must be seconds or a timedelta, got {number!r}"
                )
            if math.isnan(number) or math.isinf(number) or number <= 0:
                raise ValueError(f"{where}[{index}].{name} must be finite and > 0, got {number!r}")
        if until is None:
            if index != len(value) - 1:
                raise ValueError(
                    f"{where}[{index}] has until_offline_for=None (forever), so it must be the "
                    "last tier"
                )
        elif until <= previous:
            raise ValueError(
                f"{where}[{index}].until_offline_for ({until!r}) must be greater than the "
                f"previous tier's ({previous!r})"
            )
        else:
            previous = until


@attrs.frozen(repr=False, init=False)
class Tiered(_Composable):
    """A schedule keyed on how long the source has been offline (seed 000).

    Each tier is a pair ``(until_offline_for, every)``: while the source has been offline for
    less than *until_offline_for*, wait *every* between attempts. ``None`` as the last
    tier's bound means "from then on, forever"; if the last tier has a bound, the strategy
    gives up once the source has been offline that long.

    Example:
        Seed 000 — every 30 minutes while offline for less than 7 days, then once a day:

        >>> from mailtether import Tiered, DAY, MINUTE
        >>> helpdesk = Tiered((7 * DAY, 30 * MINUTE), (None, DAY))
        >>> helpdesk.delay(1, 0.0), helpdesk.delay(400, 7 * DAY)
        (1800.0, 86400.0)
    """

    tiers: tuple[tuple[float | None, float], ...] = attrs.field(
        converter=_tiers, validator=_check_tiers
    )

    def __init__(self, *tiers: tuple[Duration | None, Duration]) -> None:
        self.__attrs_init__(tiers)

    def delay(self, attempt: int, offline_for: float) -> float | None:
        """Return the wait of the tier *offline_for* falls in, or ``None`` past the last."""
        _check_attempt(attempt)
        for until, every in self.tiers:
            if until is None or offline_for < until:
                return every
        return None

    def __repr__(self) -> str:
        return f"Tiered({', '.join(repr(tier) for tier in self.tiers)})"


# -- wrappers -----------------------------------------------------------------------------


@attrs.frozen(repr=False)
class ImmediateFirst(_Composable):
    """Make the first attempt at once, then follow *strategy* (seed 002).

    Attempt 1 waits 0 s; attempt *k* > 1 waits what *strategy* says for attempt *k - 1*.
    A wrapped strategy's ``max_attempts`` therefore counts the delayed attempts, and the
    whole schedule makes one attempt more.

    Example:
        >>> from mailtether import Exponential
        >>> rpa = Exponential(1, growth=1, max_attempts=11).immediate_first()  # 12 in all
        >>> [rpa.delay(k, 0.0) for k in (1, 2, 3, 12, 13)]
        [0.0, 1.0, 2.0, 1024.0, None]
    """

    strategy: ReconnectStrategy = attrs.field(validator=_check_strategy)

    def delay(self, attempt: int, offline_for: float) -> float | None:
        """Return 0 for the first attempt, else the wrapped strategy's previous answer."""
        _check_attempt(attempt)
        if attempt == 1:
            return 0.0
        return self.strategy.delay(attempt - 1, offline_for)

    def __repr__(self) -> str:
        return f"{self.strategy!r}.immediate_first()"


@attrs.frozen(repr=False)
class Capped(_Composable):
    """Limits around any strategy: attempts, total time offline, longest wait.

    Args:
        strategy: The schedule to limit.
        max_attempts: Give up after this many attempts.
        max_offline_for: Give up once the source has been offline this long. No attempt
            starts past this deadline: a wait that would cross it is shortened so the last
            attempt happens exactly at the deadline (tenacity's ``stop_after_delay``
            overshoots here).
        max_delay: Never wait longer than this at once.

    Example:
        >>> from mailtether import Fixed, HOUR
        >>> hourly_for_a_day = Fixed(HOUR).capped(max_offline_for=24 * HOUR + 600)
        >>> hourly_for_a_day.delay(25, 24 * HOUR)
        600.0
        >>> hourly_for_a_day.delay(26, 24 * HOUR + 600) is None
        True
    """

    strategy: ReconnectStrategy = attrs.field(validator=_check_strategy)
    max_attempts: int | None = attrs.field(default=None, kw_only=True, validator=_count)
    max_offline_for: float | None = attrs.field(
        default=None, kw_only=True, converter=to_seconds_or_none, validator=_seconds()
    )
    max_delay: float | None = attrs.field(
        default=None, kw_only=True, converter=to_seconds_or_none, validator=_seconds()
    )

    def __attrs_post_init__(self) -> None:
        if self.max_attempts is None and self.max_offline_for is None and self.max_delay is None:
            raise ValueError(
                "Capped needs at least one of max_attempts, max_offline_for, max_delay"
            )

    def delay(self, attempt: int, offline_for: float) -> float | None:
        """Return the wrapped strategy's wait within the limits, or ``None`` past them."""
        _check_attempt(attempt)
        if self.max_attempts is not None and attempt > self.max_attempts:
            return None
        if self.max_offline_for is not None and offline_for >= self.max_offline_for:
            return None
        wait = self.strategy.delay(attempt, offline_for)
        if wait is None:
            return None
        if self.max_delay is not None and wait > self.max_delay:
            wait = self.max_delay
        if self.max_offline_for is not None and offline_for + wait > self.max_offline_for:
            wait = self.max_offline_for - offline_for
        return wait

    def __repr__(self) -> str:
        limits = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in ("max_attempts", "max_offline_for", "max_delay")
            if getattr(self, name) is not None
        )
        return f"{self.strategy!r}.capped({limits})"


_MASK64: Final = (1 << 64) - 1
_TO_UNIT: Final = 1.0 / (1 << 53)


def _uniform(seed: int, attempt: int) -> float:
    """A number in [0, 1) that depends only on (seed, attempt).

    One round of a 64-bit multiply-xorshift mixer (the finaliser of MurmurHash3) over the
    seed and the attempt: cheap, stable across Python versions and platforms, and spread
    well enough for jitter (this is not cryptography).
    """
    z = (seed ^ (attempt * 0x9E3779B97F4A7C15)) & _MASK64
    z = ((z ^ (z >> 33)) * 0xFF51AFD7ED558CCD) & _MASK64
    z = ((z ^ (z >> 33)) * 0xC4CEB9FE1A85EC53) & _MASK64
    return ((z ^ (z >> 33)) >> 11) * _TO_UNIT


def _check_kind(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in _JITTER_KINDS:
        raise ValueError(
            f"{_where(instance, attribute)} must be one of {', '.join(_JITTER_KINDS)}; "
            f"got {value!r}"
        )


@attrs.frozen(repr=False, init=False)
class Jittered(_Composable):
    r"""Randomised waits around any strategy, so many workers do not reconnect in step.

    With :math:`d_k` the wrapped strategy's wait for attempt :math:`k` and :math:`U(a, b)`
    a uniform draw, the formulas of the AWS Architecture Blog's "Exponential Backoff And
    Jitter" are:

    - ``"none"``: :math:`d_k`
    - ``"full"``: :math:`U(0, d_k)`
    - ``"equal"``: :math:`d_k / 2 + U(0, d_k / 2)`
    - ``"decorrelated"``: :math:`w_k = \min(d_k, U(d_1, 3 w_{k-1}))` with :math:`w_0 = d_1`:
      each wait grows from the last one drawn, under the wrapped schedule as a ceiling.
      It needs a positive first wait, so wrap it in ``immediate_first()`` rather than
      the other way round; it is computed from at most the 64 attempts before *k*.

    The draw for attempt *k* depends only on *seed* and *k*: the same strategy gives the
    same schedule every time (a restarted process keeps its schedule), while two strategies
    with different seeds spread out. Without a *seed* (or *rng* to draw one from) a random
    seed is chosen at construction.

    Args:
        strategy: The schedule to jitter.
        kind: One of ``"none"``, ``"full"``, ``"equal"``, ``"decorrelated"``.
        seed: The seed of the draws, for reproducible schedules.
        rng: A :class:`random.Random` to draw the seed from, if *seed* is not given.

    Example:
        >>> from mailtether import Exponential
        >>> schedule = Exponential(8, max_attempts=5)
        >>> spread = schedule.jittered("equal", seed=7)
        >>> 8.0 <= spread.delay(2, 0.0) <= 16.0  # half of 16 s fixed, half drawn
        True
        >>> spread.delay(2, 0.0) == schedule.jittered("equal", seed=7).delay(2, 0.0)
        True
    """

    strategy: ReconnectStrategy = attrs.field(validator=_check_strategy)
    kind: JitterKind = attrs.field(default="full", validator=_check_kind)
    seed: int = attrs.field(default=0, kw_only=True, validator=_count)

    def __init__(
        self,
        strategy: ReconnectStrategy,
        kind: JitterKind = "full",
        *,
        seed: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if seed is None:
            seed = rng.getrandbits(64) if rng is not None else secrets.randbits(64)
        elif rng is not None:
            raise TypeError("Jittered takes a seed or an rng, not both")
        self.__attrs_init__(strategy, kind, seed=seed)
        if kind == "decorrelated":
            first = strategy.delay(1, 0.0)
            if first is None or first <= 0:
                raise ValueError(
                    "Jittered(kind='decorrelated') needs a wrapped strategy whose first wait is "
                    f"positive, but {strategy!r} waits {first!r}; apply immediate_first() "
                    "outside the jitter"
                )

    def delay(self, attempt: int, offline_for: float) -> float | None:
        """Return the jittered wait for *attempt*, or ``None`` where the wrapped one gives up."""
        _check_attempt(attempt)
        ceiling = self.strategy.delay(attempt, offline_for)
        if ceiling is None:
            return None
        kind = self.kind
        if kind == "full":
            return ceiling * _uniform(self.seed, attempt)
        if kind == "equal":
            half = ceiling / 2.0
            return half + half * _uniform(self.seed, attempt)
        if kind == "decorrelated":
            return self._decorrelated(attempt, offline_for, ceiling)
        return ceiling

    def _decorrelated(self, attempt: int, offline_for: float, ceiling: float) -> float:
        base = self.strategy.delay(1, 0.0) or 0.0
        start = max(1, attempt - _DECORRELATED_WINDOW)
        wait = base
        for k in range(start, attempt + 1):
            envelope = ceiling if k == attempt else self.strategy.delay(k, offline_for)
            if envelope is None:
                envelope = ceiling
            draw = base + (3.0 * wait - base) * _uniform(self.seed, k)
            wait = min(envelope, draw)
        return wait

    def __repr__(self) -> str:
        return f"{self.strategy!r}.jittered({self.kind!r}, seed={self.seed!r})"


def _steps(value: object) -> object:
    return (
        tuple(tuple(step) if isinstance(step, list) else step for step in value)
        if isinstance(value, tuple | list)
        else value
    )


def _check_steps(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    where = _where(instance, attribute)
    if not isinstance(value, tuple) or not value:
        raise ValueError(f"{where} needs at least one (strategy, attempts) pair")
    for index, step in enumerate(value):
        if not isinstance(step, tuple) or len(step) != 2:
            raise TypeError(f"{where}[{index}] must be a pair (strategy, attempts), got {step!r}")
        strategy, attempts = step
        if not callable(getattr(strategy, "delay", None)):
            raise TypeError(f"{where}[{index}] has no ReconnectStrategy: {strategy!r}")
        if attempts is None:
            if index != len(value) - 1:
                raise ValueError(
                    f"{where}[{index}] covers all remaining attempts (None), so it must be last"
                )
        elif isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"{where}[{index}] attempts must be an int >= 1, got {attempts!r}")


@attrs.frozen(repr=False, init=False)
class Chain(_Composable):
    """One schedule after another: each step covers a number of attempts.

    Each step is ``(strategy, attempts)``; a step's strategy sees attempts counted from 1
    within the step. ``None`` as the last step's count covers every remaining attempt; if
    the last step has a count, the chain gives up after it. A step whose strategy gives up
    early ends the chain too.

    Example:
        Three quick tries 5 s apart, then growing waits up to ten minutes:

        >>> from mailtether import Chain, Exponential, Fixed
        >>> chain = Chain((Fixed(5), 3), (Exponential(30, max_delay=600), None))
        >>> [chain.delay(k, 0.0) for k in (1, 3, 4, 5, 9)]
        [5.0, 5.0, 30.0, 60.0, 600.0]
        >>> Fixed(5, max_attempts=3).then(Exponential(30, max_delay=600)).delay(4, 0.0)
        30.0
    """

    steps: tuple[tuple[ReconnectStrategy, int | None], ...] = attrs.field(
        converter=_steps, validator=_check_steps
    )

    def __init__(self, *steps: tuple[ReconnectStrategy, int | None]) -> None:
        self.__attrs_init__(steps)

    def delay(self, attempt: int, offline_for: float) -> float | None:
        """Return the wait of the step *attempt* falls in, or ``None`` after the last."""
        _check_attempt(attempt)
        remaining = attempt
        for strategy, attempts in self.steps:
            if attempts is None or remaining <= attempts:
                return strategy.delay(remaining, offline_for)
            # A step that gave up before using all its attempts ends the chain: giving up
            # is final, so asking its last attempt is enough.
            if strategy.delay(attempts, offline_for) is None:
                return None
            remaining -= attempts
        return None

    def __repr__(self) -> str:
        return f"Chain({', '.join(repr(step) for step in self.steps)})"
