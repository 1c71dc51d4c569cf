"""`mailtether check smtps://…`: every step against aiosmtpd, every fault named, no secret shown.

aiosmtpd (with TLS from the throwaway CA, and AUTH) is the cooperative server; a scripted
server (``tests/scripted.py``) answers what aiosmtpd never would, and a FaultProxy cuts,
refuses or black-holes the connection. Each failing check asserts the step it names, its
sentence, and that no password or token shows in the report, its JSON or the command line.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import shlex
import ssl
import sys
from collections.abc import Iterator

import pytest

from mailtether import CheckReport, ConfigError, FixedToken, check
from mailtether.cli._main import main
from mailtether.smtp._probe import MOST_LINES, SmtpCheckTarget
from mailtether.testing import FaultProxy
from scripted import Scripted
from servers import free_port, tls

PASSWORD = "s3cret-Pa55word"
USER = "bot@example.com"
ENVELOPE = "from=helpdesk@example.com&to=alice@example.com"
STEPS_TLS = ["dns", "tcp", "tls", "greeting", "ehlo", "auth", "mail", "rcpt"]


class Recorder:
    """An aiosmtpd handler: replies per recipient and to MAIL FROM; records what it was told."""

    def __init__(self) -> None:
        self.rcpt: dict[str, str] = {}
        self.mail = "250 OK"
        self.commands: list[str] = []
        self.logins: list[tuple[str, str]] = []
        self.tokens: list[bytes] = []
        self.good_token = "tok-good-0123456789"

    async def handle_MAIL(self, server, session, envelope, address, options):  # type: ignore[no-untyped-def]
        self.commands.append("MAIL")
        if self.mail.startswith("250"):
            envelope.mail_from = address
        return self.mail

    async def handle_RCPT(self, server, session, envelope, address, options):  # type: ignore[no-untyped-def]
        self.commands.append("RCPT")
        reply = self.rcpt.get(address, "250 OK")
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.commands.append("DATA")
        return "250 OK"

    async def handle_RSET(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.commands.append("RSET")
        return "250 OK"

    async def handle_QUIT(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.commands.append("QUIT")
        return "221 Bye"

    async def auth_XOAUTH2(self, server, args):  # type: ignore[no-untyped-def]
        from aiosmtpd.smtp import AuthResult

        answer = base64.b64decode(args[1])
        self.tokens.append(answer)
        return AuthResult(success=f"Bearer {self.good_token}\x01".encode() in answer, handled=False)


@contextlib.contextmanager
def smtp_server(
    handler: Recorder,
    *,
    ca: tls.TestCA | None = None,
    implicit: bool = False,
    password: str | None = PASSWORD,
    exclude: tuple[str, ...] = (),
) -> Iterator[int]:
    """aiosmtpd on a free port: implicit TLS, or STARTTLS required (with *ca*); AUTH."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    options: dict[str, object] = {"auth_exclude_mechanism": list(exclude)}
    context = None
    if ca is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(ca.cert_pem), str(ca.key_pem))
        if implicit:
            options["ssl_context"] = context
        else:
            options.update(tls_context=context, require_starttls=True)
    if password is not None:

        def authenticate(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
            login = (auth_data.login.decode(), auth_data.password.decode())
            handler.logins.append(login)
            return AuthResult(success=login == (USER, password), handled=False)

        options["authenticator"] = authenticate
    # With implicit TLS aiosmtpd does not know the session is encrypted: let it offer AUTH.
    options["auth_require_tls"] = ca is not None and not implicit
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


def url(
    port: int,
    *,
    scheme: str = "smtp",
    login: str = f"bot%40example.com:{PASSWORD}@",
    query: str = ENVELOPE,
    plain: bool = True,
) -> str:
    """A URL for the server on *port*: plaintext (unless *plain* is false), as bot, the envelope."""
    security = "security=plain&" if plain and scheme == "smtp" else ""
    return f"{scheme}://{login}127.0.0.1:{port}/?{security}{query}"


def names(report: CheckReport) -> list[str]:
    return [step.name for step in report.steps]


def shown(report: CheckReport) -> str:
    """Everything a report lets out: its JSON, its repr, and what the command line prints."""
    return json.dumps(report.to_dict()) + repr(report) + report.sentence


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in (PASSWORD, *secrets):
        assert secret not in text
        plain = base64.b64encode(f"\x00{USER}\x00{secret}".encode()).decode()
        assert plain not in text
        assert base64.b64encode(secret.encode()).decode() not in text


def smtp_scripted(
    answers: dict[bytes, bytes], greeting: bytes = b"220 scripted ESMTP\r\n"
) -> Scripted:
    """A server that answers SMTP commands by verb: EHLO offers AUTH PLAIN, the rest is 250."""
    ehlo = b"250-scripted\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
    replies = {b"EHLO": ehlo, b"AUTH": b"235 2.7.0 ok\r\n", b"QUIT": b"221 bye\r\n", **answers}
    return Scripted(greeting, replies, tagged=False, default=b"250 OK\r\n")


# -- all well --------------------------------------------------------------------------------------


def test_all_well_over_implicit_tls_with_a_password_and_an_envelope(tls_ca):
    handler = Recorder()
    with smtp_server(handler, ca=tls_ca, implicit=True) as port:
        report = check(url(port, scheme="smtps"), ssl_context=tls_ca.client_context(), timeout=5)
    assert report.ok, report.sentence
    assert report.exit_code == 0
    assert names(report) == STEPS_TLS
    assert report.steps[2].detail.startswith("TLS")
    assert report.steps[5].detail == "PLAIN as bot@example.com"
    assert report.steps[-1].detail == "alice@example.com: 250"
    assert report.target == (
        f"smtp tls bot@example.com@127.0.0.1:{port} from helpdesk@example.com to alice@example.com"
    )
    assert report.sentence.startswith("all well")
    assert "not tried" not in report.sentence
    assert handler.logins == [(USER, PASSWORD)]
    assert handler.commands == ["MAIL", "RCPT", "RSET", "QUIT"], "nothing sent: no DATA"
    assert_no_secret(shown(report))


def test_all_well_with_starttls_and_auth_login(tls_ca):
    handler = Recorder()
    with smtp_server(handler, ca=tls_ca, exclude=("PLAIN",)) as port:
        report = check(url(port, plain=False), ssl_context=tls_ca.client_context(), timeout=5)
    assert report.ok, report.sentence
    assert names(report) == ["dns", "tcp", "greeting", "ehlo", "starttls", "auth", "mail", "rcpt"]
    assert "AUTH" not in report.steps[3].detail, "AUTH is offered only after STARTTLS"
    assert report.steps[4].detail.startswith("TLSv1.")
    assert "AUTH LOGIN" in report.steps[4].detail, "EHLO again in TLS"
    assert report.steps[5].detail == "LOGIN as bot@example.com"
    assert handler.logins == [(USER, PASSWORD)]
    assert_no_secret(shown(report))


def test_without_a_user_or_an_envelope_the_steps_are_not_taken_and_the_report_says_so():
    handler = Recorder()
    with smtp_server(handler, password=None) as port:
        report = check(url(port, login="", query=""), timeout=5)
        only_from = check(url(port, login="", query="from=helpdesk@example.com"), timeout=5)
    assert report.ok, report.sentence
    assert names(report) == ["dns", "tcp", "greeting", "ehlo"]
    assert report.target == f"smtp plain 127.0.0.1:{port}"
    assert "not tried: AUTH (the URL names no user)" in report.sentence
    assert "MAIL FROM and RCPT TO (add ?from=…&to=… to the URL)" in report.sentence
    assert names(only_from)[-1] == "mail"
    assert "not tried: AUTH (the URL names no user); RCPT TO (add &to=…" in only_from.sentence
    assert handler.commands == ["RSET", "QUIT", "MAIL", "RSET", "QUIT"]


def test_several_recipients_each_get_a_rcpt():
    handler = Recorder()
    with smtp_server(handler) as port:
        query = "from=a@example.com&to=b@example.com,c@example.com&to=d@example.com"
        report = check(url(port, query=query), timeout=5)
    assert report.ok, report.sentence
    assert report.steps[-1].detail == "b@example.com: 250, c@example.com: 250, d@example.com: 250"
    assert handler.commands.count("RCPT") == 3


def test_xoauth2_with_a_token_source_and_the_token_never_shown():
    handler = Recorder()
    with smtp_server(handler) as port:
        target = url(port, login="bot%40example.com@")
        report = check(target, tokens=FixedToken(handler.good_token, expires_at=None), timeout=5)
        refused = check(target, tokens=FixedToken("tok-revoked-98765"), timeout=5)
    assert report.ok, report.sentence
    assert report.steps[names(report).index("auth")].detail == "XOAUTH2 as bot@example.com"
    assert handler.tokens[0] == f"user={USER}\x01auth=Bearer {handler.good_token}\x01\x01".encode()
    assert_no_secret(shown(report), handler.good_token)
    assert names(refused)[-1] == "auth"
    assert "rejected the credentials of 'bot@example.com' (535 5.7.8" in refused.sentence
    assert_no_secret(shown(refused), "tok-revoked-98765")


def test_oauthbearer_where_offered_and_its_error_challenge_answered():
    # The refused token's error challenge (334 + base64 JSON) is answered with %x01 (AQ==),
    # and the final 535 becomes the sentence.
    ehlo = b"250-scripted\r\n250-AUTH PLAIN XOAUTH2 OAUTHBEARER\r\n250 8BITMIME\r\n"
    answers = {
        b"EHLO": ehlo,
        b"AUTH": b"334 eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIn0=\r\n",
        b"AQ==": b"535 5.7.8 Username and Password not accepted\r\n",
    }
    with smtp_scripted(answers) as server:
        report = check(
            url(server.port, login="bot%40example.com@"),
            tokens=FixedToken("tok-oauthbearer-4242"),
            timeout=5,
        )
    assert names(report)[-1] == "auth"
    assert "(535 5.7.8 Username and Password not accepted)" in report.sentence
    assert server.commands[-2:] == [b"AUTH", b"AQ=="]
    assert_no_secret(shown(report), "tok-oauthbearer-4242")


# -- what fails, and the sentence that says so -----------------------------------------------------


def test_connection_refused():
    with FaultProxy(("127.0.0.1", free_port())) as proxy:
        proxy.refuse_new()
        report = check(url(proxy.port), timeout=2)
    assert names(report) == ["dns", "tcp"]
    assert "connection refused" in report.sentence
    assert report.exit_code == 4
    assert_no_secret(shown(report))


def test_a_greeting_that_never_comes_behind_a_black_hole():
    with smtp_server(Recorder()) as port, FaultProxy(("127.0.0.1", port)) as proxy:
        proxy.drop_new()
        report = check(url(proxy.port), timeout=0.5)
    assert names(report)[-1] == "greeting"
    assert "never greeted within 0.5 s" in report.sentence
    assert report.exit_code == 4
    assert report.steps[-1].seconds < 1.5


def test_a_connection_reset_after_the_greeting_names_ehlo():
    with smtp_server(Recorder()) as port, FaultProxy(("127.0.0.1", port)) as proxy:
        proxy.cut_on(b"EHLO", direction="up")  # the greeting passes; EHLO cuts the line
        report = check(url(proxy.port), timeout=2)
    assert names(report)[-1] == "ehlo"
    assert "closed the connection during EHLO" in report.sentence
    assert report.exit_code == 5


@pytest.mark.parametrize(
    ("greeting", "words"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n", "this does not look like an SMTP server: 'HTTP/1.1 400"),
        (b"* OK IMAP4rev1 ready\r\n", "this does not look like an SMTP server: '* OK IMAP4rev1"),
        (b"220-first\r\n* garbled\r\n", "its greeting with a line that is not an SMTP reply"),
        (b"220-first\r\n230 other code\r\n", "its greeting with a line that is not an SMTP reply"),
        (b"421 4.3.2 Too many connections, try later\r\n", "turned the session away for now"),
        (b"554 5.7.1 Your address is on a block list\r\n", "refused the session (554 5.7.1"),
    ],
)
def test_a_greeting_that_is_not_a_welcome(greeting, words):
    with smtp_scripted({}, greeting=greeting) as server:
        report = check(url(server.port), timeout=2)
    assert names(report)[-1] == "greeting"
    assert words in report.sentence
    assert report.exit_code == 5
    assert server.commands == [], "nothing said to a server that did not welcome us"


def test_a_421_greeting_quotes_the_server_in_one_line():
    with smtp_scripted(
        {}, greeting=b"421-4.3.2 busy\r\n421 4.3.2 come back \x1b[31mlater\r\n"
    ) as s:
        report = check(url(s.port), timeout=2)
    assert "(421 4.3.2 busy 4.3.2 come back [31mlater)" in report.sentence
    assert "\x1b" not in report.sentence


def test_a_reply_with_too_many_lines_or_too_long_a_line_is_cut_off():
    many = b"".join(b"250-X%d\r\n" % n for n in range(MOST_LINES + 5)) + b"250 end\r\n"
    with smtp_scripted({b"EHLO": many}) as server:
        report = check(url(server.port), timeout=2)
    assert names(report)[-1] == "ehlo"
    assert f"answered EHLO with more than {MOST_LINES} lines" in report.sentence
    long = b"250-" + b"X" * 70_000 + b"\r\n250 end\r\n"
    with smtp_scripted({b"EHLO": long}) as server:
        report = check(url(server.port), timeout=2)
    assert "answered EHLO with a line longer than 65536 bytes" in report.sentence


def test_ehlo_refused_falls_back_to_helo_and_starttls_is_then_missing():
    answers = {b"EHLO": b"502 5.5.2 command not recognized\r\n", b"HELO": b"250 old\r\n"}
    with smtp_scripted(answers) as server:
        plain = check(url(server.port, query=""), timeout=2)
        secure = check(url(server.port, plain=False), timeout=2)
    assert names(plain)[-1] == "auth"
    assert "offers no AUTH here, so it cannot log in 'bot@example.com'" in plain.sentence
    assert plain.steps[-2].detail.startswith("HELO only")
    assert names(secure)[-1] == "starttls"
    assert "does not offer STARTTLS" in secure.sentence
    assert b"AUTH" not in server.commands, "no password in clear"


def test_starttls_refused_with_the_servers_words():
    ehlo = b"250-scripted\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n"
    answers = {b"EHLO": ehlo, b"STARTTLS": b"454 4.7.0 TLS not available due to local problem\r\n"}
    with smtp_scripted(answers) as server:
        report = check(url(server.port, plain=False), timeout=2)
    assert names(report)[-1] == "starttls"
    assert "put off STARTTLS for now (454 4.7.0 TLS not available" in report.sentence
    assert report.exit_code == 5
    assert b"AUTH" not in server.commands


def test_a_certificate_that_does_not_verify(tls_ca):
    with smtp_server(Recorder(), ca=tls_ca, implicit=True) as port:
        implicit = check(url(port, scheme="smtps"), ssl_context=tls_ca.wrong_context(), timeout=5)
    with smtp_server(Recorder(), ca=tls_ca) as port:
        starttls = check(url(port, plain=False), ssl_context=tls_ca.wrong_context(), timeout=5)
    assert names(implicit)[-1] == "tls"
    assert names(starttls)[-1] == "starttls"
    for report in (implicit, starttls):
        assert "certificate is not trusted" in report.sentence
        assert report.exit_code == 5
        assert_no_secret(shown(report))


def test_a_certificate_for_another_host_name(tls_ca):
    with (
        smtp_server(Recorder(), ca=tls_ca, implicit=True) as port,
        FaultProxy(("127.0.0.1", port), listen=("127.0.0.2", 0)) as proxy,
    ):
        target = f"smtps://127.0.0.2:{proxy.port}/"
        report = check(target, ssl_context=tls_ca.client_context(), timeout=5)
    assert names(report)[-1] == "tls"
    assert "another host name" in report.sentence


def test_smtps_against_a_plain_port_names_smtps_ports():
    with smtp_server(Recorder()) as port:
        report = check(url(port, scheme="smtps"), timeout=5)
    assert names(report)[-1] == "tls"
    assert "(465 is implicit TLS, 587 and 25 are STARTTLS)" in report.sentence
    assert "993" not in report.sentence


def test_a_wrong_password_is_535_and_never_shown():
    handler = Recorder()
    with smtp_server(handler) as port:
        report = check(url(port, login="bot%40example.com:wrong-pw-777@"), timeout=5)
    assert names(report)[-1] == "auth"
    assert report.sentence == (
        "auth: the server rejected the credentials of 'bot@example.com' (535 5.7.8 "
        "Authentication credentials invalid); check the user name and password (or token); a "
        "locked or expired account, or one that needs an app password, says the same"
    )
    assert report.exit_code == 5
    assert "MAIL" not in handler.commands
    assert_no_secret(shown(report), "wrong-pw-777")


def test_a_server_that_echoes_the_sasl_string_is_redacted():
    answers = {b"AUTH": lambda line: b"535 5.7.8 bad: " + line.strip() + b"\r\n"}
    with smtp_scripted(answers) as server:
        report = check(url(server.port), timeout=2)
    assert names(report)[-1] == "auth"
    assert "535 5.7.8 bad: AUTH PLAIN " in report.sentence
    assert_no_secret(shown(report))


def test_auth_unavailable_or_only_unknown_mechanisms():
    with smtp_scripted({b"EHLO": b"250-scripted\r\n250 AUTH CRAM-MD5\r\n"}) as server:
        report = check(url(server.port), timeout=2)
    assert "offers AUTH CRAM-MD5, none of which logs in with a password" in report.sentence
    with smtp_scripted({b"EHLO": b"250-scripted\r\n250 AUTH PLAIN\r\n"}) as server:
        report = check(url(server.port, login="bot%40example.com@"), tokens=FixedToken("t-1234567"))
    assert "does not offer XOAUTH2 (it offers AUTH PLAIN)" in report.sentence
    assert_no_secret(shown(report), "t-1234567")


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        ("550 5.1.1 <x@example.com>: no such user", "refused the recipient 'x@example.com' (550"),
        ("554 5.7.1 Relay access denied", "denied); check the address, and that this account"),
        ("450 4.2.0 greylisted, come back later", "put off the recipient 'x@example.com' for now"),
    ],
)
def test_a_refused_recipient(reply, words):
    handler = Recorder()
    handler.rcpt["x@example.com"] = reply
    with smtp_server(handler) as port:
        report = check(url(port, query="from=a@example.com&to=x@example.com"), timeout=5)
    assert names(report)[-1] == "rcpt"
    assert not report.steps[-1].ok
    assert words in report.sentence
    assert report.exit_code == 5
    assert "DATA" not in handler.commands
    assert_no_secret(shown(report))


