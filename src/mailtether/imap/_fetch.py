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
from typing import Any, BinaryIO, Final, cast

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from imapclient.response_parser import parse_fetch_response

from mailtether._errors import CommandFailed

__all__ = [
    "fetch_mail",
    "fetch_sizes",
    "imaplib_of",
    "message_set",
    "search_uids",
    "send_fetch",
    "send_sizes",
]

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
    imap = imaplib_of(client)
    if (
        imap is None
    ):  # not the imapclient this was written against: take its public road, at read time
        return lambda: _asked(_from_imapclient(client.fetch(wanted, _ITEMS)), wanted)
    tag = imap._command("UID", "FETCH", ",".join(map(str, wanted)), "(BODY.PEEK[] FLAGS)")

    def read() -> dict[int, FetchedMail]:
        if _readable_in_place(imap):
            typ, status, fetched, data = _complete_fetch(imap, tag)
            if typ != "OK":
                raise IMAPClientError(f"fetch failed: {_text(status)}")
            if fetched is None:
                data = _as_imaplib_keeps(data)
                fetched = _usual(data)
        else:
            typ, data = imap._command_complete("FETCH", tag)
            if typ != "OK":
                raise IMAPClientError(f"fetch failed: {_text(data)}")
            typ, data = imap._untagged_response(typ, data, "FETCH")
            fetched = _usual(data)
        if fetched is None:
            fetched = _parsed(data, client.normalise_times)
        return _asked(fetched, wanted)

    return read


# A response of the usual shape (see _USUAL) as the server sends it: its first line (group 1:
# the message number; 2: what imaplib keeps of the line after "FETCH "; 3: the UID; 4: the
# flags; 5: the literal's length), the literal, then ")" alone on the last line.
_USUAL_HEAD: Final = re.compile(
    rb"\* (\d+) FETCH (\(UID (\d+) FLAGS \(((?:%s(?: %s)*)?)\) BODY\[\] \{(\d+)\})\r\n"
    % (_FLAG, _FLAG)
)
_READLINE: Final = imaplib.IMAP4.readline
_GET_LINE: Final = vars(imaplib.IMAP4)["_get_line"]


def _readable_in_place(imap: imaplib.IMAP4) -> bool:
    """Whether imaplib reads *imap*'s answers itself, line by line, from a buffered file."""
    kind = type(imap)
    return (
        kind.readline is _READLINE
        and getattr(kind, "_get_line", None) is _GET_LINE
        and "readline" not in vars(imap)
        and callable(getattr(getattr(imap, "file", None), "peek", None))
    )


def _complete_fetch(
    imap: imaplib.IMAP4, tag: bytes
) -> tuple[str, list[Any], dict[int, FetchedMail] | None, list[Any]]:
    """What imaplib's ``_command_complete("FETCH", tag)`` does, the usual responses in place.

    imaplib spends about 5 µs on each response of a small mail (its per-line patterns and
    bookkeeping). A response of the usual shape that is whole in the read buffer is taken
    from there by one pattern, its literal through ``imap.read`` (the connection's bound on
    literals holds); anything else (news of new mail, another command's answer, a response
    of another shape or not yet whole in the buffer) is read by imaplib itself, one
    response at a time, as before.

    Returns the tagged status and its words as imaplib gives them; the mails of the FETCH
    responses, or ``None`` when any is not of the usual shape (or gives a UID twice): then
    read *data*, every FETCH response in order, through :func:`_as_imaplib_keeps`.
    """
    file = cast(BinaryIO, imap.file)
    peek: Callable[[int], bytes] = file.peek  # type: ignore[attr-defined]
    skip, responses = file.read, imap.untagged_responses
    tagged: dict[bytes, Any] = imap.tagged_commands
    imap._check_bye()
    data: list[Any] = responses.pop("FETCH", [])  # unsolicited ones, from before: first
    fetched: dict[int, FetchedMail] | None = None if data else {}
    buffer, at = b"", 0  # what was buffered when last looked at (b"": look), how far read
    try:
        while tagged[tag] is None:
            found = _USUAL_HEAD.match(buffer, at)
            if found is None and (at or not buffer):  # (the rest of) what is buffered now
                buffer, at = peek(1), 0
                found = _USUAL_HEAD.match(buffer)
            if found is not None:
                start, size = found.end(), int(found[5])
                end = start + size
                if buffer[end : end + 3] == b")\r\n":
                    skip(start - at)
                    raw = imap.read(size)
                    skip(3)
                    at = end + 3
                    data.append((found.group(1, 2), raw))  # not the match: it holds the buffer
                    if fetched is not None:
                        uid = int(found[3])
                        if uid in fetched or len(raw) != size:
                            fetched = None
                        else:
                            fetched[uid] = (raw, tuple(found[4].split()))
                    continue
            imap._get_response()
            if tagged[tag] is None:  # a BYE ends the answer here, as in imaplib
                imap._check_bye()
            more = responses.pop("FETCH", None)
            if more is not None:
                data += more
                usual = None if fetched is None else _usual(more)
                if fetched is None or usual is None or not fetched.keys().isdisjoint(usual):
                    fetched = None
                else:
                    fetched.update(usual)
            buffer, at = b"", 0
    except imap.abort as error:
        raise imap.abort(f"command: FETCH => {error}") from error
    except imap.error as error:
        raise imap.error(f"command: FETCH => {error}") from error
    typ, status = tagged.pop(tag)
    imap._check_bye()
    if typ == "BAD":
        raise imap.error(f"FETCH command error: {typ} {status}")
    return typ, status, fetched, data


