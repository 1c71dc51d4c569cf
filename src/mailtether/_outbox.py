"""``Outbox``: outgoing mail recorded before it is sent, delivered on a retry schedule.

Seeds 003 (an MTA's queues) and 004 (a platform's outbound mail): a send that never loses a
mail because the SMTP server was down for an hour, and an error queue a person can read.

Every mail is one record in the store (namespace ``outgoing``, keyed by its Message-ID):

- ``queued``: waiting for its next try (``next_at``); what is still to be done, per
  recipient, is in ``recipients``;
- ``sending``: claimed by a sender until ``claimed_until`` (a sender that died mid-send
  leaves it to be tried again after that);
- ``sent``: every recipient accepted by a relay;
- ``failed``: the error queue: a recipient refused for good (5xx), or the schedule gave up;
- ``held``: not sent at all (a mail loop), until a person releases it.

The outcome rules are SMTP's: a 4xx reply or a connection fault delays the recipients it
concerns until the next try; a 5xx reply fails them at once, with the server's words; the
rest of the mail's recipients are unaffected. Each try is kept in the record's history.
"""

from __future__ import annotations

import base64
import email.utils
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from email.message import EmailMessage, Message
from typing import Any, Final

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._durations import Duration, check_count, check_seconds
from mailtether._errors import ConfigError, LeaseUnavailable
from mailtether._leases import ProcessLock
from mailtether._outbox_queue import OUTGOING, OutboundMail, OutboxQueue, view
from mailtether._outbox_relay_pass import RelayPass
from mailtether._redaction import redacting_logger
from mailtether._smtp_relay import SmtpRelay
from mailtether._status import StatusBoard
from mailtether._strategies import Exponential, ReconnectStrategy
from mailtether.stores._protocol import Record, Store

__all__ = ["Outbox"]

log = redacting_logger("mailtether.outbox")

_RECEIVED: Final = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)

DEFAULT_RETRY: Final = Exponential(initial=60, growth=1.0, max_delay=3600).capped(
    max_offline_for=5 * 24 * 3600
)
"""The default schedule: 1, 2, 4 … 60 minutes apart, then hourly; given up after 5 days."""


