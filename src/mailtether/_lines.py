"""``LineReader``: CRLF lines and exact byte counts from a socket, with a deadline and a bound.

IMAP and POP3 speak in CRLF-terminated lines, and IMAP sends bulk data as literals: a line
ending in ``{n}`` is followed by exactly *n* bytes. A server's bytes arrive in pieces of any
size (one byte at a time, or many lines at once), slowly or not at all, and a broken or
hostile peer may send a line that never ends. :class:`LineReader` reads such a stream with:

* a **deadline** per call: an absolute time on the clock's monotonic scale, held across
  every ``recv`` the call makes, so a server that trickles one byte a second cannot keep a
  read alive past it (a timeout per ``recv`` would let it);
* a **bound** on a line: more bytes than ``max_line`` without a CRLF raise
  :class:`LineTooLong` at once, instead of buffering without end;
* **EOF** as an exception, :class:`PeerClosed`, never as an empty line.

Errors are mailtether's own: :class:`~mailtether.ResponseTimeout` when the deadline passes,
:class:`PeerClosed` (a :class:`~mailtether.ConnectionLost`) on EOF, and
:class:`~mailtether.ConnectionLost` for a reset or any other socket error.
"""

from __future__ import annotations

import socket
from typing import Final

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._errors import ConnectionLost, LineTooLong, PeerClosed, ResponseTimeout

__all__ = ["DEFAULT_MAX_LINE", "LineReader"]

DEFAULT_MAX_LINE: Final = 64 * 1024
"""Bytes a line may hold (without its CRLF) unless the reader is told otherwise."""

_CHUNK: Final = 64 * 1024
"""Bytes asked of the socket at a time."""


class LineReader:
    r"""Read CRLF-terminated lines and exact byte counts from one socket.

    Each read takes a *deadline*: an absolute time on ``clock.monotonic()``. The reader sets
    the socket's timeout to what is left of it before every ``recv``, so the deadline holds
    however the bytes are split. Bytes received but not yet returned stay buffered, also
    when a deadline passes: the next call continues where the last one stopped. After
    :class:`LineTooLong`, :class:`PeerClosed` or :class:`~mailtether.ConnectionLost`, close
    the connection.

    A reader owns the socket's reads (and its timeout) while it is in use; after STARTTLS,
    make a new reader on the wrapped socket, which also discards anything the server sent
    before the handshake.

    Args:
        sock: A connected socket or SSL socket.
        max_line: The most bytes a line may hold, without its CRLF.
        clock: Where the deadlines are read.

    Example:
        >>> import socket
        >>> ours, theirs = socket.socketpair()
        >>> theirs.sendall(b"* OK ready\r\n* 1 FETCH (BODY[] {5}\r\nhello)\r\n")
        >>> reader = LineReader(ours, max_line=1024)
        >>> deadline = SYSTEM_CLOCK.monotonic() + 5
        >>> reader.readline(deadline)
        b'* OK ready'
        >>> reader.readline(deadline)
        b'* 1 FETCH (BODY[] {5}'
        >>> reader.read_exactly(5, deadline), reader.readline(deadline)
        (b'hello', b')')
        >>> ours.close(); theirs.close()
    """

    __slots__ = ("_buffer", "_clock", "_max_line", "_scanned", "_scratch", "_sock")

    def __init__(
        self, sock: socket.socket, *, max_line: int = DEFAULT_MAX_LINE, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if isinstance(max_line, bool) or not isinstance(max_line, int) or max_line < 1:
            raise ValueError(
                f"LineReader.max_line must be a positive whole number of bytes, got {max_line!r}"
            )
        self._sock = sock
        self._max_line = max_line
        self._clock = clock
        self._buffer = bytearray()
        # Where the search for CRLF resumes: bytes before it are known to hold none, so a
        # line that arrives in many pieces is scanned once, not once per piece.
        self._scanned = 0
        self._scratch = memoryview(bytearray(_CHUNK))

    @property
    def max_line(self) -> int:
        """The most bytes a line may hold, without its CRLF."""
        return self._max_line

    def readline(self, deadline: float) -> bytes:
        """Return the next line, without its CRLF.

        A line already buffered is returned even when *deadline* has passed.

        Args:
            deadline: When to give up, on the reader's ``clock.monotonic()``.

        Raises:
            LineTooLong: The line holds more than ``max_line`` bytes.
            mailtether.ResponseTimeout: The deadline passed first (what arrived stays buffered).
            PeerClosed: The peer closed the connection first.
            mailtether.ConnectionLost: The connection broke (reset, TLS error).
        """
        while True:
            end = self._buffer.find(b"\r\n", self._scanned)
            if end >= 0:
                if end > self._max_line:
                    raise self._too_long()
                return self._take(end, skip=2)
            # A CR as the last byte may pair with an LF still on its way: look at it again.
            self._scanned = max(len(self._buffer) - 1, 0)
            if len(self._buffer) > self._max_line + 1:
                raise self._too_long()
            self._receive(deadline, "a whole line")

    def read_exactly(self, n: int, deadline: float) -> bytes:
        """Return exactly the next *n* bytes, CRLFs included (the body of an IMAP literal).

        *n* is not bounded by ``max_line``: bound it before asking, by what the caller is
        prepared to hold.

        Args:
            n: How many bytes.
            deadline: When to give up, on the reader's ``clock.monotonic()``.

        Raises:
            ValueError: *n* is negative.
            mailtether.ResponseTimeout: The deadline passed first (what arrived stays buffered).
            PeerClosed: The peer closed the connection first.
            mailtether.ConnectionLost: The connection broke (reset, TLS error).
        """
        if n < 0:
            raise ValueError(f"read_exactly needs a byte count of 0 or more, got {n}")
        while len(self._buffer) < n:
            self._receive(deadline, f"{n} bytes")
        return self._take(n, skip=0)

    def _take(self, n: int, *, skip: int) -> bytes:
        with memoryview(self._buffer) as view:
            data = view[:n].tobytes()
        # Deleting from the front of a bytearray moves its start, without copying the rest.
        del self._buffer[: n + skip]
        self._scanned = 0
        return data

    def _receive(self, deadline: float, wanted: str) -> None:
        remaining = deadline - self._clock.monotonic()
        if remaining <= 0:
            raise self._timeout(wanted)
        try:
            self._sock.settimeout(remaining)
            count = self._sock.recv_into(self._scratch)
        except TimeoutError:
            raise self._timeout(wanted) from None
        except OSError as error:
            raise ConnectionLost(f"reading from the server failed ({error})") from None
        if count == 0:
            partial = f" ({len(self._buffer)} bytes of it had arrived)" if self._buffer else ""
            raise PeerClosed(f"the server closed the connection before {wanted}{partial}")
        self._buffer += self._scratch[:count]

    def _timeout(self, wanted: str) -> ResponseTimeout:
        partial = f" ({len(self._buffer)} bytes had arrived)" if self._buffer else ""
        return ResponseTimeout(f"the server did not send {wanted} before the deadline{partial}")

    def _too_long(self) -> LineTooLong:
        return LineTooLong(f"the server sent a line longer than {self._max_line} bytes")

    def __repr__(self) -> str:
        return f"LineReader(max_line={self._max_line}, buffered={len(self._buffer)})"
