"""Step deadlines: a step that runs past its deadline is cut, however slowly bytes still come.

A socket timeout bounds each read; a server that sends one byte every half second never
trips it, and a greeting, a SELECT answer or a FETCH can then take forever. Here each step
(connecting with its TLS handshake and greeting, STARTTLS, login, a command and its whole
answer) has a deadline. One watcher thread, shared by every connection of the process,
holds the deadlines of the steps in progress; when one passes, it shuts the connection's
socket down, which wakes the read or write blocked on it, and the step fails with a
sentence that names it (:func:`overran`).

Deadlines are in real time (:func:`time.monotonic`), not on an injected clock: they bound
reads from a real socket, which take real time.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Final

from mailtether._errors import ResponseTimeout

__all__ = ["SLOWEST_RATE", "Step", "StepDeadlines", "overran"]

SLOWEST_RATE: Final = 64 * 1024
"""Bytes per second an answer carrying mail is given at least: a FETCH or RETR of *n* bytes
may take the step deadline plus ``n / SLOWEST_RATE`` seconds (a 16 MiB batch: 256 s more)."""


class Step:
    """One step in progress: what it does, its seconds, and whether it ran out of them."""

    __slots__ = ("_owner", "doing", "expired", "finished", "seconds")

    def __init__(self, owner: StepDeadlines, doing: str, seconds: float) -> None:
        self._owner = owner
        self.doing = doing
        self.seconds = seconds
        self.finished = False
        self.expired = False

    def finish(self) -> bool:
        """End the step now; return whether it ran out of time first (its socket is cut).

        A read cut at the deadline can still return what it had (a line without its end):
        a step whose function returned must be finished and checked before its result is
        trusted.
        """
        return self._owner._finish(self)

    def error(self) -> ResponseTimeout:
        """The error of a step cut at its deadline, in words."""
        return ResponseTimeout(
            f"{self.doing}: not finished within {self.seconds:g} s (the step's deadline; the "
            "server answers too slowly or stalled partway), so the connection was cut"
        )

    def _expire(self) -> None:
        self._owner._expire(self)


class StepDeadlines:
    """The deadlines of one connection's steps, and the socket to cut when one passes.

    :meth:`attach` the socket as soon as it exists (before the TLS handshake and the
    greeting); a step that expired before that cuts it as it is attached. Attach the socket
    in use again, without duplicating it, once the connection stands and after STARTTLS.
    :meth:`close` with the connection.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._owned = False  # the socket watched is a duplicate, closed here
        self._cut = False  # a step expired: the socket is (to be) shut down
        self._closed = False

    def attach(self, sock: socket.socket, *, duplicate: bool = True) -> None:
        """Watch *sock*: the socket a step's deadline shuts down.

        With *duplicate* (while the socket is being set up) a duplicate is kept, which
        still reaches the connection once TLS wraps *sock* and detaches it; without, *sock*
        itself (no file descriptor more per connection: attach the socket in use again
        after TLS is started).
        """
        watched = sock.dup() if duplicate else sock
        with self._lock:
            previous, self._socket = self._socket, watched
            self._owned, owned_before = duplicate, self._owned
            cut_now = self._cut or self._closed
        if owned_before:
            _close(previous)
        if cut_now:
            _shut(watched)

    @contextlib.contextmanager
    def step(self, doing: str, seconds: float) -> Iterator[Step]:
        """Run a step that must finish within *seconds*; see :func:`overran` on failure."""
        step = Step(self, doing, seconds)
        _WATCHER.arm(time.monotonic() + seconds, step)
        try:
            yield step
        finally:
            self._finish(step)

    def _finish(self, step: Step) -> bool:
        with self._lock:
            step.finished = True
            return step.expired

    def close(self) -> None:
        """Stop watching: the duplicate socket is closed (the connection itself is not)."""
        with self._lock:
            sock, self._socket, self._closed = self._socket, None, True
            owned, self._owned = self._owned, False
        if owned:
            _close(sock)

    def _expire(self, step: Step) -> None:
        with self._lock:
            if step.finished or self._closed:
                return
            step.expired = True
            self._cut = True
            sock = self._socket
        if sock is not None:
            _shut(sock)


def overran(step: Step, error: BaseException) -> BaseException:
    """What a step that failed with *error* raises: its deadline's error if it ran out."""
    return step.error() if step.expired else error


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


class _Watcher:
    """One daemon thread that expires the steps whose deadline passed, for every connection.

    Arming costs a heap push; the thread is woken only when a new deadline comes before
    the earliest it waits for. Finished steps are dropped when they come to the top.
    """

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._heap: list[tuple[float, int, Step]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, due: float, step: Step) -> None:
        with self._ready:
            earliest = not self._heap or due < self._heap[0][0]
            heapq.heappush(self._heap, (due, next(self._order), step))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="mailtether-step-deadlines", daemon=True
                )
                self._thread.start()
            elif earliest:
                self._ready.notify()

    def forget_thread(self) -> None:
        """In a forked child: the parent's thread is not there; the next arm starts one."""
        self._ready = threading.Condition()
        self._heap = []
        self._thread = None

    def _run(self) -> None:
        while True:
            with self._ready:
                due = self._next_due()
                while due is None or due > time.monotonic():
                    self._ready.wait(None if due is None else due - time.monotonic())
                    due = self._next_due()
                _, _, step = heapq.heappop(self._heap)
            step._expire()

    def _next_due(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].finished:
            heapq.heappop(heap)
        return heap[0][0] if heap else None


_WATCHER: Final = _Watcher()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WATCHER.forget_thread)
