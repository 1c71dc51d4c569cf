"""`mailtether check`: one distinct, correct sentence per failure, against Dovecot/FaultProxy."""

from __future__ import annotations

import io
import json

import pytest

from mailtether import check
from mailtether.cli._main import main
from mailtether.testing import FaultProxy
from scripted import Scripted


def plain_url(mailbox, port: int | None = None, password: str | None = None, folder="INBOX") -> str:
    port = port or mailbox.server.imap_port
    return (
        f"imap://{mailbox.user}:{password or mailbox.password}@127.0.0.1:{port}/{folder}"
        "?security=plain"
    )


def test_all_well_plain(mailbox):
    report = check(plain_url(mailbox), timeout=5)
    assert report.ok, report.sentence
    assert report.exit_code == 0
    assert [step.name for step in report.steps] == [
        "dns",
        "tcp",
        "greeting",
        "capabilities",
        "login",
        "select",
    ]
    assert report.sentence.startswith("all well")
    assert mailbox.password not in json.dumps(report.to_dict())


def test_all_well_with_tls_and_starttls(mailbox, tls_ca):
    tls = f"imaps://{mailbox.user}:{mailbox.password}@127.0.0.1:{mailbox.server.imaps_port}/INBOX"
    assert check(tls, ssl_context=tls_ca.client_context()).ok
    starttls = f"imap://{mailbox.user}:{mailbox.password}@127.0.0.1:{mailbox.server.imap_port}/"
    report = check(starttls, ssl_context=tls_ca.client_context())
    assert report.ok, report.sentence
    assert "starttls" in [step.name for step in report.steps]


def test_unknown_host():
    report = check("imaps://u:p@no-such-host.invalid/INBOX", timeout=5)
    assert report.steps[-1].name == "dns"
    assert "cannot be resolved" in report.sentence
    assert report.exit_code == 4


def test_connection_refused(mailbox):
    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as proxy:
        proxy.refuse_new()
        report = check(plain_url(mailbox, proxy.port), timeout=2)
    assert report.steps[-1].name == "tcp"
    assert "connection refused" in report.sentence
    assert report.exit_code == 4


def test_connection_timing_out_behind_a_firewall(mailbox):
    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as proxy:
        proxy.drop_new()
        report = check(plain_url(mailbox, proxy.port), timeout=1)
    assert report.steps[-1].name == "greeting"
    assert "never greeted" in report.sentence
    assert "firewall" in report.sentence
    assert report.exit_code == 4


def test_untrusted_certificate(mailbox, tls_ca):
    url = f"imaps://{mailbox.user}:pw@127.0.0.1:{mailbox.server.imaps_port}/INBOX"
    report = check(url, ssl_context=tls_ca.wrong_context(), timeout=5)
    assert report.steps[-1].name == "tls"
    assert "not trusted" in report.sentence
    assert report.exit_code == 5


def test_certificate_for_another_host(mailbox, tls_ca):
    with FaultProxy(("127.0.0.1", mailbox.server.imaps_port), listen=("127.0.0.2", 0)) as proxy:
        url = f"imaps://{mailbox.user}:pw@127.0.0.2:{proxy.port}/INBOX"
        report = check(url, ssl_context=tls_ca.client_context(), timeout=5)
    assert "another host name" in report.sentence
    assert report.exit_code == 5


def test_starttls_not_offered(mailbox, tls_ca):
    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as proxy:
        proxy.rewrite(b"STARTTLS", b"XTARTTLS")
        url = f"imap://{mailbox.user}:never-sent@127.0.0.1:{proxy.port}/INBOX"
        report = check(url, ssl_context=tls_ca.client_context(), timeout=5)
    assert report.steps[-1].name == "starttls"
    assert "does not offer STARTTLS" in report.sentence
    assert report.exit_code == 5


def test_server_closing_the_connection(mailbox):
    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as proxy:
        proxy.cut_after(0)
        report = check(plain_url(mailbox, proxy.port), timeout=5)
    # Closed at once: seen while the greeting is awaited, or (the RST arriving first) while
    # connecting. Either way the server is reachable and turns the client away.
    assert report.steps[-1].name in ("tcp", "greeting"), report.steps
    if report.steps[-1].name == "greeting":
        assert "closed the connection" in report.sentence
    else:
        assert "reset the connection as it was made" in report.sentence
    assert report.exit_code == 5


def test_credentials_rejected(mailbox):
    report = check(plain_url(mailbox, password="wrong-pw-777"), timeout=5)
    assert report.steps[-1].name == "login"
    assert "rejected the credentials" in report.sentence
    assert "wrong-pw-777" not in report.sentence
    assert report.exit_code == 5


def test_folder_missing(mailbox):
    report = check(plain_url(mailbox, folder="Nope"), timeout=5)
    assert report.steps[-1].name == "select"
    assert "'Nope' cannot be selected" in report.sentence
    assert report.exit_code == 5


def test_command_line_check(mailbox):
    out = io.StringIO()
    assert main(["check", plain_url(mailbox)], out=out) == 0
    assert "all well" in out.getvalue()
    out = io.StringIO()
    code = main(["check", plain_url(mailbox, folder="Nope"), "--json"], out=out)
    assert code == 5
    data = json.loads(out.getvalue())
    assert data["exit_code"] == 5
    assert data["steps"][-1]["name"] == "select"
    assert main(["check", "ftp://x"], out=io.StringIO()) == 2


