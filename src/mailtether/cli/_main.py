"""The ``mailtether`` command: its parser, and the dispatch to one module per command.

``check`` (:mod:`._check`), ``watch`` (:mod:`._watch`), ``run`` (:mod:`._run`), ``demo``
(:mod:`._demo`), and the commands that read a store: ``status`` (:mod:`._status`),
``pause`` (:mod:`._pause`), ``resume`` (:mod:`._resume`), ``release`` and ``drop``
(:mod:`._held`), ``queue`` (:mod:`._queue`). This module reads the settings file every
command but ``demo`` takes (:mod:`._config_file`), and opens their store and closes it.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Final, NoReturn, TextIO, cast

from mailtether._errors import MailtetherError
from mailtether._redaction import redact
from mailtether._status import StatusBoard
from mailtether.cli._check import add_check_arguments, run_check
from mailtether.cli._config_file import ConfigFile, flush
from mailtether.cli._held import add_held_arguments, run_drop, run_release
from mailtether.cli._outcome import ERROR, USAGE
from mailtether.cli._pause import add_pause_arguments, run_pause
from mailtether.cli._queue import add_queue_arguments, run_queue
from mailtether.cli._resume import add_resume_arguments, run_resume
from mailtether.cli._run import add_run_arguments, run_fleet
from mailtether.cli._status import add_status_arguments, run_status
from mailtether.cli._watch import add_watch_arguments, run_watch
from mailtether.stores._protocol import Store
from mailtether.stores._url import store_from_url

__all__ = ["main", "run"]

_STORE_COMMANDS: Final[dict[str, Callable[[Store, argparse.Namespace, TextIO], int]]] = {
    "status": run_status,
    "release": run_release,
    "drop": run_drop,
    "queue": run_queue,
}
# These change a source's state: the settings file's notifiers are told.
_BOARD_COMMANDS: Final[dict[str, Callable[[StatusBoard, argparse.Namespace, TextIO], int]]] = {
    "pause": run_pause,
    "resume": run_resume,
}


class _Parser(argparse.ArgumentParser):
    """A parser whose usage errors are one line: the command, what is wrong, where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mailtether",
        description="Keep mail listeners connected and honest: inspect and steer them.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    commands = parser.add_subparsers(dest="command", required=True)
    add_watch_arguments(
        commands.add_parser("watch", help="run a listener with your handler until Ctrl-C")
    )
    add_run_arguments(
        commands.add_parser("run", help="run a fleet worker: a fair share of a fleet's sources")
    )
    commands.add_parser(
        "demo", help="watch a listener survive resets and a black hole (needs mailtether[demo])"
    )
    add_check_arguments(
        commands.add_parser(
            "check", help="test a mailbox connection step by step and say what is wrong"
        )
    )
    add_status_arguments(
        commands.add_parser("status", help="show every source and the held messages")
    )
    add_pause_arguments(
        commands.add_parser("pause", help="stop a source on purpose (it disconnects) until resumed")
    )
    add_resume_arguments(
        commands.add_parser("resume", help="let a BLOCKED or PAUSED source try again now")
    )
    add_held_arguments(commands.add_parser("release", help="retry a held (poisoned) message"))
    add_held_arguments(commands.add_parser("drop", help="never process a held or failed message"))
    add_queue_arguments(
        commands.add_parser("queue", help="the outbox: mail by relay and domain, the error queue")
    )
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    out: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the command line; return the exit code (see :func:`_main`).

    *environ* holds the ``MAILTETHER_*`` variables (default: the process's environment).
    """
    out = cast(TextIO, _Redacting(out or sys.stdout))  # whatever is printed: no secret in it
    debug = "--debug" in (sys.argv[1:] if argv is None else list(argv))
    try:
        return _main(argv, out, os.environ if environ is None else environ)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # one line, not a traceback, unless asked
        if debug:
            raise
        out.write(f"mailtether: unexpected {type(error).__name__}: {error} (rerun with --debug)\n")
        return ERROR


def _main(argv: Sequence[str] | None, out: TextIO, environ: Mapping[str, str]) -> int:
    """Run the command line; return the exit code.

    0 ok, 1 not found, 2 usage, 3 error; ``check``: 4 unreachable, 5 reachable but
    misconfigured.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) and USAGE
    if args.command == "demo":
        from mailtether.cli._demo import run_demo  # needs the demo extra: only when asked

        try:
            return run_demo(out)
        except MailtetherError as error:
            out.write(f"mailtether: {error}\n")
            return ERROR
    try:  # flags > environment > file > defaults, for every command
        config = ConfigFile.load(args.config, environ)
        if args.command == "check":
            return run_check(args, out, config)
        if args.command == "watch":
            return run_watch(args, out, config=config)
        if args.command == "run":
            return run_fleet(args, out, config=config)
        url = config.store_url(args.store, args.command)
        if args.command == "queue" and args.action == "run" and not args.relay:
            relay = config.relay_url(None)  # MAILTETHER_RELAY, or relay = … in the file
            args.relay = [relay] if relay else []
        steering = args.command in _BOARD_COMMANDS
        notifiers = config.notifiers() if steering else []
        config.board_options()  # (checked before the store is opened)
    except MailtetherError as error:
        out.write(f"mailtether: {error}\n")
        return USAGE
    try:  # these commands look at or steer a store: a missing one is a mistyped path
        store = store_from_url(url, create=False)
    except MailtetherError as error:
        out.write(f"mailtether: {error}\n")
        return ERROR
    try:
        if steering:  # the settings file's notifiers are told
            return _BOARD_COMMANDS[args.command](config.board(store, notifiers), args, out)
        return _STORE_COMMANDS[args.command](store, args, out)
    except MailtetherError as error:
        out.write(f"mailtether: {error}\n")
        return ERROR
    finally:
        store.close()
        flush(notifiers)


class _Redacting(io.TextIOBase):
    """A text stream that writes to *out* what it is given, every secret removed."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    @property
    def unredacted(self) -> TextIO:
        """The stream behind it, for JSON already redacted value by value."""
        return self._out

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._out.write(redact(text))
        return len(text)

    def flush(self) -> None:
        self._out.flush()


def run() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
