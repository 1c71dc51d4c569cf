r"""Fetching whole mails in bulk: imapclient's connection, a fast path for the usual answer.

imapclient parses every answer with its general response lexer, which for small mails costs
about as much time as the server takes to send them. The answer to one command — ``UID
FETCH <uids> (BODY.PEEK[] FLAGS)`` — has one usual shape, line after line::

    * 12 FETCH (UID 345 FLAGS (\Seen $Label) BODY[] {2048}
    <2048 bytes>
    )

:func:`fetch_mail` reads such answers with one regular expression per mail. Anything else
(an unsolicited FETCH about another mail, another item order, a server's own extras) sends
the whole answer to imapclient's own parser, so the results never differ from imapclient's.
"""

from __future__ import annotations

import imaplib
import re
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from imapclient.response_parser import parse_fetch_response

from mailtether._errors import CommandFailed

__all__ = ["fetch_mail", "fetch_sizes", "message_set", "search_uids", "send_fetch"]

FetchedMail = tuple[bytes, tuple[bytes, ...]]
"""A fetched mail: its raw bytes and its flags."""

_ITEMS: Final = ["BODY.PEEK[]", "FLAGS"]
# A flag is an atom, or a backslash and an atom (RFC 3501): atom characters are the printable
# ASCII ones except ( ) { % * " \ ] and space. Anything stranger goes to imapclient's parser.
_FLAG: Final = rb"\\?[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+"
_USUAL: Final = re.compile(
    rb"\d+ \(UID (\d+) FLAGS \(((?:%s(?: %s)*)?)\) BODY\[\] \{(\d+)\}" % (_FLAG, _FLAG)
)
_IMAPLIB_PARTS: Final = ("_command", "_command_complete", "_untagged_response")


def fetch_mail(client: IMAPClient, uids: Sequence[int]) -> dict[int, FetchedMail]:
    """``UID FETCH`` *uids* ``(BODY.PEEK[] FLAGS)``: ``{uid: (raw, flags)}``, as imapclient has it.

    Mails that are gone (expunged meanwhile) are missing from the result, as are unsolicited
    answers about mails not asked for. Errors are imapclient's and imaplib's, as from
    :meth:`IMAPClient.fetch`.
    """
    return send_fetch(client, uids)()


def send_fetch(client: IMAPClient, uids: Sequence[int]) -> Callable[[], dict[int, FetchedMail]]:
    """Send the ``FETCH`` of :func:`fetch_mail` now; return the function that reads its answer.

    Between the two, the server prepares and sends the answer while the caller does other
    work (IMAP pipelining). No other command may be sent on *client* until the answer is
    read; call the returned function exactly once.
    """
    wanted = list(uids)
    if not wanted:
        return dict
    imap = getattr(client, "_imap", None)
    if (
        not client.use_uid
        or not isinstance(imap, imaplib.IMAP4)
        or not all(callable(getattr(imap, part, None)) for part in _IMAPLIB_PARTS)
    ):  # not the imapclient this was written against: take its public road, at read time
        return lambda: _asked(_from_imapclient(client.fetch(wanted, _ITEMS)), wanted)
    tag = imap._command("UID", "FETCH", ",".join(map(str, wanted)), "(BODY.PEEK[] FLAGS)")

    def read() -> dict[int, FetchedMail]:
        typ, data = imap._command_complete("FETCH", tag)
        if typ != "OK":
            raise IMAPClientError(f"fetch failed: {_text(data)}")
        typ, data = imap._untagged_response(typ, data, "FETCH")
        fetched = _usual(data)
        if fetched is None:
            fetched = _parsed(data, client.normalise_times)
        return _asked(fetched, wanted)

    return read


_SIZE: Final = re.compile(rb"\d+ \((?:UID (\d+) RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+) UID (\d+))\)")


def fetch_sizes(client: IMAPClient, uids: Sequence[int]) -> dict[int, int]:
    """``UID FETCH`` *uids* ``(RFC822.SIZE)``, the set written as ranges: ``{uid: size}``.

    Mails the answer leaves out (or gives no size for) are missing from the result.
    """
    wanted = set(uids)
    if not wanted:
        return {}
    imap = getattr(client, "_imap", None)
    if (
        not client.use_uid
        or not isinstance(imap, imaplib.IMAP4)
        or not all(callable(getattr(imap, part, None)) for part in _IMAPLIB_PARTS)
    ):  # not the imapclient this was written against: its public road
        answer = client.fetch(sorted(wanted), ["RFC822.SIZE"])
        return _sizes_of(answer, wanted)
    tag = imap._command("UID", "FETCH", message_set(wanted), "(RFC822.SIZE)")
    typ, data = imap._command_complete("FETCH", tag)
    if typ != "OK":
        raise IMAPClientError(f"fetch failed: {_text(data)}")
    typ, data = imap._untagged_response(typ, data, "FETCH")
    sizes: dict[int, int] = {}
    for line in data:
        match = _SIZE.fullmatch(line) if isinstance(line, bytes) else None
        if match is None:  # another shape: imapclient's parser reads the whole answer
            return _sizes_of(_parsed_items(data, client.normalise_times), wanted)
        uid, size = (match[1], match[2]) if match[1] else (match[4], match[3])
        if int(uid) in wanted:
            sizes[int(uid)] = int(size)
    return sizes


