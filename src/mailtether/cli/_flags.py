"""The types of numeric flags: a bad value is refused while the command line is parsed.

``type=seconds()`` and ``type=count()`` run :func:`~mailtether._durations.check_seconds` and
:func:`~mailtether._durations.check_count`, the checks every constructor runs, so a flag
refuses exactly what the setting behind it would, and argparse names the flag:
``mailtether watch: argument --lease-ttl: the value must be a positive number of seconds …``
(exit code 2).
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable
from typing import Final

from mailtether._durations import check_count, check_seconds
from mailtether._errors import ConfigError
from mailtether._tokens import TokenCommand

__all__ = ["count", "seconds"]

_WHOLE: Final = re.compile(r"\s*[+-]?\d+\s*")
_FIELD: Final = "the value"  # argparse puts "argument --flag: " before the message


def seconds(*, allow_zero: bool = False) -> Callable[[str], float]:
    """The type of a duration flag (``60``, ``90s``, ``5m``); 0 only if *allow_zero*."""

    def parse(text: str) -> float:
        try:
            return check_seconds(text, _FIELD, allow_zero=allow_zero)
        except ConfigError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def count(*, minimum: int = 1) -> Callable[[str], int]:
    """The type of a whole-number flag, at least *minimum*."""

    def parse(text: str) -> int:
        try:
            return check_count(
                int(text) if _WHOLE.fullmatch(text) else text, _FIELD, minimum=minimum
            )
        except ConfigError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def token_command(command: str | None) -> TokenCommand | None:
    """``--token-command``: the command (split as a shell would, never run by one).

    Raises:
        ConfigError: the command's quotes do not pair.
    """
    if not command:
        return None
    try:
        return TokenCommand(shlex.split(command))
    except ValueError as error:
        raise ConfigError(f"--token-command cannot be read ({error})") from None
