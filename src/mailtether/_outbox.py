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
import smtplib
import threading
from collections.abc import Iterable, Mapping, Sequence
from email.message import EmailMessage, Message
from typing import Any, Final

import attrs

from mailtether._clock import SYSTEM_CLOCK, Clock
from mailtether._durations import Duration, check_count, check_seconds
from mailtether._errors import ConfigError, one_line
from mailtether._redaction import redacting_logger
from mailtether._smtp_relay import SmtpRelay
from mailtether._status import SourceState, StatusBoard
from mailtether._strategies import Exponential, ReconnectStrategy
from mailtether.stores._protocol import Record, Store, Write

__all__ = ["OUTGOING", "OutboundMail", "Outbox", "SendTry"]

log = redacting_logger("mailtether.outbox")

OUTGOING: Final = "outgoing"
"""The store namespace of outgoing mail."""

_CLAIM_MOST: Final = 50  # mails claimed in one store write
_HISTORY_MOST: Final = 50  # tries kept per mail (the first and the latest ones)
_REPLY_MOST: Final = 300  # characters of a server reply kept
_RECEIVED: Final = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)

DEFAULT_RETRY: Final = Exponential(initial=60, growth=1.0, max_delay=3600).capped(
    max_offline_for=5 * 24 * 3600
)
"""The default schedule: 1, 2, 4 … 60 minutes apart, then hourly; given up after 5 days."""


