"""``Pop3Probe``: the POP3 steps of :func:`mailtether.check`, from greeting to STAT."""

from __future__ import annotations

from typing import ClassVar

from mailtether._check import Probe, Step, StepFailed, oauth2_token, token_expiry
from mailtether._redaction import redact
from mailtether._sasl import ERROR_CHALLENGE_ANSWER, oauth2_mechanism, sasl_string
from mailtether._settings import OAUTH, literal_password

__all__ = ["Pop3Probe"]


class Pop3Probe(Probe):
    """Check a POP3 mailbox: greeting, CAPA, STLS, USER/PASS, STAT.

    Built by :func:`mailtether.check` for ``pop3://`` and ``pop3s://`` targets; takes the
    arguments of :class:`~mailtether._check.Probe`.
    """

    server_kind: ClassVar[str] = "a POP3 server"
    tls_ports: ClassVar[str] = "995 is implicit TLS, 110 is STLS"

    @property
    def target(self) -> str:
        """The protocol, security, account and server checked."""
        settings = self.settings
        return f"pop3 {settings.security} {settings.username}@{self.where}"

    def greeting(self) -> str:
        """Read ``+OK``; anything else fails."""
        line = self.read_greeting()
        if not line.startswith(b"+OK"):
            raise self.foreign(line)
        return redact(line.decode("utf-8", "replace"))[:80]  # cut after redaction

    def capabilities(self) -> str:
        """Ask CAPA; list what the server offers."""
        lines = self.ask(b"CAPA", multiline=True)
        self.offered = frozenset(line.split()[0].upper() for line in lines[1:-1] if line.strip())
        return " ".join(sorted(word.decode("utf-8", "replace") for word in self.offered))

    def starttls(self) -> str:
        """Upgrade with STLS."""
        self.upgrade("STLS", "pop3s:// (port 995)", lambda: self.ask(b"STLS")[0].startswith(b"+OK"))
        return "upgraded"

    def login(self) -> str:
        """USER, then PASS; or AUTH with an OAuth2 token (XOAUTH2, OAUTHBEARER)."""
        settings = self.settings
        if settings.auth in OAUTH:
            mechanism = oauth2_mechanism(settings.auth, ())
            token = oauth2_token(settings)
            answer = sasl_string(mechanism, settings.username, token.value).encode("ascii")
            answer = self.ask(f"AUTH {mechanism} ".encode() + answer)[0]
            if answer.startswith(b"+ "):  # a refused token's error challenge: -ERR follows
                answer = self.ask(ERROR_CHALLENGE_ANSWER[mechanism].encode())[0]
            done = f"{mechanism} as {settings.username}{token_expiry(token)}"
        else:
            answer = self.ask(b"USER " + settings.username.encode("utf-8"))[0]
            if answer.startswith(b"+OK"):
                answer = self.ask(b"PASS " + literal_password(settings).encode("utf-8"))[0]
            done = ""
        if not answer.startswith(b"+OK"):
            raise StepFailed(
                f"the server rejected the credentials of {settings.username!r}; check the user "
                "name and password; a locked or expired account says the same",
                reachable=True,
            )
        return done or redact(answer.decode("utf-8", "replace"))[:60]  # cut after, not before

    def stat(self) -> str:
        """STAT; say how many messages the mailbox holds."""
        answer = self.ask(b"STAT")[0]
        if not answer.startswith(b"+OK"):
            raise StepFailed(
                f"the mailbox cannot be opened ({answer.decode('utf-8', 'replace')})",
                reachable=True,
            )
        count = answer.split()[1:2]
        return f"{count[0].decode('ascii', 'replace') if count else '?'} messages"

    def mailbox_step(self) -> Step:
        """POP3 opens the mailbox with ``stat``."""
        return "stat", self.stat

    def goodbye(self) -> None:
        """QUIT, without waiting for the answer."""
        self.send(b"QUIT\r\n")

    def ask(self, command: bytes, *, multiline: bool = False) -> list[bytes]:
        """Send one command; its status line, and with *multiline* every line to the ``.``.

        A broken exchange fails the step, naming the command (never its arguments).
        """
        with self.answering(command.split()[0].decode("ascii")):
            self.send(command + b"\r\n")
            lines = [self.readline()]
            if multiline and lines[0].startswith(b"+OK"):
                while lines[-1] != b".":
                    lines.append(self.readline())
        return lines
