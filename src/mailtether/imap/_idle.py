"""Reading IDLE ourselves: whole lines whatever the packets, literals, EOF and RST told apart.

imapclient's ``idle_check`` reads with imaplib's ``_get_line`` on a non-blocking socket,
which raises ``abort("unterminated line")`` on a line that arrived in pieces and throws the
piece away (imapclient issue #519, #464): through a path that splits packets, every IDLE
push ended the connection. It also swallows EOF and resets (it returns ``[]`` at once,
forever) and reports a server's BYE as an ordinary response.

:class:`IdleReader` reads the IDLE's answer from imaplib's own buffered file, in slices with
a timeout, and consumes only whole lines (and literals) — a partial line waits in its own
buffer for the rest, and nothing past the end of a response is ever taken from imaplib, so
the commands after DONE read exactly what they would have. It ends the IDLE itself (DONE and
the tagged answer), so no byte is lost between IDLE and DONE either.
"""

from __future__ import annotations

import re
import select
import socket
import ssl
import threading
import time
from typing import Any, Final, Protocol

from imapclient import IMAPClient
from imapclient.response_parser import parse_response

from mailtether._clock import Clock
from mailtether._errors import CommandFailed, ConnectionLost, LineTooLong, ResponseTimeout
from mailtether.imap._locked import Bell, LockedClient

__all__ = ["IdleReader", "is_chatter"]

# IDLE is read in slices this long, to notice a stop event nobody rang the bell for; a
# caller waiting for the connection, or ImapConnection.wake(), ends a slice at once.
_SLICE: Final = 1.0  # seconds between looks at a stop event that does not ring the bell
_MAX_LINE: Final = 1_000_000  # as imaplib's own bound on a line
_MAX_LITERAL: Final = 16 * 2**20  # a push carrying more than this is not a push
_LITERAL: Final = re.compile(rb"\{(\d+)\+?\}\r?\n\Z")
# Untagged responses that only say "still here": not a change of the mailbox.
_CHATTER: Final = {b"OK"}


class _Buffered(Protocol):
    def peek(self, size: int = ..., /) -> bytes: ...
    def read(self, size: int = ..., /) -> bytes: ...


def is_chatter(response: Any) -> bool:
    """Whether an untagged response only says "still here" (not a change of the mailbox)."""
    return bool(response) and response[0] in _CHATTER


