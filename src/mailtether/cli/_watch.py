"""``mailtether watch``: run an ImapListener from the command line.

Each setting is a flag, a ``MAILTETHER_*`` variable, or a key under ``[watch]`` in the
settings file, in that order (see :mod:`._config_file`); the status board takes
``[status]`` and the notifiers ``[[notify.*]]`` of the same file.
"""

from __future__ import annotations

import argparse
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TextIO

from mailtether._config import strategy_from_config
from mailtether._durations import check_count, check_seconds
from mailtether._errors import ConfigError
from mailtether._fleet import import_handler
from mailtether._guard import DuplicateGuard
from mailtether._keepalive import Keepalive
from mailtether._outbox import Outbox
from mailtether._settings import ImapSettings, with_tokens
from mailtether._status import LoggingNotifier, StatusBoard, StatusChange
from mailtether.cli import _flags
from mailtether.cli._config_file import (
    WATCH_CHOICES,
    WATCH_OPTIONS,
    ConfigFile,
    add_config_argument,
    flush,
)
from mailtether.imap._listener import ImapListener
from mailtether.smtp._relay_url import relay_from_url
from mailtether.stores._url import store_from_url

__all__ = ["add_watch_arguments", "run_watch"]

_WHOLE: Final = re.compile(r"\s*[+-]?\d+\s*")
# The duration settings, with their flags' help; each flag and each value from the settings
# file is checked alike (_flags.seconds, _checked).
_DURATIONS: Final = {
    "poll_interval": "e.g. 60s",
    "noop_interval": "e.g. 25m (0 disables)",
    "idle_renewal": "e.g. 9m",
    "response_timeout": "e.g. 30s",
    "lease_ttl": "e.g. 60s",
}
_ZERO_DISABLES: Final = frozenset({"noop_interval"})


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mailtether watch`` (each may also come from ``--config``)."""
    parser.add_argument("url", nargs="?", help="imaps://user:password@host/folder")
    parser.add_argument("--handler", help="module:function called with each Delivery")
    parser.add_argument("--store", help="store URL (default sqlite:mailtether-state.db)")
    parser.add_argument("--reconnect", help='strategy, e.g. "exponential 1s max_delay=5m"')
    parser.add_argument("--after", help="seen | delete | move:<folder> | leave")
    parser.add_argument(
        "--on-poison",
        dest="on_poison",
        help="leave | flag | move:<folder> | forward:<address> (needs --relay)",
    )
    parser.add_argument(
        "--relay",
        help="smtps://user:password@host/ (or smtp://, STARTTLS): an outbox in the store sends "
        "through it, e.g. held mail forwarded for review",
    )
    parser.add_argument("--mode", choices=("auto", "poll"))
    parser.add_argument(
        "--deliver", help="message | body | attachments, or a combination: body+attachments"
    )
    for name, example in _DURATIONS.items():
        flag = "--" + name.replace("_", "-")
        seconds = _flags.seconds(allow_zero=name in _ZERO_DISABLES)
        parser.add_argument(flag, dest=name, type=seconds, help=example)
    parser.add_argument("--max-failures", dest="max_failures", type=_flags.count(), help="e.g. 3")
    parser.add_argument("--repeat", choices=("block", "skip", "quarantine"))
    add_config_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no live status line")
    parser.add_argument(
        "--token-command",
        dest="token_command",
        help="log in with OAuth2: a command that prints an access token, run before every "
        "login (e.g. 'pizauth show work'); the URL then needs no password",
    )


def _checked(section: dict[str, Any], where: Callable[[str], str]) -> dict[str, Any]:
    """Settings (the file's, or the environment's as text) checked as the flags check theirs.

    *where* names a setting for the message (``poll_interval in watch.toml``,
    ``MAILTETHER_POLL_INTERVAL``).
    """
    checked = dict(section)
    for name in _DURATIONS:
        if name in checked:
            checked[name] = check_seconds(
                checked[name], where(name), allow_zero=name in _ZERO_DISABLES
            )
    if "max_failures" in checked:
        value = checked["max_failures"]
        if isinstance(value, str) and _WHOLE.fullmatch(value):
            value = int(value)
        checked["max_failures"] = check_count(value, where("max_failures"))
    for name, choices in WATCH_CHOICES.items():
        if name in checked and checked[name] not in choices:
            raise ConfigError(
                f"{where(name)} must be one of {', '.join(choices)}, not {checked[name]!r}"
            )
    return checked


def _settings(args: argparse.Namespace, config: ConfigFile) -> dict[str, Any]:
    """The settings: the flags, over the environment, over the file.

    In the file, store and relay at its top, and every setting under ``[watch]``.
    """
    merged: dict[str, Any] = {
        name: config.data[name]
        for name in ("store", "relay")
        if "watch" in config.data and name in config.data
    }
    merged.update(_checked(config.watch_section(), lambda name: f"{name} in {config.path}"))
    variables = {}
    for name in WATCH_OPTIONS:
        found = config.env(name)
        if found is not None:
            variables[name] = found
    merged.update(
        _checked(
            {name: value for name, (value, _) in variables.items()},
            lambda name: variables[name][1],
        )
    )
    for name in WATCH_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            merged[name] = value
    return merged


def run_watch(
    args: argparse.Namespace,
    out: TextIO,
    stop: threading.Event | None = None,
    *,
    config: ConfigFile | None = None,
) -> int:
    """Run the listener until Ctrl-C (or *stop*); return the exit code.

    *config*: the settings file and environment (default: ``--config``'s, the process's).
    """
    config = config or ConfigFile.load(args.config)
    options = _settings(args, config)
    if not options.get("url") or not options.get("handler"):
        raise ConfigError(
            "watch needs a URL and --handler module:function (or url and handler under "
            f"[watch] in {config.path or 'mailtether.toml'}, or MAILTETHER_URL and "
            "MAILTETHER_HANDLER)"
        )
    handler = import_handler(str(options["handler"]))
    notifiers = config.notifiers()
    config.board_options()  # checked before the store is opened (or made)
    store = store_from_url(str(options.get("store", "sqlite:mailtether-state.db")))
    seconds = {name: options[name] for name in _DURATIONS if name in options}  # checked
    keepalive = Keepalive(
        **{
            k: seconds[k]
            for k in ("noop_interval", "idle_renewal", "response_timeout")
            if k in seconds
        }
    )
    latest: list[str] = []

    def remember(change: StatusChange) -> None:
        latest.append(change.sentence())

    board = config.board(store, [LoggingNotifier(), remember, *notifiers])
    guard = DuplicateGuard(
        store,
        max_failures=options.get("max_failures", 3),
        repeat=options.get("repeat", "block"),
    )
    settings = with_tokens(
        ImapSettings.from_url(str(options["url"])),
        _flags.token_command(options.get("token_command")),
    )
    outbox = None
    if options.get("relay"):
        outbox = Outbox(store, relay_from_url(str(options["relay"])), status=board)
    elif str(options.get("on_poison", "")).startswith("forward:"):
        raise ConfigError("--on-poison forward:<address> needs --relay URL to send through")
    listener = ImapListener(
        settings,
        handler,
        store=store,
        guard=guard,
        status=board,
        keepalive=keepalive,
        reconnect=strategy_from_config(options["reconnect"]) if "reconnect" in options else None,
        after=str(options.get("after", "seen")),
        on_poison=str(options.get("on_poison", "leave")),
        mode=options.get("mode", "auto"),
        deliver=options.get("deliver", "message"),
        poll_interval=seconds.get("poll_interval", 60.0),
        lease_ttl=seconds.get("lease_ttl", 60.0),
        outbox=outbox,
    )
    stop = stop or threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if outbox is not None:
            outbox.run_in_thread()
        listener.run_in_thread()
        while True:
            if not args.quiet:
                out.write(f"\r{_line(board, listener.name)}".ljust(100))
                out.flush()
            if stop.wait(0.5):
                break
    finally:
        started = time.monotonic()
        listener.stop()
        if outbox is not None:
            outbox.stop()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
        out.write(f"\n{_line(board, listener.name)}\n")
        out.write(f"stopped in {time.monotonic() - started:.1f} s\n")
        store.close()
        flush(notifiers)
    return 0


def _line(board: StatusBoard, name: str) -> str:
    status = board.get(name)
    if status is None:
        return f"{name}: starting"
    return (
        f"{name}: {status.state.value.upper()}  processed {status.processed}  "
        f"failed {status.failed}  {status.reason[:60]}"
    ).rstrip()
