"""``mailtether resume``: let a BLOCKED or PAUSED source try again now."""

from __future__ import annotations

import argparse
from typing import TextIO

from mailtether._status import SourceState, StatusBoard
from mailtether.cli._config_file import add_store_arguments
from mailtether.cli._outcome import answer
from mailtether.cli._pause import add_by_argument

__all__ = ["add_resume_arguments", "run_resume"]


def add_resume_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mailtether resume``."""
    parser.add_argument("source", help="the source's name, as `status` prints it")
    add_store_arguments(parser)
    add_by_argument(parser, "resumed")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def run_resume(board: StatusBoard, args: argparse.Namespace, out: TextIO) -> int:
    """Let the source go on; 1 if it is unknown, or neither blocked nor paused.

    *board*'s notifiers are told of a resumed pause.
    """
    before = board.get(args.source)
    done = board.resume(args.source, by=args.by)
    if not done:
        said = "not found, or neither blocked nor paused"
    elif before is not None and before.state is SourceState.PAUSED:
        said = "resumed"
    else:
        said = "resume requested"
    return answer(out, as_json=args.json, field="source", subject=args.source, done=done, said=said)
