"""``SmtpProbe``: the SMTP steps of :func:`mailtether.check`, from greeting to RCPT TO.

``mailtether check smtps://…`` (or ``smtp://…``) walks DNS, TCP, TLS (``smtps://``), the
greeting, EHLO, STARTTLS (``smtp://``, unless ``?security=plain`` is asked for by name),
AUTH, ``MAIL FROM`` and ``RCPT TO``; then ``RSET`` and ``QUIT``: no DATA, nothing is sent.

The URL::

    smtps://user:password@host[:port]/?from=sender@example.com&to=someone@example.com

- ``smtps://`` is implicit TLS (port 465); ``smtp://`` requires STARTTLS (port 587);
  plaintext needs ``smtp://…?security=plain`` (port 25).
- ``user:password@`` is optional: without a user name there is no AUTH step. With
  ``?auth=oauth2`` (or ``xoauth2``, ``oauthbearer``) the password part is an access token;
  :func:`~mailtether.check`'s ``tokens`` (``--token-command``) gives the tokens instead.
- ``from`` and ``to`` (repeated, or comma-separated) are the envelope of the ``mail`` and
  ``rcpt`` steps; without them those steps are not taken, and the report says so.
- ``ehlo``: the name to greet the server with (default: this side's address, as an address
  literal such as ``[192.0.2.7]``, which needs no DNS).

Every reply is read by :class:`~mailtether._lines.LineReader` against the step's deadline,
at most :data:`MOST_LINES` lines and :data:`~mailtether._lines.DEFAULT_MAX_LINE` bytes; a
4xx or 5xx reply becomes the step's sentence with the server's words (one line, cut, no
secret).
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import ClassVar, Final
from urllib.parse import parse_qsl, unquote

import attrs

from mailtether._check import (
    CheckReport,
    Probe,
    Step,
    StepFailed,
    oauth2_token,
    token_expiry,
)
from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._errors import ConfigError, one_line
from mailtether._redaction import redact
from mailtether._sasl import ERROR_CHALLENGE_ANSWER, oauth2_mechanism, sasl_string
from mailtether._settings import OAUTH, ImapSettings, literal_password, with_tokens
from mailtether._tokens import TokenSource
from mailtether._url_errors import redact as redact_url
from mailtether._url_errors import split_url

__all__ = ["MOST_LINES", "Reply", "SmtpCheckTarget", "SmtpProbe", "check_smtp"]

MOST_LINES: Final = 100
"""Lines one reply may hold; a server that sends more is not speaking SMTP."""

SAID_MOST: Final = 160
"""Characters of a server's reply a sentence quotes."""

_PORTS: Final = {"tls": 465, "starttls": 587, "plain": 25}
_AUTHS: Final = ("password", "oauth2", "xoauth2", "oauthbearer")
_OPTIONS: Final = ("from", "to", "security", "auth", "ehlo")
_NO_USER: Final = "-"
"""The user name of the settings when the URL has none (never shown: there is no AUTH step)."""
_REPLY_LINE: Final = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?", re.DOTALL)
"""A reply line: the code, then a space (the last line), a ``-`` (more follow), or nothing."""
_BAD_ADDRESS: Final = re.compile(r"[\s<>\x00-\x1f\x7f]")
_AUTHORITY_END: Final = re.compile(r"[/?#]")
_QUERY: Final = re.compile(r"/?\?([^#]*)")
_STARTS: Final = "an SMTP URL starts with smtps:// (implicit TLS) or smtp:// (STARTTLS)"
_EXAMPLE: Final = "smtps://user:password@host/?from=me@example.com&to=you@example.com"


@attrs.frozen
class Reply:
    """One SMTP reply: its code and the text of each of its lines."""

    code: int
    lines: tuple[str, ...]

    @property
    def said(self) -> str:
        """The code and the words, one line, no secret, at most :data:`SAID_MOST` characters."""
        words = " ".join(line for line in self.lines if line)
        return one_line(redact(f"{self.code} {words}".strip()), SAID_MOST)  # cut after redaction


