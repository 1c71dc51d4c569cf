"""``mailtether check``: test a mailbox connection step by step and say what is wrong."""

from __future__ import annotations

import argparse
import ssl
from typing import TextIO

from mailtether._check import check
from mailtether._errors import MailtetherError
from mailtether.cli import _flags
from mailtether.cli._outcome import USAGE, write_json

__all__ = ["add_check_arguments", "run_check"]


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mailtether check``."""
    parser.add_argument(
        "url",
        help="imaps://user:password@host/folder (or imap://, pop3s://, pop3://), or "
        "smtps://user:password@host/?from=me@example.com&to=you@example.com (or smtp://)",
    )
    parser.add_argument("--timeout", type=_flags.seconds(), default=10.0, help="seconds per step")
    parser.add_argument("--cafile", default=None, help="trust this CA (PEM) for the server")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument(
        "--token-command",
        default=None,
        help="log in with OAuth2: a command that prints an access token (e.g. 'pizauth show "
        "work'); the URL then needs no password",
    )


def run_check(args: argparse.Namespace, out: TextIO) -> int:
    """Check the URL, print every step and the sentence; return the report's exit code."""
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    try:
        tokens = _flags.token_command(args.token_command)
        report = check(args.url, timeout=args.timeout, ssl_context=context, tokens=tokens)
    except MailtetherError as error:  # a URL that cannot be read
        out.write(f"mailtether: {error}\n")
        return USAGE
    if args.json:
        write_json(out, report.to_dict(), indent=2)
        return report.exit_code
    out.write(f"checking {report.target}\n")
    for step in report.steps:
        mark = "ok  " if step.ok else "FAIL"
        out.write(f"  {mark} {step.name:<13}{step.seconds * 1000:8.1f} ms  {step.detail}\n")
    out.write(f"{report.sentence}\n")
    return report.exit_code