_NUMBER: Final = re.compile(rb"\d+")


def search_uids(client: IMAPClient, after: int) -> Sequence[int]:
    """The UIDs past *after* (all for 0), ascending, as a compact array of integers.

    ``UID SEARCH UID n:*`` (``ALL`` for 0), read straight from imaplib: imapclient's parser
    makes a string of every number first, 21 MiB at 100,000 mails; this stays near the size
    of the answer itself. (``n:*`` always matches the newest mail, even past the end: it is
    left out.)
    """
    imap = getattr(client, "_imap", None)
    if (
        not client.use_uid
        or not isinstance(imap, imaplib.IMAP4)
        or not all(callable(getattr(imap, part, None)) for part in _IMAPLIB_PARTS)
    ):  # not the imapclient this was written against: its public road
        found = client.search(["UID", f"{after + 1}:*"] if after else ["ALL"])
        return array("L", sorted(uid for uid in found if uid > after))
    criteria = ("UID", f"{after + 1}:*") if after else ("ALL",)
    tag = imap._command("UID", "SEARCH", *criteria)
    typ, data = imap._command_complete("SEARCH", tag)
    if typ != "OK":
        raise IMAPClientError(f"search failed: {_text(data)}")
    typ, data = imap._untagged_response(typ, data, "SEARCH")
    uids = array("L")
    for line in data:
        if isinstance(line, bytes):
            uids.extend(int(number[0]) for number in _NUMBER.finditer(line))
    if any(uids[i] > uids[i + 1] for i in range(len(uids) - 1)):
        uids = array("L", sorted(uids))
    start = 0
    while start < len(uids) and uids[start] <= after:
        start += 1
    return uids[start:] if start else uids


def _sizes_of(answer: dict[int, dict[bytes, Any]], wanted: set[int]) -> dict[int, int]:
    sizes = {}
    for uid, items in answer.items():
        size = items.get(b"RFC822.SIZE")
        if uid in wanted and isinstance(size, int) and size >= 0:
            sizes[uid] = size
    return sizes


def message_set(positions: Iterable[int]) -> str:
    """*positions* as an IMAP sequence set, runs written as ranges: ``1:5,8,10:12``."""
    ordered = sorted(set(positions))
    runs: list[str] = []
    start = previous = ordered[0]
    for position in ordered[1:]:
        if position != previous + 1:
            runs.append(str(start) if start == previous else f"{start}:{previous}")
            start = position
        previous = position
    runs.append(str(start) if start == previous else f"{start}:{previous}")
    return ",".join(runs)


def _usual(data: list[Any]) -> dict[int, FetchedMail] | None:
    """Read an answer of the usual shape, or return ``None`` if it is anything else."""
    if data == [None]:
        return {}
    fetched: dict[int, FetchedMail] = {}
    count = len(data)
    if count % 2:
        return None
    for index in range(0, count, 2):
        item, closing = data[index], data[index + 1]
        if closing != b")" or not isinstance(item, tuple) or len(item) != 2:
            return None
        head, raw = item
        match = _USUAL.fullmatch(head) if isinstance(head, bytes) else None
        if match is None or not isinstance(raw, bytes) or int(match[3]) != len(raw):
            return None
        uid = int(match[1])
        if uid in fetched:
            return None
        fetched[uid] = (raw, tuple(match[2].split()))
    return fetched


def _parsed(data: list[Any], normalise_times: bool) -> dict[int, FetchedMail]:
    """An answer of any other shape, read by imapclient's parser.

    Raises:
        CommandFailed: the answer does not parse (the whole answer has been read, so the
            connection goes on). The message names the fault, never the mail's bytes.
    """
    return _from_imapclient(_parsed_items(data, normalise_times))


def _parsed_items(data: list[Any], normalise_times: bool) -> dict[int, dict[bytes, Any]]:
    """A FETCH answer by imapclient's parser, or :class:`CommandFailed` without its bytes."""
    try:
        return parse_fetch_response(data, normalise_times, True)  # type: ignore[no-any-return]
    except Exception as error:  # imapclient's ProtocolError, or worse on stranger input
        raise CommandFailed(
            f"the server's FETCH answer could not be read ({type(error).__name__})"
        ) from None


def _from_imapclient(response: dict[int, dict[bytes, Any]]) -> dict[int, FetchedMail]:
    """The mails in an answer imapclient parsed (answers without a body left out)."""
    return {
        uid: (bytes(items[b"BODY[]"]), tuple(items.get(b"FLAGS", ())))
        for uid, items in response.items()
        if items.get(b"BODY[]") is not None
    }


def _asked(fetched: dict[int, FetchedMail], uids: list[int]) -> dict[int, FetchedMail]:
    """Only the mails asked for: unsolicited answers about others are dropped."""
    asked = set(uids)
    return {uid: mail for uid, mail in fetched.items() if uid in asked}


def _text(data: list[Any]) -> str:
    first = data[0] if data else b""
    return first.decode("utf-8", "replace") if isinstance(first, bytes) else str(first)