def _as_imaplib_keeps(data: list[Any]) -> list[Any]:
    """FETCH responses as imaplib keeps them, those :func:`_complete_fetch` read included."""
    kept: list[Any] = []
    for item in data:
        if type(item) is tuple and type(item[0]) is tuple:  # (number, rest of the line), raw
            (number, rest), raw = item
            kept += [(number + b" " + rest, raw), b")"]
        else:
            kept.append(item)
    return kept or [None]


_SIZE: Final = re.compile(
    rb"\* \d+ FETCH \((?:UID (\d+) RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+) UID (\d+))\)"
)


def fetch_sizes(client: IMAPClient, uids: Sequence[int]) -> dict[int, int]:
    """``UID FETCH`` *uids* ``(RFC822.SIZE)``, the set written as ranges: ``{uid: size}``.

    Mails the answer leaves out (or gives no size for) are missing from the result.
    """
    return send_sizes(client, uids)()


def send_sizes(client: IMAPClient, uids: Sequence[int]) -> Callable[[], dict[int, int]]:
    """Send the ``FETCH`` of :func:`fetch_sizes` now; return the function that reads its answer.

    As :func:`send_fetch`: no other command may be sent on *client* until the answer is
    read; call the returned function exactly once.
    """
    wanted = set(uids)
    if not wanted:
        return dict
    imap = imaplib_of(client)
    if imap is None:  # not the imapclient this was written against: its public road
        return lambda: _sizes_of(client.fetch(sorted(wanted), ["RFC822.SIZE"]), wanted)
    tag = imap._command("UID", "FETCH", message_set(wanted), "(RFC822.SIZE)")
    return lambda: _read_sizes(imap, tag, wanted)


def _read_sizes(imap: imaplib.IMAP4, tag: bytes, wanted: set[int]) -> dict[int, int]:
    # The answer is a line a mail; imaplib spends ~5 µs on each (its per-line patterns and
    # bookkeeping), as much as the rest of a catch-up. Read the lines here, up to the tag.
    sizes: dict[int, int] = {}
    prefix = tag + b" "
    file = cast(BinaryIO, imap.file)
    peek = getattr(file, "peek", None)  # a buffered reader: whole runs of usual lines at once
    while True:
        if peek is not None:
            run = _SIZE_RUN.match(peek(1))
            if run is not None:  # taken from what is buffered, then consumed: ~1 µs a mail
                for uid, size, size_first, uid_after in _SIZE_PAIR.findall(run[0]):
                    number = int(uid or uid_after)
                    if number in wanted:
                        sizes[number] = int(size or size_first)
                file.read(run.end())
                continue
        line = file.readline(_SIZE_LINE_MOST + 1)
        if not line:
            raise imaplib.IMAP4.abort("socket error: EOF")
        if len(line) > _SIZE_LINE_MOST or not line.endswith(b"\n"):
            raise imaplib.IMAP4.abort(f"got more than {_SIZE_LINE_MOST} bytes")
        if line.startswith(prefix):
            imap.tagged_commands.pop(tag, None)
            status, _, words = line[len(prefix) :].partition(b" ")
            if status.upper() != b"OK":
                raise IMAPClientError(f"fetch failed: {words.strip().decode('utf-8', 'replace')}")
            return sizes
        match = _SIZE.fullmatch(line.rstrip(b"\r\n"))
        if match is not None:
            uid, size = (match[1], match[2]) if match[1] else (match[4], match[3])
        else:
            uid, size = _other_line(imap, line)
        if uid is not None and int(uid) in wanted:
            sizes[int(uid)] = int(size)


_SIZE_LINE_MOST: Final = 64 * 1024
_SIZE_RUN: Final = re.compile(
    rb"(?:\* \d+ FETCH \((?:UID \d+ RFC822\.SIZE \d+|RFC822\.SIZE \d+ UID \d+)\)\r\n)+"
)
_SIZE_PAIR: Final = re.compile(rb"UID (\d+) RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+) UID (\d+)")
_UID_ITEM: Final = re.compile(rb"\bUID (\d+)")
_SIZE_ITEM: Final = re.compile(rb"\bRFC822\.SIZE (\d+)")
_EXISTS: Final = re.compile(rb"\* (\d+) (EXISTS|RECENT)\r?\n\Z", re.IGNORECASE)


