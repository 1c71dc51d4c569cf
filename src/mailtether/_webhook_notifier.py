"""``WebhookNotifier``: status changes POSTed as JSON to a URL, and retried until they arrive.

A chat hook, an incident tool, a small receiver of your own: anything that takes an HTTP POST.
One background thread sends the changes in order, one at a time; a failed POST (the
connection, the timeout, a reply that is not 2xx) is tried again on a reconnect strategy,
and a change given up on is logged at ERROR with its sentence, so a person reading the log
still learns of it. Standard library only (:mod:`http.client`): no redirects are followed,
no proxy from the environment is used.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import queue
import ssl
import threading
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeAlias
from urllib.parse import parse_qsl, unquote

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._durations import check_count, check_seconds
from mailtether._errors import ConfigError, one_line
from mailtether._pending import Pending
from mailtether._redaction import redact_values, redacting_logger, remember_secret
from mailtether._state_filter import StateFilter
from mailtether._status import StatusChange
from mailtether._strategies import Exponential, ReconnectStrategy
from mailtether._url_errors import split_url

__all__ = ["DEFAULT_WEBHOOK_RETRY", "WebhookNotifier"]

log = redacting_logger("mailtether.status")

DEFAULT_WEBHOOK_RETRY: Final = Exponential(2, max_delay=300).capped(max_offline_for=3600)
"""Tried again after 2, 4, 8 … seconds, at most 5 minutes apart; given up after an hour."""

_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})
_REPLY_MOST: Final = 200
"""Characters of a refusing reply's body kept for the log."""
_LONG_SEGMENT: Final = 16
"""A path segment this long is taken for a token (Slack's, Discord's, Teams' hooks)."""
_HEADER_NAME_BAD: Final = frozenset(" \t\r\n:")
_PLAIN_HEADERS: Final = frozenset({"accept", "content-type", "user-agent"})
"""Headers whose values are not taken for secrets (every other given value is)."""

_Item: TypeAlias = tuple[bytes, str]
"""A queued change: the JSON body, and the change's sentence for the log."""


