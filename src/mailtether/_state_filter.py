"""``StateFilter``: which status changes a notifier passes on (its ``only=`` setting)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import attrs

from mailtether._errors import ConfigError
from mailtether._status import SourceState, StatusChange

__all__ = ["StateFilter"]

_TOLD: Final = tuple(sorted(s.value for s in SourceState if s is not SourceState.STALE))
"""The states a board tells of (STALE is read from an expired heartbeat, never told)."""


@attrs.frozen
class StateFilter:
    """Changes into *states* pass (every change when ``None``); notices always pass.

    A notice (:meth:`~mailtether.StatusBoard.notice`: a mail in the error queue, a held
    mail) is not a change of state, and is what a person must hear of whatever the filter.
    """

    states: frozenset[str] | None = None

    @classmethod
    def of(cls, only: Iterable[str] | None, where: str) -> StateFilter:
        """The filter for a notifier's *only* setting, checked; *where* names the setting.

        Raises:
            ConfigError: *only* is a string (a set of states was meant), or names a state
                no board tells of; the message lists the states there are.
        """
        if only is None:
            return cls()
        if isinstance(only, str):
            raise ConfigError(
                f"{where} is a set of states, e.g. {{{only.lower()!r}}}, not the string {only!r}"
            )
        states = frozenset(str(state).lower() for state in only)
        unknown = sorted(states.difference(_TOLD))
        if unknown:
            raise ConfigError(
                f"{where} names {', '.join(map(repr, unknown))}, which no status board tells "
                f"of: choose among {', '.join(_TOLD)}"
            )
        return cls(states)

    def passes(self, change: StatusChange) -> bool:
        """Whether a notifier with this filter tells of *change*."""
        if self.states is None or change.event:
            return True
        return change.current.state.value in self.states

    def __repr__(self) -> str:
        return "all" if self.states is None else repr(sorted(self.states))
