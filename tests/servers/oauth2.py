"""A throwaway OAuth2 authorisation server on loopback: token endpoint and introspection.

Two listeners, each a standard-library ``ThreadingHTTPServer`` on ``127.0.0.1`` in its own
thread:

* the **token endpoint** (``POST /token``, RFC 6749 section 3.2), for the client under test:
  ``grant_type=refresh_token`` (section 6) and ``grant_type=client_credentials`` (section 4.4),
  client authentication in the form (``client_id``/``client_secret``) or by HTTP Basic
  (section 2.3.1); errors as RFC 6749 section 5.2 JSON;
* the **introspection endpoint** (``POST /introspect``, RFC 7662), for Dovecot's
  ``passdb oauth2`` (``introspection_mode = post``), which asks it whether an access token is
  active and whose it is. It has its own port so that taking the token endpoint down (even
  refusing connections) leaves the mail server able to check tokens, as with a real provider
  whose login service is down while mail still works.

Access tokens live :attr:`OAuth2Server.token_lifetime` seconds on the server's own clock
(``time.monotonic``). Refresh tokens rotate by default: every refresh answers a new one and the
old one is dead from then on (``invalid_grant``), as Microsoft's and most providers' do.

Tests steer it with :meth:`~OAuth2Server.issue_refresh_token` (the user's consent),
:meth:`~OAuth2Server.revoke` (the user withdraws it), :meth:`~OAuth2Server.down` /
:meth:`~OAuth2Server.up`, and read :attr:`~OAuth2Server.tokens_issued`,
:attr:`~OAuth2Server.refreshes`, :meth:`~OAuth2Server.access_tokens` and
:attr:`~OAuth2Server.token_requests`.

For tests of what a client lets out (tests/test_secrets_never_leave.py), every secret can be
chosen: the refresh token of a consent (``issue_refresh_token(token=...)``), a confidential
client's secret (:meth:`~OAuth2Server.register_client`, ``register_app(client_secret=...)``),
the access and rotated refresh tokens handed out next (:meth:`~OAuth2Server.hand_out`); and
the endpoint can misbehave as careless providers do: quote the request back in its errors
(:attr:`~OAuth2Server.echo`), or answer what is no RFC 6749 answer (``down("garbled")``,
``"not json"``, ``"nested"``, ``"cut"``).
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import attrs

__all__ = ["App", "OAuth2Error", "OAuth2Server", "TokenGrant"]

_MAX_BODY = 64 * 1024
_MISBEHAVING = ("garbled", "not json", "nested", "cut")
"""What :meth:`OAuth2Server.down` can answer besides an HTTP status or a refused connection."""
Mode = int | Literal["refuse", "garbled", "not json", "nested", "cut"]


@attrs.frozen
class App:
    """A confidential client allowed the client-credentials grant for one mailbox.

    Microsoft 365's app-only access: the app gets a token with its own id and secret, and the
    mailbox it may open was granted by an administrator. The introspection of such a token
    names :attr:`user`, so Dovecot lets the app log in as that user only.
    """

    client_id: str
    client_secret: str
    user: str


@attrs.frozen
class TokenGrant:
    """A successful answer of the token endpoint, parsed (what :meth:`OAuth2Server.fetch` gives)."""

    access_token: str
    expires_in: float
    refresh_token: str | None
    scope: str | None
    token_type: str = "Bearer"


class OAuth2Error(Exception):
    """An RFC 6749 error answer (or an HTTP failure) from the token endpoint."""

    def __init__(self, status: int, error: str, description: str = "") -> None:
        super().__init__(f"{status} {error}: {description}" if description else f"{status} {error}")
        self.status = status
        self.error = error
        self.description = description


@attrs.define
class _Grant:
    user: str
    client_id: str
    scope: str
    revoked: bool = False


@attrs.define
class _AccessToken:
    user: str
    client_id: str
    scope: str
    expires_at: float  # monotonic
    exp: int  # seconds since the epoch, for introspection
    grant: _Grant | None


class _Listener:
    """One ``ThreadingHTTPServer`` on a fixed loopback port that can be closed and reopened."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], owner: OAuth2Server) -> None:
        self._handler = handler
        self._owner = owner
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def running(self) -> bool:
        return self._server is not None

    def open(self) -> None:
        if self._server is not None:
            return
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
        server.daemon_threads = True
        server.oauth2 = self._owner  # type: ignore[attr-defined]
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"oauth2-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop listening: connections to the port are refused until :meth:`open`."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