def test_a_refused_sender_and_a_login_wanted_first():
    handler = Recorder()
    handler.mail = "553 5.7.1 Sender address rejected: not owned by user bot@example.com"
    with smtp_server(handler) as port:
        report = check(url(port), timeout=5)
    assert names(report)[-1] == "mail"
    assert "refused the sender 'helpdesk@example.com' (553 5.7.1 Sender" in report.sentence
    assert "send from an address this account may send as" in report.sentence
    answers = {b"MAIL": b"530 5.7.0 Authentication required\r\n"}
    with smtp_scripted(answers) as server:
        report = check(url(server.port, login=""), timeout=2)
    assert names(report)[-1] == "mail"
    assert "wants a login before MAIL FROM (530 5.7.0" in report.sentence


def test_a_command_that_gets_no_answer_fails_at_the_steps_deadline():
    with smtp_scripted({b"RCPT": b""}) as server:  # RCPT TO is never answered
        report = check(url(server.port), timeout=0.5)
    assert names(report)[-1] == "rcpt"
    assert report.sentence == "rcpt: the server did not answer RCPT TO in time"
    assert report.steps[-1].seconds < 1.5


def test_a_reply_that_is_not_smtp():
    with smtp_scripted({b"MAIL": b"+OK this is POP3\r\n"}) as server:
        report = check(url(server.port), timeout=2)
    assert names(report)[-1] == "mail"
    assert "answered MAIL FROM with a line that is not an SMTP reply: '+OK this" in report.sentence


