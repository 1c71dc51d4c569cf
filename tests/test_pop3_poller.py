"""Pop3Poller against Dovecot's POP3 through FaultProxy: no mail lost or handled twice."""

from __future__ import annotations

import poplib
import time
from collections import Counter

import pytest

from helpers import Collector, eventually, state_of, survives_a_server_restart
from mailtether import (
    DuplicateGuard,
    Fixed,
    ImapSettings,
    Pop3Poller,
    SourceState,
    SQLiteStore,
)
from mailtether.testing import FaultProxy


def mail(n: int, subject: str | None = None) -> bytes:
    return (
        f"From: a@example.com\r\nMessage-ID: <p{n}-{time.monotonic_ns()}@x>\r\n"
        f"Subject: {subject or f'pop {n}'}\r\n\r\nbody {n}\r\n"
    ).encode()


def on_server(mailbox) -> int:
    pop = poplib.POP3("127.0.0.1", mailbox.server.pop3_port, timeout=10)
    pop.user(mailbox.user)
    pop.pass_(mailbox.password)
    count = pop.stat()[0]
    pop.quit()
    return count


@pytest.fixture
def start(tmp_path):
    store = SQLiteStore(tmp_path / "state.db")
    started: list[Pop3Poller] = []

    def make(mailbox, handler, port: int | None = None, password: str | None = None, **kwargs):
        settings = ImapSettings(
            "127.0.0.1",
            mailbox.user,
            password or mailbox.password,
            port=port or mailbox.server.pop3_port,
            security="plain",
        )
        kwargs.setdefault("reconnect", Fixed(0.2))
        kwargs.setdefault("poll_interval", 0.5)
        kwargs.setdefault("timeout", 2)
        poller = Pop3Poller(settings, handler, store=store, **kwargs)
        poller.run_in_thread()
        started.append(poller)
        return poller

    yield make, store
    for poller in started:
        poller.stop()
    store.close()


def test_new_mail_is_handled_once_then_deleted(mailbox, start):
    make, _ = start
    for n in (1, 2):
        mailbox.save(mail(n))
    handler = Collector()
    poller = make(mailbox, handler)
    eventually(lambda: len(handler.handled) == 2)
    eventually(lambda: on_server(mailbox) == 0)
    mailbox.save(mail(3))
    eventually(lambda: handler.count()["pop 3"] == 1)
    assert poller.wait_for_catch_ups(2, timeout=10)
    assert handler.count() == Counter({"pop 1": 1, "pop 2": 1, "pop 3": 1})
    assert state_of(poller) is SourceState.ONLINE


def test_a_drop_before_quit_rolls_back_dele_and_nothing_is_handled_twice(mailbox, start):
    make, _ = start
    mailbox.save(mail(1))
    handler = Collector()
    with FaultProxy(("127.0.0.1", mailbox.server.pop3_port)) as proxy:
        proxy.cut_on(b"QUIT", direction="up")  # the session dies before the server deletes
        poller = make(mailbox, handler, port=proxy.port)
        eventually(lambda: handler.count()["pop 1"] == 1)
        eventually(lambda: state_of(poller) is SourceState.RETRYING)  # QUIT never arrived
        assert on_server(mailbox) == 1, "DELE was rolled back: the mail is still there"
        proxy.pass_through()
        eventually(lambda: on_server(mailbox) == 0)
    assert handler.count() == Counter({"pop 1": 1}), "deleted later, not handed out again"


def test_a_drop_mid_retr_loses_nothing(mailbox, start):
    make, _ = start
    mailbox.save(mail(1, "x" * 20 + " big"))
    handler = Collector()
    with FaultProxy(("127.0.0.1", mailbox.server.pop3_port)) as proxy:
        proxy.cut_on(b"big", direction="down")
        poller = make(mailbox, handler, port=proxy.port)
        eventually(lambda: state_of(poller) is SourceState.RETRYING)  # cut in the middle
        assert handler.handled == []
        proxy.pass_through()
        eventually(lambda: len(handler.handled) == 1)
        eventually(lambda: on_server(mailbox) == 0)
    assert len(handler.handled) == 1


def test_rejected_credentials_block(mailbox, start):
    make, _ = start
    poller = make(mailbox, Collector(), password="wrong")
    eventually(lambda: state_of(poller) is SourceState.BLOCKED)
    assert "rejected the credentials" in poller.status.get(poller.name).reason


def test_a_mailbox_in_use_is_retried_not_blocked(mailbox, start):
    make, _ = start
    mailbox.save(mail(1))
    holder = poplib.POP3("127.0.0.1", mailbox.server.pop3_port, timeout=10)
    holder.user(mailbox.user)
    holder.pass_(mailbox.password)  # this session holds the maildrop
    handler = Collector()
    poller = make(mailbox, handler, timeout=20)  # Dovecot answers [IN-USE] after ~10 s
    try:
        eventually(lambda: state_of(poller) is SourceState.RETRYING, timeout=30)
        assert "in use" in poller.status.get(poller.name).reason
    finally:
        holder.quit()
    eventually(lambda: handler.count()["pop 1"] == 1)


