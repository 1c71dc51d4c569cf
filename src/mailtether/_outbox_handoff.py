"""The outbox's hand-off: each mail's outcome recorded while the relay reads the next one's.

A relay accepts a mail at the end of its data (the ``.`` line), not before. So the sender
can record mail *n*'s outcome while mail *n + 1*'s first commands are answered: the write
starts once ``MAIL FROM`` is sent, and must be done before the mail's content is — the relay
works on ``MAIL``, ``RCPT`` and ``DATA`` (and the network carries them) while the store
writes. A store that can start a write and wait for it later (Redis, PostgreSQL) writes
across all three, its answer read while ``DATA`` is answered; any other store writes at
once, while ``MAIL FROM`` is answered. A crash at any moment leaves at most one mail
accepted by the relay and not recorded — the one whose ``250`` came last — which is what
:class:`~mailtether.Outbox` promises ("What a crash can cost"). One thread, no reordering:
the writes happen in the order of the mails.

- :func:`send_mail`: smtplib's ``sendmail``, with a call once ``MAIL FROM`` is sent and one
  before the content goes;
- :class:`PendingOutcome`: the one outcome that waits for those moments.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["PendingOutcome", "send_mail"]

_LEADING_DOT: Final = re.compile(rb"(?m)^\.")
_ATOM: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS: Final = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\Z")


def send_mail(
    smtp: smtplib.SMTP,
    sender: str,
    recipients: Sequence[str],
    raw: bytes,
    *,
    meanwhile: Callable[[], None],
    before_content: Callable[[], None] | None = None,
) -> dict[str, tuple[int, bytes]]:
    """``smtp.sendmail(sender, recipients, raw)``, calling *meanwhile* as ``MAIL`` is answered.

    The same commands (byte for byte), replies, errors and answer (the refused recipients)
    as smtplib's ``sendmail``. *meanwhile* runs after ``MAIL FROM`` is sent and before its
    reply is read; if it raises, the connection is closed (nothing was accepted) and its
    error is raised.

    Raises:
        smtplib.SMTPException, OSError: as ``sendmail`` raises them.
    """
    smtp.ehlo_or_helo_if_needed()
    size = f" size={len(raw)}" if smtp.does_esmtp and smtp.has_extn("size") else ""
    smtp.putcmd("mail", f"FROM:{_quoted(sender)}{size}")
    try:
        meanwhile()
    except BaseException:
        smtp.close()
        raise
    code, said = smtp.getreply()
    if code != 250:
        _end_transaction(smtp, code)
        raise smtplib.SMTPSenderRefused(code, said, sender)
    refused: dict[str, tuple[int, bytes]] = {}
    for recipient in recipients:
        smtp.putcmd("rcpt", f"TO:{_quoted(recipient)}")
        code, said = smtp.getreply()
        if code not in (250, 251):
            refused[recipient] = (code, said)
        if code == 421:
            smtp.close()
            raise smtplib.SMTPRecipientsRefused(refused)
    if len(refused) == len(recipients):
        _end_transaction(smtp, 0)
        raise smtplib.SMTPRecipientsRefused(refused)
    smtp.putcmd("data")
    if before_content is not None:  # while the relay answers DATA; the content comes after
        try:
            before_content()
        except BaseException:
            smtp.close()
            raise
    code, said = smtp.getreply()
    if code != 354:  # as sendmail: no RSET here (the caller's to send)
        raise smtplib.SMTPDataError(code, said)
    data = _LEADING_DOT.sub(b"..", raw)
    smtp.send(data + (b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"))
    code, said = smtp.getreply()
    if code != 250:
        _end_transaction(smtp, code)
        raise smtplib.SMTPDataError(code, said)
    return refused


def _quoted(address: str) -> str:
    """``<address>``, as smtplib's ``quoteaddr`` gives it.

    A plain ``local@domain`` is quoted as it is (the same answer, without parsing it as a
    header: that parse was a third of smtplib's client time per mail); anything else goes
    through ``quoteaddr``.
    """
    return f"<{address}>" if _PLAIN_ADDRESS.match(address) else smtplib.quoteaddr(address)


def _end_transaction(smtp: smtplib.SMTP, code: int) -> None:
    """What ``sendmail`` does after a refusal: close on 421, else RSET (the server may be gone)."""
    if code == 421:
        smtp.close()
        return
    with contextlib.suppress(smtplib.SMTPServerDisconnected):
        smtp.rset()


class PendingOutcome:
    """The outcome of the mail just handed over, until the next mail's content goes out.

    :meth:`hold` keeps a mail's conclusion (after the one held before it is done): a call
    that does the bookkeeping, starts the record's write and returns the call that waits
    for that write. :meth:`start` concludes it (the sender does so once the next mail's
    ``MAIL FROM`` is sent, see :func:`send_mail`); :meth:`finish` waits for its write,
    concluding it first if that has not been done, and raises what either raised (the
    sender does so before the next mail's content, before anything else that must come
    after it, and at the end of its pass).
    """

    __slots__ = ("_held", "_writing")

    def __init__(self) -> None:
        self._held: Callable[[], Callable[[], None]] | None = None
        self._writing: Callable[[], None] | None = None

    def hold(self, conclude: Callable[[], Callable[[], None]]) -> None:
        """Keep *conclude* until :meth:`start`; the one held before is finished first."""
        self.finish()
        self._held = conclude

    def start(self) -> None:
        """Conclude the held outcome (if any) now, leaving its write to :meth:`finish`."""
        self._wait()
        held, self._held = self._held, None
        if held is not None:
            self._writing = held()

    def finish(self) -> None:
        """Conclude the held outcome (if not yet) and wait for its write; raise their errors.

        Neither is done again after an error.
        """
        self.start()
        self._wait()

    def _wait(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            writing()