def test_the_ehlo_name_is_an_address_literal_or_the_urls():
    seen: list[bytes] = []

    def ehlo(line: bytes) -> bytes:
        seen.append(line.strip())
        return b"250-scripted\r\n250 AUTH PLAIN\r\n"

    with smtp_scripted({b"EHLO": ehlo}) as server:
        check(url(server.port, login="", query=""), timeout=2)
        check(url(server.port, login="", query="ehlo=client.example.com"), timeout=2)
    assert seen == [b"EHLO [127.0.0.1]", b"EHLO client.example.com"]


# -- the URL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "port", "security", "login"),
    [
        ("smtps://u:pw@example.com/", 465, "tls", True),
        ("smtp://u:pw@example.com", 587, "starttls", True),
        ("smtp://example.com:2525/?security=plain", 2525, "plain", False),
        ("smtp://example.com/?security=plain", 25, "plain", False),
        ("SMTPS://[::1]/?from=a@b.example&to=c@d.example", 465, "tls", False),
        ("smtps://u%40example.com:p%2Fw@example.com:465?from=a@b.example", 465, "tls", True),
    ],
)
def test_urls(target, port, security, login):
    read = SmtpCheckTarget.from_url(target)
    assert (read.settings.port, read.settings.security, read.login) == (port, security, login)