def _other_line(imap: imaplib.IMAP4, line: bytes) -> tuple[bytes | None, bytes]:
    """A line of a sizes or SEARCH answer in another shape: ``(UID, size)`` or ``(None, b"")``.

    A FETCH with other items too (flags a server adds) gives its UID and size; news of new
    mail is left where imaplib keeps it (the connection notices it); a literal is read and
    dropped, within the line bound.
    """
    literal = re.search(rb"\{(\d+)\}\r?\n\Z", line)
    if literal is not None:
        length = int(literal[1])
        if length > _SIZE_LINE_MOST:
            raise imaplib.IMAP4.abort(f"a literal of {length} bytes in a sizes answer")
        imap.file.read(length)
        imap.file.readline(_SIZE_LINE_MOST)  # the rest of that response
        return None, b""
    news = _EXISTS.match(line)
    if news is not None:
        kind = news[2].upper().decode()
        imap.untagged_responses.setdefault(kind, []).append(news[1])
        return None, b""
    uid_item, size_item = _UID_ITEM.search(line), _SIZE_ITEM.search(line)
    if line.startswith(b"* ") and b" FETCH " in line and uid_item and size_item:
        return uid_item[1], size_item[1]
    return None, b""


_NUMBER: Final = re.compile(rb"\d+")


def search_uids(client: IMAPClient, after: int) -> Sequence[int]:
    """The UIDs past *after* (all for 0), ascending, as a compact array of integers.

    ``UID SEARCH UID n:*`` (``ALL`` for 0), read straight from imaplib: imapclient's parser
    makes a string of every number first, 21 MiB at 100,000 mails; this stays near the size
    of the answer itself. (``n:*`` always matches the newest mail, even past the end: it is
    left out.)
    """
    imap = imaplib_of(client)
    if imap is None:  # not the imapclient this was written against: its public road
        found = client.search(["UID", f"{after + 1}:*"] if after else ["ALL"])
        return array("L", sorted(uid for uid in found if uid > after))
    criteria = ("UID", f"{after + 1}:*") if after else ("ALL",)
    tag = imap._command("UID", "SEARCH", *criteria)
    uids = _read_search(imap, tag)
    if any(uids[i] > uids[i + 1] for i in range(len(uids) - 1)):
        uids = array("L", sorted(uids))
    start = 0
    while start < len(uids) and uids[start] <= after:
        start += 1
    return uids[start:] if start else uids


def _read_search(imap: imaplib.IMAP4, tag: bytes) -> array[int]:
    """Read a SEARCH answer up to *tag*, its numbers straight into an array.

    The ``* SEARCH`` line holds every UID: past about 140,000 mails it is longer than the
    1,000,000 bytes imaplib takes in one line, so it is read here in pieces of 64 KiB, a
    number cut between two pieces carried over.
    """
    file = cast(BinaryIO, imap.file)
    uids: array[int] = array("L")
    prefix = tag + b" "
    at_start, in_search, carry = True, False, b""
    while True:
        piece = file.readline(_SIZE_LINE_MOST)
        if not piece:
            raise imaplib.IMAP4.abort("socket error: EOF")
        ended = piece.endswith(b"\n")
        if at_start:
            if piece.startswith(prefix):
                if not ended:
                    raise imaplib.IMAP4.abort(f"got more than {_SIZE_LINE_MOST} bytes")
                imap.tagged_commands.pop(tag, None)
                status, _, words = piece[len(prefix) :].partition(b" ")
                if status.upper() != b"OK":
                    raise IMAPClientError(
                        f"search failed: {words.strip().decode('utf-8', 'replace')}"
                    )
                return uids
            in_search = piece[:8].upper() == b"* SEARCH"
            if in_search:
                piece = piece[8:]
            elif ended:
                _other_line(imap, piece)  # news of new mail is kept; the rest dropped
        if in_search:
            text = carry + piece
            carry = b""
            if not ended:  # a number may go on in the next piece
                cut = len(text)
                while cut and text[cut - 1 : cut].isdigit():
                    cut -= 1
                text, carry = text[:cut], text[cut:]
            uids.extend(int(number[0]) for number in _NUMBER.finditer(text))
        at_start = ended


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


def imaplib_of(client: IMAPClient) -> imaplib.IMAP4 | None:
    """The imaplib connection under *client*, or ``None``: then use imapclient's own road.

    ``None`` unless it is the one this module was written against: UIDs on, and the
    imaplib internals called here present.
    """
    imap = getattr(client, "_imap", None)
    if (
        not client.use_uid
        or not isinstance(imap, imaplib.IMAP4)
        or not all(callable(getattr(imap, part, None)) for part in _IMAPLIB_PARTS)
    ):
        return None
    return imap


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
