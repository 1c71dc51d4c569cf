"""OAuth2 access tokens that last: a token source is asked before every login.

Microsoft 365 and Gmail log in with OAuth2 access tokens that expire after about an hour. A
fixed token works until the first reconnect after that; a :class:`TokenSource` gives a
fresh one for every login instead. Built in:

- :class:`RefreshTokenFlow`: a refresh token traded at the provider's token endpoint
  (RFC 6749 section 6), with the refresh token the provider rotates kept in the state store;
- :class:`ClientCredentialsFlow`: an app's own credentials (Microsoft 365 app-only access);
- :class:`TokenCommand`: a command that prints a token (pizauth, oama, a vault CLI);
- :class:`FixedToken`: one token, as given (tests; a token you refresh yourself).

Failures are named for what the run loop should do: :class:`TokenRevoked` (an
:class:`~mailtether.AuthenticationFailed`: the grant is gone, a person must re-authorise;
the source is BLOCKED) and :class:`TokenUnavailable` (a :class:`~mailtether.ConnectionLost`:
the endpoint is down or throttling; retried on the reconnect strategy). Every token, refresh
token and client secret is remembered for redaction (:mod:`mailtether._redaction`).
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol, runtime_checkable

import attrs

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._durations import check_seconds
from mailtether._errors import ConfigError, TokenRevoked, TokenUnavailable, one_line
from mailtether._redaction import redact, remember_secret, retire_secret
from mailtether._url_errors import split_url
from mailtether.stores._protocol import Store

__all__ = [
    "AccessToken",
    "ClientCredentialsFlow",
    "FixedToken",
    "RefreshTokenFlow",
    "TokenCommand",
    "TokenRevoked",
    "TokenSource",
    "TokenUnavailable",
]

MICROSOFT_TOKEN_URL: Final = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"  # noqa: S105
GOOGLE_TOKEN_URL: Final = "https://oauth2.googleapis.com/token"  # noqa: S105
MICROSOFT_IMAP_SCOPE: Final = (
    "https://outlook.office.com/IMAP.AccessAsUser.All "
    "https://outlook.office.com/POP.AccessAsUser.All "
    "https://outlook.office.com/SMTP.Send offline_access"
)
MICROSOFT_APP_SCOPE: Final = "https://outlook.office365.com/.default"
_MARGIN: Final = 300.0  # seconds before expiry a token is refreshed ahead of use
_NAMESPACE: Final = "oauth2"  # the store's records of rotated refresh tokens
# RFC 6749 5.2: the grant or the client is no good; a person must act. Anything else a
# token endpoint says (5xx, 429, temporarily_unavailable, a network fault) may pass.
_REVOKED: Final = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})


@attrs.frozen(repr=False)
class AccessToken:
    """An access token and when it expires (wall-clock seconds; ``None``: not said)."""

    value: str
    expires_at: float | None = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.value, str) or not self.value or "\n" in self.value:
            raise ConfigError("an access token is non-empty text on one line")
        remember_secret(self.value)

    def expires_within(self, seconds: float, now: float) -> bool:
        """Whether it expires within *seconds* of *now* (never, if its expiry is unknown)."""
        return self.expires_at is not None and self.expires_at - now <= seconds

    def __repr__(self) -> str:
        return f"AccessToken('***', expires_at={self.expires_at!r})"


@runtime_checkable
class TokenSource(Protocol):
    """Where access tokens come from; asked before every login.

    Implementations are thread-safe and remember each secret they handle
    (:func:`mailtether._redaction.remember_secret`).
    """

    def token(self, *, fresh: bool = False) -> AccessToken:
        """A token to log in with now.

        Args:
            fresh: The server refused the last one: get a new one even if it looked valid.

        Raises:
            TokenRevoked: the grant is gone (do not retry).
            TokenUnavailable: none can be had now (retry later).
        """


class FixedToken:
    """One token, as given; ``fresh=True`` cannot make another (today's ``auth=xoauth2``)."""

    def __init__(self, value: str, expires_at: float | None = None) -> None:
        self._token = AccessToken(value, expires_at)

    def token(self, *, fresh: bool = False) -> AccessToken:
        """The token given."""
        return self._token

    def __repr__(self) -> str:
        return "FixedToken('***')"


class _Cached:
    """The token last had, renewed by :meth:`_renew` when it is about to expire."""

    def __init__(self, clock: Clock, margin: float) -> None:
        self._clock = clock
        self._margin = check_seconds(margin, "margin", allow_zero=True)
        self._lock = threading.Lock()
        self._current: AccessToken | None = None

    def token(self, *, fresh: bool = False) -> AccessToken:
        """The token in hand, unless it expires within the margin or *fresh* is asked."""
        with self._lock:
            current = previous = self._current
            if fresh or current is None or current.expires_within(self._margin, self._now()):
                current = self._current = self._renew()
                if previous is not None and previous.value != current.value:
                    retire_secret(previous.value)  # replaced: redacted, not kept for ever
            return current

    def _now(self) -> float:
        return self._clock.time()

    def _renew(self) -> AccessToken:  # pragma: no cover - abstract
        raise NotImplementedError


class _Endpoint(_Cached):
    """A token endpoint, asked with a form POST (RFC 6749)."""

    def __init__(
        self,
        token_url: str,
        *,
        account: str,
        clock: Clock,
        margin: float,
        timeout: float,
    ) -> None:
        super().__init__(clock, margin)
        self._id_token: str | None = None
        parts = split_url(token_url)  # a password in it is remembered: shown nowhere
        if parts.scheme not in ("https", "http"):
            raise ConfigError(f"a token endpoint is an https:// URL, not {token_url!r}")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(
                f"a token endpoint URL holds no user name or password: {token_url!r} (the "
                "app's secret goes in client_secret)"
            )
        self.token_url = token_url
        """Where tokens are asked for."""
        self.account = account
        """Whose tokens these are, as sentences name it."""
        self._timeout = check_seconds(timeout, "timeout")

    def _post(self, form: Mapping[str, str]) -> dict[str, Any]:
        """POST *form*; the JSON answer, or the error it is (named, redacted).

        Errors are raised outside the handlers of what urllib and http.client raise: those
        stay out of ``__context__``, where a traceback would show them. They hold what the
        endpoint sent (an ``HTTPError``'s reason phrase, a ``BadStatusLine``'s line, a
        ``JSONDecodeError``'s document), which can quote the request or hold new tokens.
        """
        import http.client  # here: http.client and email cost 1 MiB to every process
        import urllib.error
        import urllib.request

        for name in ("refresh_token", "client_secret"):
            remember_secret(form.get(name))
        body = urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(  # noqa: S310  (http(s) only: checked when made)
            self.token_url,
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        where = f"asking {self.token_url} for a token for {self.account}"
        failure: Exception | None = None
        raw = b""
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as answer:  # noqa: S310
                raw = answer.read(1 << 20)
        except urllib.error.HTTPError as error:
            failure = self._refused(where, error)
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            reason = getattr(error, "reason", error)
            failure = TokenUnavailable(f"{where}: {one_line(redact(str(reason)))}")
        except http.client.HTTPException as error:  # a status line or header that is no HTTP
            failure = TokenUnavailable(f"{where}: the answer is not HTTP ({type(error).__name__})")
        if failure is not None:
            raise failure
        data = _json(raw)
        if data is None:
            raise TokenUnavailable(f"{where}: the answer is not JSON")
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
            raise TokenUnavailable(f"{where}: the answer holds no access_token")
        for name in ("access_token", "refresh_token", "id_token"):
            remember_secret(data.get(name) if isinstance(data.get(name), str) else None)
        id_token = data.get("id_token")
        if isinstance(id_token, str) and id_token != self._id_token:
            retire_secret(self._id_token)
            self._id_token = id_token
        return data

    def _refused(self, where: str, error: Any) -> Exception:
        """The error a refusal of the endpoint (a ``urllib.error.HTTPError``) is.

        Only the RFC 6749 fields are read, and only when they are text: some endpoints
        answer an object for ``error`` (Google's APIs: ``{"code": 400, "message": ...}``).
        """
        import http.client

        try:
            said = _json(error.read(1 << 16))
        except (OSError, http.client.HTTPException):
            said = None
        finally:
            error.close()  # its answer holds the connection open
        fields = said if isinstance(said, dict) else {}
        code = fields.get("error") if isinstance(fields.get("error"), str) else None
        described = fields.get("error_description")
        description = described if isinstance(described, str) else ""
        said = f"HTTP {error.code}" + (f", {code}: {description}" if code else "")
        words = one_line(redact(said.rstrip(": ")))
        if code in _REVOKED:
            return TokenRevoked(
                f"{where}: the grant is no longer valid ({words})",
                hint=f"authorise the app for {self.account} again, then resume the source",
            )
        return TokenUnavailable(f"{where}: {words}")

    def _token_of(self, data: Mapping[str, Any]) -> AccessToken:
        lifetime = data.get("expires_in")
        try:
            expires_at = self._now() + float(lifetime) if lifetime is not None else None
        except (TypeError, ValueError):
            expires_at = None
        return AccessToken(str(data["access_token"]), expires_at)


class RefreshTokenFlow(_Endpoint):
    """Access tokens bought with a refresh token at an OAuth2 token endpoint.

    Providers may rotate the refresh token (Microsoft does): the newest is kept in *store*
    (namespace ``oauth2``, under *name*), so a restart goes on with it and not with the one
    given, which the provider may no longer take. That record is the one secret the library
    writes to a store; it is never shown (redacted everywhere, like the rest).

    Args:
        token_url: The provider's token endpoint (see :meth:`microsoft`, :meth:`google`).
        client_id: The app's id.
        refresh_token: The refresh token the user's consent gave.
        client_secret: The app's secret, for confidential clients.
        scope: The scopes to ask for (space-separated), if the provider needs them.
        account: Whose mailbox this is, as sentences name it (``"alice@example.com"``).
        store, name: Where the rotated refresh token is kept, and under which name.
        margin: Seconds before expiry a token is renewed ahead of a login.
        timeout: Seconds for the token endpoint to answer.
        clock: For expiry times.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        refresh_token: str,
        *,
        client_secret: str | None = None,
        scope: str | None = None,
        account: str = "this account",
        store: Store | None = None,
        name: str | None = None,
        margin: float = _MARGIN,
        timeout: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(token_url, account=account, clock=clock, margin=margin, timeout=timeout)
        if not refresh_token:
            raise ConfigError("RefreshTokenFlow needs a refresh token")
        remember_secret(refresh_token)
        remember_secret(client_secret)
        self.client_id = client_id
        self._client_secret = client_secret
        self._scope = scope
        self._store = store
        self._name = name or f"{client_id}:{account}"
        kept = store.get(_NAMESPACE, self._name) if store is not None else None
        rotated = kept.data.get("refresh_token") if kept is not None else None
        self._refresh_token = rotated if isinstance(rotated, str) and rotated else refresh_token
        remember_secret(self._refresh_token)

    @classmethod
    def microsoft(
        cls,
        client_id: str,
        refresh_token: str,
        *,
        tenant: str = "common",
        scope: str = MICROSOFT_IMAP_SCOPE,
        **options: Any,
    ) -> RefreshTokenFlow:
        """The Microsoft identity platform (Microsoft 365, Outlook.com): delegated access."""
        url = MICROSOFT_TOKEN_URL.format(tenant=urllib.parse.quote(tenant, safe=""))
        return cls(url, client_id, refresh_token, scope=scope, **options)

    @classmethod
    def google(
        cls, client_id: str, client_secret: str, refresh_token: str, **options: Any
    ) -> RefreshTokenFlow:
        """Google (Gmail): the app's id and secret, and the user's refresh token."""
        url = GOOGLE_TOKEN_URL
        return cls(url, client_id, refresh_token, client_secret=client_secret, **options)

    def _renew(self) -> AccessToken:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": self._refresh_token,
            "client_id": self.client_id,
        }
        if self._client_secret:
            form["client_secret"] = self._client_secret
        if self._scope:
            form["scope"] = self._scope
        data = self._post(form)
        rotated = data.get("refresh_token")
        if isinstance(rotated, str) and rotated and rotated != self._refresh_token:
            spent, self._refresh_token = self._refresh_token, rotated
            if self._store is not None:  # before it is used: a crash must not lose it
                self._store.put(_NAMESPACE, self._name, "active", {"refresh_token": rotated})
            retire_secret(spent)
        return self._token_of(data)

    def __repr__(self) -> str:
        return f"RefreshTokenFlow({self.token_url!r}, {self.client_id!r}, '***')"


class ClientCredentialsFlow(_Endpoint):
    """Access tokens for the app itself (RFC 6749 4.4): Microsoft 365 app-only access.

    Args:
        token_url: The provider's token endpoint (see :meth:`microsoft`).
        client_id, client_secret: The app's credentials.
        scope: The scopes to ask for.
        account: The mailbox, as sentences name it.
        margin, timeout, clock: As for :class:`RefreshTokenFlow`.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str | None = None,
        account: str = "this account",
        margin: float = _MARGIN,
        timeout: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(token_url, account=account, clock=clock, margin=margin, timeout=timeout)
        remember_secret(client_secret)
        self.client_id = client_id
        self._client_secret = client_secret
        self._scope = scope

    @classmethod
    def microsoft(
        cls, tenant: str, client_id: str, client_secret: str, **options: Any
    ) -> ClientCredentialsFlow:
        """Microsoft 365 app-only access (the app is granted the mailbox by an admin)."""
        url = MICROSOFT_TOKEN_URL.format(tenant=urllib.parse.quote(tenant, safe=""))
        return cls(url, client_id, client_secret, scope=MICROSOFT_APP_SCOPE, **options)

    def _renew(self) -> AccessToken:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._client_secret,
        }
        if self._scope:
            form["scope"] = self._scope
        return self._token_of(self._post(form))

    def __repr__(self) -> str:
        return f"ClientCredentialsFlow({self.token_url!r}, {self.client_id!r}, '***')"


class TokenCommand(_Cached):
    """A command that prints an access token on its first line (pizauth, oama, a vault).

    Args:
        argv: The command and its arguments (no shell).
        lifetime: Seconds a token it prints is taken to be valid (``None``: until a server
            refuses it).
        account: The mailbox, as sentences name it.
        timeout: Seconds the command may take.
        margin, clock: As for :class:`RefreshTokenFlow`.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        lifetime: float | None = None,
        account: str = "this account",
        timeout: float = 30.0,
        margin: float = 60.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(clock, margin)
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise ConfigError("TokenCommand takes the command as a list of strings")
        self.argv = tuple(argv)
        self.account = account
        self._lifetime = None if lifetime is None else check_seconds(lifetime, "lifetime")
        self._timeout = check_seconds(timeout, "timeout")

    def _renew(self) -> AccessToken:
        import subprocess  # here: only a process that runs a command pays for it

        where = f"running {self.argv[0]} for a token for {self.account}"
        failure: TokenUnavailable | None = None
        try:
            done = subprocess.run(  # noqa: S603  (the user's own command, no shell)
                self.argv, capture_output=True, timeout=self._timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            # Raised outside the handler: a TimeoutExpired holds what the command printed.
            failure = TokenUnavailable(f"{where}: {one_line(redact(str(error)))}")
        if failure is not None:
            raise failure
        lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
        if lines:
            remember_secret(lines[0].strip())
        if done.returncode != 0 or not lines or not lines[0].strip():
            said = one_line(redact(done.stderr.decode("utf-8", "replace"))) or "no token"
            raise TokenUnavailable(f"{where}: exit status {done.returncode} ({said})")
        lifetime = self._lifetime
        expires = None if lifetime is None else self._now() + lifetime
        return AccessToken(lines[0].strip(), expires)

    def __repr__(self) -> str:
        return f"TokenCommand({list(self.argv)!r})"


def _json(raw: bytes) -> object:
    """*raw* parsed as JSON, or None (no error object: its ``doc`` would hold *raw*)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested past Python's stack
        return None


def token_source(secret: str | TokenSource) -> TokenSource:
    """*secret* as a token source: a string is a :class:`FixedToken`."""
    return FixedToken(secret) if isinstance(secret, str) else secret
