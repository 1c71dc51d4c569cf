"""The OAuth2 test bed works: a local token endpoint, and a real Dovecot checking its tokens.

These tests use imapclient and poplib directly, not mailtether: they prove the bed (issue 19)
that the library's OAuth2 support is to be built and tested on.

The pieces
==========

``servers.oauth2.OAuth2Server``: a token endpoint (RFC 6749: ``refresh_token`` and
``client_credentials`` grants, rotating refresh tokens, RFC 6749 error JSON) and, on a port of
its own, an RFC 7662 introspection endpoint that Dovecot asks about every token. Access tokens
live ``token_lifetime`` seconds on the server's own clock; Dovecot learns nothing about a token
but what introspection says, so "expired" means what the server says, with no clock to share.

``servers.dovecot.DovecotServer(ca, oauth2=server)``: the usual test Dovecot plus OAuth2. The
default server (the ``dovecot`` fixture) is unchanged.

The Dovecot settings (checked on Dovecot 2.3.19.1, Debian), and why
===================================================================

In dovecot.conf, added to the usual configuration::

    auth_mechanisms = plain login apop xoauth2 oauthbearer
    auth_cache_size = 0
    passdb {
      driver = passwd-file
      mechanisms = plain login apop none     # added: the password users, as before
      args = scheme=PLAIN username_format=%u <root>/passwd
    }
    passdb {
      driver = oauth2
      mechanisms = xoauth2 oauthbearer
      args = <root>/dovecot-oauth2.conf.ext
    }

and in dovecot-oauth2.conf.ext::

    introspection_mode = post
    introspection_url = http://dovecot:<password>@127.0.0.1:<port>/introspect
    username_attribute = username
    active_attribute = active
    active_value = true
    timeout_msecs = 5000

* ``auth_mechanisms``: Dovecot offers ``AUTH=XOAUTH2`` and ``AUTH=OAUTHBEARER`` (IMAP
  CAPABILITY, POP3 SASL) only when listed. Both work over IMAP (plain and TLS ports) and POP3
  (tested on the plain port; ``disable_plaintext_auth = no`` as in the base configuration).
* ``passdb oauth2`` with ``mechanisms = xoauth2 oauthbearer``, and ``mechanisms = plain login
  apop none`` on the password file: each login goes to the one passdb for its mechanism, so an
  access token is never compared with a file password (PLAIN with a token as password is
  refused, see the test) and a wrong password never reaches the introspection endpoint.
  ``none`` (a lookup with no mechanism) is needed: the ``static`` userdb checks that a user
  exists with a passdb lookup for doveadm (``server.save``); without ``none`` no
  passdb answers it and ``doveadm save`` fails ("userdb lookup(user20): Auth USER lookup
  failed"). The oauth2 passdb cannot answer such lookups, so users exist through the file.
* ``introspection_mode = post``: RFC 7662 (``POST token=<access token>``, form-encoded). The
  default mode, ``auth`` (GET with ``Authorization: Bearer``), is a userinfo-style endpoint;
  against this server it makes every login ``NO [UNAVAILABLE]``. No ``tokeninfo_url``: without
  it 2.3.19 goes straight to introspection.
* Credentials in ``introspection_url``: RFC 7662 wants the resource server to authenticate; the
  endpoint here demands HTTP Basic, and Dovecot sends the URL's user and password as Basic.
  Without them the endpoint answers 401 and every login is ``NO [UNAVAILABLE]`` (the auth log:
  "Introspection failed: No username returned").
* ``username_attribute = username`` (default ``email``): the introspection answer must name the
  token's owner, and Dovecot compares it with the login name (XOAUTH2 ``user=``, OAUTHBEARER
  ``a=``): another user's valid token is refused. The default ``username_format = %Lu``
  lowercases it; the pool users (``userN``) are lowercase already.
* ``active_attribute = active`` / ``active_value = true``: the RFC 7662 flag. On 2.3.19 an
  ``{"active": false}`` answer already fails the login without them (the auth log: "Provided
  token is not valid"), checked by removing them; they are kept as Dovecot's documentation has
  them for an RFC 7662 server, so that the flag is checked by name.
* ``auth_cache_size = 0`` (also 2.3's default; written out so no later change slips in): with
  ``auth_cache_size = 1M`` an expired token logged in again from the cache (tried: the same
  XOAUTH2 login succeeded after the token's lifetime). With 0 every login asks the
  introspection endpoint (``test_every_login_asks_the_introspection_endpoint``).
* ``timeout_msecs``: how long a login waits for introspection; a refused connection fails at
  once anyway.
* Users: the userdb is the base configuration's ``static`` one (any name, home and maildir
  under the server's root), so the password pool users (``server.add_user()``) are the OAuth2
  users too: the same user logs in with its password or with a token.

What Dovecot answers (what the library will see)
================================================

* Success: ``OK ... Logged in`` (IMAP), ``+OK ...`` (POP3), with the initial response on
  the command line (SASL-IR, as imapclient and ``AUTH XOAUTH2 <base64>`` send it).
* A token refused (expired, revoked, unknown, another user's): first a challenge with a
  base64 JSON error, XOAUTH2 ``{"status":"401","schemes":"bearer","scope":"mail"}``,
  OAUTHBEARER ``{"status":"invalid_token"}``; the client answers (an empty line for XOAUTH2,
  ``AQ==``, RFC 7628's %x01, for OAUTHBEARER; imapclient re-sends its string, which Dovecot
  also takes as the end), then ``NO [AUTHENTICATIONFAILED] Authentication failed.`` (IMAP),
  ``-ERR [AUTH] Authentication failed.`` (POP3), about 0.5 s after the attempt (Dovecot's
  auth failure flush interval; ``auth_failure_delay = 0`` does not shorten it).
* The introspection endpoint down (503, or connection refused): no challenge, but (again after
  about 0.5 s) ``NO [UNAVAILABLE] Temporary authentication failure.`` (IMAP),
  ``-ERR [SYS/TEMP] ...`` (POP3): a temporary failure the library must retry, never a
  credential failure.

Limits
======

* A token is checked only at login: a session logged in stays logged in after the token
  expires (``test_a_session_outlives_its_token``); only the next login needs a fresh token.
  Real providers may differ here; this bed does not model a server ending a session.
* No SMTP here: Dovecot 2.3 has no submission server configured in this bed (the issue's SMTP
  part needs aiosmtpd with an AUTH handler, which can ask the same introspection endpoint).
"""