@attrs.frozen
class SmtpCheckTarget:
    """What an SMTP check connects to, as read from its URL.

    Attributes:
        settings: Host, port, security, and how to log in (the user name is a stand-in when
            :attr:`login` is false).
        login: Whether the URL names a user, so the check takes the AUTH step.
        sender: The ``MAIL FROM`` address, if given.
        recipients: The ``RCPT TO`` addresses.
        ehlo: The name to greet with; ``None``: this side's address literal.
    """

    settings: ImapSettings
    login: bool
    sender: str | None = None
    recipients: tuple[str, ...] = ()
    ehlo: str | None = None

    @classmethod
    def from_url(cls, url: str, *, ssl_context: ssl.SSLContext | None = None) -> SmtpCheckTarget:
        """Read ``smtps://[user:password@]host[:port]/?from=…&to=…`` (or ``smtp://``).

        Percent-encode ``@ : / ? # %`` in the user name and password; the ``@`` of the
        ``from`` and ``to`` addresses may stay as it is.

        Raises:
            ConfigError: the URL cannot be used; the message names the part, shows the URL
                with the password as ``***`` and never holds the password.

        Example:
            >>> target = SmtpCheckTarget.from_url(
            ...     "smtps://bot%40example.com:pw@smtp.example.com/"
            ...     "?from=bot@example.com&to=alice@example.com,bob@example.com"
            ... )
            >>> target.settings.port, target.settings.security, target.login
            (465, 'tls', True)
            >>> target.sender, target.recipients
            ('bot@example.com', ('alice@example.com', 'bob@example.com'))
        """
        if not isinstance(url, str) or "://" not in url:  # not shown: it may be no URL at all
            raise ConfigError(f"{_STARTS}: write {_EXAMPLE}")
        url = _addresses_encoded(url)
        parts = split_url(url)  # a ConfigError that names the part and hides the password
        shown = redact_url(url)
        scheme = parts.scheme.lower()
        if scheme not in ("smtps", "smtp"):
            raise ConfigError(f"the scheme of {shown} is not smtps:// or smtp://: {_STARTS}")
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        unknown = sorted({key for key, _ in pairs} - set(_OPTIONS))
        if unknown:
            raise ConfigError(
                f"the query of {shown} has unknown SMTP URL option(s) {', '.join(unknown)}: "
                f"use {', '.join(_OPTIONS)}"
            )
        options = dict(pairs)
        security = options.get("security", "tls" if scheme == "smtps" else "starttls")
        if scheme == "smtps" and security != "tls":
            raise ConfigError(
                f"the security option of {shown} does not go with smtps://, which is implicit "
                "TLS: use smtp:// with security=starttls or security=plain"
            )
        if security not in _PORTS:
            raise ConfigError(
                f"the security option of {shown} is {security!r}: use tls, starttls or plain"
            )
        auth = options.get("auth", "password")
        if auth not in _AUTHS:
            raise ConfigError(f"the auth option of {shown} is {auth!r}: use {', '.join(_AUTHS)}")
        if parts.path not in ("", "/"):
            raise ConfigError(
                f"the path of {shown} means nothing to SMTP: write {scheme}://user:password@host/"
                "?from=…&to=… (percent-encode a `/` in the password as %2F)"
            )
        if not parts.hostname:
            raise ConfigError(f"the host of {shown} is missing: write {_EXAMPLE}")
        user = unquote(parts.username) if parts.username else ""
        if not user and (parts.password or auth != "password"):
            raise ConfigError(
                f"the user name of {shown} is missing: a password or token logs in a user; "
                f"write {scheme}://user:password@host/"
            )
        sender = options.get("from")
        recipients = tuple(
            address.strip()
            for key, value in pairs
            if key == "to"
            for address in value.split(",")
            if address.strip()
        )
        for name, address in [("from", sender), *(("to", r) for r in recipients)]:
            if address is not None and (not address or _BAD_ADDRESS.search(address)):
                raise ConfigError(
                    f"the {name} address of {shown} is {address!r}: write a bare address "
                    "(someone@example.com), without spaces or <>"
                )
        if recipients and sender is None:
            raise ConfigError(
                f"{shown} has ?to= without ?from=: RCPT TO needs a MAIL FROM first; add "
                "from=an-address-this-account-may-send-as"
            )
        ehlo = options.get("ehlo")
        if ehlo is not None and (not ehlo or not ehlo.isascii() or _BAD_ADDRESS.search(ehlo)):
            raise ConfigError(f"the ehlo option of {shown} is {ehlo!r}: write a host name")
        problem = None
        try:
            settings = ImapSettings(
                host=parts.hostname,
                username=user or _NO_USER,
                password=unquote(parts.password or ""),
                port=parts.port or _PORTS[security],
                security=security,  # type: ignore[arg-type]
                auth=auth,  # type: ignore[arg-type]
                ssl_context=ssl_context,
            )
        except (TypeError, ValueError) as error:  # no value of these messages is a secret
            problem = f"{shown} cannot be used: {error}"
        if problem is not None:
            raise ConfigError(problem)  # outside the except: nothing chained
        return cls(settings, bool(user), sender, recipients, ehlo)

    def with_tokens(self, tokens: TokenSource | None) -> SmtpCheckTarget:
        """This target logging in with OAuth2 *tokens* (``None``: as it is).

        Raises:
            ConfigError: the URL names no user to log in.
        """
        if tokens is None:
            return self
        if not self.login:
            raise ConfigError(
                "a token logs in a user, and the SMTP URL names none: write "
                "smtps://user@host/?from=…&to=…"
            )
        return attrs.evolve(self, settings=with_tokens(self.settings, tokens))


