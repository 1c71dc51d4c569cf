"""The one redaction point: each form of a secret, each channel that goes through it."""

from __future__ import annotations

import base64
import json
import logging
import re
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mailtether import (
    AuthenticationFailed,
    ConfigError,
    ImapSettings,
    MemoryStore,
    SourceState,
    SQLiteStore,
    StatusBoard,
)
from mailtether._redaction import REDACTED, SHORTEST, redact, redacting_logger, remember_secret
from mailtether._status import REASON_MOST

SECRETS = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x24F, exclude_categories=("Cs",)),
    min_size=8,
    max_size=24,
).filter(lambda text: text.strip() and "\x7f" not in text)


def forms(secret: str, user: str = "alice") -> list[str]:
    """The secret as a server, a library or a log could show it (at least 4 characters)."""
    quoted = secret.replace("\\", "\\\\").replace('"', '\\"')
    shown = [secret, quoted]
    for text in (secret, quoted):
        shown += [repr(text)[1:-1], repr(text.encode())[2:-1], json.dumps(text)[1:-1]]
    encoded = quote(secret, safe="")
    lower = re.sub("%[0-9A-F]{2}", lambda escape: escape[0].lower(), encoded)
    shown += [encoded, lower, quote_plus(secret)]
    raw = secret.encode()
    for sasl in (
        b"\0" + user.encode() + b"\0" + raw,
        b"user=" + user.encode() + b"\x01auth=Bearer " + raw + b"\x01\x01",
        b"n,a=" + user.encode() + b",\x01auth=Bearer " + raw + b"\x01\x01",
    ):
        shown += [base64.b64encode(sasl).decode(), base64.urlsafe_b64encode(sasl).decode()]
    return [form for form in shown if len(form) >= SHORTEST]


def sasl_cores(secret: str) -> list[str]:
    """What of each SASL string's base64 depends on the secret alone: must not survive."""
    raw = secret.encode()
    found = []
    for prefix in (b"\0alice\0", b"user=alice\x01auth=Bearer ", b"n,a=alice,\x01auth=Bearer "):
        encoded = base64.b64encode(prefix + raw + b"\x01\x01").decode()
        first = -(-8 * len(prefix) // 6)
        last = 8 * (len(prefix) + len(raw)) // 6
        found.append(encoded[first:last])
    return found


@settings(max_examples=200, deadline=None)
@given(SECRETS)
def test_every_form_of_a_secret_is_removed(secret):
    assume("alice" not in secret)
    remember_secret(secret)
    text = " | ".join(forms(secret))
    cleaned = redact(text)
    assert secret not in cleaned
    for form in forms(secret)[:12]:  # the textual forms: gone whole
        assert form not in cleaned, form
    for core in sasl_cores(secret):  # base64: nothing that depends on the secret alone
        assert core not in cleaned, core


def test_a_secret_shorter_than_four_characters_is_not_remembered():
    remember_secret("abc")
    assert redact("abc abc") == "abc abc"


def test_text_without_secrets_comes_back_as_it_is():
    remember_secret("a-long-secret")
    text = "selecting 'INBOX': the server said NO [NONEXISTENT]"
    assert redact(text) is text


def test_thousands_of_secrets_are_all_found():
    for n in range(3000):
        remember_secret(f"secret-{n:04d}-of-a-fleet")
    assert (
        redact("a secret-0007-of-a-fleet and secret-2999-of-a-fleet")
        == f"a {REDACTED} and {REDACTED}"
    )


def test_exceptions_never_hold_a_secret():
    ImapSettings("imap.example.com", "alice", 'q"uux\\zz', security="tls")
    error = AuthenticationFailed('LOGIN: NO wrong password "q\\"uux\\\\zz"', hint='q"uux\\zz')
    for text in (str(error), repr(error), error.message, error.hint, *map(str, error.args)):
        assert "uux" not in text, text
    assert "uux" not in str(ConfigError('bad value q"uux\\zz'))


def test_log_records_are_cleaned_arguments_and_tracebacks_included(caplog):
    remember_secret("tok-en-1234567")
    log = redacting_logger("mailtether.test")
    with caplog.at_level(logging.DEBUG, logger="mailtether.test"):
        log.info("token %s in %r", "tok-en-1234567", b"tok-en-1234567")
        try:
            raise ValueError("the server echoed tok-en-1234567")
        except ValueError:
            log.exception("failed")
        log.info("a bad call %s %s", "only one")  # malformed: still handled, still clean
    text = caplog.text
    assert "tok-en-1234567" not in text
    assert text.count(REDACTED) >= 3
    assert "the server echoed ***" in text


def test_imapclients_trace_logger_is_cleaned(caplog):
    import mailtether.imap._connection  # noqa: F401  (puts the filter on imapclient's loggers)

    remember_secret('hunter2"x')
    with caplog.at_level(logging.DEBUG, logger="imapclient.imaplib"):
        logging.getLogger("imapclient.imaplib").debug('> b\'a001 LOGIN alice "hunter2\\\\"x"\'')
    assert "hunter2" not in caplog.text
    assert "LOGIN alice" in caplog.text


def test_a_status_reason_is_one_clean_line_of_bounded_length():
    remember_secret("s3cret-pass")
    board = StatusBoard(MemoryStore())
    reason = "the server said: s3cret-pass\r\n" + "mail body line\x00\x07 " * 200
    status = board.set("source", SourceState.RETRYING, reason=reason)
    assert "s3cret-pass" not in status.reason
    assert "\n" not in status.reason
    assert "\x00" not in status.reason
    assert len(status.reason) <= REASON_MOST
    assert board.get("source").reason == status.reason


@pytest.mark.parametrize("url", ["imaps://alice:p%2Fass%3Fw0rd@imap.example.com/INBOX"])
def test_a_password_read_from_a_url_is_remembered_decoded_and_encoded(url):
    ImapSettings.from_url(url)
    assert redact("p/ass?w0rd and p%2Fass%3Fw0rd") == f"{REDACTED} and {REDACTED}"


@pytest.mark.parametrize("secret", ["exit_code", "0000", "sentence"])
def test_json_output_stays_json_whatever_the_secret(secret, tmp_path):
    """A secret that is also a key, or digits inside a number: redacted in values only."""
    import io

    from mailtether.cli._main import main

    remember_secret(secret)
    store = SQLiteStore(tmp_path / "s.db")
    board = StatusBoard(store)
    board.set("source", SourceState.BLOCKED, reason=f"the server said {secret} 10000.5")
    store.close()
    out = io.StringIO()
    main(["status", "--store", f"sqlite:{tmp_path / 's.db'}", "--json"], out=out)
    data = json.loads(out.getvalue())  # still JSON
    assert data["sources"][0]["reason"].startswith(f"the server said {REDACTED}")
    out = io.StringIO()
    main(["check", "imap://u:pw@127.0.0.1:9/INBOX?security=plain", "--json"], out=out)
    report = json.loads(out.getvalue())
    assert "exit_code" in report
    assert "sentence" in report