from __future__ import annotations

import base64
import contextlib
import json
import poplib
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from servers.dovecot import DovecotServer
from servers.oauth2 import OAuth2Error, OAuth2Server

pytestmark = pytest.mark.servers

LIFETIME = 2.0  # the oauth2 fixture's token lifetime (tests/conftest.py)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _endpoints_up(oauth2: OAuth2Server) -> Iterator[None]:
    yield
    oauth2.up()


@pytest.fixture
def user(oauth2_dovecot: DovecotServer) -> str:
    return oauth2_dovecot.add_user()


# -- helpers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def imap(server: DovecotServer, *, ssl: bool = False) -> Iterator[IMAPClient]:
    if ssl:
        client = IMAPClient(
            "127.0.0.1",
            port=server.imaps_port,
            ssl=True,
            ssl_context=server.ca.client_context(),
            timeout=10,
        )
    else:
        client = IMAPClient("127.0.0.1", port=server.imap_port, ssl=False, timeout=10)
    try:
        yield client
    finally:
        try:
            client.logout()
        except Exception:
            client.shutdown()


def xoauth2(user: str, token: str) -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def oauthbearer(user: str, token: str) -> bytes:
    return f"n,a={user},\x01auth=Bearer {token}\x01\x01".encode()


def imap_login(server: DovecotServer, user: str, token: str, mechanism: str) -> None:
    """Log in with *token* by *mechanism* through imapclient, SELECT INBOX, log out."""
    with imap(server) as client:
        if mechanism == "XOAUTH2":
            client.oauth2_login(user, token)
        else:
            client.oauthbearer_login(user, token)
        assert client.select_folder("INBOX")[b"EXISTS"] == 0


def imap_refused(server: DovecotServer, user: str, token: str, mechanism: str) -> str:
    """The text of the login failure (raises if the login succeeds)."""
    with pytest.raises(LoginError) as failure:
        imap_login(server, user, token, mechanism)
    return str(failure.value)