def test_url_addresses_and_options():
    read = SmtpCheckTarget.from_url(
        "smtps://u:pw@example.com/?from=a@example.com&to=b@example.com,%20c@example.com&to=d@x.org"
        "&auth=xoauth2&ehlo=me.example.com"
    )
    assert read.sender == "a@example.com"
    assert read.recipients == ("b@example.com", "c@example.com", "d@x.org")
    assert read.settings.auth == "xoauth2"
    assert read.ehlo == "me.example.com"
    assert read.settings.username == "u"


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("smtps://u:hunter2x@example.com/?security=starttls", "does not go with smtps://"),
        ("smtp://u:hunter2x@example.com/?security=ssl", "security option"),
        ("smtp://u:hunter2x@example.com/?folder=INBOX", "unknown SMTP URL option(s) folder"),
        ("smtp://u:hunter2x@example.com/INBOX", "the path of"),
        ("smtp://u:hunter2x@example.com/?to=b@example.com", "?to= without ?from="),
        ("smtp://u:hunter2x@example.com/?from=a%20b@example.com", "the from address"),
        ("smtp://u:hunter2x@example.com/?from=a%0D%0ARSET@example.com", "the from address"),
        ("smtp://u:hunter2x@example.com/?from=a@b&to=<c@d>", "the to address"),
        ("smtp://:hunter2x@example.com/", "the user name of"),
        ("smtp://u:hunter2x@example.com/?auth=apop", "the auth option"),
        ("smtp://u:hunter2x@/", "the host of"),
        ("smtp://u:hun/ter2x@example.com/?from=a@b", "unencoded delimiter"),
        ("smtp://u:hun?ter2x@example.com/?from=a@b", "unencoded delimiter"),
        ("smtp://u:hun?from=ter2x@example.com/?from=a@b", "the port of"),
        ("pop3s://u:hunter2x@example.com/", "not smtps:// or smtp://"),
    ],
)
def test_url_errors_name_the_part_and_hide_the_password(target, words):
    with pytest.raises(ConfigError) as raised:
        SmtpCheckTarget.from_url(target)
    assert words in str(raised.value)
    assert "hunter2x" not in str(raised.value)
    assert "ter2x" not in str(raised.value)
    out = io.StringIO()
    if target.startswith("smtp"):
        assert main(["check", target], out=out) == 2
        assert "hunter2x" not in out.getvalue()


