"""One pass of the outbox's sender over one relay's due mail, on one connection."""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from mailtether._errors import one_line
from mailtether._outbox_handoff import PendingOutcome, send_mail
from mailtether._outbox_queue import OUTGOING, SendTry, copy_data
from mailtether._redaction import redacting_logger
from mailtether._smtp_relay import SmtpRelay
from mailtether._status import SourceState
from mailtether.stores._protocol import Record, Write
from mailtether.stores._shared import put_many_started, put_started

if TYPE_CHECKING:
    from mailtether._outbox import Outbox

__all__ = ["RelayPass"]

log = redacting_logger("mailtether.outbox")

_CLAIM_MOST: Final = 50  # mails claimed in one store write
_HISTORY_MOST: Final = 50  # tries kept per mail (the first and the latest ones)
_REPLY_MOST: Final = 300  # characters of a server reply kept


class RelayPass:
    """One pass over one relay's due mail, on one connection."""

    def __init__(self, outbox: Outbox, relay: SmtpRelay) -> None:
        self.outbox = outbox
        self.relay = relay
        self.smtp: smtplib.SMTP | None = None
        self.failures = 0  # connection failures in a row
        self.skipped = False
        self.source = f"outbox:{relay.name}"
        self.pending = PendingOutcome()  # each outcome recorded as the next mail goes out
        self.sent = 0  # counted by _conclude
        self._online = False  # ONLINE told in this pass: once is enough

    def run(self, records: list[Record]) -> int:
        batches = [records[i : i + _CLAIM_MOST] for i in range(0, len(records), _CLAIM_MOST)]
        # Each batch is claimed while the one before it is sent (the store writes while
        # the relay works), and renewed before a mail goes if half its claim has passed.
        claiming = self._claim(batches[0]) if batches else None
        try:
            for number in range(len(batches)):
                if claiming is None or self._skipping():
                    break
                claimed, claiming = claiming(), None
                if number + 1 < len(batches):
                    claiming = self._claim(batches[number + 1])
                for index in range(len(claimed)):
                    if self._skipping():  # the rest waits for the next pass, uncharged
                        self._put_back(claimed[index:])
                        break
                    if self._claim_ageing(claimed[index]):
                        claimed[index:] = self._renew(claimed[index:])
                        if index == len(claimed):
                            break
                    self._deliver(claimed[index])
            self.pending.finish()  # the last outcome is recorded before the pass ends
        finally:
            self._finish_after_failure()
            self._unclaim(claiming)
            self._close()
        if self.skipped:
            log.warning(
                "outbox: %s failed %d connections in a row; its mail waits for the next pass",
                self.relay.name,
                self.failures,
            )
        return self.sent

    def _finish_after_failure(self) -> None:
        """Record the outcome still held when the pass failed (a claim, say): logged if not."""
        try:
            self.pending.finish()
        except Exception as error:
            log.error("outbox: a mail's outcome could not be recorded: %s", error)

    def _skipping(self) -> bool:
        """Whether the relay is skipped for the rest of the pass (set by :meth:`_deliver`)."""
        return self.skipped

    def _claim(self, records: list[Record]) -> Callable[[], list[Record]]:
        """Start claiming these mails in one store write; the call gives the ones claimed.

        Mails another sender took are left out.
        """
        until = self.outbox.clock.time() + self.outbox.claim_ttl
        writes = []
        for record in records:
            data = copy_data(record.data)
            data["claimed_until"] = until
            writes.append(Write(OUTGOING, record.key, "sending", data, expect=record.version))
        started = put_many_started(self.outbox.store, writes)
        return lambda: [claimed for claimed in started() if claimed is not None]

    def _claim_ageing(self, record: Record) -> bool:
        """Whether half of this mail's claim has passed (it is renewed before it is sent)."""
        until = float(record.data.get("claimed_until") or 0.0)
        return self.outbox.clock.time() >= until - self.outbox.claim_ttl / 2

    def _renew(self, records: list[Record]) -> list[Record]:
        """Claim these mails again (a slow relay: their claims must outlast their sending)."""
        renewed = self._claim(records)()
        if len(renewed) < len(records):
            log.warning(
                "outbox: %d claimed mail(s) were taken by another sender before they were sent",
                len(records) - len(renewed),
            )
        return renewed

    def _unclaim(self, claiming: Callable[[], list[Record]] | None) -> None:
        """Put back the mails of a claim started for a batch the pass did not get to."""
        if claiming is None:
            return
        try:
            self._put_back(claiming())
        except Exception as error:  # their claims expire: another pass sends them
            log.error("outbox: claimed mail could not be put back: %s", error)

    def _deliver(self, record: Record) -> None:
        """Hand one claimed mail to the relay; its outcome is recorded as the next one goes."""
        outbox = self.outbox
        data = copy_data(record.data)
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
            self.pending.finish()  # the mail before may say ONLINE: this comes after it
            self._report(SourceState.RETRYING, f"cannot hand mail to {self.relay.name}: {reply}")
            if self.skipped:  # not charged a try: the relay is down, not the mail
                self._put_back([record])
                return
            tries.append(SendTry(now, self.relay.name, "delayed", reply, tuple(pending)))
        else:
            self.failures = 0
            raw = base64.b64decode(data["raw"])
            tries.extend(self._send(smtp, data["sender"], pending, raw, now))
        # The rest is bookkeeping and a store write: done while the relay answers the next
        # mail's first commands (see _outbox_handoff), or at the end of the pass.
        self.pending.hold(lambda: self._conclude(record, data, tries))

    def _conclude(
        self, record: Record, data: dict[str, Any], tries: list[SendTry]
    ) -> Callable[[], None]:
        """Settle a mail after its tries and start its record; return the wait for that."""
        recipients: dict[str, str] = data["recipients"]
        for attempt in tries:
            for recipient in attempt.recipients:
                if attempt.outcome != "delayed":
                    recipients[recipient] = attempt.outcome
        data["attempts"] = int(data["attempts"]) + 1
        history = [*data["history"], *(t.to_dict() for t in tries)]
        data["history"] = history[:1] + history[1:][-(_HISTORY_MOST - 1) :]
        state = self._settle(record.key, data, tries)
        if state == "sent":
            self.sent += 1
            # Nothing will send it again: its record keeps the envelope and the history, not
            # the mail (a smaller write now, and a store that does not keep every mail sent).
            data.pop("raw", None)
        write = Write(OUTGOING, record.key, state, data, expect=record.version)
        recorded = put_started(self.outbox.store, write)

        def wait() -> None:
            if recorded() is None:
                log.warning("outbox: %s was changed by someone else while it was sent", write.key)

        return wait

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
            # The mail before this one is recorded before this one's content goes.
            refused = send_mail(
                smtp,
                sender,
                pending,
                raw,
                meanwhile=self.pending.start,
                before_content=self.pending.finish,
            )
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
            data = copy_data(record.data)
            data.pop("claimed_until", None)
            writes.append(Write(OUTGOING, record.key, "queued", data, expect=record.version))
        self.outbox.store.put_many(writes)

    def _report(self, state: SourceState, reason: str) -> None:
        """Set the relay's state on the status board.

        RETRYING turns OFFLINE once the relay has failed for the board's ``offline_after``
        (since its first failure after a delivery).
        """
        status = self.outbox.status
        if status is None or (state is SourceState.ONLINE and self._online):
            return
        self._online = state is SourceState.ONLINE
        try:
            known = status.get(self.source) if state is SourceState.RETRYING else None
            if known is not None and (
                known.state is SourceState.OFFLINE
                or (
                    known.state is SourceState.RETRYING
                    and status.clock.time() - known.since >= status.offline_after
                )
            ):
                state = SourceState.OFFLINE  # failing since its last delivery, that long
            status.set(self.source, state, reason=reason)
        except Exception as error:  # the status board is not worth a lost mail
            log.warning("outbox: could not record %s's status: %s", self.relay.name, error)

    def _failed(self, message_id: str, reason: str) -> None:
        log.warning("outbox: %s failed (in the error queue): %s", message_id, reason)
        status = self.outbox.status
        if status is not None:
            try:
                status.count(self.source, failed=1)
                status.notice(
                    self.source,
                    "error queue",
                    f"mail {message_id} is in the error queue: {reason}; "
                    f"see mailtether queue show {message_id!r}",
                )
            except Exception as error:
                log.warning("outbox: could not report a failed mail: %s", error)


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