def raw_authenticate(port: int, mechanism: str, initial: bytes, answer: bytes) -> list[bytes]:
    """``AUTHENTICATE`` by hand: every line the server sends after the greeting."""
    import socket

    lines = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        stream = conn.makefile("rwb")
        stream.readline()
        stream.write(b"a AUTHENTICATE %s %s\r\n" % (mechanism.encode(), base64.b64encode(initial)))
        stream.flush()
        while True:
            line = stream.readline()
            lines.append(line.rstrip(b"\r\n"))
            if line.startswith(b"+ "):
                stream.write(answer + b"\r\n")
                stream.flush()
            elif line.startswith(b"a ") or not line:
                break
        stream.write(b"b LOGOUT\r\n")
        stream.flush()
        stream.close()
    return lines


@contextlib.contextmanager
def pop3(server: DovecotServer) -> Iterator[poplib.POP3]:
    client = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
    try:
        yield client
    finally:
        try:
            client.quit()
        except (poplib.error_proto, OSError):
            client.close()


def pop3_auth(client: poplib.POP3, mechanism: str, initial: bytes) -> bytes:
    """``AUTH <mechanism> <base64>`` (RFC 5034 initial response); the final answer.

    A refused token first gets a ``+ <base64 JSON>`` challenge: answer it as RFC 7628 says
    (an empty line for XOAUTH2, ``AQ==`` for OAUTHBEARER); the server then says ``-ERR``,
    which poplib raises as ``error_proto``.
    """
    answer = client._shortcmd(f"AUTH {mechanism} {base64.b64encode(initial).decode()}")
    if answer.startswith(b"+ "):
        error = json.loads(base64.b64decode(answer[2:]))
        assert "status" in error
        client._shortcmd("" if mechanism == "XOAUTH2" else "AQ==")
        raise AssertionError("the server accepted an answer to its error challenge")
    return answer


def wait_expired(oauth2: OAuth2Server, token: str) -> None:
    """Sleep until the server's clock ends *token* (at most its lifetime and a second)."""
    started = time.monotonic()
    while oauth2.is_active(token):
        assert time.monotonic() - started < LIFETIME + 1
        time.sleep(0.02)


def post(url: str, form: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# -- the token endpoint --------------------------------------------------------------------------


def test_a_refresh_answers_rfc6749_json_and_rotates_the_refresh_token(oauth2, user):
    refresh_token = oauth2.issue_refresh_token(user)
    issued, refreshes = oauth2.tokens_issued, oauth2.refreshes
    status, body = post(
        oauth2.token_url,
        {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "x"},
    )
    assert (status, body["error"]) == (401, "invalid_client")
    status, body = post(
        oauth2.token_url,
        {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": oauth2.client_id,
        },
    )
    assert status == 200
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == LIFETIME
    assert body["refresh_token"] != refresh_token
    assert oauth2.access_tokens(user) == {body["access_token"]}
    assert oauth2.refresh_tokens(user) == {body["refresh_token"]}
    assert (oauth2.tokens_issued, oauth2.refreshes) == (issued + 1, refreshes + 1)

    # The old refresh token is dead after rotation; the new one works, once.
    with pytest.raises(OAuth2Error) as rotated:
        oauth2.refresh(refresh_token)
    assert (rotated.value.status, rotated.value.error) == (400, "invalid_grant")
    again = oauth2.refresh(body["refresh_token"])
    assert again.refresh_token not in (None, refresh_token, body["refresh_token"])
    assert oauth2.token_requests[-1]["refresh_token"] == body["refresh_token"]


def test_without_rotation_the_same_refresh_token_keeps_working():
    with OAuth2Server(rotate_refresh_tokens=False) as server:
        refresh_token = server.issue_refresh_token("someone")
        first, second = server.refresh(refresh_token), server.refresh(refresh_token)
        assert first.refresh_token == second.refresh_token == refresh_token
        assert first.access_token != second.access_token
        assert server.access_tokens("someone") == {first.access_token, second.access_token}


def test_a_confidential_client_must_send_its_secret_in_the_form_or_by_basic():
    with OAuth2Server(client_secret="s3cret", token_lifetime=1.5) as server:
        refresh_token = server.issue_refresh_token("someone")
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        status, body = post(server.token_url, {**form, "client_id": server.client_id})
        assert (status, body["error"]) == (401, "invalid_client")
        status, body = post(server.token_url, form, basic(server.client_id, "wrong"))
        assert (status, body["error"]) == (401, "invalid_client")
        status, body = post(server.token_url, form, basic(server.client_id, "s3cret"))
        assert status == 200
        assert body["expires_in"] == 1.5
        grant = server.refresh(body["refresh_token"])  # the secret in the form
        assert grant.refresh_token


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({}, 400, "invalid_request"),
        (
            {"grant_type": "password", "username": "u", "password": "p"},
            400,
            "unsupported_grant_type",
        ),
        (
            {"grant_type": "refresh_token", "client_id": "mailtether-test-client"},
            400,
            "invalid_request",
        ),
        (
            {
                "grant_type": "refresh_token",
                "refresh_token": "nope",
                "client_id": "mailtether-test-client",
            },
            400,
            "invalid_grant",
        ),
        (
            {"grant_type": "client_credentials", "client_id": "nope", "client_secret": "x"},
            401,
            "invalid_client",
        ),
    ],
)
def test_token_endpoint_errors_are_rfc6749_json(oauth2, form, status, error):
    answer_status, body = post(oauth2.token_url, form)
    assert (answer_status, body["error"]) == (status, error)
    assert body["error_description"]


