"""``ImapConnection``: imapclient with TLS by default, deadlines everywhere, clear errors.

imapclient, like most IMAP libraries, waits forever on a dead network, swallows a closed
connection during IDLE (``idle_check`` returns ``[]`` at once, forever), and lets raw socket
errors escape ``idle_done``. This module wraps it so that every failure is one of
mailtether's named errors, every wait has a deadline, and a dead connection is found within
the :class:`~mailtether.Keepalive` bound.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import imaplib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from imapclient import IMAPClient
from imapclient.imapclient import SocketTimeout

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._durations import check_count, check_seconds
from mailtether._errors import (
    AuthenticationFailed,
    CommandFailed,
    ConnectionLost,
    FolderMissing,
    MailServerError,
    MalformedReply,
    TLSFailure,
)
from mailtether._keepalive import Keepalive
from mailtether._redaction import redacting_logger
from mailtether._sasl import oauth2_mechanism
from mailtether._settings import OAUTH, ImapSettings, literal_password, tokens_of
from mailtether._step_deadlines import SLOWEST_RATE, StepDeadlines, overran
from mailtether.imap._errors import translate_error
from mailtether.imap._idle import IdleReader, is_chatter
from mailtether.imap._locked import LockedClient
from mailtether.imap._watched_client import WatchedIMAPClient

__all__ = ["ImapConnection"]

_IDLE_LITERAL: Final = 16 * 2**20  # the largest literal read inside an IDLE push

log = redacting_logger("mailtether.imap")
_PROTOCOL_TRACE: Final = redacting_logger("imapclient.imaplib")
for _name in (
    "imapclient",
    "imapclient.imapclient",
    "imapclient.util",
    "imapclient.response_parser",
):
    redacting_logger(_name)  # imapclient's own records: no secret in them either

_T = TypeVar("_T")


class ImapConnection:
    """One IMAP connection, opened by :meth:`open`, that fails only with named errors.

    - TLS with certificate verification by default; STARTTLS is required when asked for
      (never a silent downgrade); plaintext only with ``security="plain"``.
    - Connect and read timeouts are always set; ``TCP_NODELAY`` is set (with Nagle's
      algorithm small commands can cost ~40 ms each against some servers).
    - After the connection breaks, every call raises :class:`~mailtether.ConnectionLost` at
      once: a client that timed out cannot be used again; open a new connection.
    - Calls are serialised by a lock, so a keepalive thread and your code can share it. A
      call from another thread during :meth:`wait` ends the IDLE at once, runs, and lets
      the wait go on.

    Example:
        >>> from mailtether import ImapConnection, ImapSettings, ServerUnreachable
        >>> settings = ImapSettings("127.0.0.1", "user", "pw", port=9, security="plain",
        ...                         connect_timeout=2)
        >>> try:
        ...     ImapConnection.open(settings)
        ... except ServerUnreachable as error:
        ...     print(error.hint)
        check the host name and port, and that no firewall blocks the way
    """

    def __init__(
        self,
        settings: ImapSettings,
        *,
        keepalive: Keepalive | None = None,
        clock: Clock = SYSTEM_CLOCK,
        max_literal: int | None = None,
    ) -> None:
        self.settings = settings
        """Where it connects."""
        self.keepalive = keepalive if keepalive is not None else Keepalive()
        """Its deadlines."""
        self.clock = clock
        """The clock for keepalive scheduling: NOOPs due, IDLE renewal, :meth:`wait` deadlines."""
        self.max_literal = (
            None if max_literal is None else check_count(max_literal, "max_literal", minimum=1024)
        )
        """The largest literal (``{n}`` in an answer) read, in bytes; ``None``: no bound.

        An answer announcing more ends the connection (``ConnectionLost``) before a byte of
        it is read into memory."""
        self._deadlines = StepDeadlines()
        self._locked: LockedClient[IMAPClient] = LockedClient(
            None,
            name=f"the connection to {settings.host}",
            translate=functools.partial(translate_error, secret=literal_password(settings)),
            clock=clock,
            on_dead=self._log_death,
            deadlines=self._deadlines,
            step_seconds=self.keepalive.response_timeout,
        )
        self._aheads: collections.deque[_Ahead] = collections.deque()  # sent, answers unread
        self._noticed: list[Any] = []  # a change seen in another command's answer
        self.capabilities: frozenset[bytes] = frozenset()
        """What the server offers (after login)."""
        self.uidvalidity: int | None = None
        """The selected folder's UIDVALIDITY."""
        self.read_only = False
        """Whether the server opened the selected folder read-only."""
        self.mechanism = "LOGIN"
        """How it logged in: ``"LOGIN"``, ``"XOAUTH2"`` or ``"OAUTHBEARER"``."""

    # -- opening -----------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        settings: ImapSettings,
        *,
        keepalive: Keepalive | None = None,
        clock: Clock = SYSTEM_CLOCK,
        select_folder: bool = True,
        max_literal: int | None = None,
    ) -> ImapConnection:
        """Connect, secure, log in and (by default) select the folder.

        Raises:
            ServerUnreachable, TLSFailure, AuthenticationFailed, FolderMissing,
            ConnectionLost: each with a sentence of what to do.
        """
        connection = cls(settings, keepalive=keepalive, clock=clock, max_literal=max_literal)
        try:
            connection._connect()
            connection._login()
            if select_folder:
                connection.select(settings.folder)
        except BaseException:
            connection.close()
            raise
        return connection

    def _context(self) -> ssl.SSLContext:
        return self.settings.ssl_context or ssl.create_default_context()

    def _connect(self) -> None:
        settings = self.settings
        where = f"connecting to {settings.host}:{settings.port}"
        timeout = SocketTimeout(
            connect=settings.connect_timeout, read=self.keepalive.response_timeout
        )
        # One step, with its deadline: TCP, the TLS handshake and the greeting, however
        # slowly the server sends them.
        seconds = settings.connect_timeout + self.keepalive.response_timeout
        with self._deadlines.step(where, seconds) as step:
            try:
                client = WatchedIMAPClient(
                    settings.host,
                    deadlines=self._deadlines,
                    port=settings.port,
                    ssl=settings.security == "tls",
                    ssl_context=self._context() if settings.security == "tls" else None,
                    timeout=timeout,
                )
                if step.finish():
                    client.shutdown()
                    raise step.error()  # a greeting cut short is no greeting
            except Exception as error:  # Ctrl-C and SystemExit pass as they are
                cause = overran(step, error)
                raise translate_error(cause, where, secret=literal_password(settings)) from None
        self._locked.client = client
        self._watch_socket(client)
        # imapclient sets imaplib's debug level to 5, so imaplib formats every line it reads —
        # whole mails included — into a log message, logged or not: a third of the time of a
        # bulk FETCH of small mail. Keep that trace only when someone is listening for it.
        imap = getattr(client, "_imap", None)
        if imap is not None and not _PROTOCOL_TRACE.isEnabledFor(logging.DEBUG):
            imap.debug = 0
        if isinstance(imap, imaplib.IMAP4) and self.max_literal is not None:
            _bound_literals(imap, self.max_literal)
        with contextlib.suppress(OSError):  # not TCP (a test stream): nothing to tune
            client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if settings.security == "starttls":
            capabilities = self._call("asking for capabilities", client.capabilities)
            if b"STARTTLS" not in capabilities:
                raise TLSFailure(
                    f"{settings.host} does not offer STARTTLS, and the password must not travel "
                    "in clear",
                    hint="use implicit TLS (imaps://), or fix the server (or whatever strips "
                    "STARTTLS on the way)",
                )
            self._watch_socket(client, duplicate=True)  # TLS detaches the socket object
            self._call("starting TLS", client.starttls, self._context())
            self._watch_socket(client)
        self._locked.touch()

    def _watch_socket(self, client: IMAPClient, *, duplicate: bool = False) -> None:
        """The socket in use is the one step deadlines cut (see StepDeadlines.attach)."""
        with contextlib.suppress(OSError, AttributeError):  # a test stream: the duplicate stays
            self._deadlines.attach(client.socket(), duplicate=duplicate)

    def _login(self) -> None:
        client = self._require()
        settings = self.settings
        password = literal_password(settings)
        if settings.auth in OAUTH:
            self._oauth2_login(client)
        elif not (password.isascii() and settings.username.isascii()):
            # LOGIN carries ASCII only (imaplib cannot send more): AUTHENTICATE PLAIN is UTF-8
            self._call("logging in (PLAIN)", client.plain_login, settings.username, password)
        else:
            self._call("logging in", client.login, settings.username, password)
        self.capabilities = frozenset(self._call("asking for capabilities", client.capabilities))
        log.debug("logged in to %s as %s", settings.host, settings.username)

    def _oauth2_login(self, client: IMAPClient) -> None:
        """AUTHENTICATE with a token from the settings' token source, fresh if refused once.

        The mechanism is OAUTHBEARER (RFC 7628) where the server offers it and ``auth`` is
        ``"oauth2"``, else XOAUTH2. A token the server refuses is renewed once and tried
        again before the refusal counts (a token revoked early, a clock that is off).
        """
        settings = self.settings
        offered = self._call("asking for capabilities", client.capabilities)
        mechanism = oauth2_mechanism(settings.auth, offered)
        tokens = tokens_of(settings)
        login = client.oauthbearer_login if mechanism == "OAUTHBEARER" else client.oauth2_login
        doing = f"logging in ({mechanism})"
        token = tokens.token()  # TokenRevoked, TokenUnavailable: as they are
        try:
            self._call(doing, login, settings.username, token.value)
        except AuthenticationFailed:
            log.info(
                "%s refused the token of %s; trying a new one", settings.host, settings.username
            )
            self._call(doing, login, settings.username, tokens.token(fresh=True).value)
        self.mechanism = mechanism

    def select(self, folder: str) -> dict[bytes, Any]:
        """Select *folder* (read-write if the server allows; see :attr:`read_only`).

        Raises:
            FolderMissing: it does not exist.
        """
        client = self._require()

        def select_writable_or_not() -> dict[bytes, Any]:
            try:
                return client.select_folder(folder)  # type: ignore[no-any-return]
            except imaplib.IMAP4.readonly:
                # The server opened it read-only (permissions, ACL): say so, do not fail.
                self.read_only = True
                return client.select_folder(folder, readonly=True)  # type: ignore[no-any-return]

        self.read_only = False
        try:
            response = self._call(f"selecting {folder!r}", select_writable_or_not)
        except CommandFailed as error:
            if _NOT_CONNECTED in error.message.lower():  # Microsoft 365, after a login
                raise ConnectionLost(
                    f"selecting {folder!r}: {error.message} (Microsoft 365 does this for a "
                    "while after a login; reconnecting)"
                ) from None
            raise FolderMissing(f"folder {folder!r} cannot be selected ({error})") from None
        self.uidvalidity = self._uidvalidity(folder, response)
        self._noticed = []  # the folder's counts as selected: not news
        return response

    def _uidvalidity(self, folder: str, response: dict[bytes, Any]) -> int:
        """The UIDVALIDITY of the SELECT answer, else of a STATUS command, or raise.

        Without it UIDs mean nothing from one session to the next, so no mail is handed out.
        """
        value = response.get(b"UIDVALIDITY")
        if value is None:  # some servers leave it out of SELECT (RFC 3501 requires it)
            status = self._call(
                f"asking {folder!r} for its UIDVALIDITY",
                self._require().folder_status,
                folder,
                [b"UIDVALIDITY"],
            )
            value = status.get(b"UIDVALIDITY")
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if not 0 < number < 2**32:
            raise MalformedReply(
                f"the server gave no valid UIDVALIDITY for {folder!r} (got {value!r})"
            )
        return number

    # -- using it ----------------------------------------------------------------------------------

    @property
    def client(self) -> IMAPClient:
        """The imapclient behind it, for commands this class does not wrap.

        Use :meth:`call` to run them with the lock held and errors translated.
        """
        return self._require()

    @property
    def alive(self) -> bool:
        """``False`` once the connection is known broken."""
        return self._locked.alive

    @property
    def has_idle(self) -> bool:
        """Whether the server offers IDLE."""
        return b"IDLE" in self.capabilities

    def call(self, doing: str, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``function(*args, **kwargs)`` (an imapclient method) with the lock held.

        *doing* names the step in error messages ("fetching new mail").
        """
        return self._call(doing, function, *args, **kwargs)

    def call_ahead(
        self,
        doing: str,
        send: Callable[..., Callable[[], _T]],
        *args: Any,
        expected_bytes: int = 0,
        interleaves: bool = False,
    ) -> Callable[[], _T]:
        """Send a command now and read its answer later (IMAP pipelining).

        ``send(*args)`` sends the command and returns the function that reads its answer.
        Answers are read in the order their commands were sent: when the returned function
        is called (the answers of commands sent before it first), or before the next
        :meth:`call` on this connection, whichever comes first. Errors are translated as
        :meth:`call` translates them, and raised by the returned function.

        A command is sent while others are on their way only if all of them *interleave*:
        their answers are read through imaplib, which keeps what belongs to another command
        (a server may work on pipelined commands at once, RFC 3501 section 5.5, and mix
        their answers: Dovecot does, for a FETCH and a STORE of other mails). Any other
        command waits until the answers before it are read.

        Sending, and reading the answer, must each finish within the step deadline
        (``keepalive.response_timeout``); reading an answer of *expected_bytes* gets one
        more second for every 64 KiB of them.
        """
        with self._locked.held():
            if self._aheads and not (interleaves and all(a.interleaves for a in self._aheads)):
                with contextlib.suppress(MailServerError):  # their readers will raise them
                    self._read_ahead(self._aheads[-1])
            seconds = self.keepalive.response_timeout + expected_bytes / SLOWEST_RATE
            sent = self._run_within(
                self.keepalive.response_timeout, doing, send, *args, shed=not self._aheads
            )
            ahead = _Ahead(doing, sent, seconds, interleaves=interleaves)
            self._aheads.append(ahead)
        return lambda: self._read_ahead(ahead)

    def _read_ahead(self, ahead: _Ahead) -> Any:
        with self._locked.held():
            while ahead in self._aheads:  # unread: the answers before it come first
                oldest = self._aheads.popleft()
                # Another command's answer may come first: its time is this one's too.
                seconds = oldest.seconds + sum(a.seconds for a in self._aheads)
                try:
                    oldest.value = self._run_within(
                        seconds, oldest.doing, oldest.read, shed=not self._aheads
                    )
                except MailServerError as error:
                    oldest.error = error
            if ahead.error is not None:
                raise ahead.error
            return ahead.value

    def _require(self) -> IMAPClient:
        return self._locked.require()

    def _call(self, doing: str, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return self._call_within(self.keepalive.response_timeout, doing, function, *args, **kwargs)

    def _call_within(
        self, seconds: float, doing: str, function: Callable[..., _T], *args: Any, **kwargs: Any
    ) -> _T:
        with self._locked.held():
            if self._aheads:  # the answers still on their way come first
                with contextlib.suppress(MailServerError):  # their readers will raise them
                    self._read_ahead(self._aheads[-1])
            return self._run_within(seconds, doing, function, *args, **kwargs)

    def _run_within(
        self,
        seconds: float,
        doing: str,
        function: Callable[..., _T],
        *args: Any,
        shed: bool = True,
        **kwargs: Any,
    ) -> _T:
        """Run *function* now, whatever answers are still on their way.

        With *shed*, the untagged responses no command took are dropped after it (not while
        other answers are on their way: part of theirs may have come in already).
        """
        with self._locked.held():
            self._require()
            result = self._locked.call_within(seconds, doing, function, *args, **kwargs)
            if shed:
                self._shed_untagged()
            return result

    def _shed_untagged(self) -> None:
        """Drop the untagged responses no command took (imaplib keeps them all, forever).

        An EXPUNGE storm from other clients left 20,000 of them on a live connection. What
        they say that matters — new mail came (EXISTS, RECENT) — is kept as one change for
        the next :meth:`wait`, which then returns at once instead of missing it.
        """
        client = self._locked.client
        responses = getattr(getattr(client, "_imap", None), "untagged_responses", None)
        if not responses:
            return
        exists = responses.get("EXISTS")
        if exists or "RECENT" in responses:
            count = exists[-1] if exists else b"0"
            try:
                number = int(count)
            except (TypeError, ValueError):
                number = 0
            self._noticed = [(number, b"EXISTS")]
        capabilities = responses.get("CAPABILITY")
        responses.clear()
        if capabilities:  # the list a LOGIN answer carries: imapclient takes it from here,
            responses["CAPABILITY"] = capabilities[-1:]  # instead of asking again

    def wake(self) -> None:
        """Have a :meth:`wait` in another thread look at its stop event now (thread-safe).

        ``wait`` notices a stop event set by itself within a second; set the event, then
        call this, and it returns at once. A wait whose event is not set goes on.
        """
        self._locked.wake()

    def abort(self, reason: str) -> None:
        """Break the connection now, from any thread; every call then raises ConnectionLost.

        A call blocked on the socket in another thread returns at once. Use it when the
        connection must not be used any more (a lost lease, a shutdown).
        """
        self._locked.mark_dead(ConnectionLost(reason))

    def _log_death(self, error: MailServerError) -> None:
        log.info("connection to %s is dead: %s", self.settings.host, error)

    def noop(self) -> list[Any]:
        """Send NOOP (within the response timeout); return the untagged responses it got."""
        client = self._require()
        return list(self._call("sending NOOP", client.noop)[1])

    # -- waiting for mail ------------------------------------------------------------------------

    def wait(
        self,
        timeout: float,
        stop: threading.Event | None = None,
        *,
        use_idle: bool = True,
        stop_rings: bool = False,
    ) -> list[Any]:
        """Wait up to *timeout* seconds for a change in the selected folder.

        Uses IDLE when the server has it and *use_idle* is true (re-issued every
        ``keepalive.idle_renewal``), otherwise sleeps and sends NOOP every
        ``keepalive.noop_interval``. Returns as soon as
        the server reports a change (the untagged responses, such as ``(3, b'EXISTS')``), or
        ``[]`` at the timeout or when *stop* is set.

        IDLE holds the connection, but not against other threads: a :meth:`call` from one
        ends the IDLE at once, runs, and the wait goes on in a new IDLE.
        (What that call's answer reports is its own: a change it reads is not seen here.)

        The timeout, the NOOP and the IDLE renewal follow :attr:`clock`; reads from the
        server take real time, so with a :class:`~mailtether.testing.FakeClock` the wait
        ends, and IDLE is renewed, when the test advances the clock.

        In IDLE, *stop* is looked at every second, unless *stop_rings* says that whoever
        sets it calls :meth:`wake` too (and the clock is the system's): then the wait does
        not wake at all until the server speaks, a deadline comes, or it is woken — a
        process waiting on hundreds of idle folders costs no CPU.

        Raises:
            ConfigError: *timeout* is negative, NaN, infinite or not a duration (a
                :class:`ValueError`).
            ConnectionLost: the connection died (EOF, reset, BYE, or no answer within the
                response timeout); it is found within ``keepalive.detection_bound``.
        """
        # NaN would wait forever (no deadline compares as passed), so it is refused here.
        deadline = self.clock.monotonic() + check_seconds(timeout, "timeout", allow_zero=True)
        if self._noticed:  # new mail announced in the answer to another command
            noticed, self._noticed = self._noticed, []
            return noticed
        while True:
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0 or (stop is not None and stop.is_set()):
                return []
            if use_idle and self.has_idle:
                # Callers from other threads that ended the last IDLE go first: the lock is
                # not fair, and this thread would take it straight back.
                self._locked.let_callers_in(self.keepalive.response_timeout)
                changes = self._idle_once(deadline, stop, stop_rings=stop_rings)
            else:
                changes = self._poll_once(remaining, stop)
            if changes:
                return changes

    def _idle_once(
        self, until: float, stop: threading.Event | None, *, stop_rings: bool = False
    ) -> list[Any]:
        client = self._require()
        with self._locked.held():
            # Renewal is counted from when IDLE is sent, not from when this thread began to
            # wait for its turn.
            deadline = min(until, self.clock.monotonic() + self.keepalive.idle_renewal)
            self._call("starting IDLE", client.idle)
            # Read by the library, not by imapclient's idle_check (see imap/_idle.py): whole
            # lines through any split, literals, EOF and RST told apart, DONE included.
            reader = IdleReader(client, max_literal=self.max_literal or _IDLE_LITERAL)
            try:
                rings = stop_rings and self.clock is SYSTEM_CLOCK  # (a FakeClock: look often)
                changes = reader.read(self._locked, self.clock, deadline, stop, stop_rings=rings)
                more = reader.done(self.keepalive.response_timeout)
            except MailServerError as error:
                self._locked.mark_dead(
                    error if isinstance(error, ConnectionLost) else ConnectionLost(str(error))
                )
                raise
            self._locked.touch()
            return changes + more

    def _poll_once(self, duration: float, stop: threading.Event | None) -> list[Any]:
        interval = self.keepalive.noop_interval
        if interval <= 0:
            self.clock.sleep(duration, stop)
            return []
        due = self._locked.last_activity + interval - self.clock.monotonic()
        if due > 0 and (self.clock.sleep(min(due, duration), stop) or due > duration):
            return []
        return [change for change in self.noop() if not is_chatter(change)]

    # -- closing -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Log out politely if the connection is alive, then close it. Never raises."""
        try:
            self._close()
        finally:
            self._deadlines.close()

    def _close(self) -> None:
        locked = self._locked
        if locked.alive:
            # Between commands (an IDLE in another thread ends for it): a LOGOUT sent in the
            # middle of another command would be read as part of it.
            with locked.held():
                client = locked.detach()
                if client is not None and locked.error is None:
                    try:
                        client.logout()
                        return
                    except Exception:  # a dying connection: just close it
                        log.debug("logout from %s failed; closing", self.settings.host)
        else:
            client = locked.detach()
        if client is None:
            return
        try:
            client.shutdown()
        except Exception:  # already closed by the peer: nothing left to release
            log.debug("closing the socket to %s failed", self.settings.host)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "alive" if self.alive else "dead" if self._locked.error else "closed"
        settings = self.settings
        return f"ImapConnection({settings.username}@{settings.host}:{settings.port}, {state})"


class _Ahead:
    """A command sent by :meth:`ImapConnection.call_ahead` whose answer is not yet used."""

    def __init__(
        self, doing: str, read: Callable[[], Any], seconds: float, *, interleaves: bool
    ) -> None:
        self.doing = doing
        self.read = read
        self.seconds = seconds  # to read the answer in
        self.interleaves = interleaves  # read through imaplib: may be sent beside others
        self.value: Any = None
        self.error: MailServerError | None = None


_NOT_CONNECTED: Final = "user is authenticated but not connected"


def _bound_literals(imap: imaplib.IMAP4, limit: int) -> None:
    """Make *imap* refuse a literal over *limit* bytes before reading any of it.

    imaplib reads a literal whole, at whatever size the server announces (2 GB, if it says
    so); past *limit* the connection is given up instead (imaplib's ``abort``: a
    ``ConnectionLost``), since the rest of the answer can no longer be read.
    """
    read = imap.read

    def bounded(size: int) -> bytes:
        if size > limit:
            raise imaplib.IMAP4.abort(
                f"the server announced a literal of {size} bytes, more than the {limit} "
                "this connection reads"
            )
        return read(size)

    imap.read = bounded  # type: ignore[method-assign]
