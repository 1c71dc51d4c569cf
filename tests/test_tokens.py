"""Token sources and the OAuth2 login pieces that need no server."""

from __future__ import annotations

import base64
import sys

import pytest

from mailtether import (
    AccessToken,
    ConfigError,
    FixedToken,
    ImapSettings,
    TokenCommand,
    TokenRevoked,
    TokenSource,
    TokenUnavailable,
)
from mailtether._redaction import redact
from mailtether._sasl import oauth2_mechanism, sasl_string
from mailtether.testing import FakeClock


def test_a_token_never_shows_and_is_redacted_once_made():
    token = AccessToken("ya29.a0-very-secret", expires_at=100.0)
    assert "very-secret" not in repr(token)
    assert redact("Bearer ya29.a0-very-secret") == "Bearer ***"
    assert token.expires_within(60, now=50.0)
    assert not token.expires_within(10, now=50.0)
    assert not AccessToken("no-expiry-said").expires_within(10**9, now=0.0)


@pytest.mark.parametrize("value", ["", "two\nlines", 42])
def test_a_bad_token_is_refused_by_name(value):
    with pytest.raises(ConfigError, match="access token"):
        AccessToken(value)  # type: ignore[arg-type]


def test_a_fixed_token_is_a_token_source_and_cannot_be_renewed():
    source = FixedToken("fixed-token-value")
    assert isinstance(source, TokenSource)
    assert source.token().value == source.token(fresh=True).value == "fixed-token-value"
    assert "fixed-token-value" not in repr(source)


def test_settings_take_a_token_source_only_for_oauth2():
    source = FixedToken("a-token-for-alice")
    settings = ImapSettings("imap.example.com", "alice", source, auth="oauth2")
    assert settings.password is source
    assert "a-token-for-alice" not in repr(settings)
    with pytest.raises(ConfigError, match="auth='oauth2'"):
        ImapSettings("imap.example.com", "alice", source)


def test_the_mechanism_follows_the_servers_capabilities():
    assert oauth2_mechanism("oauth2", [b"IMAP4rev1", b"AUTH=OAUTHBEARER"]) == "OAUTHBEARER"
    assert oauth2_mechanism("oauth2", [b"AUTH=XOAUTH2"]) == "XOAUTH2"
    assert oauth2_mechanism("xoauth2", [b"AUTH=OAUTHBEARER"]) == "XOAUTH2"
    assert oauth2_mechanism("oauthbearer", []) == "OAUTHBEARER"


def test_the_sasl_strings_are_the_rfcs():
    xoauth2 = base64.b64decode(sasl_string("XOAUTH2", "alice@example.com", "tok"))
    assert xoauth2 == b"user=alice@example.com\x01auth=Bearer tok\x01\x01"
    bearer = base64.b64decode(sasl_string("OAUTHBEARER", "a,b=c", "tok"))
    assert bearer == b"n,a=a=2Cb=3Dc,\x01auth=Bearer tok\x01\x01"  # RFC 7628 3.1, RFC 5801