def test_a_revoked_grant_is_invalid_grant_but_its_access_token_lives_out_its_time(
    oauth2, oauth2_dovecot, user
):
    grant = oauth2.refresh(oauth2.issue_refresh_token(user))
    assert grant.refresh_token is not None
    oauth2.revoke(user)
    with pytest.raises(OAuth2Error) as revoked:
        oauth2.refresh(grant.refresh_token)
    assert (revoked.value.status, revoked.value.error) == (400, "invalid_grant")
    assert "revoked" in revoked.value.description
    assert oauth2.refresh_tokens(user) == set()
    imap_login(oauth2_dovecot, user, grant.access_token, "XOAUTH2")

    # A new consent works again; revoking with access_tokens=True ends the session's token too.
    grant = oauth2.refresh(oauth2.issue_refresh_token(user))
    oauth2.revoke(user, access_tokens=True)
    assert "AUTHENTICATIONFAILED" in imap_refused(
        oauth2_dovecot, user, grant.access_token, "XOAUTH2"
    )


@pytest.mark.parametrize("mode", [503, 429, "refuse"])
def test_the_token_endpoint_down_answers_503_or_refuses(oauth2, oauth2_dovecot, user, mode):
    grant = oauth2.refresh(oauth2.issue_refresh_token(user))
    assert grant.refresh_token is not None
    oauth2.down(mode)
    if mode == "refuse":
        with pytest.raises(urllib.error.URLError) as refused:
            oauth2.refresh(grant.refresh_token)
        assert isinstance(refused.value.reason, ConnectionRefusedError)
    else:
        status, body = post(
            oauth2.token_url,
            {"grant_type": "refresh_token", "refresh_token": grant.refresh_token},
        )
        assert (status, body["error"]) == (mode, "temporarily_unavailable")
    # The mail server still checks tokens: only the token endpoint is down.
    imap_login(oauth2_dovecot, user, grant.access_token, "OAUTHBEARER")
    oauth2.up()
    # The refresh token did not rotate while the endpoint was down.
    assert oauth2.refresh(grant.refresh_token).access_token


def test_client_credentials_give_an_app_one_mailbox(oauth2, oauth2_dovecot, user):
    other = oauth2_dovecot.add_user()
    app = oauth2.register_app(user)
    form = {
        "grant_type": "client_credentials",
        "client_id": app.client_id,
        "client_secret": app.client_secret,
        "scope": "https://outlook.office365.com/.default",
    }
    status, body = post(oauth2.token_url, form)
    assert status == 200
    assert "refresh_token" not in body  # RFC 6749 4.4.3
    assert body["scope"] == form["scope"]
    imap_login(oauth2_dovecot, user, body["access_token"], "XOAUTH2")
    assert "AUTHENTICATIONFAILED" in imap_refused(
        oauth2_dovecot, other, body["access_token"], "XOAUTH2"
    )
    status, body = post(oauth2.token_url, {**form, "client_secret": "wrong"})
    assert (status, body["error"]) == (401, "invalid_client")
    status, body = post(oauth2.token_url, {**form, "scope": ""})
    assert (status, body["error"]) == (400, "invalid_scope")
    oauth2.revoke(user)
    status, body = post(oauth2.token_url, form)
    assert (status, body["error"]) == (401, "invalid_client")


