"""``mailtether pause``: stop a source on purpose, until ``mailtether resume``.

Its run loop (wherever it runs, on the same store) notices within a heartbeat or at its next
catch-up, disconnects, and hands out no mail; ``status`` shows it PAUSED, with who and when.
"""

from __future__ import annotations

import argparse
import getpass
from typing import TextIO

from mailtether._status import SourceState, StatusBoard
from mailtether.cli._config_file import add_store_arguments
from mailtether.cli._outcome import answer

__all__ = ["add_by_argument", "add_pause_arguments", "run_pause"]


def add_pause_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mailtether pause``."""
    parser.add_argument("source", help="the source's name, as `status` prints it")
    add_store_arguments(parser)
    add_by_argument(parser, "paused")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def add_by_argument(parser: argparse.ArgumentParser, verb: str) -> None:
    """``--by``: who did it, shown in ``status`` and told to the notifiers."""
    parser.add_argument("--by", default=_login(), help=f"who {verb} it (default: your login name)")


def run_pause(board: StatusBoard, args: argparse.Namespace, out: TextIO) -> int:
    """Pause the source (*board*'s notifiers are told); 1 if it never reported."""
    before = board.get(args.source)
    done = board.pause(args.source, by=args.by)
    if not done:
        said = "not found"
    elif before is not None and before.state is SourceState.PAUSED:
        said = "already paused"
    else:
        said = "paused"
    return answer(out, as_json=args.json, field="source", subject=args.source, done=done, said=said)


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without one)
        return ""