def command(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_token_command_is_run_again_when_its_token_is_due():
    clock = FakeClock()
    counter = "import itertools, pathlib, sys; p = pathlib.Path(sys.argv[1]); "
    counter += "n = int(p.read_text() or 0) + 1 if p.exists() else 1; p.write_text(str(n)); "
    counter += "print(f'token-number-{n}')"
    import tempfile

    with tempfile.NamedTemporaryFile(delete=False) as file:
        state = file.name
    source = TokenCommand([*command(counter), state], lifetime=600, margin=60, clock=clock)
    assert source.token().value == "token-number-1"
    assert source.token().value == "token-number-1", "still valid: not run again"
    clock.advance(541)  # within the margin of its expiry
    assert source.token().value == "token-number-2"
    assert source.token(fresh=True).value == "token-number-3"


def test_a_failing_token_command_is_unavailable_in_words_without_the_token():
    source = TokenCommand(command("import sys; print('half-a-secret-token'); sys.exit(3)"))
    with pytest.raises(TokenUnavailable, match="exit status 3") as raised:
        source.token()
    assert "half-a-secret-token" not in str(raised.value)
    with pytest.raises(ConfigError):
        TokenCommand("pizauth show me")  # type: ignore[arg-type]


def test_revoked_is_a_credential_failure_and_unavailable_a_connection_fault():
    from mailtether import AuthenticationFailed, ConnectionLost

    assert issubclass(TokenRevoked, AuthenticationFailed)
    assert issubclass(TokenUnavailable, ConnectionLost)
    assert TokenUnavailable("x").retryable
    assert not TokenRevoked("x").retryable


def refusal_of(answers: dict[bytes, bytes]) -> Exception:
    """What opening a connection to a scripted server with *answers* raises."""
    from mailtether import ImapConnection, MailServerError
    from scripted import Scripted

    with Scripted.imap(answers) as server:
        settings = ImapSettings(
            "127.0.0.1", "alice", "a-long-secret", port=server.port, security="plain"
        )
        with pytest.raises(MailServerError) as raised:
            ImapConnection.open(settings)
    return raised.value


def test_microsoft_365s_not_connected_after_login_is_a_reconnect_not_a_missing_folder():
    from mailtether import ConnectionLost, FolderMissing

    error = refusal_of({b"SELECT": b"TAG BAD User is authenticated but not connected.\r\n"})
    assert isinstance(error, ConnectionLost)
    assert not isinstance(error, FolderMissing)
    assert "authenticated but not connected" in str(error)


def test_a_login_refused_for_the_servers_own_trouble_is_retried_not_blocked():
    from mailtether import AuthenticationFailed, ConnectionLost

    error = refusal_of({b"LOGIN": b"TAG NO [UNAVAILABLE] Temporary authentication failure.\r\n"})
    assert isinstance(error, ConnectionLost)
    assert not isinstance(error, AuthenticationFailed)
    assert "UNAVAILABLE" in str(error)


def test_the_token_command_flag_is_split_as_a_shell_would_and_turns_oauth2_on():
    from mailtether._settings import with_tokens
    from mailtether.cli import _flags

    tokens = _flags.token_command("pizauth show 'my work'")
    assert tokens is not None
    assert tokens.argv == ("pizauth", "show", "my work")
    assert _flags.token_command("") is None
    with pytest.raises(ConfigError, match="--token-command cannot be read"):
        _flags.token_command("pizauth show 'unclosed")
    settings = with_tokens(ImapSettings.from_url("imaps://alice@imap.example.com/"), tokens)
    assert settings.auth == "oauth2"
    assert settings.password is tokens
    bearer = ImapSettings.from_url("imaps://alice@imap.example.com/?auth=oauthbearer")
    assert with_tokens(bearer, tokens).auth == "oauthbearer"


def test_no_refresh_token_client_secret_or_token_in_what_a_refusal_says():
    """A token endpoint that quotes what it got back: none of it shows."""
    import json
    import threading
    import urllib.parse
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from mailtether import RefreshTokenFlow

    class Echo(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            form = dict(
                urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])))
            )
            said = f"refresh_token={form.get(b'refresh_token', b'').decode()} with "
            said += f"client_secret={form.get(b'client_secret', b'').decode()} is no good"
            body = json.dumps({"error": "invalid_grant", "error_description": said}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/token"
        tokens = RefreshTokenFlow(
            url, "client", "rt-0123456789", client_secret="cs-9876543210", account="alice"
        )
        with pytest.raises(TokenRevoked) as raised:
            tokens.token()
    finally:
        server.shutdown()
        server.server_close()
    text = f"{raised.value} {raised.value!r} {raised.value.args}"
    assert "invalid_grant" in text
    assert "alice" in text
    assert "rt-0123456789" not in text
    assert "cs-9876543210" not in text
    assert "rt-0123456789" not in repr(tokens)
