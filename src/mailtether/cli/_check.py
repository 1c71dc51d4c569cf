"""``mailtether check``: test a mailbox connection step by step and say what is wrong."""

from __future__ import annotations

import argparse
import ssl
from typing import TextIO

from mailtether._check import check
from mailtether._errors import ConfigError, MailtetherError
from mailtether.cli import _flags
from mailtether.cli._config_file import CONFIG_FILE, PREFIX, ConfigFile, add_config_argument
from mailtether.cli._outcome import USAGE, write_json

__all__ = ["add_check_arguments", "run_check"]


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mailtether check``."""
    parser.add_argument(
        "url",
        nargs="?",
        help="imaps://user:password@host/folder (or imap://, pop3s://, pop3://), or "
        "smtps://user:password@host/?from=me@example.com&to=you@example.com (or smtp://); "
        "default: what watch connects to ($MAILTETHER_URL, url under [watch])",
    )
    parser.add_argument("--timeout", type=_flags.seconds(), default=10.0, help="seconds per step")
    parser.add_argument("--cafile", default=None, help="trust this CA (PEM) for the server")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_config_argument(parser)
    parser.add_argument(
        "--token-command",
        default=None,
        help="log in with OAuth2: a command that prints an access token (e.g. 'pizauth show "
        "work'); the URL then needs no password",
    )


def run_check(args: argparse.Namespace, out: TextIO, config: ConfigFile | None = None) -> int:
    """Check the URL, print every step and the sentence; return the report's exit code.

    Without a URL, the one ``watch`` would connect to (its token command too).
    """
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    try:
        config = config or ConfigFile.load(args.config)
        url, command = args.url, args.token_command
        if not url:
            url, command = _watched(config, command)
        tokens = _flags.token_command(command)
        report = check(url, timeout=args.timeout, ssl_context=context, tokens=tokens)
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


def _watched(config: ConfigFile, command: str | None) -> tuple[str, str | None]:
    """The URL (and token command) ``watch`` would use: the environment's, then the file's."""
    section = config.watch_section()
    values = []
    for name, flag in (("url", None), ("token_command", command)):
        found = config.env(name)
        values.append(flag or (found[0] if found else section.get(name)))
    url, token_command = values
    if not url or not isinstance(url, str):
        raise ConfigError(
            f"check needs a URL: give one, set {PREFIX}URL, or put url under [watch] in "
            f"{config.path or CONFIG_FILE}"
        )
    return url, token_command if isinstance(token_command, str) else None
