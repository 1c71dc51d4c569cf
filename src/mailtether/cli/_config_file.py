"""Where a command's settings come from: its flags, ``MAILTETHER_*`` variables, a TOML file.

A flag wins over the environment, the environment over the file, the file over the
defaults. The file is ``--config FILE``, else the one ``$MAILTETHER_CONFIG`` names, else
``mailtether.toml`` in the working directory if there is one (none is fine). Its layout::

    store = "sqlite:///var/lib/helpdesk/state.db"  # every command that reads a store
    relay = "smtps://…"                            # watch and run: the outbox's relay

    [watch]              # every option of `mailtether watch` (store and relay may differ)
    [status]             # offline_after, quiet_period: the status board of watch and run
    [[notify.smtp]]      # a SmtpNotifier each (watch and run)
    [[notify.webhook]]   # a WebhookNotifier each (watch and run)

A file without a ``[watch]`` table may hold the watch options at its top (the layout of
``watch --config`` before the other tables came). Unknown keys are refused, naming the file
and the key, so a typo does not pass for a default. Secrets: a notifier's
``password_env``/``url_env`` name the variable that holds the secret instead; whatever
secret is read is remembered, so no output shows it.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from mailtether._durations import HOUR, check_count, check_seconds
from mailtether._errors import ConfigError
from mailtether._redaction import remember_secret
from mailtether._smtp_notifier import SmtpNotifier
from mailtether._state_filter import StateFilter
from mailtether._status import StatusBoard, StatusChange
from mailtether.stores._protocol import Store

__all__ = [
    "CONFIG_FILE",
    "PREFIX",
    "ConfigFile",
    "add_config_argument",
    "add_store_arguments",
    "flush",
]

CONFIG_FILE: Final = "mailtether.toml"
"""The file read when no other is named, if it is in the working directory."""
PREFIX: Final = "MAILTETHER_"
"""Of the environment variables: ``MAILTETHER_STORE``, ``MAILTETHER_POLL_INTERVAL``, …"""

WATCH_OPTIONS: Final = (
    "url",
    "handler",
    "store",
    "relay",
    "token_command",
    "reconnect",
    "after",
    "on_poison",
    "mode",
    "deliver",
    "repeat",
    "max_failures",
    "poll_interval",
    "noop_interval",
    "idle_renewal",
    "response_timeout",
    "lease_ttl",
)
"""The settings of ``mailtether watch``: a flag, a ``[watch]`` key, a variable each."""
WATCH_CHOICES: Final = {
    "mode": ("auto", "poll"),
    "deliver": ("message", "attachments", "body"),
    "repeat": ("block", "skip", "quarantine"),
}
BOARD_OPTIONS: Final = ("offline_after", "quiet_period")
"""The ``[status]`` settings (and ``MAILTETHER_OFFLINE_AFTER``, ``MAILTETHER_QUIET_PERIOD``)."""

_TOP: Final = frozenset({"store", "relay", "watch", "status", "notify"})
_SMTP: Final = frozenset(
    {
        "host",
        "port",
        "security",
        "username",
        "password",
        "password_env",
        "sender",
        "recipients",
        "only",
        "timeout",
    }
)
_WEBHOOK: Final = frozenset({"url", "url_env", "timeout", "only"})
_SECURITY: Final = ("starttls", "tls", "plain")

Notify = Callable[[StatusChange], object]


@attrs.frozen
class ConfigFile:
    """The settings file a command reads (maybe none), with the environment beside it.

    Attributes:
        path: The file as it was named (``mailtether.toml``, ``--config``'s value), or
            ``None`` when there is none: errors name it so.
        data: The file's tables.
        environ: The environment the ``MAILTETHER_*`` variables are read from.
    """

    path: str | None
    data: Mapping[str, Any]
    environ: Mapping[str, str]

    @classmethod
    def load(
        cls,
        given: str | None,
        environ: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ConfigFile:
        """Read *given*, else ``$MAILTETHER_CONFIG``, else ``mailtether.toml`` if present.

        Raises:
            ConfigError: the file cannot be read or parsed, or holds an unknown key.
        """
        environ = os.environ if environ is None else environ
        path = given or environ.get(f"{PREFIX}CONFIG") or None
        if path is None:
            default = (cwd or Path.cwd()) / CONFIG_FILE
            if not default.is_file():
                return cls(None, {}, environ)
            path, full = CONFIG_FILE, default
        else:
            full = Path(path) if cwd is None else cwd / path
        try:
            data = tomllib.loads(full.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"cannot read {path}: {error}") from None
        loaded = cls(path, data, environ)
        loaded._check_keys()
        return loaded

    # -- the file's parts ------------------------------------------------------------------------

    def where(self, key: str) -> str:
        """How a message names *key* of the file: ``status.quiet_period in mailtether.toml``."""
        return f"{key} in {self.path}"

    def table(self, name: str) -> dict[str, Any]:
        """The file's ``[name]`` table (``{}`` if it has none)."""
        found = self.data.get(name, {})
        if not isinstance(found, dict):
            raise ConfigError(f"{self.where(name)} must be a table ([{name}])")
        return dict(found)

    def watch_section(self) -> dict[str, Any]:
        """The ``[watch]`` table, or the file's top when it has none (the older layout)."""
        if "watch" in self.data:
            return self.table("watch")
        return {key: value for key, value in self.data.items() if not isinstance(value, dict)}

    def _check_keys(self) -> None:
        top = _TOP if "watch" in self.data else _TOP | set(WATCH_OPTIONS)
        self._known(self.data, top, "", "store, relay, [watch], [status], [notify]")
        if "watch" in self.data:
            self._known(self.table("watch"), WATCH_OPTIONS, "watch.", "")
        self._known(self.table("status"), BOARD_OPTIONS, "status.", "")
        self._known(self.table("notify"), {"smtp", "webhook"}, "notify.", "")

    def _known(self, table: Mapping[str, Any], known: Iterable[str], prefix: str, say: str) -> None:
        known = set(known)
        for key in table:
            if key not in known:
                choices = say or ", ".join(sorted(known))
                raise ConfigError(
                    f"{self.where(prefix + key)} is not a setting mailtether knows: "
                    f"choose among {choices}"
                )

    # -- values from the environment -------------------------------------------------------------

    def env(self, name: str) -> tuple[str, str] | None:
        """``MAILTETHER_<NAME>`` if set (and not empty): (its value, the variable's name)."""
        variable = PREFIX + name.upper()
        value = self.environ.get(variable)
        return None if not value else (value, variable)

    def store_url(self, flag: str | None, command: str, *, also: str | None = None) -> str:
        """The store: the flag, ``MAILTETHER_STORE``, *also* (a fleet file's), the file's.

        The file's is ``store`` at its top, else under ``[watch]``.

        Raises:
            ConfigError: there is none; the message names every way to give one.
        """
        if flag:
            return flag
        found = self.env("store")
        if found is not None:
            return found[0]
        if also:
            return also
        for value in (self.data.get("store"), self.watch_section().get("store")):
            if value is not None:
                if not isinstance(value, str) or not value:
                    raise ConfigError(f"{self.where('store')} must be a store URL (a string)")
                return value
        fleet = ", or under [fleet] in the fleet file" if command == "run" else ""
        raise ConfigError(
            f"{command} needs a store: give --store URL, set {PREFIX}STORE, or put "
            f'store = "…" in {self.path or CONFIG_FILE}{fleet}'
        )

    def relay_url(self, flag: str | None) -> str | None:
        """The outbox's relay: the flag, ``MAILTETHER_RELAY``, ``relay`` at the file's top."""
        if flag:
            return flag
        found = self.env("relay")
        if found is not None:
            return found[0]
        value = self.data.get("relay")
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{self.where('relay')} must be an SMTP URL (a string)")
        return value or None

    def board(self, store: Store, notifiers: Iterable[Notify]) -> StatusBoard:
        """A status board on *store* telling *notifiers*, with :meth:`board_options`."""
        options = self.board_options()
        return StatusBoard(
            store,
            notifiers=notifiers,
            offline_after=options.get("offline_after", HOUR),
            quiet_period=options.get("quiet_period", HOUR),
        )

    def board_options(self) -> dict[str, float]:
        """``offline_after`` and ``quiet_period`` for a StatusBoard: the variables, the file."""
        options: dict[str, float] = {}
        status = self.table("status")
        for name in BOARD_OPTIONS:
            if name in status:
                options[name] = check_seconds(
                    status[name], self.where(f"status.{name}"), allow_zero=True
                )
            found = self.env(name)
            if found is not None:
                options[name] = check_seconds(found[0], found[1], allow_zero=True)
        return options

    # -- notifiers ---------------------------------------------------------------------------------

    def notifiers(self) -> list[Notify]:
        """A notifier for each ``[[notify.smtp]]`` and ``[[notify.webhook]]`` table.

        Raises:
            ConfigError: a table is wrong; the message names the file, the table and the key.
        """
        notify = self.table("notify")
        made: list[Notify] = []
        for number, entry in enumerate(self._tables(notify, "smtp"), 1):
            made.append(self._smtp(entry, f"notify.smtp[{number}]"))
        for number, entry in enumerate(self._tables(notify, "webhook"), 1):
            made.append(self._webhook(entry, f"notify.webhook[{number}]"))
        return made

    def _tables(self, notify: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
        found = notify.get(kind, [])
        if isinstance(found, dict):
            found = [found]
        if not isinstance(found, list) or not all(isinstance(each, dict) for each in found):
            raise ConfigError(f"{self.where('notify.' + kind)} must be tables ([[notify.{kind}]])")
        return found

    def _smtp(self, entry: dict[str, Any], name: str) -> Notify:
        self._known(entry, _SMTP, name + ".", "")
        get = _Reader(self, entry, name)
        password = get.secret("password")
        security = get.text("security", required=False) or "starttls"
        if security not in _SECURITY:
            raise ConfigError(
                f"{self.where(name + '.security')} must be one of {', '.join(_SECURITY)}, "
                f"not {security!r}"
            )
        port = entry.get("port")
        options: dict[str, Any] = {
            "port": None if port is None else check_count(port, self.where(name + ".port")),
            "security": security,
            "username": get.text("username", required=False) or None,
            "password": password,
            "timeout": get.seconds("timeout", 10.0),
            "only": get.states("only"),
        }
        host, sender, recipients = get.text("host"), get.text("sender"), get.texts("recipients")
        try:  # what the notifier itself refuses, said of this table
            return SmtpNotifier(host, sender, recipients or [], **options)
        except ConfigError as error:
            raise ConfigError(f"{self.where(name)}: {error}") from None

    def _webhook(self, entry: dict[str, Any], name: str) -> Notify:
        from mailtether._webhook_notifier import WebhookNotifier

        self._known(entry, _WEBHOOK, name + ".", "")
        get = _Reader(self, entry, name)
        url = get.secret("url")
        if url is None:
            raise ConfigError(f"{self.where(name)} needs url (or url_env)")
        timeout, only = get.seconds("timeout", 10.0), get.states("only")
        try:  # what the notifier itself refuses, said of this table
            return WebhookNotifier(url, timeout=timeout, only=only)
        except ConfigError as error:
            raise ConfigError(f"{self.where(name)}: {error}") from None


class _Reader:
    """The values of one table of the file, checked, each error naming the file and key."""

    def __init__(self, config: ConfigFile, entry: Mapping[str, Any], name: str) -> None:
        self._config = config
        self._entry = entry
        self._name = name

    def _where(self, key: str) -> str:
        return self._config.where(f"{self._name}.{key}")

    def text(self, key: str, *, required: bool = True) -> str:
        value = self._entry.get(key)
        if value is None and not required:
            return ""
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"{self._where(key)} is missing"
                if value is None
                else f"{self._where(key)} must be a string, not {value!r}"
            )
        return value

    def texts(self, key: str, *, required: bool = True) -> list[str] | None:
        value = self._entry.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, list) or not all(isinstance(each, str) for each in value):
            raise ConfigError(
                f"{self._where(key)} is missing"
                if value is None
                else f'{self._where(key)} must be a list of strings, e.g. ["a", "b"]'
            )
        return value

    def states(self, key: str) -> list[str] | None:
        """A notifier's ``only``: states a board tells of."""
        states = self.texts(key, required=False)
        StateFilter.of(states, self._where(key))
        return states

    def seconds(self, key: str, default: float) -> float:
        value = self._entry.get(key)
        return default if value is None else check_seconds(value, self._where(key))

    def secret(self, key: str) -> str | None:
        """*key* itself, or the variable *key*``_env`` names; remembered as a secret."""
        given = self._entry.get(key)
        variable = self._entry.get(f"{key}_env")
        if given is not None and variable is not None:
            raise ConfigError(f"{self._where(key)}: give {key} or {key}_env, not both")
        if variable is None:
            value = None if given is None else self.text(key)
        else:
            name = self.text(f"{key}_env")
            value = self._config.environ.get(name)
            if not value:
                raise ConfigError(
                    f"{self._where(key + '_env')} names {name}, which is not set in the environment"
                )
        remember_secret(value)
        return value


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """``--store`` and ``--config``, for a command that reads a store."""
    parser.add_argument(
        "--store",
        help=f"the store URL, e.g. sqlite:///state.db (default: ${PREFIX}STORE, or store in "
        f"the settings file)",
    )
    add_config_argument(parser)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config``: the settings file."""
    parser.add_argument(
        "--config",
        help=f"the settings file (TOML; default: ${PREFIX}CONFIG, or ./{CONFIG_FILE} if present)",
    )


def flush(notifiers: Iterable[Notify], timeout: float = 10.0) -> None:
    """Give each notifier that sends in the background up to *timeout* s to send its queue."""
    for notifier in notifiers:
        wait = getattr(notifier, "flush", None)
        if callable(wait):
            wait(timeout)