def test_poison_mail_is_held_and_never_deleted_unseen(mailbox, start):
    make, store = start
    mailbox.save(mail(1, "poison"))
    mailbox.save(mail(2))
    handler = Collector(fail_on="poison")
    guard = DuplicateGuard(store, max_failures=2)
    poller = make(mailbox, handler, guard=guard)
    eventually(lambda: guard.counts()["held"] == 1)
    eventually(lambda: handler.count()["pop 2"] == 1)
    eventually(lambda: on_server(mailbox) == 1)
    assert poller.wait_for_catch_ups(2, timeout=10)
    assert on_server(mailbox) == 1, "the held mail stays on the server"


def test_pop3s_and_stls_are_verified(mailbox, tls_ca, tmp_path):
    store = SQLiteStore(tmp_path / "tls.db")
    try:
        for url_port, url_scheme in (
            (mailbox.server.pop3s_port, "pop3s"),
            (mailbox.server.pop3_port, "pop3"),
        ):
            mailbox.save(mail(url_port))
            url = f"{url_scheme}://{mailbox.user}:{mailbox.password}@127.0.0.1:{url_port}/"
            handler = Collector()
            trusted = Pop3Poller(url, handler, store=store, lease_ttl=None)
            trusted.settings = ImapSettings(
                "127.0.0.1",
                mailbox.user,
                mailbox.password,
                port=url_port,
                security=trusted.settings.security,
                ssl_context=tls_ca.client_context(),
            )
            assert trusted.poll_once() == 1
            untrusted = Pop3Poller(url, handler, store=store, lease_ttl=None)
            from mailtether import TLSFailure

            untrusted.settings = ImapSettings(
                "127.0.0.1",
                mailbox.user,
                mailbox.password,
                port=url_port,
                security=untrusted.settings.security,
                ssl_context=tls_ca.wrong_context(),
            )
            with pytest.raises(TLSFailure):
                untrusted.poll_once()
    finally:
        store.close()


def test_a_server_restart_is_survived(mailbox, start):
    make, _ = start
    handler = Collector()
    poller = make(mailbox, handler)
    survives_a_server_restart(
        poller,
        mailbox.server,
        lambda: mailbox.save(mail(9)),
        lambda: handler.count()["pop 9"] == 1,
    )


def test_a_server_without_uidl_is_keyed_by_content(mailbox, start):
    make, _ = start
    mailbox.save(mail(1))
    handler = Collector()
    with FaultProxy(("127.0.0.1", mailbox.server.pop3_port)) as proxy:
        proxy.rewrite(b"UIDL", b"XUIDL", direction="up")  # the server now says -ERR to UIDL
        poller = make(mailbox, handler, port=proxy.port, delete=False)
        eventually(lambda: handler.count()["pop 1"] == 1)
        # several more polls: the same mail is recognised by its digest
        assert poller.wait_for_catch_ups(2, timeout=10)
    assert handler.count() == Counter({"pop 1": 1})
    assert on_server(mailbox) == 1, "delete=False leaves it"


def test_apop_login_where_offered(mailbox, tmp_path):
    mailbox.save(mail(5))
    store = SQLiteStore(tmp_path / "apop.db")
    handler = Collector()
    url = (
        f"pop3://{mailbox.user}:{mailbox.password}@127.0.0.1:{mailbox.server.pop3_port}/"
        "?security=plain&auth=apop"
    )
    try:
        assert Pop3Poller(url, handler, store=store, lease_ttl=None).poll_once() == 1
        wrong = url.replace(mailbox.password, "not-it")
        from mailtether import AuthenticationFailed

        with pytest.raises(AuthenticationFailed):
            Pop3Poller(wrong, handler, store=store, lease_ttl=None).poll_once()
    finally:
        store.close()


def test_a_mail_longer_than_its_list_size_is_cut_in_bounded_memory():
    """A server whose RETR runs on past what LIST said: not read whole into memory."""
    import tracemalloc

    from mailtether import ConnectionLost, ImapSettings, MemoryStore, Pop3Poller
    from scripted import Scripted

    line = b"x" * 998 + b"\r\n"
    retr = b"+OK\r\nSubject: long\r\n\r\n" + line * 8192 + b".\r\n"  # 8 MiB
    answers = {b"UIDL": b"+OK\r\n1 long-one\r\n.\r\n", b"LIST": b"+OK\r\n1 100\r\n.\r\n"}
    seen: list[object] = []
    with Scripted.pop3({**answers, b"RETR": retr}) as server:
        settings = ImapSettings(
            "127.0.0.1", "someone", "a-long-secret", port=server.port, security="plain"
        )
        poller = Pop3Poller(
            settings, seen.append, store=MemoryStore(), max_message_bytes=1024 * 1024
        )
        tracemalloc.start()
        try:
            with pytest.raises(ConnectionLost, match=r"RETR 1: the server sent more than"):
                poller.poll_once()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert seen == []
    assert peak < 5 * 2**20, f"{peak / 2**20:.1f} MiB held for a mail cut at 2 MiB"
