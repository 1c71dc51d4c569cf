"""``Fleet``: many mail sources, defined in code or in a TOML file, run by any number of workers.

A fleet is a list of :class:`FleetSource` (an IMAP folder or a POP3 mailbox, its handler and
its settings). :class:`~mailtether.FleetWorker` runs a share of them; workers in any number
of processes on any number of hosts share the work through their store (Redis or
PostgreSQL across hosts; SQLite for processes on one host).

The fleet file::

    [fleet]
    store = "redis://127.0.0.1:6379/0"   # optional: mailtether run --store overrides it
    heartbeat = "5s"                      # how often each worker says it is alive
    lease_ttl = "30s"                     # a dead worker's sources wait this long at most

    [[source]]
    name = "support"
    url = "imaps://support%40example.com:app-password@imap.example.com/INBOX"
    handler = "tickets:handle"            # module:function, importable by every worker
    after = "move:Done"                   # and any other listener setting

    [[source]]
    name = "invoices"
    url = "pop3s://invoices%40example.com:app-password@pop.example.com/"
    handler = "invoices:handle"
    delete = true
"""

from __future__ import annotations

import importlib
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from mailtether._config import strategy_from_config
from mailtether._delivery import Delivery
from mailtether._durations import Duration, check_count, check_seconds
from mailtether._errors import ConfigError
from mailtether._guard import DuplicateGuard
from mailtether._keepalive import Keepalive
from mailtether._outbox import Outbox
from mailtether._runner import SourceRunner
from mailtether._settings import ImapSettings
from mailtether._status import StatusBoard
from mailtether._url_errors import redact
from mailtether.imap._listener import ImapListener
from mailtether.pop3._poller import Pop3Poller
from mailtether.stores._memory import MemoryStore
from mailtether.stores._protocol import Store

__all__ = ["Fleet", "FleetSource", "import_handler"]

Handler = Callable[[Delivery], object]

# The settings a source may carry, by kind, besides name, url and handler.
_COMMON: Final = frozenset(
    {
        "deliver",
        "deliver_empty",
        "poll_interval",
        "commit_window",
        "max_message_bytes",
        "reconnect",
        "max_failures",
        "repeat",
        "on_poison",
        "heartbeat",
    }
)
_OPTIONS: Final = {
    "imap": _COMMON
    | {"after", "mode", "noop_interval", "idle_renewal", "response_timeout", "lease_ttl"},
    "pop3": _COMMON | {"delete", "timeout", "lease_ttl"},
}
_KEEPALIVE: Final = ("noop_interval", "idle_renewal", "response_timeout")


def import_handler(spec: str) -> Handler:
    """The function ``module:function`` names.

    Raises:
        ConfigError: *spec* is not ``module:function``, or it cannot be imported, or the
            name is not callable.
    """
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ConfigError(f"a handler must look like module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"cannot import handler module {module_name!r}: {error}") from None
    handler = getattr(module, function_name, None)
    if not callable(handler):
        raise ConfigError(f"{module_name!r} has no callable {function_name!r}")
    return handler  # type: ignore[no-any-return]


def _url_shown(url: str | ImapSettings) -> str:
    return redact(url) if isinstance(url, str) else repr(url)


@attrs.frozen
class FleetSource:
    """One source of a fleet: where the mail is, who handles it, and how.

    Args:
        name: Unique in the fleet: the status board's source name and the lease's.
        url: ``imaps://…``/``imap://…`` (a folder) or ``pop3s://…``/``pop3://…`` (a
            mailbox), as :meth:`ImapSettings.from_url` and ``from_pop3_url`` read them;
            or :class:`~mailtether.ImapSettings` for an IMAP folder.
        handler: The handler, or ``"module:function"`` (imported when the fleet is made).
        options: Listener (or poller) settings: ``after``, ``on_poison``, ``deliver``,
            ``mode``, ``poll_interval``, ``commit_window``, ``max_message_bytes``,
            ``reconnect`` (a strategy or its text, ``"exponential 1s max_delay=5m"``),
            ``noop_interval``/``idle_renewal``/``response_timeout`` (IMAP), ``delete`` and
            ``timeout`` (POP3), ``max_failures``/``repeat`` (its guard), ``heartbeat``.
    """

    name: str
    url: str | ImapSettings = attrs.field(repr=_url_shown)
    handler: Handler | str
    options: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def kind(self) -> str:
        """``"imap"`` or ``"pop3"`` (from the URL's scheme)."""
        if isinstance(self.url, str) and self.url.lower().startswith(("pop3:", "pop3s:")):
            return "pop3"
        return "imap"

    def build(
        self,
        *,
        store: Store,
        status: StatusBoard,
        lease_ttl: float,
        outbox: Outbox | None = None,
        heartbeat: float | None = 10.0,
    ) -> SourceRunner:
        """The listener (or poller) of this source, on *store*, not started.

        Its mailbox lease lasts *lease_ttl*, and its status heartbeat comes every
        *heartbeat* seconds (``None``: none), unless the source's options say otherwise.

        Raises:
            ConfigError: a setting cannot be used (the message names the source).
        """
        options = dict(self.options)
        unknown = sorted(set(options) - _OPTIONS[self.kind])
        if unknown:
            raise ConfigError(
                f"source {self.name!r}: unknown setting(s) {', '.join(unknown)}; a "
                f"{self.kind} source takes {', '.join(sorted(_OPTIONS[self.kind]))}"
            )
        handler = import_handler(self.handler) if isinstance(self.handler, str) else self.handler
        guard = DuplicateGuard(
            store,
            max_failures=options.pop("max_failures", 3),
            repeat=options.pop("repeat", "block"),
        )
        if "reconnect" in options and not hasattr(options["reconnect"], "delay"):
            options["reconnect"] = strategy_from_config(options["reconnect"])
        options.setdefault("lease_ttl", lease_ttl)
        options.setdefault("heartbeat", heartbeat)
        common: dict[str, Any] = {
            "store": store,
            "guard": guard,
            "status": status,
            "name": self.name,
            "outbox": outbox,
        }
        try:
            if self.kind == "pop3":
                assert isinstance(self.url, str)
                settings = ImapSettings.from_pop3_url(self.url)
                return Pop3Poller(settings, handler, **common, **options)
            keepalive = {k: options.pop(k) for k in _KEEPALIVE if k in options}
            if keepalive:
                options["keepalive"] = Keepalive(**keepalive)
            folder = self.url if isinstance(self.url, ImapSettings) else None
            folder = folder or ImapSettings.from_url(str(self.url))
            return ImapListener(folder, handler, **common, **options)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"source {self.name!r}: {error}") from None