def _addresses_encoded(url: str) -> str:
    """*url* with each ``@`` of its query as ``%40``, when the query is plainly one.

    The addresses of ``?from=`` and ``?to=`` hold an ``@``, which :func:`split_url` refuses
    after the host (it would mean a password with an unencoded ``/ ? #``). The query is
    plainly one when it starts where the host part ends (after an optional ``/``), holds no
    ``#``, and names only this URL's options; then its ``@`` can be no password's.
    """
    start = url.find("://") + 3
    rest = url[start:]
    found = _AUTHORITY_END.search(rest)
    end = len(rest) if found is None else found.start()
    tail = rest[end:]
    query = _QUERY.fullmatch(tail)
    if query is None or "@" not in query[1]:
        return url
    encoded = query[1].replace("@", "%40")
    keys = {key for key, _ in parse_qsl(encoded, keep_blank_values=True)}
    if not keys or not keys <= set(_OPTIONS):
        return url
    return url[:start] + rest[:end] + tail[: query.start(1)] + encoded


class SmtpProbe(Probe):
    """Check an SMTP server: greeting, EHLO, STARTTLS, AUTH, MAIL FROM, RCPT TO.

    Built by :func:`mailtether.check` for ``smtps://`` and ``smtp://`` targets. After the
    last step it sends ``RSET`` and ``QUIT``: no mail is ever sent.

    Args:
        target: What to check (:meth:`SmtpCheckTarget.from_url`).
        timeout, ssl_context, clock: As for :class:`~mailtether._check.Probe`.
    """

    server_kind: ClassVar[str] = "an SMTP server"
    tls_ports: ClassVar[str] = "465 is implicit TLS, 587 and 25 are STARTTLS"

    def __init__(
        self,
        target: SmtpCheckTarget,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(target.settings, timeout=timeout, ssl_context=ssl_context, clock=clock)
        self.smtp = target
        self.mechanisms: frozenset[str] = frozenset()
        """The AUTH mechanisms the server offers, upper case."""

    @property
    def target(self) -> str:
        """The protocol, security, account (if any), server and envelope checked."""
        smtp = self.smtp
        user = f"{self.settings.username}@" if smtp.login else ""
        envelope = f" from {smtp.sender}" if smtp.sender else ""
        if smtp.recipients:
            envelope += f" to {', '.join(smtp.recipients)}"
        return f"smtp {self.settings.security} {user}{self.where}{envelope}"

    def plan(self) -> Iterator[Step]:
        """DNS, TCP, TLS or STARTTLS, greeting, EHLO; AUTH, MAIL and RCPT as the URL asks."""
        security = self.settings.security
        yield "dns", self.dns
        yield "tcp", self.tcp
        if security == "tls":
            yield "tls", self.tls
        yield "greeting", self.greeting
        yield "ehlo", self.capabilities
        if security == "starttls":
            yield "starttls", self.starttls
        if self.smtp.login:
            yield "auth", self.login
        if self.smtp.sender is not None:
            yield "mail", self.mail
        if self.smtp.recipients:
            yield self.mailbox_step()

    def run(self) -> CheckReport:
        """Take every step until one fails; an all-well report also names the steps not taken."""
        report = super().run()
        untried = []
        if not self.smtp.login:
            untried.append("AUTH (the URL names no user)")
        if self.smtp.sender is None:
            untried.append("MAIL FROM and RCPT TO (add ?from=…&to=… to the URL)")
        elif not self.smtp.recipients:
            untried.append("RCPT TO (add &to=… to the URL)")
        if report.ok and untried:
            return attrs.evolve(
                report, sentence=f"{report.sentence}; not tried: {'; '.join(untried)}"
            )
        return report

    # -- the steps ----------------------------------------------------------------------------

    def greeting(self) -> str:
        """Read the ``220`` greeting (all its lines); a ``421``, ``554`` or anything else fails."""
        line = self.read_greeting()
        if _REPLY_LINE.fullmatch(line) is None:
            raise self.foreign(line)
        reply = self._reply(self.read_greeting, "its greeting", first=line)
        if reply.code == 220:
            return reply.said[:80]
        if reply.code // 100 == 4:
            raise StepFailed(
                f"the server turned the session away for now ({reply.said}): it is busy, or "
                "limits connections from your address; try again later, or ask its admin",
                reachable=True,
                detail=reply.said[:80],
            )
        if reply.code // 100 == 5:
            raise StepFailed(
                f"the server refused the session ({reply.said}): it takes no mail from your "
                "address here (a block list, a policy); ask its admin",
                reachable=True,
                detail=reply.said[:80],
            )
        raise self.foreign(line)

    def capabilities(self) -> str:
        """EHLO (HELO if the server does not know EHLO); set what it offers."""
        reply = self.command(b"EHLO " + self._ehlo_name(), "EHLO")
        if reply.code in (500, 502):  # an old server that does not speak ESMTP
            helo = self.command(b"HELO " + self._ehlo_name(), "HELO")
            if helo.code == 250:
                self.offered, self.mechanisms = frozenset(), frozenset()
                return "HELO only: the server does not speak ESMTP (no STARTTLS, no AUTH)"
            reply = helo
        if reply.code != 250:
            raise self.refused(
                "EHLO",
                reply,
                "give the name it wants with ?ehlo=your.host.name in the URL, or ask its admin",
            )
        offered: set[bytes] = set()
        mechanisms: set[str] = set()
        for text in reply.lines[1:]:
            words = text.upper().split()
            if not words:
                continue
            keyword, _, rest = words[0].partition("=")  # "AUTH=PLAIN LOGIN": an old form
            offered.add(keyword.encode("ascii", "replace"))
            if keyword == "AUTH":
                mechanisms.update([rest, *words[1:]] if rest else words[1:])
        self.offered, self.mechanisms = frozenset(offered), frozenset(mechanisms)
        listed = ", ".join(line for line in reply.lines[1:] if line) or "no extensions"
        return one_line(redact(listed), 120)

    def starttls(self) -> str:
        """STARTTLS, the handshake and its certificate check, then EHLO again (RFC 3207)."""
        if b"STARTTLS" not in self.offered:
            raise StepFailed(
                f"{self.settings.host} does not offer STARTTLS, so the password and the mail "
                "would travel in clear: use smtps:// (port 465), or find what strips STARTTLS "
                "on the way (?security=plain only on a network you trust)",
                reachable=True,
            )

        def accepted() -> bool:
            reply = self.command(b"STARTTLS", "STARTTLS")
            if reply.code != 220:
                raise self.refused(
                    "STARTTLS",
                    reply,
                    "use smtps:// (port 465), or ask its admin",
                    later="try again later, or use smtps:// (port 465)",
                )
            return True

        self.upgrade("STARTTLS", "smtps:// (port 465)", accepted)
        version = self.sock.version() if isinstance(self.sock, ssl.SSLSocket) else None
        return f"{version}; {self.capabilities()}"

    def login(self) -> str:
        """AUTH PLAIN or LOGIN with a password; XOAUTH2 or OAUTHBEARER with a token."""
        settings = self.settings
        user = settings.username
        offered = " ".join(sorted(self.mechanisms))
        if not self.mechanisms:
            raise StepFailed(
                f"{settings.host} offers no AUTH here, so it cannot log in {user!r}: use its "
                "submission port (587 with STARTTLS, 465 with TLS), or leave the user out of the "
                "URL to check without logging in",
                reachable=True,
            )
        if settings.auth in OAUTH:
            mechanism = oauth2_mechanism(
                settings.auth, [b"AUTH=" + m.encode("ascii", "replace") for m in self.mechanisms]
            )
            if mechanism not in self.mechanisms:
                raise StepFailed(
                    f"the server does not offer {mechanism} (it offers AUTH {offered}): log in "
                    "with a password, or with the mechanism it offers (?auth=oauth2)",
                    reachable=True,
                )
            token = oauth2_token(settings)
            answer = sasl_string(mechanism, user, token.value).encode("ascii")
            reply = self.command(f"AUTH {mechanism} ".encode() + answer, "AUTH")
            if reply.code == 334:  # a refused token's error challenge: answered, 535 follows
                reply = self.command(ERROR_CHALLENGE_ANSWER[mechanism].encode(), "AUTH")
            done = f"{mechanism} as {user}{token_expiry(token)}"
        elif "PLAIN" in self.mechanisms:
            plain = f"\x00{user}\x00{literal_password(settings)}".encode()
            reply = self.command(b"AUTH PLAIN " + base64.b64encode(plain), "AUTH")
            done = f"PLAIN as {user}"
        elif "LOGIN" in self.mechanisms:
            reply = self.command(b"AUTH LOGIN", "AUTH")
            for part in (user, literal_password(settings)):
                if reply.code != 334:
                    break
                reply = self.command(base64.b64encode(part.encode()), "AUTH")
            done = f"LOGIN as {user}"
        else:
            raise StepFailed(
                f"the server offers AUTH {offered}, none of which logs in with a password here "
                "(PLAIN, LOGIN): ask its admin for PLAIN or LOGIN over TLS",
                reachable=True,
            )
        if reply.code == 334:  # it asks for more than the mechanism gives: cancel (RFC 4954)
            reply = self.command(b"*", "AUTH")
        if reply.code == 235:
            return done
        if reply.code // 100 == 4:
            raise StepFailed(
                f"the server could not check the credentials of {user!r} for now "
                f"({reply.said}); try again later",
                reachable=True,
                detail=reply.said[:80],
            )
        raise StepFailed(
            f"the server rejected the credentials of {user!r} ({reply.said}); check the user "
            "name and password (or token); a locked or expired account, or one that needs an "
            "app password, says the same",
            reachable=True,
            detail=reply.said[:80],
        )

    def mail(self) -> str:
        """MAIL FROM the URL's sender."""
        sender = self.smtp.sender or ""
        addresses = [sender, *self.smtp.recipients]
        utf8 = (
            b" SMTPUTF8"
            if b"SMTPUTF8" in self.offered and not all(address.isascii() for address in addresses)
            else b""
        )
        reply = self.command(b"MAIL FROM:<" + self._address(sender) + b">" + utf8, "MAIL FROM")
        if reply.code == 250:
            return reply.said[:80]
        if reply.code == 530 and not self.smtp.login:
            raise StepFailed(
                f"the server wants a login before MAIL FROM ({reply.said}): put the user and "
                "password in the URL (smtps://user:password@host/)",
                reachable=True,
                detail=reply.said[:80],
            )
        raise self.refused(
            f"the sender {sender!r}",
            reply,
            "send from an address this account may send as",
            later="a temporary refusal (load, a rate limit); try again later",
        )

    def rcpt(self) -> str:
        """RCPT TO each of the URL's recipients."""
        accepted = []
        advice = (
            "check the address, and that this account may send there"
            if self.smtp.login
            else "check the address; a server that relays only for logged-in users refuses "
            "other domains' recipients: put the user and password in the URL"
        )
        for recipient in self.smtp.recipients:
            reply = self.command(b"RCPT TO:<" + self._address(recipient) + b">", "RCPT TO")
            if reply.code not in (250, 251):
                raise self.refused(
                    f"the recipient {recipient!r}",
                    reply,
                    advice,
                    later="a temporary refusal (greylisting, a full mailbox, a rate limit); try "
                    "again later",
                )
            accepted.append(f"{recipient}: {reply.code}")
        return one_line(", ".join(accepted), 120)

    def mailbox_step(self) -> Step:
        """SMTP's last step is ``rcpt``: the recipients the server would take mail for."""
        return "rcpt", self.rcpt

    def goodbye(self) -> None:
        """RSET (nothing is sent), then QUIT, reading each answer."""
        self.command(b"RSET", "RSET")
        self.command(b"QUIT", "QUIT")

    # -- the exchange -------------------------------------------------------------------------

    def command(self, line: bytes, name: str) -> Reply:
        """Send one command line and read its reply; a broken exchange fails the step.

        *name* is what the sentence calls the command (never its arguments).
        """
        with self.answering(name):
            self.send(line + b"\r\n")
            return self._reply(self.readline, name)

    def refused(
        self, what: str, reply: Reply, advice: str, *, later: str = "try again later"
    ) -> StepFailed:
        """The failure for a reply that is not the one hoped for, with the server's words.

        Args:
            what: What was refused, for the sentence.
            reply: The server's reply.
            advice: What to do about a 5xx (a permanent refusal).
            later: What to do about a 4xx (a temporary one).
        """
        if reply.code // 100 == 4:
            sentence = f"the server put off {what} for now ({reply.said}): {later}"
        elif reply.code // 100 == 5:
            sentence = f"the server refused {what} ({reply.said}); {advice}"
        else:
            sentence = (
                f"the server answered {what} with {reply.said}, which SMTP does not answer "
                "there: it does not speak SMTP, or something on the way garbles the stream"
            )
        return StepFailed(sentence, reachable=True, detail=reply.said[:80])

    def _reply(self, read: Callable[[], bytes], name: str, *, first: bytes | None = None) -> Reply:
        """Every line of one reply (``250-…`` up to ``250 …``), bounded in lines and bytes."""
        code: bytes | None = None
        lines: list[str] = []
        size = 0
        line = first if first is not None else read()
        while True:
            match = _REPLY_LINE.fullmatch(line)
            if match is None or (code is not None and match[1] != code):
                shown = one_line(redact(line.decode("utf-8", "replace")), 80)
                raise StepFailed(
                    f"the server answered {name} with a line that is not an SMTP reply: "
                    f"{shown!r}; it does not speak SMTP, or something on the way garbles it",
                    reachable=True,
                )
            code = match[1]
            lines.append((match[3] or b"").decode("utf-8", "replace"))
            size += len(line)
            if match[2] != b"-":
                return Reply(int(code), tuple(lines))
            if len(lines) >= MOST_LINES or size > self.reader.max_line:
                raise StepFailed(
                    f"the server answered {name} with more than {MOST_LINES} lines or "
                    f"{self.reader.max_line} bytes: it does not speak SMTP, or something on the "
                    "way garbles the stream",
                    reachable=True,
                )
            line = read()

    def _ehlo_name(self) -> bytes:
        if self.smtp.ehlo is not None:
            return self.smtp.ehlo.encode("ascii")
        address = str(self.sock.getsockname()[0])
        return (
            f"[IPv6:{address}]" if self.sock.family == socket.AF_INET6 else f"[{address}]"
        ).encode()

    def _address(self, address: str) -> bytes:
        return address.encode("utf-8")


def check_smtp(
    url: str,
    *,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    tokens: TokenSource | None = None,
) -> CheckReport:
    """Check the SMTP server of *url* (see the module); :func:`mailtether.check` calls it.

    Raises:
        ConfigError: the URL cannot be used (the message never holds its password).
    """
    target = SmtpCheckTarget.from_url(url).with_tokens(tokens)
    return SmtpProbe(target, timeout=timeout, ssl_context=ssl_context).run()