class OAuth2Server:
    """A local OAuth2 authorisation server for tests (see the module docstring).

    Args:
        token_lifetime: seconds an access token is valid (``expires_in``).
        rotate_refresh_tokens: answer a new refresh token on every refresh and invalidate the
            one used; when false the same refresh token keeps working (Google's habit).
        client_id: the public client that refresh grants belong to.
        client_secret: its secret; when given, a refresh naming the client must carry it
            (a confidential client); when None, none is needed, and one given is ignored.
        echo: quote every request back in the token endpoint's error answers (see
            :attr:`echo`).
    """

    def __init__(
        self,
        *,
        token_lifetime: float = 2.0,
        rotate_refresh_tokens: bool = True,
        client_id: str = "mailtether-test-client",
        client_secret: str | None = None,
        echo: bool = False,
    ) -> None:
        self.token_lifetime = token_lifetime
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.client_id = client_id
        self.client_secret = client_secret
        self.introspection_user = "dovecot"
        self.introspection_password = secrets.token_urlsafe(12)
        self.tokens_issued = 0
        """Access tokens handed out by the token endpoint (every grant type)."""
        self.refreshes = 0
        """Successful ``refresh_token`` grants."""
        self.introspections = 0
        """Introspection requests answered (Dovecot asking about a token)."""
        self.token_requests: list[dict[str, str]] = []
        """Every form posted to the token endpoint, in order (failed ones too, and those
        answered while it is :meth:`down`)."""
        self.echo = echo
        """Quote each request back in the token endpoint's error answers, as a careless
        provider does: each value decoded and the body as sent (form-encoded) in the
        ``error_description``, the body in the HTTP reason phrase; and in what :meth:`down`'s
        misbehaving modes answer."""
        self._lock = threading.Lock()
        self._apps: dict[str, App] = {}
        self._clients: dict[str, str] = {}  # confidential clients of refresh grants
        self._handed: dict[str, dict[str, collections.deque[str]]] = {}  # user -> kind -> next
        self._refresh: dict[str, _Grant] = {}
        self._access: dict[str, _AccessToken] = {}
        self._down: dict[str, int | str | None] = {"token": None, "introspection": None}
        self._token = _Listener(_TokenHandler, self)
        self._introspection = _Listener(_IntrospectionHandler, self)

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> OAuth2Server:
        self._token.open()
        self._introspection.open()
        return self

    def stop(self) -> None:
        self._token.close()
        self._introspection.close()

    def __enter__(self) -> OAuth2Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def token_port(self) -> int:
        return self._token.port

    @property
    def introspection_port(self) -> int:
        return self._introspection.port

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self._token.port}/token"

    @property
    def introspection_url(self) -> str:
        """The RFC 7662 endpoint, without credentials (see :attr:`introspection_url_with_auth`)."""
        return f"http://127.0.0.1:{self._introspection.port}/introspect"

    @property
    def introspection_url_with_auth(self) -> str:
        """The introspection URL with Dovecot's Basic credentials in it (how Dovecot takes them)."""
        user = urllib.parse.quote(self.introspection_user, safe="")
        password = urllib.parse.quote(self.introspection_password, safe="")
        return f"http://{user}:{password}@127.0.0.1:{self._introspection.port}/introspect"

    def down(self, mode: Mode = 503, *, introspection: bool = False) -> None:
        """Take the token endpoint down until :meth:`up`.

        *mode* is the HTTP status every request then gets (503 by default, 429 for throttling,
        each with ``Retry-After: 1`` and ``{"error": "temporarily_unavailable"}``), or
        ``"refuse"``: the port is closed and connections are refused. With *introspection* the
        introspection endpoint goes down the same way (Dovecot then cannot check any token).

        Or the token endpoint answers what is no RFC 6749 answer (the next tokens of
        :meth:`hand_out` in it, and the request when :attr:`echo` is on; none is issued):

        * ``"garbled"``: a first line that is no HTTP status line;
        * ``"not json"``: 200, the tokens form-encoded (as GitHub answers without
          ``Accept: application/json``);
        * ``"nested"``: 400 with ``{"error": {"code": 400, "message": ...}}`` (the error
          object of Google's APIs, not a string);
        * ``"cut"``: 200, a JSON answer whose connection closes half-way through it.
        """
        targets = ["token", "introspection"] if introspection else ["token"]
        for target in targets:
            listener = self._token if target == "token" else self._introspection
            if mode == "refuse":
                self._down[target] = None
                listener.close()
            elif isinstance(mode, str):
                if mode not in _MISBEHAVING or target != "token":
                    raise ValueError(f"no such mode for the {target} endpoint: {mode!r}")
                self._down[target] = mode
            else:
                self._down[target] = int(mode)

    def up(self) -> None:
        """Both endpoints answer normally again (on the same ports)."""
        self._down = {"token": None, "introspection": None}
        self._token.open()
        self._introspection.open()

    # -- grants and tokens ---------------------------------------------------------------------

    def issue_refresh_token(
        self,
        user: str,
        *,
        client_id: str | None = None,
        scope: str = "mail",
        token: str | None = None,
    ) -> str:
        """The user consents: a new grant for *client_id* (default :attr:`client_id`).

        The refresh token is *token* if given (one not issued already), else a random one.
        """
        grant = _Grant(user=user, client_id=client_id or self.client_id, scope=scope)
        token = secrets.token_urlsafe(32) if token is None else token
        with self._lock:
            if not token or token in self._refresh:
                raise ValueError("a refresh token must be new and not empty")
            self._refresh[token] = grant
        return token

    def register_client(self, client_secret: str, *, client_id: str | None = None) -> str:
        """A confidential client (besides :attr:`client_id`): refresh grants issued for it
        (``issue_refresh_token(client_id=...)``) need *client_secret*. Its id is returned."""
        client_id = client_id or f"client-{secrets.token_hex(6)}"
        with self._lock:
            if client_id == self.client_id or client_id in self._clients:
                raise ValueError(f"client {client_id!r} exists already")
            self._clients[client_id] = client_secret
        return client_id

    def register_app(
        self, user: str, *, client_secret: str | None = None, client_id: str | None = None
    ) -> App:
        """A confidential client allowed ``client_credentials`` for *user*'s mailbox; its
        secret and id are *client_secret* and *client_id* if given, else random ones."""
        app = App(
            client_id=client_id or f"app-{secrets.token_hex(6)}",
            client_secret=secrets.token_urlsafe(24) if client_secret is None else client_secret,
            user=user,
        )
        with self._lock:
            self._apps[app.client_id] = app
        return app

    def expire_client_secret(self, client_id: str) -> None:
        """The secret of a confidential client or an app expired (Microsoft Entra's do, after
        two years at most): it is refused from now on (``invalid_client``)."""
        with self._lock:
            if client_id in self._clients:
                self._clients[client_id] = secrets.token_urlsafe(24)
            elif client_id in self._apps:
                app = self._apps[client_id]
                self._apps[client_id] = attrs.evolve(app, client_secret=secrets.token_urlsafe(24))
            else:
                raise KeyError(client_id)

    def hand_out(
        self,
        user: str,
        *,
        access_tokens: Iterable[str] = (),
        refresh_tokens: Iterable[str] = (),
    ) -> None:
        """The next tokens issued for *user*'s grants and apps are these, in order (then
        random ones again): *refresh_tokens* are what rotation answers (each must be new).

        Queued after any still waiting; :meth:`up` does not clear them, :meth:`forget` does.
        """
        with self._lock:
            queues = self._handed.setdefault(
                user, {"access": collections.deque(), "refresh": collections.deque()}
            )
            queues["access"].extend(access_tokens)
            queues["refresh"].extend(refresh_tokens)

    def forget(self, user: str) -> None:
        """Drop the tokens :meth:`hand_out` still holds for *user*."""
        with self._lock:
            self._handed.pop(user, None)

    def _next(self, user: str, kind: str) -> str:
        queue = self._handed.get(user, {}).get(kind)
        return queue.popleft() if queue else secrets.token_urlsafe(32)

    def revoke(self, user: str, *, access_tokens: bool = False) -> None:
        """The user (or an administrator) withdraws every grant of *user*.

        Its refresh tokens are refused with ``invalid_grant`` from now on; the app-only clients
        for *user* are removed (``invalid_client``). Access tokens already issued stay valid
        until they expire, as at real providers, unless *access_tokens* is true.
        """
        with self._lock:
            for grant in self._refresh.values():
                if grant.user == user:
                    grant.revoked = True
            for client_id, app in list(self._apps.items()):
                if app.user == user:
                    del self._apps[client_id]
            if access_tokens:
                for token, access in list(self._access.items()):
                    if access.user == user:
                        del self._access[token]

    def expire(self, user: str | None = None) -> None:
        """End the lifetime of every access token (of *user*) now, without waiting."""
        with self._lock:
            for access in self._access.values():
                if user is None or access.user == user:
                    access.expires_at = min(access.expires_at, time.monotonic())

    def access_tokens(self, user: str) -> set[str]:
        """The access tokens of *user* valid now."""
        now = time.monotonic()
        with self._lock:
            return {t for t, a in self._access.items() if a.user == user and a.expires_at > now}

    def refresh_tokens(self, user: str) -> set[str]:
        """The refresh tokens of *user* that a refresh would accept now."""
        with self._lock:
            return {t for t, g in self._refresh.items() if g.user == user and not g.revoked}

    def is_active(self, token: str) -> bool:
        return self._lookup(token) is not None

    # -- a client, for tests of the test bed ---------------------------------------------------

    def fetch(self, form: dict[str, str], *, timeout: float = 5) -> TokenGrant:
        """POST *form* to the token endpoint as a client would; raise :class:`OAuth2Error`."""
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            self.token_url,
            data=urllib.parse.urlencode(form).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = {}
            raise OAuth2Error(
                error.code,
                str(answer.get("error", "")),
                str(answer.get("error_description", "")),
            ) from None
        return TokenGrant(
            access_token=body["access_token"],
            expires_in=body["expires_in"],
            refresh_token=body.get("refresh_token"),
            scope=body.get("scope"),
            token_type=body["token_type"],
        )

    def refresh(self, refresh_token: str, **extra: str) -> TokenGrant:
        """``grant_type=refresh_token`` for :attr:`client_id` (its secret when it has one)."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        form["client_id"] = self.client_id
        if self.client_secret is not None:
            form["client_secret"] = self.client_secret
        form.update(extra)
        return self.fetch(form)

    # -- the endpoints' logic ------------------------------------------------------------------

    def _issue(self, user: str, client_id: str, scope: str, grant: _Grant | None) -> dict[str, Any]:
        token = self._next(user, "access")
        lifetime = self.token_lifetime
        access = _AccessToken(
            user=user,
            client_id=client_id,
            scope=scope,
            expires_at=time.monotonic() + lifetime,
            exp=int(time.time() + lifetime),
            grant=grant,
        )
        self._access[token] = access
        self.tokens_issued += 1
        expires_in: float = int(lifetime) if float(lifetime).is_integer() else lifetime
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "scope": scope,
        }

    def _user_of(self, form: dict[str, str]) -> str | None:
        """Whose request *form* is (its refresh token's grant, or its app), if known."""
        grant = self._refresh.get(form.get("refresh_token", ""))
        if grant is not None:
            return grant.user
        app = self._apps.get(form.get("client_id", ""))
        return None if app is None else app.user

    def _lookup(self, token: str) -> _AccessToken | None:
        with self._lock:
            access = self._access.get(token)
            if access is None or access.expires_at <= time.monotonic():
                return None
            return access

    def _token_request(
        self, form: dict[str, str], basic: tuple[str, str] | None
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.token_requests.append(dict(form))
            if basic is not None:
                form = {**form, "client_id": basic[0], "client_secret": basic[1]}
            grant_type = form.get("grant_type")
            if grant_type == "refresh_token":
                return self._refresh_grant(form)
            if grant_type == "client_credentials":
                return self._client_credentials_grant(form)
            if not grant_type:
                return _error(400, "invalid_request", "grant_type is missing")
            return _error(400, "unsupported_grant_type", f"grant_type {grant_type!r}")

    def _refresh_grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        client_id = form.get("client_id", "")
        clients = {self.client_id: self.client_secret, **self._clients}
        if client_id not in clients:
            return _error(401, "invalid_client", "unknown client_id")
        secret = clients[client_id]
        if secret is not None and not _same(form.get("client_secret", ""), secret):
            return _error(401, "invalid_client", "client authentication failed")
        token = form.get("refresh_token", "")
        if not token:
            return _error(400, "invalid_request", "refresh_token is missing")
        grant = self._refresh.get(token)
        if grant is None:
            return _error(400, "invalid_grant", "the refresh token is unknown or was rotated")
        if grant.revoked:
            return _error(400, "invalid_grant", "the grant was revoked: re-authorise the app")
        if grant.client_id != client_id:
            return _error(400, "invalid_grant", "the refresh token belongs to another client")
        answer = self._issue(grant.user, client_id, grant.scope, grant)
        if self.rotate_refresh_tokens:
            del self._refresh[token]
            token = self._next(grant.user, "refresh")
            self._refresh[token] = grant
        answer["refresh_token"] = token
        self.refreshes += 1
        return 200, answer

    def _client_credentials_grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        app = self._apps.get(form.get("client_id", ""))
        if app is None or not _same(form.get("client_secret", ""), app.client_secret):
            return _error(401, "invalid_client", "client authentication failed")
        scope = form.get("scope", "")
        if not scope:
            return _error(400, "invalid_scope", "scope is missing")
        # RFC 6749 4.4.3: no refresh token for this grant; the app asks again.
        return 200, self._issue(app.user, app.client_id, scope, None)

    def _introspect(self, token: str) -> dict[str, Any]:
        with self._lock:
            self.introspections += 1
        access = self._lookup(token)
        if access is None:
            return {"active": False}
        return {
            "active": True,
            "username": access.user,
            "sub": access.user,
            "client_id": access.client_id,
            "scope": access.scope,
            "token_type": "Bearer",
            "exp": access.exp,
        }


def _error(status: int, error: str, description: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": error, "error_description": description}


def _same(given: str, expected: str) -> bool:
    """A secret compared in constant time (as UTF-8: ``compare_digest`` takes ASCII text only)."""
    return secrets.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class _Handler(BaseHTTPRequestHandler):
    server_version = "mailtether-oauth2-test/1"
    which = ""
    _raw: bytes | None = None

    @property
    def oauth2(self) -> OAuth2Server:
        return self.server.oauth2  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send_json(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self._send(status, data, "application/json", headers)

    def _send(
        self,
        status: int,
        data: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        *,
        length: int | None = None,
    ) -> None:
        """Answer *data*; with :attr:`OAuth2Server.echo`, an error's reason phrase quotes the
        request. *length*: the Content-Length said (when it is a lie, the connection closes)."""
        phrase = None
        if self.oauth2.echo and status >= 400 and self.which == "token":
            phrase = f"{self.responses.get(status, ('Error',))[0]} {self._echo_raw()}"
        self.send_response(status, phrase)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Pragma", "no-cache")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if length is not None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes | None:
        """The request's body (read once), or None when it is too large."""
        if self._raw is None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > _MAX_BODY:
                return None
            self._raw = self.rfile.read(length) if length > 0 else b""
        return self._raw

    def _echo_raw(self) -> str:
        """The body as sent, on one line (it is form-encoded: ASCII)."""
        raw = (self._body() or b"").decode("latin-1")
        return raw.replace("\r", " ").replace("\n", " ")

    def _echo(self) -> str:
        """The request quoted back: each value decoded (the secrets first, so that what a
        client shows of a long answer holds them), then the body as sent."""
        raw = (self._body() or b"").decode("utf-8", "replace")
        values = urllib.parse.parse_qsl(raw, keep_blank_values=True)
        values.sort(key=lambda pair: pair[0] not in ("refresh_token", "client_secret"))
        decoded = ", ".join(f"{name}={value}" for name, value in values)
        return f"you sent {decoded}; as sent: {self._echo_raw()}"

    def _form(self) -> dict[str, str] | None:
        body = self._body()
        if body is None:
            return None
        raw = body.decode("utf-8", "replace")
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return None
        return dict(urllib.parse.parse_qsl(raw, keep_blank_values=True))

    def _basic(self) -> tuple[str, str] | Literal[False] | None:
        header = self.headers.get("Authorization") or ""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = (
                base64.b64decode(value.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        return urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)

    def _unavailable(self) -> bool:
        mode = self.oauth2._down.get(self.which)
        if mode is None:
            return False
        form = self._form()
        if self.which == "token" and form is not None:
            with self.oauth2._lock:
                self.oauth2.token_requests.append(dict(form))
        if isinstance(mode, str):
            self._misbehave(mode)
            return True
        description = "the test server is down"
        if self.oauth2.echo and self.which == "token":
            description += f" ({self._echo()})"
        self._send_json(
            mode,
            {"error": "temporarily_unavailable", "error_description": description},
            {"Retry-After": "1"},
        )
        return True

    def _misbehave(self, mode: str) -> None:  # pragma: no cover - token endpoint only
        raise NotImplementedError

    def do_GET(self) -> None:
        self._raw = None  # a new request (a connection may carry more than one)
        if not self._unavailable():
            self._send_json(405, {"error": "invalid_request", "error_description": "use POST"})

    def _dispatch(self, path: str, route: Callable[[], None]) -> None:
        self._raw = None  # a new request (a connection may carry more than one)
        if self._unavailable():
            return
        if self.path.split("?")[0] != path:
            self._send_json(404, {"error": "invalid_request", "error_description": "no such path"})
            return
        route()


class _TokenHandler(_Handler):
    which = "token"

    def do_POST(self) -> None:
        self._dispatch("/token", self._token)

    def _token(self) -> None:
        form = self._form()
        if form is None:
            self._send_json(
                400, {"error": "invalid_request", "error_description": "send a form (RFC 6749)"}
            )
            return
        basic = self._basic()
        if basic is False:
            self._send_json(
                401,
                {"error": "invalid_client", "error_description": "malformed Authorization"},
                {"WWW-Authenticate": 'Basic realm="token"'},
            )
            return
        status, body = self.oauth2._token_request(form, basic)
        if status >= 400 and self.oauth2.echo:
            body["error_description"] += f" ({self._echo()})"
        headers = {"WWW-Authenticate": 'Basic realm="token"'} if status == 401 else {}
        self._send_json(status, body, headers)

    def _misbehave(self, mode: str) -> None:
        """Answer as :meth:`OAuth2Server.down` says for *mode*, with the next tokens handed
        out for the requester's user (no token is issued: none of them is valid)."""
        oauth2 = self.oauth2
        form = self._form() or {}
        with oauth2._lock:
            user = oauth2._user_of(form)
            access = oauth2._next(user, "access") if user else secrets.token_urlsafe(32)
            refresh = oauth2._next(user, "refresh") if user else secrets.token_urlsafe(32)
        echo = {"you_sent": self._echo()} if oauth2.echo else {}
        tokens = {"access_token": access, "token_type": "Bearer", "refresh_token": refresh}
        if mode == "garbled":
            said = urllib.parse.urlencode({**tokens, **echo})
            self.wfile.write(f"garbled {said}\r\n\r\n".encode("latin-1", "replace"))
            self.close_connection = True
        elif mode == "not json":
            data = urllib.parse.urlencode({**tokens, **echo}).encode()
            self._send(200, data, "application/x-www-form-urlencoded")
        elif mode == "nested":
            message = "invalid request" + (f" ({echo['you_sent']})" if echo else "")
            error = {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}
            self._send_json(400, {"error": error})
        else:  # "cut": the answer ends half-way through the refresh token
            data = json.dumps({**tokens, "expires_in": 3600, **echo}).encode()
            value = json.dumps(refresh).encode()
            cut = data.index(b'"refresh_token": ' + value) + 17 + len(value) // 2
            self._send(200, data[:cut], "application/json", length=len(data))


class _IntrospectionHandler(_Handler):
    which = "introspection"

    def do_POST(self) -> None:
        self._dispatch("/introspect", self._introspection)

    def _introspection(self) -> None:
        # RFC 7662 section 2.1: the protected resource (Dovecot) authenticates itself.
        basic = self._basic()
        expected = (self.oauth2.introspection_user, self.oauth2.introspection_password)
        if not basic or basic != expected:
            self._send_json(
                401,
                {"error": "invalid_client", "error_description": "introspection needs Basic auth"},
                {"WWW-Authenticate": 'Basic realm="introspection"'},
            )
            return
        form = self._form()
        if form is None or "token" not in form:
            self._send_json(400, {"error": "invalid_request", "error_description": "no token"})
            return
        self._send_json(200, self.oauth2._introspect(form["token"]))
