"""Every number a constructor takes is checked when it is given, and the error names it.

One table: each row is a setting (how to give it a value, the name the error must show,
whether 0 is a meaning of it); every row is tried with every bad value, and with the good
spellings of fifteen seconds. A setting that took NaN would fail later, inside a thread, or
wait forever.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any, NamedTuple

import pytest

from mailtether import (
    ConfigError,
    DuplicateGuard,
    ImapListener,
    ImapSettings,
    Keepalive,
    Lease,
    MemoryStore,
    Pop3Poller,
    ProcessLock,
    RedisStore,
    SQLiteStore,
    StatusBoard,
    acquire_lease,
)
from mailtether.imap._connection import ImapConnection


class Setting(NamedTuple):
    """One number of one constructor."""

    field: str
    """What the error must name."""
    give: Callable[[Any], Any]
    """Make the thing with this value; return the value as the thing keeps it (``None``
    where the thing does not show it)."""
    zero_ok: bool = False
    """Whether 0 means something (disabled, try once) rather than nothing."""
    none_ok: bool = False
    """Whether ``None`` means the default."""


def _settings(**kwargs: Any) -> ImapSettings:
    return ImapSettings("mail.example.com", "support", "secret", **kwargs)


def _from_url(value: Any) -> float:
    url = f"imaps://support:secret@mail.example.com/?connect_timeout={value}"
    return ImapSettings.from_url(url).connect_timeout


def _lease(**kwargs: Any) -> Lease:
    lease = acquire_lease(MemoryStore(), "poll", **kwargs)
    assert lease is not None
    return lease


def _lock(**kwargs: Any) -> ProcessLock:
    return ProcessLock(MemoryStore(), "run", **kwargs)


def _listener(**kwargs: Any) -> ImapListener:
    return ImapListener("imaps://u:secret@mail.example.com/", print, store=MemoryStore(), **kwargs)


def _poller(**kwargs: Any) -> Pop3Poller:
    return Pop3Poller("pop3s://u:secret@mail.example.com/", print, store=MemoryStore(), **kwargs)


def _board(**kwargs: Any) -> StatusBoard:
    return StatusBoard(MemoryStore(), **kwargs)


def _nothing_kept(thing: object) -> None:
    assert thing is not None


DURATIONS = [
    Setting("ImapSettings.connect_timeout", lambda v: _settings(connect_timeout=v).connect_timeout),
    Setting("ImapSettings.connect_timeout", _from_url),
    Setting("Keepalive.noop_interval", lambda v: Keepalive(noop_interval=v).noop_interval, True),
    Setting("Keepalive.idle_renewal", lambda v: Keepalive(idle_renewal=v).idle_renewal),
    Setting("Keepalive.response_timeout", lambda v: Keepalive(response_timeout=v).response_timeout),
    Setting("ProcessLock.ttl", lambda v: _lock(ttl=v).ttl),
    Setting("ProcessLock.heartbeat", lambda v: _lock(ttl=60, heartbeat=v).heartbeat, none_ok=True),
    Setting("ProcessLock.timeout", lambda v: _lock(ttl=60, timeout=v).timeout, zero_ok=True),
    Setting("ttl", lambda v: _lease(ttl=v).ttl),
    Setting("timeout", lambda v: _nothing_kept(_lease(ttl=60, timeout=v)), zero_ok=True),
    Setting("poll", lambda v: _nothing_kept(_lease(ttl=60, poll=v)), none_ok=True),
    Setting(
        "DuplicateGuard.claim_ttl", lambda v: DuplicateGuard(MemoryStore(), claim_ttl=v).claim_ttl
    ),
    # refused before the file is made; the test runs in an empty directory and checks that
    Setting("SQLiteStore.timeout", lambda v: SQLiteStore("x.db", timeout=v).close(), zero_ok=True),
    Setting(
        "RedisStore.socket_timeout", lambda v: RedisStore("redis://127.0.0.1:1/0", socket_timeout=v)
    ),
    Setting("ImapListener.poll_interval", lambda v: _listener(poll_interval=v).poll_interval),
    Setting("ImapListener.lease_ttl", lambda v: _listener(lease_ttl=v).lease_ttl, none_ok=True),
    Setting("ImapListener.commit_window", lambda v: _listener(commit_window=v).commit_window, True),
    Setting("ImapListener.heartbeat", lambda v: _listener(heartbeat=v).heartbeat, none_ok=True),
    Setting("Pop3Poller.poll_interval", lambda v: _poller(poll_interval=v).poll_interval),
    Setting("Pop3Poller.lease_ttl", lambda v: _poller(lease_ttl=v).lease_ttl, none_ok=True),
    Setting("Pop3Poller.timeout", lambda v: _poller(timeout=v).timeout),
    Setting("StatusBoard.offline_after", lambda v: _board(offline_after=v).offline_after, True),
    Setting("StatusBoard.quiet_period", lambda v: _board(quiet_period=v).quiet_period, True),
]

BAD = [math.nan, math.inf, -math.inf, -5, True, "abc", "nan", None, [15]]
FIFTEEN_SECONDS = [15, 15.0, "15s", "15", timedelta(seconds=15)]


def _named(setting: Setting) -> str:
    return setting.field


@pytest.mark.parametrize("bad", BAD, ids=repr)
@pytest.mark.parametrize("setting", DURATIONS, ids=_named)
def test_bad_durations_are_refused_naming_the_field(setting, bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if bad is None and setting.none_ok:
        setting.give(None)  # the default
        return
    with pytest.raises(ConfigError, match=rf"(^|: ){re.escape(setting.field)} must be") as info:
        setting.give(bad)
    assert isinstance(info.value, ValueError)
    assert not list(tmp_path.iterdir()), "nothing is created for a refused setting"


@pytest.mark.parametrize("setting", DURATIONS, ids=_named)
def test_zero_is_refused_unless_it_means_something(setting, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if setting.zero_ok:
        assert setting.give(0) in (0, None)
        return
    with pytest.raises(ConfigError, match=re.escape(setting.field)):
        setting.give(0)


@pytest.mark.parametrize("good", FIFTEEN_SECONDS, ids=repr)
@pytest.mark.parametrize(
    "setting", [s for s in DURATIONS if not s.field.startswith("RedisStore")], ids=_named
)
def test_good_durations_are_taken_as_seconds(setting, good, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if setting.give is _from_url and isinstance(good, timedelta):
        pytest.skip("a URL holds text")
    kept = setting.give(good)
    if kept is not None:
        assert kept == 15.0
        assert type(kept) is float


# -- counts and the rules between settings ---------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, 3.0, math.nan, "3", None], ids=repr)
def test_guard_max_failures_must_be_a_whole_number(bad):
    with pytest.raises(ConfigError, match=r"^DuplicateGuard\.max_failures must be a whole number"):
        DuplicateGuard(MemoryStore(), max_failures=bad)
    assert DuplicateGuard(MemoryStore(), max_failures=1).max_failures == 1


@pytest.mark.parametrize("bad", [-1, 65536, True, 993.0, "993", math.nan], ids=repr)
def test_imap_port_must_be_a_port(bad):
    with pytest.raises(ConfigError, match=r"^ImapSettings\.port must be a whole number"):
        _settings(port=bad)
    assert _settings(port=0).port == 993
    assert _settings(port=1993).port == 1993


def test_a_heartbeat_must_come_before_the_lease_expires():
    with pytest.raises(ConfigError, match=r"ProcessLock\.heartbeat must be shorter than ttl"):
        ProcessLock(MemoryStore(), "run", ttl="30s", heartbeat="30s")


def test_connect_timeout_is_at_most_a_day():
    with pytest.raises(ConfigError, match="at most 86400"):
        _settings(connect_timeout="2d")


def test_idle_renewal_stays_under_29_minutes():
    with pytest.raises(ConfigError, match="under 29 minutes"):
        Keepalive(idle_renewal="29m")


# -- a timeout given to a running connection -------------------------------------------------


def test_wait_refuses_a_timeout_it_could_never_reach(mailbox):
    settings = ImapSettings(
        "127.0.0.1",
        mailbox.user,
        mailbox.password,
        port=mailbox.server.imap_port,
        security="plain",
        connect_timeout="5s",
    )
    stop = threading.Event()
    stop.set()  # a wait that got through its check would return at once, not hang
    with ImapConnection.open(settings) as connection:
        for bad in (math.nan, math.inf, -1, True, "abc"):
            with pytest.raises(ConfigError, match=r"^timeout must be"):
                connection.wait(bad, stop)
        assert connection.wait(0) == []
