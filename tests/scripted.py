"""A server on loopback that answers each command with the bytes scripted for it.

For what a cooperative Dovecot never does: leave a field out, send a garbled line. Each
connection is greeted, then every command line gets the answer scripted for its verb (the
default answer otherwise); ``TAG`` in an answer is replaced by the command's IMAP tag.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Self

Answer = bytes | Callable[[bytes], bytes]
"""The bytes to send, or a function of the whole command line that returns them."""


class LoopbackServer:
    """A server thread on a free loopback port: each connection, one after another, to
    :meth:`handle`; a connection the client drops (``OSError``) ends quietly.

    Use it as a context manager: entering starts the thread, leaving stops it.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def handle(self, conn: socket.socket) -> None:
        """Serve one connection (closed afterwards)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(OSError):  # wakes the accept() (close alone does not, on Linux)
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            with conn, contextlib.suppress(OSError):  # the client went away
                self.handle(conn)


class Scripted(LoopbackServer):
    """Answers scripted by command verb, for any number of connections one after another."""

    def __init__(
        self, greeting: bytes, answers: dict[bytes, Answer], *, tagged: bool, default: bytes
    ) -> None:
        self.greeting = greeting
        self.answers = answers
        self.tagged = tagged
        self.default = default
        self.commands: list[bytes] = []
        self.continuations: list[bytes] = []
        """The lines the client sent after the ``+`` of each AUTHENTICATE, in order."""
        super().__init__()

    @classmethod
    def imap(cls, answers: dict[bytes, Answer]) -> Scripted:
        """An IMAP4rev1 server: every command is answered OK unless scripted otherwise."""
        capability = b"* CAPABILITY IMAP4rev1\r\nTAG OK done\r\n"
        answers = {b"CAPABILITY": capability, **answers}
        return cls(b"* OK scripted\r\n", answers, tagged=True, default=b"TAG OK done\r\n")

    @classmethod
    def pop3(cls, answers: dict[bytes, Answer]) -> Scripted:
        """A POP3 server with an empty maildrop unless scripted otherwise."""
        empty = b"+OK\r\n.\r\n"
        answers = {b"CAPA": b"+OK\r\nUIDL\r\n.\r\n", b"LIST": empty, b"UIDL": empty, **answers}
        return cls(b"+OK scripted\r\n", answers, tagged=False, default=b"+OK\r\n")

    def handle(self, conn: socket.socket) -> None:
        with conn.makefile("rb") as lines:
            self._converse(conn, lines)

    def _converse(self, conn: socket.socket, lines: object) -> None:
        conn.sendall(self.greeting)
        for line in lines:  # type: ignore[attr-defined]
            words = line.split()
            if not words:
                continue
            tag, verb = (words[0], words[1].upper()) if self.tagged else (b"", words[0].upper())
            self.commands.append(verb)
            if verb == b"AUTHENTICATE":
                conn.sendall(b"+ \r\n")
                self.continuations.append(lines.readline())  # type: ignore[attr-defined]
            answer = self.answers.get(verb, self.default)
            if callable(answer):
                answer = answer(line)
            conn.sendall(answer.replace(b"TAG", tag))
            if verb in (b"LOGOUT", b"QUIT"):
                return
