"""The ``mailtether`` command: demo, check, watch, status, resume, release, drop."""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from mailtether._check import check
from mailtether._errors import MailtetherError
from mailtether._guard import DuplicateGuard, GuardEntry
from mailtether._status import SourceStatus, StatusBoard
from mailtether.cli._watch import add_watch_arguments, run_watch
from mailtether.stores._url import store_from_url

__all__ = ["main"]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_ERROR = 3


def _when(seconds: float | None) -> str:
    if not seconds:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _status_row(status: SourceStatus) -> list[str]:
    return [
        status.source,
        status.state.value.upper(),
        _when(status.since),
        str(status.attempts),
        _when(status.next_attempt_at),
        f"{status.processed}/{status.failed}",
        status.reason or "-",
    ]


def _held_row(entry: GuardEntry) -> list[str]:
    return [
        entry.key.id,
        str(entry.key),
        str(entry.attempts),
        _when(entry.since),
        entry.reason or "-",
    ]


def _table(out: TextIO, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    widths[-1] = 0  # the last column (a sentence) is not padded
    for row in [header, *rows]:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            + "\n"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailtether",
        description="Keep mail listeners connected and honest: inspect and steer them.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    commands = parser.add_subparsers(dest="command", required=True)

    watch = commands.add_parser("watch", help="run a listener with your handler until Ctrl-C")
    add_watch_arguments(watch)

    commands.add_parser(
        "demo", help="watch a listener survive resets and a black hole (needs mailtether[demo])"
    )

    check_ = commands.add_parser(
        "check", help="test a mailbox connection step by step and say what is wrong"
    )
    check_.add_argument("url", help="imaps://user:password@host/folder (or imap://...)")
    check_.add_argument("--timeout", type=float, default=10.0, help="seconds per step")
    check_.add_argument("--cafile", default=None, help="trust this CA (PEM) for the server")
    check_.add_argument("--json", action="store_true", help="print JSON for scripts")

    status = commands.add_parser("status", help="show every source and the held messages")
    status.add_argument("--store", required=True, help="the store URL, e.g. sqlite:///state.db")
    status.add_argument("--guard", default=None, help="the guard's name, if it has one")
    status.add_argument("--json", action="store_true", help="print JSON for scripts")

    resume = commands.add_parser("resume", help="let a BLOCKED source try again now")
    resume.add_argument("source", help="the source's name, as `status` prints it")
    resume.add_argument("--store", required=True)
    resume.add_argument("--json", action="store_true", help="print JSON for scripts")

    for name, text in (
        ("release", "retry a held (poisoned) message"),
        ("drop", "never process a held or failed message"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("key", help="the message key, as `status` prints it")
        sub.add_argument("--store", required=True)
        sub.add_argument("--guard", default=None)
        sub.add_argument("--by", default="mailtether command line", help="who decided")
        sub.add_argument("--json", action="store_true", help="print JSON for scripts")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the command line; return the exit code (see :func:`_main`)."""
    out = out or sys.stdout
    debug = "--debug" in (sys.argv[1:] if argv is None else list(argv))
    try:
        return _main(argv, out)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # one line, not a traceback, unless asked
        if debug:
            raise
        out.write(f"mailtether: unexpected {type(error).__name__}: {error} (rerun with --debug)\n")
        return EXIT_ERROR


def _main(argv: Sequence[str] | None, out: TextIO) -> int:
    """Run the command line; return the exit code.

    0 ok, 1 not found, 2 usage, 3 error; ``check``: 4 unreachable, 5 reachable but
    misconfigured.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) and EXIT_USAGE
    if args.command == "check":
        return _check(args, out)
    if args.command == "watch":
        try:
            return run_watch(args, out)
        except MailtetherError as error:
            out.write(f"mailtether: {error}\n")
            return EXIT_USAGE
    if args.command == "demo":
        from mailtether.cli._demo import run_demo

        try:
            return run_demo(out)
        except MailtetherError as error:
            out.write(f"mailtether: {error}\n")
            return EXIT_ERROR
    try:
        store = store_from_url(args.store)
    except MailtetherError as error:
        out.write(f"mailtether: {error}\n")
        return EXIT_ERROR
    try:
        if args.command == "status":
            return _status(store, args, out)
        if args.command == "resume":
            done = StatusBoard(store, notifiers=[]).resume(args.source)
            said = "resume requested" if done else "not found or not blocked"
            result = {"source": args.source, "ok": done, "result": said}
            _say(out, args.json, result, f"{args.source}: {said}")
            return EXIT_OK if done else EXIT_NOT_FOUND
        guard = DuplicateGuard(store, name=args.guard)
        act = guard.release if args.command == "release" else guard.drop
        done = act(args.key, by=args.by)
        verb = "released" if args.command == "release" else "dropped"
        said = verb if done else "not found, or not in a state that allows it"
        _say(out, args.json, {"key": args.key, "ok": done, "result": said}, f"{args.key}: {said}")
        return EXIT_OK if done else EXIT_NOT_FOUND
    except MailtetherError as error:
        out.write(f"mailtether: {error}\n")
        return EXIT_ERROR
    finally:
        store.close()


def _say(out: TextIO, as_json: bool, data: dict[str, Any], text: str) -> None:
    out.write((json.dumps(data) if as_json else text) + "\n")


def _check(args: argparse.Namespace, out: TextIO) -> int:
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    try:
        report = check(args.url, timeout=args.timeout, ssl_context=context)
    except MailtetherError as error:  # a URL that cannot be read
        out.write(f"mailtether: {error}\n")
        return EXIT_USAGE
    if args.json:
        json.dump(report.to_dict(), out, indent=2)
        out.write("\n")
        return report.exit_code
    out.write(f"checking {report.target}\n")
    for step in report.steps:
        mark = "ok  " if step.ok else "FAIL"
        out.write(f"  {mark} {step.name:<13}{step.seconds * 1000:8.1f} ms  {step.detail}\n")
    out.write(f"{report.sentence}\n")
    return report.exit_code


def _status(store: Any, args: argparse.Namespace, out: TextIO) -> int:
    sources = StatusBoard(store, notifiers=[]).snapshot()
    guard = DuplicateGuard(store, name=args.guard)
    held = guard.held()
    if args.json:
        json.dump(
            {
                "sources": [status.to_dict() for status in sources],
                "messages": guard.counts(),
                "held": [
                    {
                        "key": entry.key.id,
                        "message": str(entry.key),
                        "attempts": entry.attempts,
                        "since": entry.since,
                        "reason": entry.reason,
                    }
                    for entry in held
                ],
            },
            out,
            indent=2,
        )
        out.write("\n")
        return EXIT_OK
    if sources:
        _table(
            out,
            ["SOURCE", "STATE", "SINCE", "ATTEMPTS", "NEXT", "OK/FAILED", "REASON"],
            [_status_row(status) for status in sources],
        )
    else:
        out.write("no sources have reported to this store yet\n")
    counts = guard.counts()
    out.write("\nmessages: " + ", ".join(f"{state} {n}" for state, n in counts.items()) + "\n")
    if held:
        out.write("\nheld messages (release or drop them):\n")
        _table(out, ["KEY", "MESSAGE", "ATTEMPTS", "SINCE", "REASON"], [_held_row(e) for e in held])
    return EXIT_OK


def run() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