class IdleReader:
    """One IDLE already started by ``client.idle()``: :meth:`read` its pushes, then :meth:`done`.

    Args:
        client: The connected client, in IDLE.
        max_literal: The largest literal read inside a push.
    """

    def __init__(self, client: IMAPClient, *, max_literal: int = _MAX_LITERAL) -> None:
        imap = client._imap
        self._imap = imap
        self._file: _Buffered = imap.file
        self._sock: socket.socket = client.socket()
        self._tls = isinstance(self._sock, ssl.SSLSocket)
        self._tag: bytes = client._idle_tag  # set by client.idle()
        self._max_literal = max_literal
        self._line = bytearray()  # the line being read, until its CRLF comes
        self._parts: list[bytes | tuple[bytes, bytes]] = []  # a response's lines and literals
        self._literal: int | None = None  # bytes of a literal still to come
        self._ended = False  # the server ended the IDLE itself (a tagged answer came)
        self._bell: Bell | None = None  # rung when the wait should look up

    # -- reading the pushes ----------------------------------------------------------------------

    def read(
        self,
        locked: LockedClient[IMAPClient],
        clock: Clock,
        deadline: float,
        stop: threading.Event | None,
        *,
        stop_rings: bool = False,
    ) -> list[Any]:
        """Read pushes; return the changes (``[]`` for none).

        Returns at the first change, at *deadline* (on *clock*), when *stop* is set (seen
        within a second, at once if :meth:`LockedClient.wake` is called; with *stop_rings*,
        whoever sets it calls ``wake``, and it is seen only then), or as soon as another
        thread waits to call through *locked*.

        Raises:
            ConnectionLost: BYE, EOF, a reset, or a line or literal past its bound.
        """
        with locked.listening() as self._bell:
            try:
                return self._read(locked, clock, deadline, stop, stop_rings)
            finally:
                self._bell = None

    def _read(
        self,
        locked: LockedClient[IMAPClient],
        clock: Clock,
        deadline: float,
        stop: threading.Event | None,
        stop_rings: bool,
    ) -> list[Any]:
        """:meth:`read`, while the bell is listened to."""
        while True:
            remaining = deadline - clock.monotonic()
            if (
                self._ended
                or remaining <= 0
                or (stop is not None and stop.is_set())
                or locked.callers_waiting  # another thread's call: end IDLE for it
            ):
                return []
            # How long a read waits is a fact about the socket, not a schedule: real time.
            slice_ = remaining if stop_rings else min(_SLICE, remaining)
            responses = self._responses(time.monotonic() + slice_, "IDLE")
            if responses:
                locked.touch()
            changes = [r for r in responses if not is_chatter(r)]
            if changes:
                return changes

    def done(self, timeout: float) -> list[Any]:
        """Send DONE and read up to the IDLE's tagged answer; return the changes on the way.

        Raises:
            ConnectionLost: the connection broke, or no tagged answer came within *timeout*
                seconds (:class:`~mailtether.ResponseTimeout`).
            CommandFailed: the server answered NO or BAD to the IDLE.
        """
        changes: list[Any] = []
        if not self._ended:
            try:
                self._imap.send(b"DONE\r\n")
            except OSError as error:
                raise _broken(error, "ending IDLE") from None
            deadline = time.monotonic() + timeout
            while not self._ended:
                if time.monotonic() >= deadline:
                    raise ResponseTimeout(f"ending IDLE: no answer to DONE within {timeout:g} s")
                changes.extend(self._responses(deadline, "ending IDLE"))
        self._imap.tagged_commands.pop(self._tag, None)  # answered here, not through imaplib
        return [change for change in changes if not is_chatter(change)]

    # -- the wire --------------------------------------------------------------------------------

    def _responses(self, until: float, doing: str) -> list[Any]:
        """The untagged responses complete by *until* (real time); more may follow."""
        responses: list[Any] = []
        chunk = self._peek(until, doing)
        while chunk is not None and not self._ended:
            response = self._take(chunk, doing)
            if response is None:  # not yet whole (wait for the rest), or the IDLE's end
                chunk = None if self._ended else self._peek(until, doing)
                continue
            responses.append(response)
            chunk = self._peek_now(doing) or None  # more only if it is there already
        return responses

    def _peek(self, until: float, doing: str) -> bytes | None:
        """What imaplib's buffer holds, or ``None`` when nothing came by *until*.

        Nothing is consumed. The socket is only ever read without blocking (a read that
        times out would leave imaplib's file unusable: "cannot read from timed out
        object"); the waiting is done by ``select``.
        """
        while True:
            chunk = self._peek_now(doing)
            if chunk:
                return chunk
            left = until - time.monotonic()
            if left <= 0 or not self._readable(left, doing):
                return None
            chunk = self._peek_now(doing)
            if chunk:
                return chunk
            if chunk is not None:  # readable, yet nothing: the end
                raise ConnectionLost(f"the server closed the connection {_where(doing)} (EOF)")

    def _peek_now(self, doing: str) -> bytes | None:
        """The buffered bytes, topped up by one read that does not wait.

        ``b""`` for none (or the end, when the socket was readable); ``None`` for a TLS
        record not yet whole.
        """
        previous = self._sock.gettimeout()
        self._sock.settimeout(0.0)
        try:
            return self._file.peek(1)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLZeroReturnError:
            return b""  # a TLS close_notify: the end
        except OSError as error:
            raise _broken(error, doing) from None
        finally:
            self._sock.settimeout(previous)

    def _readable(self, seconds: float, doing: str) -> bool:
        """Whether the server sent something within *seconds*; ``False`` also at a ring."""
        if self._tls and self._sock.pending():  # type: ignore[attr-defined]
            return True
        watched: list[Any] = [self._sock] if self._bell is None else [self._sock, self._bell]
        try:
            ready, _, _ = select.select(watched, [], [], seconds)
        except (OSError, ValueError) as error:  # closed under us
            raise ConnectionLost(f"the connection was closed {_where(doing)} ({error})") from None
        if self._bell is not None and self._bell in ready:
            self._bell.hush()  # the rings are taken: wait on once looked up
        return self._sock in ready

    def _take(self, chunk: bytes, doing: str) -> Any | None:
        """Consume from *chunk* (peeked) up to the end of the current line or literal.

        Returns the response it completes, if it does.
        """
        if self._literal is not None:  # inside a literal: take what is there of it
            data = self._file.read(min(self._literal, len(chunk)))
            self._line += data
            self._literal -= len(data)
            if not self._literal:
                self._close_literal()
            return None
        end = chunk.find(b"\n")
        data = self._file.read(len(chunk) if end < 0 else end + 1)
        self._line += data
        if len(self._line) > _MAX_LINE:
            raise ConnectionLost(
                f"{doing}: the server sent a line longer than {_MAX_LINE} bytes",
                hint=LineTooLong.default_hint,
            )
        if end < 0:
            return None  # the rest of the line is on its way
        line = bytes(self._line)
        self._line.clear()
        literal = _LITERAL.search(line)
        if literal is not None:
            size = int(literal[1])
            if size > self._max_literal:
                raise ConnectionLost(
                    f"{doing}: the server announced a literal of {size} bytes inside a push, "
                    f"more than the {self._max_literal} read there"
                )
            self._parts.append(line[: literal.end(1) + 1])
            self._literal = size
            if size == 0:  # an empty literal: complete already
                self._close_literal()
            return None
        parts, self._parts = [*self._parts, line.rstrip(b"\r\n")], []
        return self._response(parts, doing)

    def _close_literal(self) -> None:
        """The literal read whole: it joins the line that announced it."""
        self._literal = None
        head = self._parts.pop()
        assert isinstance(head, bytes)
        self._parts.append((head, bytes(self._line)))
        self._line.clear()

    def _response(self, parts: list[bytes | tuple[bytes, bytes]], doing: str) -> Any | None:
        """Parse one whole response; ``None`` for the IDLE's own tagged answer and ``+``."""
        first = parts[0]
        text = first[0] if isinstance(first, tuple) else first
        if text.startswith(b"+"):
            return None  # a continuation (a server repeating "+ idling"): nothing to say
        if not text.startswith(b"* "):
            tag, _, rest = text.partition(b" ")
            if tag == self._tag:
                self._ended = True
                status = rest.split(b" ", 1)[0].upper()
                if status != b"OK":
                    words = rest.decode("utf-8", "replace")
                    raise CommandFailed(f"{doing}: the server answered the IDLE with {words}")
                return None
            raise ConnectionLost(f"{doing}: the server sent a line out of place ({_shown(text)})")
        untagged = [_without_star(parts[0]), *parts[1:]]
        kind = text[2:].split(b" ", 1)[0].upper()
        if kind == b"BYE":
            words = text[6:].decode("utf-8", "replace")
            raise ConnectionLost(f"the server said BYE during IDLE ({words})")
        if kind in (b"OK", b"NO", b"BAD"):
            return (kind, text[3 + len(kind) :])
        try:
            return tuple(parse_response(untagged))
        except Exception:  # not well formed: still a sign of change, so a catch-up follows
            return (b"UNPARSED", _shown(text).encode())


def _without_star(part: bytes | tuple[bytes, bytes]) -> bytes | tuple[bytes, bytes]:
    if isinstance(part, tuple):
        return (part[0][2:], part[1])
    return part[2:]


def _shown(text: bytes) -> str:
    return text[:80].decode("ascii", "replace")


def _where(doing: str) -> str:
    return "during IDLE" if doing == "IDLE" else f"while {doing}"


def _broken(error: OSError, doing: str) -> ConnectionLost:
    if isinstance(error, ConnectionResetError):
        return ConnectionLost(f"the connection was reset {_where(doing)} (RST)")
    kind = type(error).__name__
    return ConnectionLost(f"the connection broke {_where(doing)} ({kind}: {error})")