# -- the introspection endpoint ------------------------------------------------------------------


def test_introspection_is_rfc7662_and_needs_basic_credentials(oauth2, user):
    grant = oauth2.refresh(oauth2.issue_refresh_token(user))
    url = oauth2.introspection_url
    credentials = basic(oauth2.introspection_user, oauth2.introspection_password)
    status, body = post(url, {"token": grant.access_token})
    assert status == 401
    status, body = post(url, {"token": grant.access_token}, credentials)
    assert status == 200
    assert body["active"] is True
    assert body["username"] == user
    assert 0 < body["exp"] - time.time() <= LIFETIME + 1
    assert post(url, {"token": "nope"}, credentials) == (200, {"active": False})
    oauth2.expire(user)
    assert post(url, {"token": grant.access_token}, credentials) == (200, {"active": False})


# -- Dovecot: IMAP -------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_a_token_logs_in_over_imap(oauth2, oauth2_dovecot, user, mechanism):
    grant = oauth2.refresh(oauth2.issue_refresh_token(user))
    with imap(oauth2_dovecot) as client:
        assert f"AUTH={mechanism}".encode() in client.capabilities()
    imap_login(oauth2_dovecot, user, grant.access_token, mechanism)
    with imap(oauth2_dovecot, ssl=True) as client:
        if mechanism == "XOAUTH2":
            client.oauth2_login(user, grant.access_token)
        else:
            client.oauthbearer_login(user, grant.access_token)
        client.select_folder("INBOX")


def test_the_password_still_works_and_a_token_is_no_password(oauth2, oauth2_dovecot, user):
    grant = oauth2.refresh(oauth2.issue_refresh_token(user))
    with imap(oauth2_dovecot) as client:
        client.login(user, oauth2_dovecot.password(user))
    with imap(oauth2_dovecot) as client, pytest.raises(LoginError):
        client.login(user, grant.access_token)
    with imap(oauth2_dovecot) as client, pytest.raises(LoginError):
        client.plain_login(user, grant.access_token)


def test_another_users_token_is_refused(oauth2, oauth2_dovecot, user):
    other = oauth2_dovecot.add_user()
    grant = oauth2.refresh(oauth2.issue_refresh_token(user))
    for mechanism in ("XOAUTH2", "OAUTHBEARER"):
        assert "AUTHENTICATIONFAILED" in imap_refused(
            oauth2_dovecot, other, grant.access_token, mechanism
        )


def test_a_token_past_its_lifetime_is_refused_and_a_refreshed_one_works(
    oauth2, oauth2_dovecot, user
):
    asked = time.monotonic()
    grant = oauth2.refresh(oauth2.issue_refresh_token(user))
    assert grant.refresh_token is not None
    imap_login(oauth2_dovecot, user, grant.access_token, "XOAUTH2")
    wait_expired(oauth2, grant.access_token)
    assert time.monotonic() - asked >= LIFETIME  # not a moment before its lifetime
    for mechanism in ("XOAUTH2", "OAUTHBEARER"):
        assert "AUTHENTICATIONFAILED" in imap_refused(
            oauth2_dovecot, user, grant.access_token, mechanism
        )
    fresh = oauth2.refresh(grant.refresh_token)
    for mechanism in ("XOAUTH2", "OAUTHBEARER"):
        imap_login(oauth2_dovecot, user, fresh.access_token, mechanism)


def test_a_session_outlives_its_token(oauth2, oauth2_dovecot, user):
    grant = oauth2.refresh(oauth2.issue_refresh_token(user))
    with imap(oauth2_dovecot) as client:
        client.oauth2_login(user, grant.access_token)
        oauth2.expire(user)
        client.noop()
        assert client.select_folder("INBOX")[b"EXISTS"] == 0