class Fleet:
    """The sources a fleet runs, and how its workers coordinate.

    Every source is checked when the fleet is made (its URL, handler and settings), so a
    mistake is found before any worker starts.

    Args:
        sources: The sources; names must be unique.
        heartbeat: Seconds between a worker's rounds: it says it is alive, renews its
            leases, and takes or hands over sources to keep the shares even.
        lease_ttl: A source's lease: a dead worker's sources are taken over within this
            and one *heartbeat*. At least three heartbeats.
        store_url: The store the fleet file names (``mailtether run`` uses it unless
            ``--store`` is given).
        concurrency: How many of a worker's sources may hand mail over at once (the others'
            new mail waits for a free slot); their connections wait in IDLE all the same.

    Example:
        >>> from mailtether import Fleet, FleetSource
        >>> fleet = Fleet(
        ...     [
        ...         FleetSource("support", "imaps://support:pw@imap.example.com/", print),
        ...         FleetSource("sales", "imaps://sales:pw@imap.example.com/", print),
        ...     ],
        ...     lease_ttl="30s",
        ... )
        >>> [source.name for source in fleet.sources]
        ['support', 'sales']
    """

    def __init__(
        self,
        sources: Iterable[FleetSource],
        *,
        heartbeat: Duration | str = 5.0,
        lease_ttl: Duration | str = 30.0,
        store_url: str | None = None,
        concurrency: int = 16,
    ) -> None:
        self.sources: tuple[FleetSource, ...] = tuple(sources)
        """The sources, in the order given."""
        self.heartbeat = check_seconds(heartbeat, "Fleet.heartbeat")
        """Seconds between a worker's rounds."""
        self.lease_ttl = check_seconds(lease_ttl, "Fleet.lease_ttl")
        """The sources' lease TTL."""
        if self.lease_ttl < 3 * self.heartbeat:
            raise ConfigError(
                f"Fleet.lease_ttl ({self.lease_ttl:g} s) must be at least three heartbeats "
                f"({3 * self.heartbeat:g} s): a lease is renewed once a heartbeat"
            )
        self.store_url = store_url
        """The store the fleet file names, if any."""
        self.concurrency = check_count(concurrency, "Fleet.concurrency", minimum=1)
        """How many of a worker's sources may hand mail over at once."""
        names = [source.name for source in self.sources]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ConfigError(f"fleet source names must be unique; repeated: {repeated}")
        check_count(len(self.sources), "the number of fleet sources", minimum=1)
        scratch = MemoryStore()
        board = StatusBoard(scratch, notifiers=[])
        for source in self.sources:  # every mistake found now, not on some worker later
            source.build(store=scratch, status=board, lease_ttl=self.lease_ttl)

    @classmethod
    def from_toml(cls, path: str | Path) -> Fleet:
        """Read a fleet file (see this module's docstring).

        Raises:
            ConfigError: the file cannot be read, or a source or setting cannot be used.
        """
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"cannot read the fleet file {path}: {error}") from None
        settings = data.get("fleet", {})
        if not isinstance(settings, dict):
            raise ConfigError(f"{path}: [fleet] must be a table")
        unknown = sorted(set(settings) - {"store", "heartbeat", "lease_ttl", "concurrency"})
        if unknown:
            raise ConfigError(f"{path}: unknown [fleet] setting(s) {', '.join(unknown)}")
        entries = data.get("source", [])
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{path}: no [[source]] tables: a fleet needs at least one")
        sources = []
        for number, entry in enumerate(entries, 1):
            options = dict(entry)
            missing = [key for key in ("name", "url", "handler") if not options.get(key)]
            if missing:
                raise ConfigError(f"{path}: [[source]] number {number} lacks {', '.join(missing)}")
            name, url, handler = options.pop("name"), options.pop("url"), options.pop("handler")
            sources.append(FleetSource(str(name), str(url), str(handler), options))
        return cls(
            sources,
            heartbeat=settings.get("heartbeat", 5.0),
            lease_ttl=settings.get("lease_ttl", 30.0),
            store_url=settings.get("store"),
            concurrency=settings.get("concurrency", 16),
        )

    def __repr__(self) -> str:
        return f"Fleet({len(self.sources)} sources, lease_ttl={self.lease_ttl:g})"
