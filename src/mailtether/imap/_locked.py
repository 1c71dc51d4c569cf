"""``LockedClient``: one mail client shared by threads, one call at a time, dead once for good.

:class:`~mailtether.ImapConnection` and :class:`~mailtether.KeepaliveWatchdog` both hand one
imapclient to several threads (your code, a keepalive thread, a lease that aborts). This is
the machinery they share: the lock, errors translated into named ones, the last time the
server answered, and a death that is recorded once, wakes every thread blocked on the
socket, and refuses every later call.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from mailtether._clock import Clock
from mailtether._errors import ConnectionLost, MailServerError, TLSFailure
from mailtether._step_deadlines import Step, StepDeadlines, overran

__all__ = ["Bell", "LockedClient"]


class _HasSocket(Protocol):
    def socket(self) -> socket.socket: ...


_C = TypeVar("_C", bound=_HasSocket)
_T = TypeVar("_T")


class LockedClient(Generic[_C]):
    """A client that threads share: calls one at a time, named errors, dead once for good.

    Args:
        client: The library client (imapclient's), or ``None`` until it is connected.
        name: The connection in messages: ``"the connection to imap.example.com"``.
        translate: Turns what a call raised into a named error, given the step's name.
        clock: Where :attr:`last_activity` is read.
        on_dead: Called once, by the thread that found the connection dead, after the
            socket was shut down.
        deadlines: Where each call's deadline is kept (``None``: calls have none beyond
            the socket's timeout per read).
        step_seconds: Each call's deadline, in seconds (with *deadlines*).

    A call that fails with :class:`~mailtether.ConnectionLost` or
    :class:`~mailtether.TLSFailure` leaves nothing usable behind (imapclient cannot read
    again after a timeout, TLS state is lost after an error): the connection is then dead.
    """

    def __init__(
        self,
        client: _C | None,
        *,
        name: str,
        translate: Callable[[BaseException, str], MailServerError],
        clock: Clock,
        on_dead: Callable[[MailServerError], object] | None = None,
        deadlines: StepDeadlines | None = None,
        step_seconds: float = 30.0,
    ) -> None:
        self.client = client
        """The library client; ``None`` before it is connected and after :meth:`detach`."""
        self.name = name
        """The connection as messages name it."""
        self.clock = clock
        """Where :attr:`last_activity` is read."""
        self.error: MailServerError | None = None
        """Why the connection is dead; ``None`` while it is not known dead."""
        self.last_activity = clock.monotonic()
        """When the server last answered a call (on :attr:`clock`'s monotonic time)."""
        self._translate = translate
        self._on_dead = on_dead
        self.deadlines = deadlines
        """Where each call's deadline is kept (``None``: no deadline per call)."""
        self.step_seconds = step_seconds
        """Each call's deadline, in seconds."""
        self._lock = threading.RLock()
        self._dying = threading.Lock()
        # Counted around the lock so that a holder (an IDLE) can tell it is wanted, and
        # step aside until those who asked have had their turn: threading's locks are not fair.
        self._turns = threading.Condition()
        self._arrived = 0
        self._entered = 0
        # A holder that waits on the socket (IDLE) listens to this too: a caller arriving,
        # or wake(), rings it, so the holder need not look up every fraction of a second.
        self._bell: Bell | None = None
        self._listening = False

    @property
    def alive(self) -> bool:
        """Whether there is a client and it is not known dead."""
        return self.error is None and self.client is not None

    @property
    def callers_waiting(self) -> bool:
        """Whether some thread is blocked waiting for the lock right now."""
        with self._turns:
            return self._arrived > self._entered

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock (re-entrant) for several calls that must not be interleaved."""
        with self._turns:
            self._arrived += 1
        if self._listening:
            self.wake()
        try:
            self._lock.acquire()
        finally:
            with self._turns:
                self._entered += 1
                self._turns.notify_all()
        try:
            yield
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def listening(self) -> Iterator[Bell]:
        """The bell of a holder in a long wait (IDLE): add it to the ``select``.

        It becomes readable when a caller arrives or :meth:`wake` is called; take the rings
        out (:meth:`Bell.hush`) once it rang.
        """
        bell = self._bell
        if bell is None:
            bell = self._bell = Bell()
        self._listening = True
        try:
            yield bell
        finally:
            self._listening = False
            bell.hush()

    def wake(self) -> None:
        """Ring the bell of a holder that is :meth:`listening` (from any thread)."""
        bell = self._bell
        if bell is not None:
            bell.ring()

    def let_callers_in(self, timeout: float) -> None:
        """Wait until every thread now waiting for the lock has had it (up to *timeout* s).

        For a holder that released the lock because :attr:`callers_waiting`, before taking it
        again: otherwise it could take it back before any of them wakes up. The wait is in
        real time; it is a hand-over between threads, not a schedule.
        """
        with self._turns:
            arrived = self._arrived
            self._turns.wait_for(lambda: self._entered >= arrived, timeout)

    def require(self) -> _C:
        """Return the client.

        Raises:
            ConnectionLost: the connection is dead, or there is no client (closed).
        """
        if self.error is not None:
            raise ConnectionLost(f"{self.name} is broken ({self.error}); open a new one")
        if self.client is None:
            raise ConnectionLost(f"{self.name} is closed")
        return self.client

    def call(self, doing: str, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``function(*args, **kwargs)`` with the lock held and errors translated.

        *doing* names the step in error messages ("fetching new mail"). A success counts as
        activity; a failure that breaks the connection marks it dead. The call must finish
        within :attr:`step_seconds` (with :attr:`deadlines`).

        Raises:
            MailServerError: what *translate* made of the failure;
                :class:`~mailtether.ResponseTimeout` if the call ran out of time.
        """
        return self.call_within(self.step_seconds, doing, function, *args, **kwargs)

    def call_within(
        self, seconds: float, doing: str, function: Callable[..., _T], *args: Any, **kwargs: Any
    ) -> _T:
        """:meth:`call`, with a deadline of *seconds* (an answer carrying mail takes longer)."""
        with self.held():
            self.require()
            translated: MailServerError | None = None
            with self._step(doing, seconds) as step:
                try:
                    result = function(*args, **kwargs)
                    if step is not None and step.finish():
                        raise step.error()  # what was read in time is not the whole answer
                except Exception as error:
                    cause = overran(step, error) if step is not None else error
                    translated = self._translate(cause, doing)
                    if isinstance(translated, ConnectionLost | TLSFailure):
                        self.mark_dead(translated)
                except BaseException:  # Ctrl-C, SystemExit: passed on, the connection given up
                    self.mark_dead(ConnectionLost(f"{doing}: interrupted"))
                    raise
            if translated is not None:  # raised here, not in the handler: the library's
                raise translated  # error (which may quote the password) is not its context
            self.touch()
            return result

    @contextlib.contextmanager
    def _step(self, doing: str, seconds: float) -> Iterator[Step | None]:
        if self.deadlines is None:
            yield None
        else:
            with self.deadlines.step(doing, seconds) as step:
                yield step

    def touch(self) -> None:
        """Record that the server answered just now."""
        self.last_activity = self.clock.monotonic()

    def mark_dead(self, error: MailServerError) -> None:
        """Record *error* as the cause of death, once, from any thread; later calls refuse.

        The first time, the socket is shut down, so that a call blocked on it in another
        thread returns at once, and then *on_dead* is called.
        """
        with self._dying:
            if self.error is not None:
                return
            self.error = error
        client = self.client
        if client is not None:
            with contextlib.suppress(OSError, AttributeError, ValueError):
                client.socket().shutdown(socket.SHUT_RDWR)
        if self._on_dead is not None:
            self._on_dead(error)

    def detach(self) -> _C | None:
        """Take the client away (to close it); later calls raise ConnectionLost ("closed")."""
        client, self.client = self.client, None
        bell, self._bell = self._bell, None
        if bell is not None:
            bell.close()
        return client

    def __repr__(self) -> str:
        state = "alive" if self.alive else "dead" if self.error is not None else "closed"
        return f"LockedClient({self.name}, {state})"


class Bell:
    """A file descriptor another thread makes readable: one ``eventfd`` (Linux) or a pair.

    ``select`` on :meth:`fileno` wakes when :meth:`ring` is called; :meth:`hush` takes the
    rings out. Non-blocking both ways: ringing never waits, nor does hushing.
    """

    def __init__(self) -> None:
        self._pair: tuple[socket.socket, socket.socket] | None = None
        eventfd = getattr(os, "eventfd", None)
        if eventfd is not None:
            self._fd: int = eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - not Linux
            pair = socket.socketpair()
            for end in pair:
                end.setblocking(False)
            self._pair = pair
            self._fd = pair[0].fileno()

    def fileno(self) -> int:
        """The descriptor to ``select`` on."""
        return self._fd

    def ring(self) -> None:
        """Make it readable (from any thread)."""
        with contextlib.suppress(OSError):  # closed, or full of rings already
            if self._pair is None:
                os.eventfd_write(self._fd, 1)
            else:  # pragma: no cover - not Linux
                self._pair[1].send(b"\0")

    def hush(self) -> None:
        """Take every ring out, so that it is not readable until rung again."""
        with contextlib.suppress(OSError):  # nothing to take (BlockingIOError), or closed
            if self._pair is None:
                os.eventfd_read(self._fd)
            else:  # pragma: no cover - not Linux
                while self._pair[0].recv(4096):
                    pass

    def close(self) -> None:
        """Release the descriptor(s)."""
        with contextlib.suppress(OSError):
            if self._pair is None:
                os.close(self._fd)
            else:  # pragma: no cover - not Linux
                for end in self._pair:
                    end.close()