@pytest.mark.parametrize("url", ["imaps://host-without-user/INBOX", "imap://u:p@h/?security=weird"])
def test_bad_urls_are_usage_errors(url):
    assert main(["check", url], out=io.StringIO()) == 2


def test_pop3_all_well_plain_and_pop3s(mailbox, tls_ca):
    mailbox.save(b"Subject: one\r\n\r\nx\r\n")
    plain = (
        f"pop3://{mailbox.user}:{mailbox.password}@127.0.0.1:{mailbox.server.pop3_port}"
        "/?security=plain"
    )
    report = check(plain, timeout=5)
    assert report.ok, report.sentence
    assert [step.name for step in report.steps][-2:] == ["login", "stat"]
    assert report.steps[-1].detail == "1 messages"
    secure = f"pop3s://{mailbox.user}:{mailbox.password}@127.0.0.1:{mailbox.server.pop3s_port}/"
    assert check(secure, ssl_context=tls_ca.client_context(), timeout=5).ok
    stls = f"pop3://{mailbox.user}:{mailbox.password}@127.0.0.1:{mailbox.server.pop3_port}/"
    report = check(stls, ssl_context=tls_ca.client_context(), timeout=5)
    assert report.ok, report.sentence
    assert "starttls" in [step.name for step in report.steps]


@pytest.mark.parametrize(("scheme", "ports"), [("imaps", "993"), ("pop3s", "995")])
def test_implicit_tls_to_a_plain_port_names_the_protocols_ports(mailbox, tls_ca, scheme, ports):
    server = mailbox.server
    port = server.imap_port if scheme == "imaps" else server.pop3_port
    url = f"{scheme}://{mailbox.user}:{mailbox.password}@127.0.0.1:{port}/"
    report = check(url, ssl_context=tls_ca.client_context(), timeout=5)
    assert report.steps[-1].name == "tls"
    assert f"is this a TLS port? ({ports} is implicit TLS" in report.sentence


def test_pop3_stls_stripped_and_bad_password(mailbox, tls_ca):
    with FaultProxy(("127.0.0.1", mailbox.server.pop3_port)) as proxy:
        proxy.rewrite(b"STLS", b"XTLS")
        url = f"pop3://{mailbox.user}:never-sent@127.0.0.1:{proxy.port}/"
        report = check(url, ssl_context=tls_ca.client_context(), timeout=5)
    assert "does not offer STLS" in report.sentence
    assert report.exit_code == 5
    bad = f"pop3://{mailbox.user}:wrong-pw@127.0.0.1:{mailbox.server.pop3_port}/?security=plain"
    report = check(bad, timeout=5)
    assert report.steps[-1].name == "login"
    assert "rejected the credentials" in report.sentence
    assert "wrong-pw" not in report.sentence


@pytest.mark.parametrize(
    ("url", "port", "security"),
    [
        ("pop3s://u:p@example.com/", 995, "tls"),
        ("pop3://u:p@example.com/", 110, "starttls"),
        ("pop3://u:p@example.com:1110/?security=plain", 1110, "plain"),
        ("pop3s://u:p@[::1]/", 995, "tls"),
    ],
)
def test_pop3_urls(url, port, security):
    from mailtether import ImapSettings

    settings = ImapSettings.from_pop3_url(url)
    assert (settings.port, settings.security) == (port, security)


def test_pop3_url_must_be_pop3():
    from mailtether import ConfigError, ImapSettings

    with pytest.raises(ConfigError, match="POP3 URL"):
        ImapSettings.from_pop3_url("imaps://u:p@example.com/")


def test_a_greeting_trickled_slower_than_the_step_timeout_fails_at_the_deadline(mailbox):
    # Each byte comes well within the timeout; the whole greeting does not.
    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as proxy:
        proxy.set_bandwidth(20)
        report = check(plain_url(mailbox, proxy.port), timeout=1)
    assert report.steps[-1].name == "greeting"
    assert "never greeted within 1 s" in report.sentence
    assert report.steps[-1].seconds < 1.5


def test_a_literal_in_an_answer_is_read_whole():
    # The literal holds the line that would end SELECT's answer (c3: the third command); it
    # is data, not the end.
    literal = b"c3 NO not the end\r\n"
    select = b'* LIST () "/" {%d}\r\n%s\r\n* 7 EXISTS\r\nTAG OK [READ-WRITE] done\r\n' % (
        len(literal),
        literal,
    )
    with Scripted.imap({b"SELECT": select}) as server:
        report = check(f"imap://u:p@127.0.0.1:{server.port}/INBOX?security=plain", timeout=5)
    assert report.ok, report.sentence
    assert report.steps[-1].detail == "7 messages"


def test_a_line_past_the_bound_is_named():
    capability = b"* CAPABILITY IMAP4rev1 " + b"X" * 70_000 + b"\r\nTAG OK done\r\n"
    with Scripted.imap({b"CAPABILITY": capability}) as server:
        report = check(f"imap://u:p@127.0.0.1:{server.port}/INBOX?security=plain", timeout=5)
    assert report.steps[-1].name == "capabilities"
    assert "answered CAPABILITY with a line longer than 65536 bytes" in report.sentence
    assert report.exit_code == 5
