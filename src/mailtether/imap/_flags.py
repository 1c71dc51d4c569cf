r"""Marking mail: ``UID STORE <uids> +FLAGS.SILENT (<flag>)``, sent now, its answer read later.

The listener marks a batch while the next batch's FETCH is on its way: the STORE goes out
right behind it, the server answers both in turn, and the answer (``OK``, or ``NO`` when
the folder refuses) is read before the batch after. ``.SILENT``: the server answers ``OK``
alone, not one FETCH per mail that would have to be read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from mailtether.imap._fetch import imaplib_of, message_set

__all__ = ["send_add_flag"]


def send_add_flag(client: IMAPClient, uids: Sequence[int], flag: bytes) -> Callable[[], None]:
    """Send the STORE that adds *flag* to *uids*; return the function that reads its answer.

    The function raises ``IMAPClientError`` when the server refuses the change. Answers of
    commands sent before this one must be read first (``ImapConnection.call_ahead`` does).
    """
    wanted = list(uids)
    if not wanted:
        return lambda: None
    imap = imaplib_of(client)
    if imap is None:  # not the imapclient this was written against: its public road, now
        client.add_flags(wanted, [flag], silent=True)
        return lambda: None
    tag = imap._command("UID", "STORE", message_set(wanted), "+FLAGS.SILENT", b"(" + flag + b")")

    def read() -> None:
        typ, data = imap._command_complete("STORE", tag)
        if typ != "OK":
            words = b" ".join(part for part in data if isinstance(part, bytes))
            raise IMAPClientError(f"store failed: {words.decode('utf-8', 'replace')}")

    return read