def test_a_token_source_needs_a_user():
    with pytest.raises(ConfigError, match="a token logs in a user"):
        check("smtp://example.com/", tokens=FixedToken("t-0000"))


# -- the command line ------------------------------------------------------------------------------


def test_command_line_prints_each_step_and_json_works(tls_ca):
    handler = Recorder()
    handler.rcpt["gone@example.com"] = "550 5.1.1 no such user"
    with smtp_server(handler, ca=tls_ca, implicit=True) as port:
        good = url(port, scheme="smtps")
        out = io.StringIO()
        assert main(["check", good, "--cafile", str(tls_ca.ca_pem)], out=out) == 0
        text = out.getvalue()
        assert text.startswith(f"checking smtp tls bot@example.com@127.0.0.1:{port} from")
        for step in STEPS_TLS:
            assert f"  ok   {step}" in text
        assert "all well" in text
        assert_no_secret(text)
        bad = url(port, scheme="smtps", query="from=a@example.com&to=gone@example.com")
        out = io.StringIO()
        assert main(["check", bad, "--json", "--cafile", str(tls_ca.ca_pem)], out=out) == 5
    data = json.loads(out.getvalue())
    assert data["exit_code"] == 5
    assert data["steps"][-1]["name"] == "rcpt"
    assert data["steps"][-1]["ok"] is False
    assert "550 5.1.1 no such user" in data["sentence"]
    assert_no_secret(out.getvalue())


def test_command_line_token_command():
    handler = Recorder()
    command = f"{shlex.quote(sys.executable)} -c \"print('{handler.good_token}')\""
    with smtp_server(handler) as port:
        out = io.StringIO()
        code = main(
            ["check", url(port, login="bot%40example.com@"), "--token-command", command], out=out
        )
    assert code == 0, out.getvalue()
    assert "XOAUTH2 as bot@example.com" in out.getvalue()
    assert_no_secret(out.getvalue(), handler.good_token)
