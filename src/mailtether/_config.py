"""Strategies from settings files: ``strategy_from_config`` and the plug-in registry.

A strategy can be described by a mapping (from TOML, YAML, JSON, environment) or a short
string. Third-party packages add their own strategy types through the
``mailtether.strategies`` entry-point group; see :func:`strategy_from_config`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, Final, cast

from mailtether._durations import parse_duration
from mailtether._errors import ConfigError
from mailtether._strategies import (
    _JITTER_KINDS,
    Capped,
    Chain,
    Exponential,
    Fixed,
    ImmediateFirst,
    Jittered,
    JitterKind,
    ReconnectStrategy,
    Tiered,
)
from mailtether._yes_no import YES_NO

__all__ = ["ENTRY_POINT_GROUP", "strategy_from_config"]

ENTRY_POINT_GROUP: Final = "mailtether.strategies"
"""The entry-point group third-party strategies register in."""

_WRAPPER_KEYS: Final[tuple[str, ...]] = ("immediate_first", "jitter", "seed", "max_offline_for")


def _duration(key: str, value: object) -> float:
    try:
        return parse_duration(value)  # type: ignore[arg-type]
    except ConfigError as error:
        raise ConfigError(f"{key}: {error}") from None


def _optional_duration(key: str, value: object) -> float | None:
    return None if value is None else _duration(key, value)


def _int(key: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be a whole number, got {value!r}")
    return value


def _float(key: str, value: object) -> float:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    return float(value)


def _build_fixed(options: dict[str, Any]) -> ReconnectStrategy:
    return Fixed(
        _duration("delay", _take(options, "delay", required=True)),
        max_attempts=_int("max_attempts", _take(options, "max_attempts")),
    )


def _build_exponential(options: dict[str, Any]) -> ReconnectStrategy:
    growth = _take(options, "growth")
    return Exponential(
        _duration("initial", _take(options, "initial", required=True)),
        growth=1.0 if growth is None else _float("growth", growth),
        max_delay=_optional_duration("max_delay", _take(options, "max_delay")),
        max_attempts=_int("max_attempts", _take(options, "max_attempts")),
    )


_TIER_TEXT: Final = re.compile(r"^\s*(?P<every>\S+)\s+until\s+(?P<until>\S+)\s*$")
_THEN_TEXT: Final = re.compile(r"^\s*then\s+(?P<every>\S+)\s*$")


def _build_tiered(options: dict[str, Any]) -> ReconnectStrategy:
    tiers = _take(options, "tiers", required=True)
    pairs: list[tuple[float | None, float]] = []
    if isinstance(tiers, str):
        # "30m until 7d, then 1d"
        clauses = [clause for clause in tiers.split(",") if clause.strip()]
        for index, clause in enumerate(clauses):
            tier = _TIER_TEXT.match(clause)
            last = _THEN_TEXT.match(clause) if index == len(clauses) - 1 else None
            if tier is not None:
                pairs.append(
                    (
                        _duration("tiers", tier.group("until")),
                        _duration("tiers", tier.group("every")),
                    )
                )
            elif last is not None:
                pairs.append((None, _duration("tiers", last.group("every"))))
            else:
                raise ConfigError(
                    f"tiers: cannot read {clause.strip()!r}; write tiers like "
                    "'30m until 7d, then 1d'"
                )
    elif isinstance(tiers, list | tuple):
        for tier in tiers:
            if not isinstance(tier, list | tuple) or len(tier) != 2:
                raise ConfigError(f"tiers: each tier is [until_offline_for, every], got {tier!r}")
            pairs.append((_optional_duration("tiers", tier[0]), _duration("tiers", tier[1])))
    else:
        raise ConfigError(
            f"tiers must be a list of [until, every] pairs or a string, not {tiers!r}"
        )
    try:
        return Tiered(*pairs)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None


def _build_chain(options: dict[str, Any]) -> ReconnectStrategy:
    steps = _take(options, "steps", required=True)
    if not isinstance(steps, list | tuple) or not steps:
        raise ConfigError("steps must be a list of [strategy, attempts] pairs")
    built: list[tuple[ReconnectStrategy, int | None]] = []
    for step in steps:
        if not isinstance(step, list | tuple) or len(step) != 2:
            raise ConfigError(f"steps: each step is [strategy, attempts], got {step!r}")
        built.append((strategy_from_config(step[0]), _int("steps attempts", step[1])))
    try:
        return Chain(*built)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None


_BUILTINS: Final[dict[str, Callable[[dict[str, Any]], ReconnectStrategy]]] = {
    "fixed": _build_fixed,
    "exponential": _build_exponential,
    "tiered": _build_tiered,
    "chain": _build_chain,
}
_POSITIONAL: Final = {"fixed": "delay", "exponential": "initial", "tiered": "tiers"}
_MISSING: Final = object()
_ARGS: Final = " args"  # positional words of the string form; a key no mapping can clash with


def _take(options: dict[str, Any], key: str, *, required: bool = False) -> Any:
    value = options.pop(key, _MISSING)
    if value is _MISSING:
        if required:
            raise ConfigError(f"missing required key {key!r}")
        return None
    return value


def strategy_from_config(config: Mapping[str, Any] | str) -> ReconnectStrategy:
    """Build a reconnect strategy from a settings mapping or a short string.

    The mapping names a ``type`` and that type's arguments; durations may be numbers of
    seconds or strings like ``"30m"``. Built-in types: ``fixed`` (``delay``,
    ``max_attempts``), ``exponential`` (``initial``, ``growth``, ``max_delay``,
    ``max_attempts``), ``tiered`` (``tiers``: ``[[until, every], ...]`` with ``null`` for
    "forever", or the string ``"30m until 7d, then 1d"``) and ``chain`` (``steps``:
    ``[[strategy, attempts], ...]``). Any type also takes the wrapper keys
    ``max_offline_for`` (see :class:`~mailtether.Capped`), ``jitter`` and ``seed`` (see
    :class:`~mailtether.Jittered`) and ``immediate_first`` (see
    :class:`~mailtether.ImmediateFirst`), applied in that order.

    The string form is the type, an optional first argument, then ``key=value`` words and
    bare flags: ``"fixed 60s"``, ``"exponential 1s growth=1 max_attempts=12
    immediate_first"``, ``"tiered 30m until 7d, then 1d"``.

    Any other ``type`` is looked up in the ``mailtether.strategies`` entry-point group: the
    entry point must name a callable that takes the remaining keys as keyword arguments
    (values as written in the settings; :func:`~mailtether.parse_duration` helps) and
    returns a strategy. Register one in your package's ``pyproject.toml``::

        [project.entry-points."mailtether.strategies"]
        office-hours = "my_package.strategies:OfficeHours"

    Raises:
        ConfigError: the description is incomplete, names an unknown type or key, or
            holds a value that cannot be used. The message says which.

    Example:
        >>> from mailtether import strategy_from_config
        >>> strategy_from_config({"type": "fixed", "delay": "60s"})
        Fixed(delay=60.0)
        >>> strategy_from_config("exponential 1s growth=1 max_attempts=12 immediate_first")
        Exponential(initial=1.0, growth=1.0, max_attempts=12).immediate_first()
        >>> strategy_from_config("tiered 30m until 7d, then 1d")
        Tiered((604800.0, 1800.0), (None, 86400.0))
    """
    options = _parse_string(config) if isinstance(config, str) else _copy_mapping(config)
    kind = options.pop("type", None)
    if not isinstance(kind, str) or not kind:
        raise ConfigError(
            f"a strategy description needs a 'type': one of {', '.join(sorted(_known_types()))}"
        )
    kind = kind.strip().lower().replace("_", "-")
    args = options.pop(_ARGS, None)
    if args is not None:
        target = _POSITIONAL.get(kind)
        if target is None and kind not in _known_types():
            raise _unknown_type(kind)
        if target is None or target in options:
            raise ConfigError(f"{kind} strategy: cannot place {args!r}; write key=value")
        options[target] = args
    wrappers = {key: options.pop(key) for key in _WRAPPER_KEYS if key in options}
    builder = _BUILTINS.get(kind)
    if builder is not None:
        try:
            strategy = builder(options)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{kind} strategy: {error}") from None
        if options:
            raise ConfigError(f"{kind} strategy: unknown key(s) {', '.join(sorted(options))}")
    else:
        strategy = _from_entry_point(kind, options)
    return _wrap(strategy, wrappers)


def _copy_mapping(config: object) -> dict[str, Any]:
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"a strategy description is a mapping or a string, not {type(config).__name__}"
        )
    options = dict(config)
    for key in options:
        if not isinstance(key, str):
            raise ConfigError(f"strategy keys must be strings, got {key!r}")
    return options


def _parse_string(text: str) -> dict[str, Any]:
    words = text.split(None, 1)
    if not words:
        raise ConfigError("an empty string is not a strategy description")
    kind = words[0]
    rest = words[1] if len(words) > 1 else ""
    options: dict[str, Any] = {"type": kind}
    positional: list[str] = []
    for word in rest.split():
        key, sep, value = word.partition("=")
        if sep:
            options[key] = value
        elif key == "immediate_first":
            options[key] = True
        else:
            positional.append(word)
    if positional:
        options[_ARGS] = " ".join(positional)
    return options


def _wrap(strategy: ReconnectStrategy, wrappers: dict[str, Any]) -> ReconnectStrategy:
    try:
        max_offline_for = wrappers.get("max_offline_for")
        if max_offline_for is not None:
            strategy = Capped(
                strategy, max_offline_for=_duration("max_offline_for", max_offline_for)
            )
        jitter = wrappers.get("jitter")
        if jitter is not None and jitter is not False:
            if jitter is True:
                jitter = "full"
            if jitter not in _JITTER_KINDS:
                raise ConfigError(
                    f"jitter must be one of {', '.join(_JITTER_KINDS)}, got {jitter!r}"
                )
            strategy = Jittered(
                strategy, cast(JitterKind, jitter), seed=_int("seed", wrappers.get("seed"))
            )
        elif "seed" in wrappers:
            raise ConfigError("seed is only meaningful with jitter")
        immediate = wrappers.get("immediate_first", False)
        if isinstance(immediate, str):
            immediate = YES_NO.get(immediate.strip().lower(), immediate)
        if immediate is True:
            strategy = ImmediateFirst(strategy)
        elif immediate is not False:
            raise ConfigError(f"immediate_first must be true or false, got {immediate!r}")
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:  # a wrapper's own validation
        raise ConfigError(str(error)) from None
    return strategy


def _known_types() -> set[str]:
    return set(_BUILTINS) | {entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)}


def _unknown_type(kind: str) -> ConfigError:
    return ConfigError(
        f"unknown strategy type {kind!r}: known types are "
        f"{', '.join(sorted(_known_types()))} (plug-ins register in the "
        f"{ENTRY_POINT_GROUP!r} entry-point group)"
    )


def _from_entry_point(kind: str, options: dict[str, Any]) -> ReconnectStrategy:
    found = [entry for entry in entry_points(group=ENTRY_POINT_GROUP) if entry.name == kind]
    if not found:
        raise _unknown_type(kind)
    entry = found[0]
    try:
        factory = entry.load()
    except Exception as error:
        raise ConfigError(
            f"strategy type {kind!r} is registered as {entry.value!r} but could not be "
            f"loaded: {error}"
        ) from error
    try:
        strategy = factory(**options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{kind} strategy: {error}") from error
    if not callable(getattr(strategy, "delay", None)):
        raise ConfigError(
            f"strategy type {kind!r} ({entry.value}) returned {strategy!r}, which has no "
            "delay(attempt, offline_for) method"
        )
    return strategy  # type: ignore[no-any-return]
