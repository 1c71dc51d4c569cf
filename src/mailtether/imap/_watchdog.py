"""``KeepaliveWatchdog``: NOOP keepalive and deadlines around your own imapclient connection."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._errors import ConnectionLost, MailServerError
from mailtether._keepalive import Keepalive
from mailtether._redaction import redacting_logger
from mailtether.imap._errors import translate_error
from mailtether.imap._locked import LockedClient

__all__ = ["KeepaliveWatchdog"]

log = redacting_logger("mailtether.keepalive")


class KeepaliveWatchdog:
    """Keeps your own :class:`imapclient.IMAPClient` alive, and finds it dead in bounded time.

    For code that has its own imapclient loop and wants only the keepalive: wrap the client,
    then make every call through :attr:`client` (a proxy with the same methods). The watchdog

    - sets the socket's read timeout to ``keepalive.response_timeout``, so no call waits
      forever on a dead network;
    - sends NOOP after ``keepalive.noop_interval`` without a call (not while you are in IDLE);
    - serialises its NOOPs with your calls (they share a lock), so it is safe from threads;
    - turns every failure into a named :class:`~mailtether.MailServerError`, and on a broken
      connection calls *on_dead* once, sets :attr:`dead`, and shuts the socket so that any
      other thread blocked on it returns at once.

    Inside IDLE, prefer :meth:`mailtether.ImapConnection.wait`, which also renews IDLE and
    detects a closed connection that imapclient's ``idle_check`` hides.

    Example::

        client = IMAPClient("imap.example.com", ssl=True)
        with KeepaliveWatchdog(client, Keepalive(noop_interval=300)) as watchdog:
            watchdog.client.login(user, password)
            watchdog.client.select_folder("INBOX")
            ...                      # any thread may use watchdog.client
    """

    def __init__(
        self,
        client: Any,
        keepalive: Keepalive | None = None,
        *,
        on_dead: Callable[[MailServerError], object] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.keepalive = keepalive if keepalive is not None else Keepalive()
        """The deadlines."""
        self.on_dead = on_dead
        """Called once, from whichever thread found it, when the connection is dead."""
        self.clock = clock
        """The clock for the NOOP schedule."""
        self.dead = threading.Event()
        """Set once the connection is known broken."""
        self._locked: LockedClient[Any] = LockedClient(
            client,
            name="the connection",
            translate=translate_error,
            clock=clock,
            on_dead=self._died,
        )
        self._stop = threading.Event()
        self._in_idle = False
        self._thread: threading.Thread | None = None
        self.client: Any = _Proxy(self)
        """Use this instead of the client: same methods, locked, deadlines, named errors."""
        with contextlib.suppress(OSError, AttributeError):
            client.socket().settimeout(self.keepalive.response_timeout)

    @property
    def error(self) -> MailServerError | None:
        """Why it is dead (``None`` while it is not known dead)."""
        return self._locked.error

    def start(self) -> Self:
        """Start the NOOP thread (``with`` does it for you)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="mailtether-keepalive", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the NOOP thread; the connection itself is left as it is."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            self._noops()
        except Exception as error:  # a bug: the connection is given up, never left unwatched
            log.exception("the keepalive thread failed; the connection is treated as dead")
            self._locked.mark_dead(
                ConnectionLost(f"the keepalive thread failed ({type(error).__name__}: {error})")
            )

    def _noops(self) -> None:
        interval = self.keepalive.noop_interval
        if interval <= 0:
            return
        while not self.dead.is_set() and not self._stop.is_set():
            due = self._locked.last_activity + interval - self.clock.monotonic()
            if due > 0:
                if self.clock.sleep(due, self._stop):
                    return
                continue
            if self._in_idle:  # NOOP is not allowed inside IDLE; wait for its end
                if self.clock.sleep(min(interval, 1.0), self._stop):
                    return
                continue
            with contextlib.suppress(MailServerError):  # recorded in self.error
                self.call("noop")

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the client's method *name* with the lock held and errors translated."""
        locked = self._locked
        with locked.held():
            method = getattr(locked.require(), name)
            result = locked.call(f"calling {name}", method, *args, **kwargs)
            if name == "idle":
                self._in_idle = True
            elif name == "idle_done":
                self._in_idle = False
            return result

    def _died(self, error: MailServerError) -> None:
        log.warning("IMAP connection is dead: %s", error)
        if self.on_dead is not None:
            try:
                self.on_dead(error)
            except Exception:
                log.exception("the on_dead callback raised")
        self.dead.set()  # last: whoever waits on it sees the callback done


class _Proxy:
    """Looks like the wrapped client; every method call goes through the watchdog."""

    def __init__(self, watchdog: KeepaliveWatchdog) -> None:
        self._watchdog = watchdog

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._watchdog._locked.client, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._watchdog.call(name, *args, **kwargs)

        return call