def test_every_login_asks_the_introspection_endpoint(oauth2, oauth2_dovecot, user):
    doveconf = shutil.which("doveconf") or "/usr/bin/doveconf"
    setting = subprocess.run(
        [doveconf, "-c", str(oauth2_dovecot.config), "-h", "auth_cache_size"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert setting.stdout.strip() == "0"
    grant = oauth2.refresh(oauth2.issue_refresh_token(user))
    before = oauth2.introspections
    for _ in range(3):
        imap_login(oauth2_dovecot, user, grant.access_token, "XOAUTH2")
    assert oauth2.introspections == before + 3
    oauth2.expire(user)  # the very next login sees it
    assert "AUTHENTICATIONFAILED" in imap_refused(
        oauth2_dovecot, user, grant.access_token, "XOAUTH2"
    )


def test_the_wire_of_a_refused_token(oauth2, oauth2_dovecot, user):
    token = "not-a-token"
    lines = raw_authenticate(oauth2_dovecot.imap_port, "XOAUTH2", xoauth2(user, token), b"")
    assert len(lines) == 2
    assert json.loads(base64.b64decode(lines[0][2:])) == {
        "status": "401",
        "schemes": "bearer",
        "scope": "mail",
    }
    assert lines[1] == b"a NO [AUTHENTICATIONFAILED] Authentication failed."
    lines = raw_authenticate(
        oauth2_dovecot.imap_port, "OAUTHBEARER", oauthbearer(user, token), b"AQ=="
    )
    assert json.loads(base64.b64decode(lines[0][2:])) == {"status": "invalid_token"}
    assert lines[1] == b"a NO [AUTHENTICATIONFAILED] Authentication failed."


@pytest.mark.parametrize("mode", [503, "refuse"])
def test_introspection_down_is_a_temporary_failure(oauth2, oauth2_dovecot, user, mode):
    grant = oauth2.refresh(oauth2.issue_refresh_token(user))
    assert grant.refresh_token is not None
    oauth2.down(mode, introspection=True)
    for mechanism in ("XOAUTH2", "OAUTHBEARER"):
        assert "[UNAVAILABLE]" in imap_refused(oauth2_dovecot, user, grant.access_token, mechanism)
    lines = raw_authenticate(oauth2_dovecot.imap_port, "XOAUTH2", xoauth2(user, "x"), b"")
    assert lines[0].startswith(b"a NO [UNAVAILABLE] ")  # no challenge: a tempfail at once
    oauth2.up()
    # A new token: the refusals above took about 0.5 s each, of the old one's 2 s.
    grant = oauth2.refresh(grant.refresh_token)
    imap_login(oauth2_dovecot, user, grant.access_token, "XOAUTH2")


# -- Dovecot: POP3 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mechanism", "initial"), [("XOAUTH2", xoauth2), ("OAUTHBEARER", oauthbearer)]
)
def test_pop3_auth_with_a_token(oauth2, oauth2_dovecot, user, mechanism, initial):
    oauth2_dovecot.save(user, b"Subject: hi\r\n\r\nhello\r\n")
    grant = oauth2.refresh(oauth2.issue_refresh_token(user))
    with pop3(oauth2_dovecot) as client:
        assert mechanism in client.capa()["SASL"]
        assert pop3_auth(client, mechanism, initial(user, grant.access_token)).startswith(b"+OK")
        assert client.stat()[0] == 1

    oauth2.expire(user)
    with pop3(oauth2_dovecot) as client, pytest.raises(poplib.error_proto) as refused:
        pop3_auth(client, mechanism, initial(user, grant.access_token))
    assert str(refused.value).startswith("b'-ERR [AUTH] ")

    assert grant.refresh_token is not None
    fresh = oauth2.refresh(grant.refresh_token)
    with pop3(oauth2_dovecot) as client:
        assert pop3_auth(client, mechanism, initial(user, fresh.access_token)).startswith(b"+OK")

    oauth2.down("refuse", introspection=True)
    with pop3(oauth2_dovecot) as client, pytest.raises(poplib.error_proto) as down:
        pop3_auth(client, mechanism, initial(user, fresh.access_token))
    assert str(down.value).startswith("b'-ERR [SYS/TEMP] ")


# -- the default server is untouched ---------------------------------------------------------------


def test_the_default_dovecot_has_no_oauth2(dovecot):
    config = dovecot.config.read_text()
    assert "auth_mechanisms = plain login apop\n" in config
    assert "oauth2" not in config
    assert "mechanisms = plain" not in config.split("auth_mechanisms", 1)[1].split("\n", 1)[1]
    with imap(dovecot) as client:
        assert b"AUTH=XOAUTH2" not in client.capabilities()