@attrs.frozen
class SendTry:
    """One try at sending a mail: when, through which relay, what the server said."""

    at: float
    """Wall-clock time of the try."""
    relay: str
    """The relay's name."""
    outcome: str
    """``sent``, ``delayed`` or ``failed`` (for the recipients it concerned)."""
    reply: str
    """The server's words (code and text), or what went wrong with the connection."""
    recipients: tuple[str, ...]
    """The recipients this try concerned."""

    def to_dict(self) -> dict[str, Any]:
        """The try as a JSON-able dict."""
        return {
            "at": self.at,
            "relay": self.relay,
            "outcome": self.outcome,
            "reply": self.reply,
            "recipients": list(self.recipients),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SendTry:
        """The try from :meth:`to_dict`'s output."""
        return cls(
            float(data["at"]),
            str(data["relay"]),
            str(data["outcome"]),
            str(data["reply"]),
            tuple(str(r) for r in data["recipients"]),
        )


@attrs.frozen
class OutboundMail:
    """What the outbox knows about one mail (a snapshot; see :meth:`Outbox.get`)."""

    message_id: str
    """Its Message-ID: the key of its record."""
    state: str
    """``queued``, ``sending``, ``sent``, ``failed`` or ``held``."""
    sender: str
    """The envelope sender (``MAIL FROM``)."""
    recipients: Mapping[str, str]
    """Each envelope recipient and where it stands: ``pending``, ``sent`` or ``failed``."""
    relay: str
    """The name of the relay it goes through."""
    queued_at: float
    """When :meth:`Outbox.send` recorded it (wall clock)."""
    next_at: float | None
    """When it is tried next (``queued`` only)."""
    attempts: int
    """How many tries were made."""
    reason: str
    """Why it is failed or held (empty otherwise)."""
    history: tuple[SendTry, ...]
    """Its tries, oldest first."""

    @property
    def pending(self) -> tuple[str, ...]:
        """The recipients still to be sent to."""
        return tuple(r for r, state in self.recipients.items() if state == "pending")


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
    sender claims a mail before it sends it.

    What a crash can cost: a sender killed between the relay's ``250`` and the record of it
    sends that mail again when its claim expires (same Message-ID, so receivers can drop the
    repeat). Nothing else is sent twice, and nothing is lost.

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
            return _view(existing)
        if state == "held":
            log.warning("outbox: %s held: %s", message_id, data["reason"])
        self._wake.set()
        return _view(record)

    # -- reading ---------------------------------------------------------------------------------

    def get(self, message_id: str) -> OutboundMail | None:
        """The mail with this Message-ID, or ``None``."""
        record = self.store.get(OUTGOING, message_id)
        return None if record is None else _view(record)

    def mails(self, state: str | None = None) -> list[OutboundMail]:
        """The mails (in *state*, if given), least recently changed first."""
        return [_view(record) for record in self.store.scan(OUTGOING, state=state)]

    def counts(self) -> dict[str, int]:
        """How many mails are in each state."""
        return dict(self.store.count(OUTGOING))

    # -- a person's decisions --------------------------------------------------------------------

    def release(self, message_id: str) -> bool:
        """Send a failed or held mail again: its failed recipients become pending, due now.

        Returns ``False`` if there is no such mail, or it is not failed or held.
        """

        def change(data: dict[str, Any]) -> str:
            recipients = data["recipients"]
            for recipient, state in recipients.items():
                if state == "failed":
                    recipients[recipient] = "pending"
            data.update(next_at=self.clock.time(), reason="", queued_at=self.clock.time())
            data["attempts"] = 0
            return "queued"

        released = self._change(message_id, ("failed", "held"), change)
        if released:
            self._wake.set()
        return released

    def drop(self, message_id: str) -> bool:
        """Delete a failed or held mail for good; ``False`` if there is none such."""
        record = self.store.get(OUTGOING, message_id)
        if record is None or record.state not in ("failed", "held"):
            return False
        return self.store.delete(OUTGOING, message_id, expect=record.version)

    def _change(
        self, message_id: str, states: tuple[str, ...], change: Any, attempts: int = 5
    ) -> bool:
        for _ in range(attempts):
            record = self.store.get(OUTGOING, message_id)
            if record is None or record.state not in states:
                return False
            data = _copy(record.data)
            state = change(data)
            if self.store.put(OUTGOING, message_id, state, data, expect=record.version):
                return True
        return False

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
            sent += _RelayPass(self, relay).run(records)
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

    def __repr__(self) -> str:
        return f"Outbox({self.store!r}, relays={list(self.relays)!r})"


class _RelayPass:
    """One pass over one relay's due mail, on one connection."""

    def __init__(self, outbox: Outbox, relay: SmtpRelay) -> None:
        self.outbox = outbox
        self.relay = relay
        self.smtp: smtplib.SMTP | None = None
        self.failures = 0  # connection failures in a row
        self.skipped = False
        self.source = f"outbox:{relay.name}"

    def run(self, records: list[Record]) -> int:
        sent = 0
        try:
            for start in range(0, len(records), _CLAIM_MOST):
                if self._skipping():
                    break
                claimed = self._claim(records[start : start + _CLAIM_MOST])
                for index, record in enumerate(claimed):
                    if self._skipping():  # the rest waits for the next pass, uncharged
                        self._put_back(claimed[index:])
                        break
                    sent += self._deliver(record)
        finally:
            self._close()
        if self.skipped:
            log.warning(
                "outbox: %s failed %d connections in a row; its mail waits for the next pass",
                self.relay.name,
                self.failures,
            )
        return sent

    def _skipping(self) -> bool:
        """Whether the relay is skipped for the rest of the pass (set by :meth:`_deliver`)."""
        return self.skipped

    def _claim(self, records: list[Record]) -> list[Record]:
        """Claim these mails in one store write; return the ones claimed (others took the rest)."""
        until = self.outbox.clock.time() + self.outbox.claim_ttl
        writes = []
        for record in records:
            data = _copy(record.data)
            data["claimed_until"] = until
            writes.append(Write(OUTGOING, record.key, "sending", data, expect=record.version))
        return [claimed for claimed in self.outbox.store.put_many(writes) if claimed is not None]

    def _deliver(self, record: Record) -> int:
        outbox = self.outbox
        data = _copy(record.data)
        data.pop("claimed_until", None)
        pending = [r for r, state in data["recipients"].items() if state == "pending"]
        now = outbox.clock.time()
        tries: list[SendTry] = []
        try:
            smtp = self._connection()
        except (OSError, smtplib.SMTPException) as error:
            reply = _fault(error)
            self.failures += 1
            if self.failures >= outbox.skip_after:
                self.skipped = True
            self._report(SourceState.RETRYING, f"cannot hand mail to {self.relay.name}: {reply}")
            if self.skipped:  # not charged a try: the relay is down, not the mail
                self._put_back([record])
                return 0
            tries.append(SendTry(now, self.relay.name, "delayed", reply, tuple(pending)))
        else:
            self.failures = 0
            raw = base64.b64decode(data["raw"])
            tries.extend(self._send(smtp, data["sender"], pending, raw, now))
        recipients: dict[str, str] = data["recipients"]
        for attempt in tries:
            for recipient in attempt.recipients:
                if attempt.outcome != "delayed":
                    recipients[recipient] = attempt.outcome
        data["attempts"] = int(data["attempts"]) + 1
        history = [*data["history"], *(t.to_dict() for t in tries)]
        data["history"] = history[:1] + history[1:][-(_HISTORY_MOST - 1) :]
        state = self._settle(record.key, data, tries)
        written = outbox.store.put(OUTGOING, record.key, state, data, expect=record.version)
        if written is None:
            log.warning("outbox: %s was changed by someone else while it was sent", record.key)
        return 1 if state == "sent" else 0

    def _settle(self, message_id: str, data: dict[str, Any], tries: list[SendTry]) -> str:
        """The mail's new state (and ``next_at``/``reason`` in *data*) after this pass's tries."""
        outbox = self.outbox
        recipients = data["recipients"]
        pending = [r for r, state in recipients.items() if state == "pending"]
        failed = [r for r, state in recipients.items() if state == "failed"]
        last = tries[-1].reply if tries else ""
        if not pending:
            if failed:
                why = {  # each failed recipient's refusal: the last one in its history
                    recipient: str(t["reply"])
                    for t in data["history"]
                    if t["outcome"] == "failed"
                    for recipient in t["recipients"]
                }
                said = "; ".join(f"{r}: {why.get(r, last)}" for r in failed)
                data["reason"] = f"refused for good: {said}"
                data["next_at"] = None
                self._failed(message_id, data["reason"])
                return "failed"
            data["next_at"] = None
            self._report(SourceState.ONLINE, "")
            return "sent"
        offline_for = max(0.0, outbox.clock.time() - float(data["queued_at"]))
        wait = outbox.retry.delay(int(data["attempts"]), offline_for)
        if wait is None:
            for recipient in pending:
                recipients[recipient] = "failed"
            data["reason"] = (
                f"given up after {data['attempts']} tries over {offline_for / 3600:.1f} h "
                f"(the retry schedule's limit): {last}"
            )
            data["next_at"] = None
            self._failed(message_id, data["reason"])
            return "failed"
        data["next_at"] = outbox.clock.time() + wait
        if any(t.outcome == "sent" for t in tries):
            self._report(SourceState.ONLINE, "")
        return "queued"

    def _send(
        self, smtp: smtplib.SMTP, sender: str, pending: list[str], raw: bytes, now: float
    ) -> list[SendTry]:
        name = self.relay.name
        try:
            refused = smtp.sendmail(sender, pending, raw)
        except smtplib.SMTPRecipientsRefused as error:
            return _by_reply(now, name, error.recipients)
        except smtplib.SMTPResponseException as error:  # MAIL FROM or DATA refused: everyone
            outcome = "failed" if 500 <= error.smtp_code < 600 else "delayed"
            reply = _reply(error.smtp_code, error.smtp_error)
            self._reset(smtp)
            return [SendTry(now, name, outcome, reply, tuple(pending))]
        except (OSError, smtplib.SMTPException) as error:  # the connection broke
            self._close()
            return [SendTry(now, name, "delayed", _fault(error), tuple(pending))]
        accepted = tuple(r for r in pending if r not in refused)
        tries = [SendTry(now, name, "sent", "250 accepted", accepted)] if accepted else []
        return tries + _by_reply(now, name, refused)

    def _connection(self) -> smtplib.SMTP:
        if self.smtp is None:
            self.smtp = self.relay.connect()
        return self.smtp

    def _reset(self, smtp: smtplib.SMTP) -> None:
        try:
            smtp.rset()
        except (OSError, smtplib.SMTPException):
            self._close()

    def _close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()

    def _put_back(self, records: list[Record]) -> None:
        """Unclaim these mails, as they were (no try counted)."""
        writes = []
        for record in records:
            data = _copy(record.data)
            data.pop("claimed_until", None)
            writes.append(Write(OUTGOING, record.key, "queued", data, expect=record.version))
        self.outbox.store.put_many(writes)

    def _report(self, state: SourceState, reason: str) -> None:
        status = self.outbox.status
        if status is None:
            return
        try:
            status.set(self.source, state, reason=reason)
        except Exception as error:  # the status board is not worth a lost mail
            log.warning("outbox: could not record %s's status: %s", self.relay.name, error)

    def _failed(self, message_id: str, reason: str) -> None:
        log.warning("outbox: %s failed (in the error queue): %s", message_id, reason)
        status = self.outbox.status
        if status is not None:
            try:
                status.count(self.source, failed=1)
            except Exception as error:
                log.warning("outbox: could not count a failed mail: %s", error)


def _by_reply(now: float, relay: str, refused: Mapping[str, tuple[int, bytes]]) -> list[SendTry]:
    """One try per distinct reply of the refused recipients: 5xx failed, others delayed."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for recipient, (code, said) in refused.items():
        outcome = "failed" if 500 <= code < 600 else "delayed"
        grouped.setdefault((outcome, _reply(code, said)), []).append(recipient)
    return [SendTry(now, relay, o, reply, tuple(rs)) for (o, reply), rs in grouped.items()]


def _reply(code: int, said: bytes | str) -> str:
    text = said.decode("utf-8", "replace") if isinstance(said, bytes) else str(said)
    return one_line(f"{code} {text}", _REPLY_MOST)


def _fault(error: BaseException) -> str:
    if isinstance(error, smtplib.SMTPResponseException):
        return _reply(error.smtp_code, error.smtp_error)
    return one_line(f"{type(error).__name__}: {error}", _REPLY_MOST)


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


def _copy(data: Mapping[str, Any]) -> dict[str, Any]:
    copied = dict(data)
    copied["recipients"] = dict(data.get("recipients") or {})
    copied["history"] = list(data.get("history") or [])
    return copied


def _view(record: Record) -> OutboundMail:
    data = record.data
    next_at = data.get("next_at")
    return OutboundMail(
        message_id=record.key,
        state=record.state,
        sender=str(data.get("sender", "")),
        recipients=dict(data.get("recipients") or {}),
        relay=str(data.get("relay", "")),
        queued_at=float(data.get("queued_at") or 0.0),
        next_at=None if next_at is None else float(next_at),
        attempts=int(data.get("attempts") or 0),
        reason=str(data.get("reason", "")),
        history=tuple(SendTry.from_dict(t) for t in data.get("history") or ()),
    )
