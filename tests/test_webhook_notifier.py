"""WebhookNotifier: JSON POSTed in order to a real local receiver, retried, given up, bounded."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator

import pytest

from mailtether import ConfigError, Fixed, MemoryStore, SourceState, StatusBoard
from mailtether._status import SourceStatus, StatusChange
from mailtether._webhook_notifier import WebhookNotifier
from mailtether.testing import FakeClock
from servers.webhook import WebhookReceiver

KEYS = {
    "id",
    "at",
    "source",
    "state",
    "previous",
    "reason",
    "since",
    "event",
    "suppressed",
    "sentence",
    "attempts",
    "processed",
    "failed",
    "held",
    "lasted",
}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
def board() -> StatusBoard:
    clock = FakeClock()
    return StatusBoard(MemoryStore(clock=clock), notifiers=[], quiet_period=600, clock=clock)


def change(source: str, state: SourceState = SourceState.BLOCKED, event: str = "") -> StatusChange:
    return StatusChange(source, SourceState.ONLINE, SourceStatus(source, state, 1.0), event=event)


def test_a_status_board_posts_each_change_as_json(receiver, board):
    notifier = WebhookNotifier(receiver.url("/hooks/ops"), clock=FakeClock())
    board.notifiers.append(notifier)
    board.set("a@x/INBOX", SourceState.RETRYING, reason="connection reset", attempts=2)
    board.count("a@x/INBOX", processed=5, failed=1, held=3)
    board.set("a@x/INBOX", SourceState.BLOCKED, reason="credentials rejected")
    board.notice("a@x/INBOX", "held", "mail 7 held: too large")
    assert notifier.flush(timeout=10)
    retrying, blocked, notice = receiver.received
    assert set(blocked) == KEYS
    assert retrying["previous"] is None
    assert retrying["sentence"] == "a@x/INBOX is retrying: connection reset"
    assert blocked == blocked | {
        "source": "a@x/INBOX",
        "state": "blocked",
        "previous": "retrying",
        "reason": "credentials rejected",
        "since": board.clock.time(),
        "event": "",
        "suppressed": 0,
        "sentence": "a@x/INBOX is blocked (was retrying): credentials rejected",
        "attempts": 2,
        "processed": 5,
        "failed": 1,
        "held": 3,
    }
    assert notice["event"] == "mail 7 held: too large"
    assert notice["state"] == "blocked"
    assert blocked["lasted"] is None
    board.clock.advance(90)
    board.set("a@x/INBOX", SourceState.ONLINE)
    assert notifier.flush(timeout=10)
    assert receiver.received[-1]["lasted"] == 90.0, "the recovery says how long it took"
    assert len({body["id"] for body in receiver.received}) == 4, "an id of its own each"
    path, headers = receiver.requests[0]
    assert path == "/hooks/ops"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert notifier.delivered == 4
    notifier.close()


def test_failed_posts_are_retried_on_the_schedule_and_delivered_in_order(receiver, caplog):
    receiver.faults.extend(["500", "close", "503"])
    clock = FakeClock()
    notifier = WebhookNotifier(receiver.url(), clock=clock)
    with caplog.at_level(logging.DEBUG, logger="mailtether.status"):
        for source in ("a", "b", "c"):
            notifier(change(source))
        assert notifier.flush(timeout=10)
    assert [body["source"] for body in receiver.received] == ["a", "b", "c"]
    assert len(receiver.requests) == 6
    assert clock.sleeps == [2.0, 4.0, 8.0], "the default schedule: 2, 4, 8 … seconds"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"webhook notifier: could not POST to {notifier.url} (HTTP 500 Internal Server Error: "
        "not now); trying again in 2 s: a is blocked (was online)"
    ], "the first failure is told, the tries after it are debug"
    assert any("RemoteDisconnected" in r.getMessage() for r in caplog.records)
    assert any("took it on try 4" in r.getMessage() for r in caplog.records)
    assert (notifier.delivered, notifier.given_up, notifier.dropped) == (3, 0, 0)
    notifier.close()


def test_a_receiver_that_never_answers_times_out_and_the_board_does_not_wait(receiver, board):
    receiver.faults.append("hang")
    clock = FakeClock()
    notifier = WebhookNotifier(receiver.url(), timeout=0.3, clock=clock)
    board.notifiers.append(notifier)
    started = time.monotonic()
    board.set("a", SourceState.BLOCKED, reason="credentials rejected")
    assert time.monotonic() - started < 0.25, "set() returned before the POST"
    assert not notifier.flush(timeout=0.1), "still waiting for the silent receiver"
    assert notifier.flush(timeout=10)
    assert 0.3 <= time.monotonic() - started < 3, "given up on after the 0.3 s timeout"
    assert [body["state"] for body in receiver.received] == ["blocked"]
    assert len(receiver.requests) == 2
    assert clock.sleeps == [2.0]
    notifier.close()


def test_a_change_is_given_up_after_the_schedule_and_logged_with_its_sentence(receiver, caplog):
    receiver.faults.extend(["500"] * 3)
    notifier = WebhookNotifier(
        receiver.url(), retry=Fixed(10).capped(max_attempts=2), clock=FakeClock()
    )
    with caplog.at_level(logging.WARNING, logger="mailtether.status"):
        notifier(change("a"))
        notifier(change("b"))
        assert notifier.flush(timeout=10)
    assert len(receiver.requests) == 4, "a: the try and two more; b: one"
    assert [body["source"] for body in receiver.received] == ["b"]
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.getMessage() == (
        f"webhook notifier: gave up after 3 tries to POST to {notifier.url} "
        "(HTTP 500 Internal Server Error: not now); not told: a is blocked (was online)"
    )
    assert (notifier.delivered, notifier.given_up) == (1, 1)
    notifier.close()


def test_the_default_schedule_gives_up_after_an_hour_to_the_second(receiver):
    receiver.faults.extend(["500"] * 100)
    clock = FakeClock()
    notifier = WebhookNotifier(receiver.url(), clock=clock)
    notifier(change("a"))
    assert notifier.flush(timeout=30)
    assert sum(clock.sleeps) == 3600.0
    assert max(clock.sleeps) == 300.0
    assert len(receiver.requests) == len(clock.sleeps) + 1 == 20
    assert notifier.given_up == 1
    notifier.close()


def test_the_queue_is_bounded_and_what_does_not_fit_is_logged_and_counted(receiver, caplog):
    receiver.faults.append("500")
    clock = FakeClock(auto_advance=False)
    notifier = WebhookNotifier(receiver.url(), max_queued=3, clock=clock)
    notifier(change("first"))
    clock.wait_for_sleepers(1)  # it failed, and waits with "first" in hand
    with caplog.at_level(logging.WARNING, logger="mailtether.status"):
        for source in ("s1", "s2", "s3", "s4", "s5"):
            notifier(change(source))
    assert notifier.dropped == 2
    dropped = [r.getMessage() for r in caplog.records if "changes wait" in r.getMessage()]
    assert dropped == [
        f"webhook notifier: 3 changes wait for {notifier.url} already; not sent: "
        f"{source} is blocked (was online)"
        for source in ("s4", "s5")
    ]
    clock.advance(2)
    assert notifier.flush(timeout=10)
    assert [body["source"] for body in receiver.received] == ["first", "s1", "s2", "s3"]
    notifier.close()


def test_https_with_a_verified_certificate(tls_ca):
    with WebhookReceiver(ca=tls_ca) as receiver:
        notifier = WebhookNotifier(
            receiver.url(), ssl_context=tls_ca.client_context(), clock=FakeClock()
        )
        notifier(change("a"))
        assert notifier.flush(timeout=10)
        assert receiver.url().startswith("https://")
        assert [body["source"] for body in receiver.received] == ["a"]
        notifier.close()


@pytest.mark.parametrize("trust", ["another CA", "the system's CAs"])
def test_an_untrusted_certificate_is_refused_logged_and_the_board_goes_on(
    tls_ca, board, caplog, trust
):
    context = tls_ca.wrong_context() if trust == "another CA" else None
    with WebhookReceiver(ca=tls_ca) as receiver:
        notifier = WebhookNotifier(
            receiver.url(),
            ssl_context=context,
            retry=Fixed(5).capped(max_attempts=1),
            clock=FakeClock(),
        )
        board.notifiers.append(notifier)
        with caplog.at_level(logging.WARNING, logger="mailtether.status"):
            board.set("a", SourceState.BLOCKED, reason="credentials rejected")
            assert notifier.flush(timeout=10)
        assert board.get("a").state is SourceState.BLOCKED
        assert receiver.received == []
        (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert "CERTIFICATE_VERIFY_FAILED" in error
        assert error.endswith("not told: a is blocked: credentials rejected")
        assert notifier.given_up == 1
        notifier.close()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/hook", "http://localhost/hook", "http://[::1]:9/hook"]
)
def test_plain_http_is_taken_for_this_host(url):
    WebhookNotifier(url)


def test_plain_http_to_another_host_is_refused_unless_allowed():
    url = "http://hooks.example.com/services/hook?token=plain-http-token-1"
    with pytest.raises(ConfigError, match="allow_plain=True") as refused:
        WebhookNotifier(url)
    assert str(refused.value).startswith("http://hooks.example.com/*** is plain http")
    assert "plain-http-token-1" not in str(refused.value)
    WebhookNotifier(url, allow_plain=True)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://hooks.example.com/x", "https://host/path"),
        ("hooks.example.com/x", "https://host/path"),
        ("https://hooks.example.com:99999/x", "port"),
    ],
)
def test_a_url_that_is_no_webhook_is_refused(url, says):
    with pytest.raises(ConfigError, match=says):
        WebhookNotifier(url)


def test_no_secret_of_the_url_or_the_headers_is_shown(receiver, caplog):
    token = "T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"
    url = (
        f"http://bot:pa55-w0rd%2Fx@127.0.0.1:{receiver.port}/services/{token}"
        "?sig=query-signature-42&v=1"
    )
    receiver.faults.extend(["500"] * 2)
    notifier = WebhookNotifier(
        url,
        retry=Fixed(1).capped(max_attempts=1),
        headers={"X-Api-Key": "header-key-77"},
        clock=FakeClock(),
    )
    shown = f"http://***@127.0.0.1:{receiver.port}/***"
    assert notifier.url == shown
    assert repr(notifier).startswith(f"WebhookNotifier({shown!r}, only=all, retry=Fixed(")
    with caplog.at_level(logging.DEBUG, logger="mailtether.status"):
        notifier(change("a", event="login as bot:pa55-w0rd/x refused; key header-key-77"))
        notifier(change("b"))
        assert notifier.flush(timeout=10)
    logged = caplog.text
    assert shown in logged
    for secret in ("pa55-w0rd", "XXXXXXXXXXXXXXXXXXXXXXXX", "query-signature-42", "header-key-77"):
        assert secret not in logged
        assert secret not in repr(notifier)
    assert "a: login as bot:*** refused; key ***" in logged
    path, headers = receiver.requests[-1]
    assert path == f"/services/{token}?sig=query-signature-42&v=1", "the receiver gets it all"
    assert headers["X-Api-Key"] == "header-key-77"
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"bot:pa55-w0rd/x").decode()
    assert receiver.received[0]["source"] == "b"
    notifier.close()


def test_an_authorization_header_replaces_the_urls_user(receiver):
    url = f"http://someone:url-password-3@127.0.0.1:{receiver.port}/"
    notifier = WebhookNotifier(
        url, headers={"authorization": "Bearer bearer-token-9"}, clock=FakeClock()
    )
    assert notifier.url == f"http://***@127.0.0.1:{receiver.port}/"
    notifier(change("a"))
    assert notifier.flush(timeout=10)
    [(_path, headers)] = receiver.requests
    assert headers["authorization"] == "Bearer bearer-token-9"
    assert "Basic" not in str(headers)
    notifier.close()


@pytest.mark.parametrize(
    ("headers", "says"),
    [({"X Bad": "v"}, "not a header name"), ({"X-Token": "a\r\nInjected: yes"}, "one line")],
)
def test_a_header_that_cannot_be_sent_is_refused(headers, says):
    with pytest.raises(ConfigError, match=says) as refused:
        WebhookNotifier("https://hooks.example.com/", headers=headers)
    assert "Injected" not in str(refused.value)


def test_only_picks_states_and_notices_always_pass(receiver, board):
    notifier = WebhookNotifier(receiver.url(), only={"Blocked"}, clock=FakeClock())
    board.notifiers.append(notifier)
    board.set("a", SourceState.ONLINE)
    board.notice("a", "error queue", "mail <m@x> is in the error queue: 550 no")
    board.set("a", SourceState.RETRYING)
    board.set("a", SourceState.BLOCKED, reason="credentials rejected")
    assert notifier.flush(timeout=10)
    assert [(body["state"], body["event"]) for body in receiver.received] == [
        ("online", "mail <m@x> is in the error queue: 550 no"),
        ("blocked", ""),
    ]
    assert repr(notifier.only) == "['blocked']"
    notifier.close()


@pytest.mark.parametrize(
    ("only", "says"),
    [("blocked", "not the string 'blocked'"), ({"blokced"}, "'blokced', which no status")],
)
def test_only_that_names_no_state_is_refused(only, says):
    with pytest.raises(ConfigError, match=says):
        WebhookNotifier("https://hooks.example.com/", only=only)


def test_close_logs_what_was_not_sent_and_later_changes_are_dropped(receiver, caplog):
    receiver.faults.extend(["500"] * 10)
    clock = FakeClock(auto_advance=False)
    notifier = WebhookNotifier(receiver.url(), clock=clock)
    notifier(change("a"))
    notifier(change("b"))
    clock.wait_for_sleepers(1)
    with caplog.at_level(logging.WARNING, logger="mailtether.status"):
        assert not notifier.close(timeout=0.1), "a and b were not sent"
        notifier(change("c"))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"{notifier!r} closed before it could send: {source} is blocked (was online)"
        for source in ("a", "b")
    ]
    assert any("is closed; not sent: c is blocked" in r.getMessage() for r in caplog.records)
    assert notifier.dropped == 3
    assert notifier.flush(timeout=0), "nothing waits any more"
    assert receiver.received == []
    assert len(receiver.requests) == 1


def test_the_strategy_is_checked():
    with pytest.raises(ConfigError, match="ReconnectStrategy"):
        WebhookNotifier("https://hooks.example.com/", retry=5)  # type: ignore[arg-type]
