"""``mailtether release`` and ``mailtether drop``: decide what becomes of a held message.

One module for both: they take the same arguments, reach the same guard and answer alike;
only the guard's method and the verb differ.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from mailtether._guard import DuplicateGuard
from mailtether.cli._config_file import add_store_arguments
from mailtether.cli._outcome import answer
from mailtether.stores._protocol import Store

__all__ = ["add_held_arguments", "run_drop", "run_release"]


def add_held_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mailtether release`` and ``mailtether drop``."""
    parser.add_argument("key", help="the message key, as `status` prints it")
    add_store_arguments(parser)
    parser.add_argument("--guard", default=None)
    parser.add_argument("--by", default="mailtether command line", help="who decided")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def run_release(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    """Let the guard hand the held message out again; 1 if it is not held."""
    guard = DuplicateGuard(store, name=args.guard)
    return _answer(out, args, guard.release(args.key, by=args.by), "released")


def run_drop(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    """Never process the held or failed message; 1 if it is neither."""
    guard = DuplicateGuard(store, name=args.guard)
    return _answer(out, args, guard.drop(args.key, by=args.by), "dropped")


def _answer(out: TextIO, args: argparse.Namespace, done: bool, verb: str) -> int:
    said = verb if done else "not found, or not in a state that allows it"
    return answer(out, as_json=args.json, field="key", subject=args.key, done=done, said=said)