class Outbox:
    """Outgoing mail, recorded in a store before :meth:`send` returns, then delivered.

    :meth:`send` records the mail (durable on SQLite, Redis and PostgreSQL) and returns; a
    sender — :meth:`run` / :meth:`run_in_thread`, or :meth:`deliver_due` called by you —
    hands it to its relay. Nothing is lost when the relay is down: the mail waits, and is
    tried again on the *retry* schedule (a :class:`~mailtether.ReconnectStrategy`: attempt
    *k* of a mail queued *t* seconds ago waits ``retry.delay(k, t)``; ``None`` gives up).

    Outcomes, per recipient: accepted (``250``) → sent; a 4xx reply or a connection fault →
    tried again at the next time the schedule gives; a 5xx reply → failed at once, with the
    server's words. A mail is ``failed`` (the error queue) once a recipient failed and none
    is pending, or when the schedule gives up; ``sent`` once every recipient was accepted.

    A relay that fails *skip_after* connections in a row within one pass is skipped for the
    rest of that pass: its other mail waits for the next pass (no try is counted), and mail
    for other relays flows on. With a *status* board each relay is a source
    (``outbox:<relay name>``): ONLINE after a delivery, RETRYING while it cannot be reached
    or refuses the login, so a person is told.

    A mail carrying more than *max_received* ``Received:`` lines is in a loop: it is held,
    not sent, until :meth:`release`.

    Several senders (threads, processes, hosts on a shared store) may work one outbox: a
    sender claims a mail before it sends it. Where the order matters, ``ordered=True``: one
    sender at a time works each relay (a lease per relay, ``outbox-relay:<name>``; the others
    leave that relay's mail to it for the pass), sending its due mail in the order it was
    queued. A mail that is delayed does not hold back the ones queued after it.

    What a crash can cost: a sender killed between the relay's ``250`` and the record of it
    sends that mail again when its claim expires (same Message-ID, so receivers can drop the
    repeat). Nothing else is sent twice, and nothing is lost. (A mail's outcome is recorded
    while the relay answers the next mail's ``MAIL FROM``, and a relay accepts a mail only
    at the end of its data, later: so only one mail at a time is accepted and unrecorded.)

    Args:
        store: Where the mail is kept.
        relays: The relays, by name or as a sequence; mail goes to the first one unless
            :meth:`send` names another.
        retry: The retry schedule (default: 1, 2, 4 … minutes, at most an hour apart,
            given up after 5 days).
        status: A status board to report each relay's state on.
        max_received: More ``Received:`` lines than this is a loop (default 30).
        skip_after: Connection failures in a row after which a relay is skipped for the rest
            of a pass (default 3).
        claim_ttl: How long a sender's claim on a mail lasts (default 10 minutes).
        poll_interval: How often :meth:`run` looks for due mail when nothing wakes it.
        ordered: One sender at a time per relay, in the order mail was queued.
        clock: The clock (tests pass a :class:`~mailtether.testing.FakeClock`).

    Example:
        >>> from email.message import EmailMessage
        >>> from mailtether import MemoryStore, Outbox, SmtpRelay
        >>> outbox = Outbox(MemoryStore(), SmtpRelay("smtp.example.com"))
        >>> mail = EmailMessage()
        >>> mail["From"], mail["To"] = "bot@example.com", "alice@example.com"
        >>> mail["Message-ID"] = "<reply-1@example.com>"
        >>> mail["Subject"] = "Your ticket"
        >>> outbox.send(mail).state
        'queued'
        >>> outbox.send(mail).attempts  # the same Message-ID again: queued once
        0
        >>> outbox.counts()
        {'queued': 1}
    """

    def __init__(
        self,
        store: Store,
        relays: SmtpRelay | Sequence[SmtpRelay] | Mapping[str, SmtpRelay],
        *,
        retry: ReconnectStrategy = DEFAULT_RETRY,
        status: StatusBoard | None = None,
        max_received: int = 30,
        skip_after: int = 3,
        claim_ttl: Duration | str = 600.0,
        poll_interval: Duration | str = 5.0,
        ordered: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        if isinstance(relays, SmtpRelay):
            relays = [relays]
        if isinstance(relays, Mapping):
            named = dict(relays)
        else:
            named = {relay.name: relay for relay in relays}
        if not named or not all(isinstance(r, SmtpRelay) for r in named.values()):
            raise ConfigError("an Outbox needs at least one SmtpRelay")
        self.relays: dict[str, SmtpRelay] = named
        """The relays, by name."""
        self.retry = retry
        self.status = status
        self.max_received = check_count(max_received, "max_received", minimum=1)
        self.skip_after = check_count(skip_after, "skip_after", minimum=1)
        self.claim_ttl = check_seconds(claim_ttl, "claim_ttl", minimum=1.0)
        self.poll_interval = check_seconds(poll_interval, "poll_interval", minimum=0.01)
        self.clock = clock
        self.ordered = ordered
        """Whether each relay is worked by one sender at a time, in queued order."""
        self._relay_locks: dict[str, ProcessLock] = {}
        self.queue = OutboxQueue(store, clock=clock)
        """The mail in the store: look-ups and a person's decisions (as ``mailtether queue``)."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- queueing --------------------------------------------------------------------------------

    def send(
        self,
        message: EmailMessage | Message | bytes,
        *,
        sender: str | None = None,
        recipients: Iterable[str] | None = None,
        relay: str | None = None,
    ) -> OutboundMail:
        """Record *message* for sending; return its record (queued, held, or as it was).

        Returns once the mail is in the store. The same Message-ID sent again is queued
        once: the mail as already recorded is returned. A mail without a Message-ID gets
        one. *sender* and *recipients* default to the message's From and To/Cc/Bcc
        (a ``Bcc:`` header is not sent).

        Raises:
            ConfigError: no sender or no recipient can be found, or *relay* is unknown.
            StoreError: the store cannot record it (nothing is queued).
        """
        raw, message_id, found_sender, found_recipients = _envelope(message)
        sender = sender if sender is not None else found_sender
        wanted = list(recipients) if recipients is not None else found_recipients
        if not sender:
            raise ConfigError(f"mail {message_id} has no sender: give sender= or a From header")
        if not wanted:
            raise ConfigError(f"mail {message_id} has no recipient: give recipients= or a To")
        name = relay if relay is not None else next(iter(self.relays))
        if name not in self.relays:
            raise ConfigError(f"no relay named {name!r}: the outbox has {sorted(self.relays)}")
        now = self.clock.time()
        data: dict[str, Any] = {
            "raw": base64.b64encode(raw).decode("ascii"),
            "sender": sender,
            "recipients": dict.fromkeys(wanted, "pending"),
            "relay": name,
            "queued_at": now,
            "next_at": now,
            "attempts": 0,
            "reason": "",
            "history": [],
        }
        state = "queued"
        loops = len(_RECEIVED.findall(_head(raw)))
        if loops > self.max_received:
            state = "held"
            data["reason"] = (
                f"a mail loop: {loops} Received: lines (more than {self.max_received}); "
                "release it to send it anyway"
            )
            data["next_at"] = None
        record = self.store.put(OUTGOING, message_id, state, data, expect=0)
        if record is None:  # queued before: once is enough
            existing = self.store.get(OUTGOING, message_id)
            assert existing is not None, "a record that exists"
            return view(existing)
        if state == "held":
            log.warning("outbox: %s held: %s", message_id, data["reason"])
        self._wake.set()
        return view(record)

    # -- reading, and a person's decisions -------------------------------------------------

    def get(self, message_id: str) -> OutboundMail | None:
        """The mail with this Message-ID, or ``None``."""
        return self.queue.get(message_id)

    def mails(self, state: str | None = None) -> list[OutboundMail]:
        """The mails (in *state*, if given), least recently changed first."""
        return self.queue.mails(state)

    def counts(self) -> dict[str, int]:
        """How many mails are in each state."""
        return self.queue.counts()

    def release(self, message_id: str) -> bool:
        """Send a failed or held mail again: its failed recipients become pending, due now.

        Returns ``False`` if there is no such mail, or it is not failed or held.
        """
        released = self.queue.release(message_id)
        if released:
            self._wake.set()
        return released

    def drop(self, message_id: str) -> bool:
        """Delete a failed or held mail for good; ``False`` if there is none such."""
        return self.queue.drop(message_id)

    # -- sending ---------------------------------------------------------------------------------

    def deliver_due(self) -> int:
        """Try every mail that is due now, relay by relay; return how many were sent.

        One connection per relay for the pass. A relay that fails *skip_after* connections
        in a row is skipped for the rest of the pass (its mail is not charged a try).
        """
        now = self.clock.time()
        due: dict[str, list[Record]] = {}
        for record in self.store.scan(OUTGOING, state="queued"):
            if float(record.data.get("next_at") or 0.0) <= now:
                due.setdefault(str(record.data["relay"]), []).append(record)
        for record in self.store.scan(OUTGOING, state="sending"):
            if float(record.data.get("claimed_until") or 0.0) <= now:  # its sender died
                due.setdefault(str(record.data["relay"]), []).append(record)
        sent = 0
        for name, records in due.items():
            relay = self.relays.get(name)
            if relay is None:
                log.warning(
                    "outbox: %d mail(s) wait for relay %r, unknown here", len(records), name
                )
                continue
            if not self.ordered:
                sent += RelayPass(self, relay).run(records)
                continue
            lock = self._relay_locks.get(name)
            if lock is None:
                lock = ProcessLock(self.store, f"outbox-relay:{name}", ttl=60.0, clock=self.clock)
                self._relay_locks[name] = lock
            try:
                with lock:
                    records.sort(key=lambda record: float(record.data.get("queued_at", 0.0)))
                    sent += RelayPass(self, relay).run(records)
            except LeaseUnavailable:
                log.debug("outbox: another sender works relay %s; its mail is left to it", name)
        return sent

    def run(self, stop: threading.Event | None = None) -> None:
        """Deliver due mail until *stop* is set (or :meth:`stop` is called).

        Every error ends in a state: a pass that fails (the store is down) is logged and
        the next one comes after *poll_interval*. A mail queued by :meth:`send` in this
        process wakes the loop at once; *stop* set from outside is noticed within
        *poll_interval* (:meth:`stop` at once).
        """
        stop = stop or self._stop
        while not stop.is_set():
            try:
                self.deliver_due()
            except Exception as error:
                log.error("outbox: a delivery pass failed (tried again): %s", error)
            self._wake.clear()
            if stop.is_set():
                return
            self._wait(stop)

    def _wait(self, stop: threading.Event) -> None:
        """Until *poll_interval* passed, or :meth:`send` (or :meth:`stop`) wakes the loop."""
        if not stop.is_set():
            self.clock.sleep(self.poll_interval, self._wake)

    def run_in_thread(self) -> threading.Thread:
        """Run :meth:`run` in a daemon thread; :meth:`stop` ends it."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this outbox's sender is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="mailtether-outbox", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the sender thread and wait for it (a send in progress finishes first)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for lock in self._relay_locks.values():  # (ordered=True) their heartbeat threads
            lock.close()

    def __repr__(self) -> str:
        return f"Outbox({self.store!r}, relays={list(self.relays)!r})"


def _head(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    return raw if end < 0 else raw[:end]


def _envelope(message: EmailMessage | Message | bytes) -> tuple[bytes, str, str, list[str]]:
    """(raw bytes, Message-ID, From address, To/Cc/Bcc addresses); a Message-ID added if none."""
    if isinstance(message, bytes | bytearray):
        parsed = email.message_from_bytes(bytes(message))
        raw = bytes(message)
    elif isinstance(message, Message):
        parsed = message
        raw = b""
    else:
        raise TypeError(f"message must be an email Message or bytes, not {type(message).__name__}")
    message_id = "".join(str(parsed.get("Message-ID") or "").split())
    if not message_id:
        message_id = email.utils.make_msgid(domain="mailtether.invalid")
        if raw:
            raw = b"Message-ID: " + message_id.encode("ascii") + b"\r\n" + raw
        else:
            parsed["Message-ID"] = message_id
    recipients = [
        address
        for _, address in email.utils.getaddresses(
            [str(value) for field in ("To", "Cc", "Bcc") for value in parsed.get_all(field, [])]
        )
        if address
    ]
    if not raw:
        if "Bcc" in parsed:
            parsed = _without_bcc(parsed)
        raw = parsed.as_bytes(policy=parsed.policy.clone(linesep="\r\n"))
    found = email.utils.getaddresses([str(parsed.get("From") or "")])
    sender = found[0][1] if found else ""
    return raw, message_id, sender, list(dict.fromkeys(recipients))


def _without_bcc(message: Message) -> Message:
    copy: Message = email.message_from_bytes(message.as_bytes(), policy=message.policy)
    del copy["Bcc"]
    return copy
