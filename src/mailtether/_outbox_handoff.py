"""The outbox's hand-off: each mail's outcome recorded while the relay reads the next one's.

A relay accepts a mail at the end of its data (the ``.`` line), not before. So the sender
can record mail *n*'s outcome after sending mail *n + 1*'s ``MAIL FROM`` and before reading
the reply to it: the relay works on that command (and the network carries it) while the
store writes, and the write is done long before mail *n + 1* can be accepted. A crash at any
moment leaves at most one mail accepted by the relay and not recorded — the one whose
``250`` came last — which is what :class:`~mailtether.Outbox` promises ("What a crash can
cost"). One thread, no reordering: the writes happen in the order of the mails.

- :func:`send_mail`: smtplib's ``sendmail``, with a call while ``MAIL FROM`` is answered;
- :class:`PendingOutcome`: the one outcome that waits for that moment.
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
    """The outcome of the mail just handed over, until the next mail's ``MAIL`` goes out.

    :meth:`hold` keeps a mail's bookkeeping and record (after the one held before it is
    done); :meth:`finish` does it now, raising what it raised. The sender finishes it while
    the next mail's ``MAIL FROM`` is answered (see :func:`send_mail`), before anything else
    that must come after it, and at the end of its pass.
    """

    def __init__(self) -> None:
        self._held: Callable[[], None] | None = None

    def hold(self, conclude: Callable[[], None]) -> None:
        """Keep *conclude* until :meth:`finish`; the one held before is finished first."""
        self.finish()
        self._held = conclude

    def finish(self) -> None:
        """Run the held outcome (if any) now; raise what it raised (it is not run again)."""
        held, self._held = self._held, None
        if held is not None:
            held()