class WebhookNotifier:
    """POSTs every status change it is given, as JSON, to *url*; tried again until it arrives.

    Use it among a :class:`~mailtether.StatusBoard`'s notifiers. A call only queues the
    change and returns; one background thread sends the queue in order, so a slow or
    unreachable receiver never delays a listener. A POST fails on a connection error, after
    *timeout*, or on a reply that is not 2xx (redirects are not followed); it is then tried
    again on *retry*: try *k* after the first failure waits ``retry.delay(k, seconds since
    that failure)``, and ``None`` gives up — logged at ERROR (``mailtether.status``) with the
    change's sentence. The changes behind it wait their turn. At most *max_queued* wait;
    further ones are logged and dropped. :meth:`flush` waits for the queue to drain,
    :meth:`close` ends the thread.

    The body is one JSON object: ``id`` (new for every change: a receiver drops a repeat
    with it, as a POST that timed out after it arrived is sent again), ``at`` (when it was
    told, wall-clock seconds), ``source``, ``state``, ``previous``, ``reason``, ``since``,
    ``event`` (a notice's text, else ``""``), ``suppressed``, ``sentence`` (the line a person
    reads), ``attempts``, ``processed``, ``failed``, ``held``, ``lasted`` (seconds: for a
    recovery, how long the problem lasted; for a problem told late, how long so far; else
    ``null``).

    No secret of the URL is ever shown: its user information, path and query (where hooks
    carry their tokens) are ``***`` in ``repr`` and in log lines, and the password, the
    user name, every query value, long path segments and every header value are removed
    from all of mailtether's output.

    Args:
        url: ``https://…`` (certificates verified); ``http://`` only for 127.0.0.1, ::1 and
            localhost, unless *allow_plain*. A user and password in it are sent as basic
            authentication (unless *headers* has an ``Authorization``).
        timeout: Seconds for connecting and for each read of the reply.
        retry: When to try a failed POST again, and when to give up (default: 2, 4, 8 …
            seconds, at most 5 minutes apart, for an hour).
        headers: Extra request headers, e.g. ``{"Authorization": "Bearer …"}``; their
            values are treated as secrets.
        only: Send only changes into these states (default: all), e.g. ``{"blocked",
            "offline"}``. Notices (:meth:`StatusBoard.notice`: a mail in an error queue, a
            held mail) are sent whatever *only* says.
        ssl_context: Certificate verification settings (default: the system's CAs).
        allow_plain: Allow ``http://`` to any host (the status, and any token in the URL or
            the headers, then travel unencrypted).
        max_queued: How many changes may wait (default 1000).
        clock: Waits between tries (tests pass a :class:`~mailtether.testing.FakeClock`).

    Raises:
        ConfigError: the URL cannot be read, is not http(s), or is plain http to another
            host without *allow_plain*; a header cannot be sent; *only* names no state.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        retry: ReconnectStrategy = DEFAULT_WEBHOOK_RETRY,
        headers: Mapping[str, str] | None = None,
        only: Iterable[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        allow_plain: bool = False,
        max_queued: int = 1000,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        _remember_query(url)  # before anything can show the URL
        parts = split_url(url)
        scheme = parts.scheme.lower()
        user = unquote(parts.username or "")
        password = unquote(parts.password or "")
        path = parts.path or "/"
        remember_secret(user)
        for segment in path.split("/"):
            if len(segment) >= _LONG_SEGMENT:
                remember_secret(segment)
                remember_secret(unquote(segment))
        host = parts.hostname or ""
        self.url = _shown(scheme, bool(user or password), parts.netloc, path, parts.query)
        """The URL as it may be shown: its user information, path and query as ``***``."""
        if scheme not in ("http", "https") or not host:
            raise ConfigError(
                "a webhook URL is https://host/path (http:// only to this host): "
                + (f"not {self.url}" if host else "this one names no host")
            )
        if scheme == "http" and host not in _LOOPBACK and not allow_plain:
            raise ConfigError(
                f"{self.url} is plain http to another host: the status (and any token in the "
                "URL or headers) would travel unencrypted; use https://, or pass "
                "allow_plain=True if the network is yours"
            )
        self.timeout = check_seconds(timeout, "WebhookNotifier.timeout", minimum=0.001)
        """Seconds for connecting and for each read."""
        if not callable(getattr(retry, "delay", None)):
            raise ConfigError(
                "WebhookNotifier.retry is a ReconnectStrategy (an object with a "
                f"delay(attempt, offline_for) method), not {type(retry).__name__}"
            )
        self.retry = retry
        """When a failed POST is tried again."""
        self.only = StateFilter.of(only, "WebhookNotifier.only")
        """Which changes are sent."""
        self.max_queued = check_count(max_queued, "WebhookNotifier.max_queued")
        """How many changes may wait."""
        self.clock = clock
        self._host = host
        self._port = parts.port
        self._https = scheme == "https"
        self._target = path + (f"?{parts.query}" if parts.query else "")
        self._context = (ssl_context or ssl.create_default_context()) if self._https else None
        self._headers = _headers(headers or {}, user, password)
        self.delivered = 0
        """Changes the receiver accepted."""
        self.given_up = 0
        """Changes given up on (the schedule ended): each was logged at ERROR."""
        self.dropped = 0
        """Changes not sent because the queue was full, or the notifier closed."""
        self._queue: queue.Queue[_Item | None] = queue.Queue(self.max_queued)
        self._lock = threading.RLock()  # the thread, the closed flag, the counters
        self._pending = Pending()
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- the caller's side: queue and return ---------------------------------------------------

    def __call__(self, change: StatusChange) -> None:
        """Queue *change* for the receiver (unless *only* filters it out); returns at once."""
        if not self.only.passes(change):
            return
        item = (_body(change, self.clock.time()), change.sentence())
        with self._lock:
            if self._closed:
                self._drop(f"{self!r} is closed; not sent", item[1])
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._sender, name="mailtether-webhook-notifier", daemon=True
                )
                self._thread.start()
            self._pending.add()
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self._pending.done()
                self._drop(
                    f"webhook notifier: {self.max_queued} changes wait for {self.url} already; "
                    "not sent",
                    item[1],
                )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued change was delivered or given up; ``False`` at the timeout.

        *timeout* is in real seconds (not the injected clock's).
        """
        return self._pending.wait(timeout)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Send what waits, for up to *timeout* seconds; then stop the thread.

        What is still queued then (a receiver that is down, a retry waiting) is logged at
        ERROR, change by change, and dropped; later changes are dropped with a warning.
        Returns whether everything queued was sent (or given up on) in time.
        """
        with self._lock:
            self._closed = True
            thread = self._thread
        drained = self.flush(timeout)
        self._stop.set()  # ends a wait between tries; the rest is logged as not sent
        # Wakes the thread if it waits for work; a full queue: it works, and stops once empty.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if thread is not None:
            thread.join(self.timeout + 1.0)
        return drained

    def __enter__(self) -> WebhookNotifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the sender thread ------------------------------------------------------------------------

    def _sender(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if self._stop.is_set():
                    self._drop(f"{self!r} closed before it could send", item[1], error=True)
                else:
                    self._deliver(item)
            except Exception:  # a strategy that raised: the thread must live on
                with self._lock:
                    self.given_up += 1
                log.exception("webhook notifier: %s not sent: %s", self.url, item[1])
            finally:
                self._pending.done()
            if self._stop.is_set() and self._queue.empty():
                return

    def _deliver(self, item: _Item) -> None:
        """POST one change until it is accepted, the schedule gives up, or the notifier closes."""
        body, sentence = item
        attempt = 0
        first_failure = 0.0
        while True:
            why = self._post(body)
            if why is None:
                with self._lock:
                    self.delivered += 1
                if attempt:
                    log.info(
                        "webhook notifier: %s took it on try %d: %s",
                        self.url,
                        attempt + 1,
                        sentence,
                    )
                return
            now = self.clock.monotonic()
            if not attempt:
                first_failure = now
            attempt += 1
            wait = self.retry.delay(attempt, now - first_failure)
            if wait is None:
                with self._lock:
                    self.given_up += 1
                log.error(
                    "webhook notifier: gave up after %d tries to POST to %s (%s); not told: %s",
                    attempt,
                    self.url,
                    why,
                    sentence,
                )
                return
            log.log(
                logging.WARNING if attempt == 1 else logging.DEBUG,  # the first failure is news
                "webhook notifier: could not POST to %s (%s); trying again in %s s: %s",
                self.url,
                why,
                f"{wait:g}",
                sentence,
            )
            if self.clock.sleep(wait, self._stop):
                self._drop(f"{self!r} closed before it could send", sentence, error=True)
                return

    def _post(self, body: bytes) -> str | None:
        """POST *body* once: ``None`` when a 2xx reply came, else why not, in one line."""
        connection: http.client.HTTPConnection
        if self._https:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._context
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            connection.request("POST", self._target, body=body, headers=self._headers)
            response = connection.getresponse()
            said = response.read(_REPLY_MOST).decode("utf-8", "replace")
            if 200 <= response.status < 300:
                return None
            return one_line(f"HTTP {response.status} {response.reason}: {said}", _REPLY_MOST)
        except Exception as error:  # OSError, TimeoutError, ssl.SSLError, HTTPException
            return one_line(f"{type(error).__name__}: {error}", _REPLY_MOST)
        finally:
            connection.close()

    def _drop(self, why: str, sentence: str, *, error: bool = False) -> None:
        with self._lock:
            self.dropped += 1
        log.log(logging.ERROR if error else logging.WARNING, "%s: %s", why, sentence)

    def __repr__(self) -> str:
        return f"WebhookNotifier({self.url!r}, only={self.only!r}, retry={self.retry!r})"


def _remember_query(url: str) -> None:
    """Remember every value of *url*'s query (tokens ride there), read leniently."""
    query = url.partition("?")[2].partition("#")[0]
    for _name, value in parse_qsl(query):
        remember_secret(value)


