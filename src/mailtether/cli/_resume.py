"""``mailtether resume``: let a BLOCKED source try again now."""

from __future__ import annotations

import argparse
from typing import TextIO

from mailtether._status import StatusBoard
from mailtether.cli._outcome import answer
from mailtether.stores._protocol import Store

__all__ = ["add_resume_arguments", "run_resume"]


def add_resume_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mailtether resume``."""
    parser.add_argument("source", help="the source's name, as `status` prints it")
    parser.add_argument("--store", required=True)
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def run_resume(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    """Ask the source's listener to reconnect now; 1 if it is unknown or not blocked."""
    done = StatusBoard(store, notifiers=[]).resume(args.source)
    said = "resume requested" if done else "not found or not blocked"
    return answer(out, as_json=args.json, field="source", subject=args.source, done=done, said=said)
