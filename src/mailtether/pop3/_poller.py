"""``Pop3Poller``: the listener's guarantees for POP3 mailboxes."""

from __future__ import annotations

import contextlib
import logging
import poplib
import ssl
import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._errors import (
    AuthenticationFailed,
    ConnectionLost,
    MailServerError,
    TLSFailure,
)
from mailtether._guard import ClaimStatus, DuplicateGuard
from mailtether._message_key import MessageKey, content_digest
from mailtether._runner import _SourceRunner, either
from mailtether._settings import ImapSettings
from mailtether._status import StatusBoard
from mailtether._strategies import ReconnectStrategy
from mailtether.imap._connection import translate_error
from mailtether.imap._listener import Delivery
from mailtether.stores._protocol import Store

__all__ = ["MailboxInUse", "Pop3Poller"]

log = logging.getLogger("mailtether.pop3")
_IN_USE: Final = b"[IN-USE]"
_T = TypeVar("_T")


class _ClosingPOP3(poplib.POP3):
    """poplib.POP3 that closes its socket when the greeting fails (poplib leaks it)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        try:
            super().__init__(host, port, timeout=timeout)
        except BaseException:
            _close_quietly(self)
            raise


class _ClosingPOP3_SSL(poplib.POP3_SSL):
    """poplib.POP3_SSL that closes its socket when the handshake or greeting fails."""

    def __init__(self, host: str, port: int, timeout: float, context: ssl.SSLContext) -> None:
        try:
            super().__init__(host, port, timeout=timeout, context=context)
        except BaseException:
            _close_quietly(self)
            raise


def _close_quietly(pop: poplib.POP3) -> None:
    for name in ("file", "sock"):
        resource = getattr(pop, name, None)
        if resource is not None:
            with contextlib.suppress(Exception):
                resource.close()


class MailboxInUse(ConnectionLost):
    """Another POP3 session holds the mailbox (``-ERR [IN-USE]``): try again later."""

    default_hint = "another client reads this mailbox; the poller tries again later"


class Pop3Poller(_SourceRunner):
    """Polls a POP3 mailbox and hands every new mail to *handler*, exactly once.

    POP3 has no flags and no push: the poller logs in every *poll_interval*, lists the mailbox
    by UIDL (a content digest where the server has no UIDL), skips what the duplicate guard
    has done, hands new mail to the handler, and only after the handler's success is recorded
    sends ``DELE`` and ``QUIT`` (POP3 deletes at ``QUIT``; a dropped session deletes nothing,
    and the guard remembers the UIDL, so the next poll deletes those mails without handing them
    out again). Failed mail stays on the server and is retried; after the guard's
    ``max_failures`` it is held and reported, never deleted unseen.

    The same status board, reconnect strategy and blocking rules as
    :class:`~mailtether.ImapListener`: credentials rejected or untrusted TLS → BLOCKED; a
    mailbox locked by another session (``[IN-USE]``) → retried later.

    Args:
        source: ``pop3s://user:password@host[:port]/`` (implicit TLS, port 995), or
            ``pop3://…`` (STLS required; ``?security=plain`` for plaintext), or
            :class:`~mailtether.ImapSettings` (its folder is ignored).
        handler: Called with a :class:`~mailtether.Delivery` per mail (``uid`` is 0;
            the UIDL is in ``delivery.key.uidl``).
        delete: Delete handled mail (``DELE``); POP3 cannot mark mail read.
        poll_interval: Seconds between polls; also the default lease TTL (seed 001).
        timeout: Seconds for connecting and for each command.
        Other arguments: as for :class:`~mailtether.ImapListener`.
    """

    kind = "poller"

    def __init__(
        self,
        source: str | ImapSettings,
        handler: Callable[[Delivery], object],
        *,
        reconnect: ReconnectStrategy | None = None,
        store: Store | None = None,
        guard: DuplicateGuard | None = None,
        status: StatusBoard | None = None,
        delete: bool = True,
        poll_interval: float = 60.0,
        lease_ttl: float | None = None,
        timeout: float = 30.0,
        name: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = (
            source if isinstance(source, ImapSettings) else ImapSettings.from_pop3_url(source)
        )
        """Where the mailbox is."""
        settings = self.settings
        super().__init__(
            name=name or f"{settings.username}@{settings.host}/pop3",
            handler=handler,
            reconnect=reconnect,
            store=store,
            guard=guard,
            status=status,
            poll_interval=poll_interval,
            lease_ttl=poll_interval if lease_ttl is None else lease_ttl,
            clock=clock,
        )
        self.delete = delete
        """Whether handled mail is deleted."""
        self.timeout = float(timeout)
        """Seconds for connecting and each command."""
        self._pop: poplib.POP3 | None = None

    # -- sessions ----------------------------------------------------------------------------------

    def _session(self, stop: threading.Event) -> None:
        while not stop.is_set() and not self._stop.is_set():
            self.poll_once()
            self.clock.sleep(self.poll_interval, either(stop, self._stop))

    def poll_once(self) -> int:
        """Log in, handle everything new, delete what is done, QUIT; return how many handled."""
        with self._lease() as lease:
            pop = self._open()
            try:
                self._online()
                handled = self._poll(pop, lease.check)
                self._call("QUIT", pop.quit)  # only now does the server delete
                return handled
            finally:
                self._pop = None
                with contextlib.suppress(Exception):
                    pop.close()

    def _drop_connection(self) -> None:
        pop = self._pop
        if pop is not None:
            with contextlib.suppress(Exception):
                pop.sock.shutdown(2)

    def _call(self, doing: str, function: Callable[..., _T], *args: object) -> _T:
        try:
            return function(*args)
        except poplib.error_proto as error:
            text = error.args[0] if error.args else b""
            detail = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
            if _IN_USE in (text if isinstance(text, bytes) else text.encode()):
                raise MailboxInUse(f"{doing}: the mailbox is in use ({detail})") from None
            if doing in ("USER", "PASS"):
                raise AuthenticationFailed(
                    f"logging in: the server rejected the credentials ({detail})"
                ) from None
            raise ConnectionLost(f"{doing}: the server said {detail}") from None
        except MailServerError:
            raise
        except BaseException as error:
            raise translate_error(error, doing, secret=self.settings.password) from None

    def _open(self) -> poplib.POP3:
        settings = self.settings
        context = settings.ssl_context or ssl.create_default_context()
        where = f"connecting to {settings.host}:{settings.port}"
        if settings.security == "tls":
            pop: poplib.POP3 = self._call(
                where,
                lambda: _ClosingPOP3_SSL(settings.host, settings.port, self.timeout, context),
            )
        else:
            pop = self._call(
                where, lambda: _ClosingPOP3(settings.host, settings.port, self.timeout)
            )
        try:
            if settings.security == "starttls":
                capabilities = self._call("CAPA", pop.capa)
                if "STLS" not in capabilities:
                    raise TLSFailure(
                        f"{settings.host} does not offer STLS, and the password must not travel "
                        "in clear",
                        hint="use pop3s:// (port 995), or fix the server",
                    )
                self._call("STLS", pop.stls, context)
            if settings.auth == "apop":
                if b"<" not in pop.getwelcome():
                    raise AuthenticationFailed(
                        f"{settings.host} offers no APOP (its greeting has no timestamp)",
                        hint="use auth=password (USER/PASS, inside TLS) for this server",
                    )
                self._call("PASS", pop.apop, settings.username, settings.password)
            else:
                self._call("USER", pop.user, settings.username)
                self._call("PASS", pop.pass_, settings.password)
        except BaseException:
            with contextlib.suppress(Exception):
                pop.close()
            raise
        self._pop = pop
        return pop

    def _poll(self, pop: poplib.POP3, check: Callable[[], None]) -> int:
        account = self.settings.username
        try:
            _, lines, _ = self._call("UIDL", pop.uidl)
            listing = [line.decode("ascii", "replace").split(" ", 1) for line in lines]
            numbered = [(int(number), uidl.strip()) for number, uidl in listing]
        except ConnectionLost as error:
            if "UIDL" not in str(error):
                raise
            numbered = self._digests(pop)  # the server has no UIDL: key by content
        keys = {number: MessageKey.pop3(account, uidl) for number, uidl in numbered}
        known = self.store.get_many(self.guard.namespace, (key.id for key in keys.values()))
        handled = 0
        for number, key in keys.items():
            check()
            record = known.get(key.id)
            if (
                record is not None
                and record.state in ("held", "dropped", "processing")
                and (record.state != "processing" or not self._expired(record.data))
            ):
                continue  # held, dropped, or another worker's claim still running
            if record is not None and record.state == "done":
                # Handled before, and still here: a session died before QUIT. Delete it now.
                if self.delete:
                    self._call("DELE", pop.dele, number)
                continue
            _, body, _ = self._call("RETR", pop.retr, number)
            raw = b"\r\n".join(body) + b"\r\n"
            full = MessageKey.pop3(account, key.uidl or "", raw=raw)
            claim = self.guard.claim(full)
            if claim.status is ClaimStatus.NEW:
                try:
                    with claim:
                        self.handler(Delivery(full, 0, (), raw, claim.attempt))
                except Exception as error:
                    log.warning("%s: handler failed on %s: %s", self.name, full, error)
                    self.status.count(self.name, failed=1)
                    continue
                handled += 1
                self.status.count(self.name, processed=1)
            elif claim.status not in (ClaimStatus.DONE, ClaimStatus.DUPLICATE):
                continue
            if self.delete:
                self._call("DELE", pop.dele, number)
        return handled

    def _expired(self, data: Any) -> bool:
        expires = float(data.get("expires_at", 0))
        return expires <= self.store.now()

    def _digests(self, pop: poplib.POP3) -> list[tuple[int, str]]:
        _, lines, _ = self._call("LIST", pop.list)
        numbered = []
        for line in lines:
            number = int(line.split()[0])
            _, top, _ = self._call("TOP", pop.top, number, 0)
            numbered.append((number, content_digest(b"\r\n".join(top))[:64]))
        return numbered

    def __repr__(self) -> str:
        return f"Pop3Poller({self.name!r}, delete={self.delete!r})"