def _shown(scheme: str, userinfo: bool, netloc: str, path: str, query: str) -> str:
    hidden = "/***" if path.strip("/") or query else "/"
    return f"{scheme}://{'***@' if userinfo else ''}{netloc.rpartition('@')[2]}{hidden}"


def _headers(given: Mapping[str, str], user: str, password: str) -> dict[str, str]:
    """The request's headers: JSON, no keep-alive, basic authentication from the URL, *given*."""
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "mailtether",
        "Connection": "close",
    }
    if user or password:
        pair = f"{user}:{password}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        remember_secret(headers["Authorization"])
    for name, value in given.items():
        if not isinstance(name, str) or not name or _HEADER_NAME_BAD.intersection(name):
            raise ConfigError(f"WebhookNotifier.headers: {name!r} is not a header name")
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise ConfigError(
                f"WebhookNotifier.headers[{name!r}] must be a str of one line (not shown here)"
            )
        if name.lower() not in _PLAIN_HEADERS:
            remember_secret(value)
        for known in list(headers):  # names are case-blind: the given one replaces ours
            if known.lower() == name.lower():
                del headers[known]
        headers[name] = value
    return headers


def _body(change: StatusChange, now: float) -> bytes:
    status = change.current
    data: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "at": now,
        "source": change.source,
        "state": status.state.value,
        "previous": change.previous.value if change.previous is not None else None,
        "reason": status.reason,
        "since": status.since,
        "event": change.event,
        "suppressed": change.suppressed,
        "sentence": change.sentence(),
        "attempts": status.attempts,
        "processed": status.processed,
        "failed": status.failed,
        "held": getattr(status, "held", 0),  # a status from before held was counted has none
        "lasted": getattr(change, "lasted", None),
    }
    return json.dumps(redact_values(data)).encode("utf-8")
