"""``ImapProbe``: the IMAP steps of :func:`mailtether.check`, from greeting to SELECT.

The smallest IMAP client that can tell a person what is wrong: tagged commands, their
untagged lines, literals spliced into the line that announced them, all read by
:class:`~mailtether._lines.LineReader` against the step's deadline.
"""

from __future__ import annotations

import base64
import re
from typing import ClassVar, Final

import attrs

from mailtether._check import Probe, Step, StepFailed, oauth2_token, token_expiry
from mailtether._errors import LineTooLong
from mailtether._redaction import redact
from mailtether._sasl import ERROR_CHALLENGE_ANSWER, oauth2_mechanism, sasl_string
from mailtether._settings import OAUTH, literal_password

__all__ = ["Answer", "ImapProbe"]

_LITERAL: Final = re.compile(rb"\{(\d+)\}$")
"""The end of a line that announces a literal: ``{n}``, then *n* bytes, then the line goes on."""


@attrs.frozen
class Answer:
    """What the server said to one command: the status and every line up to the tagged one."""

    status: str
    """``OK``, ``NO`` or ``BAD``; ``+`` when the server asks for more (a continuation)."""
    lines: tuple[bytes, ...]

    @property
    def said(self) -> str:
        """The text of the last line, after its tag and status, for a sentence."""
        return self.lines[-1].decode("utf-8", "replace").split(" ", 2)[-1] if self.lines else ""


def _quoted(text: str) -> bytes:
    return b'"' + text.encode("utf-8").replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


class ImapProbe(Probe):
    """Check an IMAP mailbox: greeting, CAPABILITY, STARTTLS, AUTHENTICATE, SELECT.

    Built by :func:`mailtether.check` for ``imap://`` and ``imaps://`` targets; takes the
    arguments of :class:`~mailtether._check.Probe`.
    """

    server_kind: ClassVar[str] = "an IMAP server"
    tls_ports: ClassVar[str] = "993 is implicit TLS, 143 is STARTTLS"
    _tag = 0
    """How many commands were sent; the next goes out tagged ``c<n + 1>``."""

    @property
    def target(self) -> str:
        """The security, account, server and folder checked."""
        settings = self.settings
        return f"{settings.security} {settings.username}@{self.where}/{settings.folder}"

    def greeting(self) -> str:
        """Read ``* OK`` (or ``* PREAUTH``); a ``* BYE`` or anything else fails."""
        line = self.read_greeting()
        text = line.decode("utf-8", "replace")
        if line.startswith(b"* BYE"):
            raise StepFailed(f"the server refused the session: {text}", reachable=True)
        if not line.startswith((b"* OK", b"* PREAUTH")):
            raise self.foreign(line)
        return redact(text)[:80]  # cut after redaction, never before

    def capabilities(self) -> str:
        """Ask CAPABILITY; list what the server offers."""
        answer = self.command(b"CAPABILITY")
        words = b" ".join(line for line in answer.lines if line.startswith(b"* CAPABILITY"))
        self.offered = frozenset(word.upper() for word in words.split()) - {b"*", b"CAPABILITY"}
        return " ".join(sorted(word.decode("utf-8", "replace") for word in self.offered))

    def starttls(self) -> str:
        """Upgrade with STARTTLS, then ask the capabilities again (they may differ in TLS)."""
        self.upgrade(
            "STARTTLS", "imaps:// (port 993)", lambda: self.command(b"STARTTLS").status == "OK"
        )
        self.capabilities()
        return "upgraded"

    def login(self) -> str:
        """AUTHENTICATE with PLAIN (a password), or OAUTHBEARER/XOAUTH2 (a token)."""
        settings = self.settings
        expires = ""
        if settings.auth in OAUTH:
            mechanism = oauth2_mechanism(settings.auth, self.offered)
            token = oauth2_token(settings)
            secret = base64.b64decode(sasl_string(mechanism, settings.username, token.value))
            expires = token_expiry(token)
        else:
            secret = f"\x00{settings.username}\x00{literal_password(settings)}".encode()
            mechanism = "PLAIN"
        with self.answering("AUTHENTICATE"):
            answer = self._exchange(b"AUTHENTICATE " + mechanism.encode("ascii"))
            if answer.status == "+":
                self.send(base64.b64encode(secret) + b"\r\n")
                answer = self._answer()
            if answer.status == "+":  # a refused token's error challenge: answered, NO follows
                self.send(ERROR_CHALLENGE_ANSWER.get(mechanism, "").encode() + b"\r\n")
                answer = self._answer()
        if answer.status != "OK":
            raise StepFailed(
                f"the server rejected the credentials of {settings.username!r} ({answer.said}); "
                "check the user name and password (or token); a locked or expired account says "
                "the same",
                reachable=True,
            )
        return f"{mechanism} as {settings.username}{expires}"

    def select(self) -> str:
        """SELECT the folder; say how many messages it holds."""
        folder = self.settings.folder
        answer = self.command(b"SELECT " + _quoted(folder))
        if answer.status != "OK":
            raise StepFailed(
                f"folder {folder!r} cannot be selected ({answer.said}); create it or fix its "
                "name (folder names are case-sensitive)",
                reachable=True,
            )
        exists = next(
            (line.split()[1].decode() for line in answer.lines if line.endswith(b" EXISTS")), "?"
        )
        return f"{exists} messages"

    def mailbox_step(self) -> Step:
        """IMAP opens the mailbox with ``select``."""
        return "select", self.select

    def goodbye(self) -> None:
        """LOGOUT, and read the server's answer."""
        self._exchange(b"LOGOUT")

    def command(self, text: bytes) -> Answer:
        """Send one command and read its answer; a broken exchange fails the step."""
        with self.answering(text.split()[0].decode("ascii")):
            return self._exchange(text)

    def _exchange(self, text: bytes) -> Answer:
        self._tag += 1
        self.send(b"c%d %s\r\n" % (self._tag, text))
        return self._answer()

    def _answer(self) -> Answer:
        tag = b"c%d " % self._tag
        lines: list[bytes] = []
        while True:
            line = self._line()
            if line.startswith(tag):
                status = line[len(tag) :].split(b" ", 1)[0].decode("ascii", "replace")
                return Answer(status, (*lines, line))
            if line.startswith(b"+"):
                return Answer("+", (line,))
            lines.append(line)

    def _line(self) -> bytes:
        """One response line, with the literals it announces read into it."""
        parts = [self.readline()]
        size = sum(map(len, parts))
        while literal := _LITERAL.search(parts[-1]):
            size += int(literal.group(1))
            if size > self.reader.max_line:
                raise LineTooLong(f"the server sent a literal past {self.reader.max_line} bytes")
            parts.append(self.reader.read_exactly(int(literal.group(1)), self.deadline))
            parts.append(self.readline())
            size += len(parts[-1])
        return b"".join(parts)
