"""OAuth2 that lasts, against Dovecot checking tokens at a local endpoint (2 s tokens).

A listener runs across many token expiries and forced reconnects and is never BLOCKED; the
rotated refresh token survives a restart; a revoked grant BLOCKS within one reconnect with a
sentence naming the account; the token endpoint down is RETRYING, and recovers. The same
for POP3, and `mailtether check --token-command`. Sizes: ``MAILTETHER_FULL=1`` runs 30 s.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import time
from collections import Counter

import pytest

from helpers import eventually, state_of
from mailtether import (
    Fixed,
    ImapListener,
    ImapSettings,
    Keepalive,
    MemoryStore,
    Pop3Poller,
    RefreshTokenFlow,
    SourceState,
    StatusBoard,
    StatusChange,
    TokenRevoked,
    TokenUnavailable,
)
from mailtether.testing import FaultProxy

pytestmark = pytest.mark.servers

RUN_SECONDS = 30.0 if os.environ.get("MAILTETHER_FULL") else 8.0


def mail(n: int) -> bytes:
    return f"Subject: m{n}\r\nMessage-ID: <m{n}@oauth2>\r\n\r\nbody {n}\r\n".encode()


def flow(oauth2, user: str, store, **options) -> RefreshTokenFlow:  # type: ignore[no-untyped-def]
    refresh = options.pop("refresh_token", None) or oauth2.issue_refresh_token(user)
    return RefreshTokenFlow(
        oauth2.token_url,
        oauth2.client_id,
        refresh,
        account=user,
        store=store,
        margin=0.5,
        timeout=5,
        **options,
    )


def listener_for(server, user, tokens, store, port, changes):  # type: ignore[no-untyped-def]
    settings = ImapSettings(
        "127.0.0.1", user, tokens, port=port, security="plain", auth="oauth2", connect_timeout=5
    )
    status = StatusBoard(store, notifiers=[changes.append], quiet_period=0)
    return ImapListener(
        settings,
        lambda delivery: handled.update([str(delivery.message["Subject"])]),
        store=store,
        status=status,
        reconnect=Fixed(0.2),
        keepalive=Keepalive(idle_renewal=1, response_timeout=5),
        lease_ttl=None,
        heartbeat=None,
    )


@contextlib.contextmanager
def online(oauth2, server, user, store, changes):  # type: ignore[no-untyped-def]
    """A listener of *user* through a FaultProxy, ONLINE; stopped on the way out."""
    with FaultProxy(("127.0.0.1", server.imap_port)) as proxy:
        listener = listener_for(server, user, flow(oauth2, user, store), store, proxy.port, changes)
        listener.run_in_thread()
        try:
            eventually(lambda: state_of(listener) is SourceState.ONLINE)
            yield listener, proxy
        finally:
            listener.stop()


handled: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _fresh(oauth2):  # type: ignore[no-untyped-def]
    handled.clear()
    yield
    oauth2.up()


def test_a_listener_lasts_across_token_expiries_and_reconnects(oauth2, oauth2_dovecot):
    user = oauth2_dovecot.add_user()
    store = MemoryStore()
    changes: list[StatusChange] = []
    refreshes_before = oauth2.refreshes
    with FaultProxy(("127.0.0.1", oauth2_dovecot.imap_port)) as proxy:
        tokens = flow(oauth2, user, store)
        listener = listener_for(oauth2_dovecot, user, tokens, store, proxy.port, changes)
        listener.run_in_thread()
        try:
            sent = 0
            started = time.monotonic()
            next_reset = started + 1.5
            while time.monotonic() - started < RUN_SECONDS:
                oauth2_dovecot.append(user, mail(sent))
                sent += 1
                if time.monotonic() >= next_reset:  # a forced reconnect, often past expiry
                    proxy.reset_all()
                    next_reset = time.monotonic() + 1.5
                time.sleep(0.4)
            eventually(lambda: sum(handled.values()) == sent, timeout=30)
        finally:
            listener.stop()
    assert handled == Counter(f"m{n}" for n in range(sent)), "every mail once"
    states = [change.current.state for change in changes]
    assert SourceState.BLOCKED not in states, [c.sentence() for c in changes]
    expiries = RUN_SECONDS / oauth2.token_lifetime
    assert oauth2.refreshes - refreshes_before >= expiries * 0.6, "tokens were renewed"
    assert proxy.accepted >= RUN_SECONDS / 1.5 * 0.6, "reconnects happened"
    assert oauth2.refresh_tokens(user), "a rotated refresh token is alive"


def test_the_rotated_refresh_token_survives_a_restart(oauth2, oauth2_dovecot):
    user = oauth2_dovecot.add_user()
    store = MemoryStore()
    first = oauth2.issue_refresh_token(user)
    tokens = flow(oauth2, user, store, refresh_token=first)
    tokens.token()  # the provider rotates: `first` is spent now
    assert first not in oauth2.refresh_tokens(user)
    restarted = flow(oauth2, user, store, refresh_token=first)  # configured as before
    assert restarted.token().value in oauth2.access_tokens(user), "it went on from the store"
    alone = flow(oauth2, user, MemoryStore(), refresh_token=first)  # without the store
    with pytest.raises(TokenRevoked, match=f"authorise the app for {user} again"):
        alone.token()


def test_a_revoked_grant_blocks_within_one_reconnect_naming_the_account(oauth2, oauth2_dovecot):
    user = oauth2_dovecot.add_user()
    store = MemoryStore()
    changes: list[StatusChange] = []
    with online(oauth2, oauth2_dovecot, user, store, changes) as (listener, proxy):
        accepted = proxy.accepted
        oauth2.revoke(user, access_tokens=True)
        proxy.reset_all()
        eventually(lambda: state_of(listener) is SourceState.BLOCKED)
    assert proxy.accepted == accepted + 1, "blocked on the first reconnect"
    reason = listener.status.get(listener.name).reason
    assert user in reason
    assert "authorise the app" in reason
    assert "invalid_grant" in reason


def test_the_token_endpoint_down_is_retrying_and_recovers(oauth2, oauth2_dovecot):
    user = oauth2_dovecot.add_user()
    store = MemoryStore()
    changes: list[StatusChange] = []
    with online(oauth2, oauth2_dovecot, user, store, changes) as (listener, proxy):
        oauth2.down(503)
        oauth2.expire(user)  # the token in hand is refused: a new one is needed
        proxy.reset_all()
        eventually(lambda: "HTTP 503" in (listener.status.get(listener.name).reason or ""))
        assert state_of(listener) is SourceState.RETRYING
        oauth2_dovecot.append(user, mail(1))
        oauth2.up()
        eventually(lambda: handled["m1"] == 1)
        eventually(lambda: state_of(listener) is SourceState.ONLINE)
    assert SourceState.BLOCKED not in [change.current.state for change in changes]


def test_the_pop3_poller_logs_in_with_fresh_tokens(oauth2, oauth2_dovecot):
    user = oauth2_dovecot.add_user()
    store = MemoryStore()
    tokens = flow(oauth2, user, store)
    settings = ImapSettings(
        "127.0.0.1",
        user,
        tokens,
        port=oauth2_dovecot.pop3_port,
        security="plain",
        auth="oauth2",
    )
    seen: list[str] = []
    poller = Pop3Poller(settings, lambda d: seen.append(str(d.message["Subject"])), store=store)
    oauth2_dovecot.append(user, mail(1))
    assert poller.poll_once() == 1
    oauth2.expire(user)  # the next login needs a new token
    oauth2_dovecot.append(user, mail(2))
    assert poller.poll_once() == 1
    assert seen == ["m1", "m2"]
    oauth2.revoke(user, access_tokens=True)
    with pytest.raises(TokenRevoked):
        poller.poll_once()


def test_the_endpoint_unreachable_is_unavailable_not_revoked(oauth2, oauth2_dovecot):
    user = oauth2_dovecot.add_user()
    tokens = flow(oauth2, user, MemoryStore())
    oauth2.down("refuse")
    with pytest.raises(TokenUnavailable, match="for " + user):
        tokens.token()


def test_check_with_a_token_command_says_the_mechanism_and_expiry(oauth2, oauth2_dovecot):
    from mailtether.cli._main import main

    user = oauth2_dovecot.add_user()
    refresh = oauth2.issue_refresh_token(user)
    grant = oauth2.refresh(refresh)
    command = f"{sys.executable} -c \"print('{grant.access_token}')\""
    out = io.StringIO()
    url = f"imap://{user}@127.0.0.1:{oauth2_dovecot.imap_port}/INBOX?security=plain"
    code = main(["check", url, "--token-command", command], out=out)
    text = out.getvalue()
    assert code == 0, text
    assert f"OAUTHBEARER as {user}" in text  # Dovecot offers it: chosen over XOAUTH2
    assert grant.access_token not in text


def test_a_concurrent_refresh_is_asked_once(oauth2, oauth2_dovecot):
    """Threads that need a token at once share one refresh (a rotated token is spent once)."""
    user = oauth2_dovecot.add_user()
    tokens = flow(oauth2, user, MemoryStore())
    before = oauth2.refreshes
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(tokens.token().value)) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(set(got)) == 1
    assert oauth2.refreshes - before == 1


def test_the_introspection_endpoint_down_is_retrying_not_blocked(oauth2, oauth2_dovecot):
    """Dovecot says NO [UNAVAILABLE] (POP3: -ERR [SYS/TEMP]): the server's trouble, not yours."""
    user = oauth2_dovecot.add_user()
    store = MemoryStore()
    changes: list[StatusChange] = []
    with online(oauth2, oauth2_dovecot, user, store, changes) as (listener, proxy):
        oauth2.down(503, introspection=True)
        proxy.reset_all()
        eventually(lambda: "UNAVAILABLE" in (listener.status.get(listener.name).reason or ""))
        assert state_of(listener) is SourceState.RETRYING
        oauth2.up()
        oauth2_dovecot.append(user, mail(7))
        eventually(lambda: handled["m7"] == 1)
    assert SourceState.BLOCKED not in [change.current.state for change in changes]
    tokens = flow(oauth2, user, store)
    tokens.token()  # in hand before the endpoints go down
    settings = ImapSettings(
        "127.0.0.1", user, tokens, port=oauth2_dovecot.pop3_port, security="plain", auth="oauth2"
    )
    oauth2.down(503, introspection=True)
    from mailtether import ConnectionLost

    with pytest.raises(ConnectionLost, match="SYS/TEMP"):
        Pop3Poller(settings, lambda d: None, store=store).poll_once()


def test_an_app_logs_in_with_its_own_credentials(oauth2, oauth2_dovecot):
    from mailtether import ClientCredentialsFlow, ImapConnection

    user = oauth2_dovecot.add_user()
    app = oauth2.register_app(user)
    tokens = ClientCredentialsFlow(
        oauth2.token_url, app.client_id, app.client_secret, scope="mail", account=user
    )
    settings = ImapSettings(
        "127.0.0.1", user, tokens, port=oauth2_dovecot.imap_port, security="plain", auth="xoauth2"
    )
    with ImapConnection.open(settings) as connection:
        assert connection.mechanism == "XOAUTH2"
    wrong = ClientCredentialsFlow(oauth2.token_url, app.client_id, "not-its-secret", account=user)
    with pytest.raises(TokenRevoked, match="invalid_client"):
        wrong.token()
