"""``ScriptedImapServer``: a small IMAP4rev1 server for tests, that misbehaves on command.

A real server (Dovecot) is what a listener must work against, but it cannot be told to leave
one mail out of a FETCH, to garble one answer, or to go silent in the middle of one. This
server keeps one folder in memory, speaks enough IMAP4rev1 for imapclient (and so for
:class:`mailtether.ImapListener`), and has a method per fault:

- :meth:`~ScriptedImapServer.omit_from_fetch`: a FETCH answers OK without one mail.
- :meth:`~ScriptedImapServer.fetch_no`: a FETCH sends the other mails, then answers NO.
- :meth:`~ScriptedImapServer.malformed_item`: one mail's FETCH item is garbled.
- :meth:`~ScriptedImapServer.huge_literal`: one mail announces a gigantic literal, then stalls.
- :meth:`~ScriptedImapServer.bye_during_fetch`: ``* BYE`` and a closed connection mid-answer.
- :meth:`~ScriptedImapServer.change_uidvalidity`: the folder is rebuilt; UIDs start over.
- :meth:`~ScriptedImapServer.flood_expunge`: a response carries a flood of EXPUNGE noise.
- :meth:`~ScriptedImapServer.never_answer`: one command is read and never answered.
- :meth:`~ScriptedImapServer.split_writes`: every answer arrives in pieces of a few bytes.
- :meth:`~ScriptedImapServer.answer_out_of_order`: pipelined commands' answers are mixed.

Standard library only. One thread accepts connections and one thread serves each of them;
all mailbox and fault state sits behind one lock, and a thread holds it only to compute an
answer, never while it writes to a socket. A connection in IDLE is woken through its own
socket pair when the folder changes.

Why one module of this size: the faults are branches of the one FETCH answer, and the
commands share the folder model and the per-connection view of sequence numbers; split up,
each piece would reach into the others' state.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import email.utils
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Literal, Self, TypeAlias

import attrs

__all__ = ["ScriptedImapServer"]

_MAX_LINE = 64 * 1024
"""Longest command line (literals not counted) a client may send; longer ones are refused."""
_MAX_LITERAL = 64 * 1024 * 1024
"""Largest literal a client may send (APPEND of a mail)."""
_HUGE_SAMPLE = 1024
"""How many bytes of the mail follow the announcement of a huge literal."""
_STOP_TIMEOUT = 5.0
_RECV = 65536
_MAX_UID = 2**32 - 1

_DEFAULT_CAPABILITIES = ("IDLE", "UIDPLUS", "MOVE", "LITERAL+", "AUTH=PLAIN")
_SYSTEM_FLAGS = {
    flag.lower(): flag
    for flag in (b"\\Answered", b"\\Flagged", b"\\Deleted", b"\\Seen", b"\\Draft")
}
_MONTHS = b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
# Commands that address mail by sequence number: while one is answered, no EXPUNGE may be
# sent (RFC 3501 7.4.1), since it would renumber the mails the client asked about.
_BY_SEQUENCE = frozenset({b"FETCH", b"STORE", b"SEARCH", b"COPY", b"MOVE"})
_LITERAL_AT_END = re.compile(rb"\{(\d+)(\+?)\}\Z")
_ATOM_CHAR = rb"[^\s(){%*\"\\\]\x00-\x1f\x7f]"
_ATOM = re.compile(_ATOM_CHAR + rb"+")
_FLAG = re.compile(rb"\\?" + _ATOM_CHAR + rb"+")
_COMMAND_WORDS = re.compile(r"[A-Za-z]+( [A-Za-z]+)?")

_Arg: TypeAlias = "bytes | list[_Arg]"
Then = Literal["stall", "close"]
"""What a connection does after a huge literal's first bytes: go silent, or close."""
Garble = Literal["parenthesis", "literal"]
"""How :meth:`ScriptedImapServer.malformed_item` garbles an item."""


# -- faults: values, armed with a count --------------------------------------------------------


@attrs.frozen
class _Omit:
    uid: int


@attrs.frozen
class _FetchNo:
    uid: int
    text: str


@attrs.frozen
class _Malformed:
    uid: int
    how: Garble


@attrs.frozen
class _HugeLiteral:
    uid: int
    announced: int
    then: Then


@attrs.frozen
class _ByeDuringFetch:
    after_items: int


@attrs.frozen
class _NeverAnswer:
    words: tuple[bytes, ...]

    def matches(self, words: tuple[bytes, ...]) -> bool:
        """Whether a received command (``(b"UID", b"FETCH")``, ``(b"NOOP",)``) is this one."""
        return words == self.words or words[-1:] == self.words


_Fault: TypeAlias = _Omit | _FetchNo | _Malformed | _HugeLiteral | _ByeDuringFetch | _NeverAnswer


@attrs.frozen
class _Armed:
    """A fault and how many more times it happens (``None``: until cleared)."""

    fault: _Fault
    times: int | None


# -- the folder ---------------------------------------------------------------------------------


class _Mail:
    __slots__ = ("flags", "internaldate", "raw", "uid")

    def __init__(
        self, uid: int, raw: bytes, flags: set[bytes], internaldate: datetime.datetime
    ) -> None:
        self.uid = uid
        self.raw = raw
        self.flags = flags
        self.internaldate = internaldate


class _Folder:
    def __init__(self, name: str, uidvalidity: int) -> None:
        self.name = name
        self.uidvalidity = uidvalidity
        self.uidnext = 1
        self.mails: dict[int, _Mail] = {}  # in UID order: UIDs only grow
        self.recent_from = 1  # mails from this UID on are \Recent

    def add(self, raw: bytes, flags: Iterable[bytes], when: datetime.datetime | None) -> _Mail:
        mail = _Mail(self.uidnext, raw, set(flags), when or _now())
        self.mails[mail.uid] = mail
        self.uidnext += 1
        return mail

    def star(self) -> int:
        return next(reversed(self.mails), 0)


def _readable(*socks: socket.socket, timeout: float | None = None) -> list[object]:
    """Wait until one of *socks* can be read (any descriptor number, unlike ``select``)."""
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        return [key.fileobj for key, _ in selector.select(timeout)]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


# -- parsing what clients send ------------------------------------------------------------------


class _Bad(Exception):
    """The command cannot be understood: answered ``BAD`` with this text."""


class _No(Exception):
    """The command cannot be carried out: answered ``NO`` with this text."""


class _Close(Exception):
    """End the connection, after sending *farewell*."""

    def __init__(self, farewell: bytes = b"") -> None:
        super().__init__()
        self.farewell = farewell


class _Silence(Exception):
    """Never write again on this connection; read and drop until the client goes."""


class _Parser:
    """Tokens of one command: atoms and strings as bytes, parenthesized lists as lists."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def tokens(self, *, nested: bool = False) -> list[_Arg]:
        out: list[_Arg] = []
        data = self.data
        while True:
            while self.pos < len(data) and data[self.pos] == 0x20:
                self.pos += 1
            if self.pos >= len(data):
                if nested:
                    raise _Bad("unbalanced parentheses")
                return out
            char = data[self.pos : self.pos + 1]
            if char == b")":
                if not nested:
                    raise _Bad("unbalanced parentheses")
                self.pos += 1
                return out
            if char == b"(":
                self.pos += 1
                out.append(self.tokens(nested=True))
            elif char == b'"':
                out.append(self._quoted())
            elif char == b"{":
                out.append(self._literal())
            else:
                out.append(self._atom())

    def _quoted(self) -> bytes:
        data, pos = self.data, self.pos + 1
        value = bytearray()
        while pos < len(data):
            char = data[pos]
            if char == 0x22:  # "
                self.pos = pos + 1
                return bytes(value)
            if char == 0x5C and pos + 1 < len(data):  # backslash
                pos += 1
            value.append(data[pos])
            pos += 1
        raise _Bad("unterminated quoted string")

    def _literal(self) -> bytes:
        match = re.compile(rb"\{(\d+)\+?\}\r\n").match(self.data, self.pos)
        if match is None:
            raise _Bad("malformed literal")
        start = match.end()
        end = start + int(match[1])
        self.pos = end
        return self.data[start:end]

    def _atom(self) -> bytes:
        data, start = self.data, self.pos
        pos = start
        while pos < len(data) and data[pos] not in b" ()\r\n":
            if (
                data[pos] == 0x5B
            ):  # [ ... ] may hold spaces and parentheses: BODY[HEADER.FIELDS (A)]
                close = data.find(b"]", pos)
                if close < 0:
                    raise _Bad("unbalanced brackets")
                pos = close
            pos += 1
        if pos == start:
            raise _Bad(f"unexpected {data[start : start + 1]!r}")
        self.pos = pos
        return data[start:pos]


def _text(token: _Arg, what: str) -> bytes:
    if not isinstance(token, bytes):
        raise _Bad(f"{what} must be an atom or a string, not a list")
    return token


def _number(token: _Arg, what: str) -> int:
    value = _text(token, what)
    if not value.isdigit():
        raise _Bad(f"{what} must be a number, got {value.decode('ascii', 'replace')}")
    return int(value)


def _folder_name(token: _Arg) -> str:
    name = _text(token, "the folder").decode("utf-8", "replace")
    return "INBOX" if name.upper() == "INBOX" else name


def _flag(value: bytes) -> bytes:
    return _SYSTEM_FLAGS.get(value.lower(), value)


def _flag_list(token: _Arg) -> set[bytes]:
    values = token if isinstance(token, list) else [token]
    flags = {_flag(_text(value, "a flag")) for value in values}
    if b"\\Recent" in flags or any(not _FLAG.fullmatch(flag) for flag in flags):
        raise _Bad("flags must be atoms, and \\Recent cannot be set")
    return flags


class _Set:
    """A sequence set (``1:3,5,7:*``) of sequence numbers or UIDs."""

    def __init__(self, token: _Arg, star: int) -> None:
        text = _text(token, "the message set")
        self.singles: set[int] = set()
        self.ranges: list[tuple[int, int]] = []
        for part in text.split(b","):
            ends = part.split(b":")
            if len(ends) > 2 or not all(end == b"*" or end.isdigit() for end in ends):
                raise _Bad(f"malformed message set {text.decode('ascii', 'replace')}")
            low, high = (star if end == b"*" else int(end) for end in (ends[0], ends[-1]))
            if low == high:
                self.singles.add(low)
            else:
                self.ranges.append((min(low, high), max(low, high)))

    def __contains__(self, number: int) -> bool:
        return number in self.singles or any(low <= number <= high for low, high in self.ranges)


@attrs.frozen
class _Item:
    """One FETCH item asked for, and the name its answer carries."""

    kind: Literal["uid", "flags", "size", "internaldate", "body"]
    name: bytes
    section: bytes = b""  # "", HEADER, TEXT, HEADER.FIELDS, HEADER.FIELDS.NOT
    fields: tuple[bytes, ...] = ()
    partial: tuple[int, int] | None = None
    sets_seen: bool = False


_SIMPLE_ITEMS = {
    b"UID": _Item("uid", b"UID"),
    b"FLAGS": _Item("flags", b"FLAGS"),
    b"RFC822.SIZE": _Item("size", b"RFC822.SIZE"),
    b"INTERNALDATE": _Item("internaldate", b"INTERNALDATE"),
    b"RFC822": _Item("body", b"RFC822", sets_seen=True),
    b"RFC822.HEADER": _Item("body", b"RFC822.HEADER", section=b"HEADER"),
    b"RFC822.TEXT": _Item("body", b"RFC822.TEXT", section=b"TEXT", sets_seen=True),
}
_MACROS = {b"FAST": (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE")}
_BODY_ITEM = re.compile(
    rb"BODY(\.PEEK)?\[(|HEADER|TEXT|HEADER\.FIELDS(?:\.NOT)? \(([^()]*)\))\](?:<(\d+)\.(\d+)>)?"
)


def _items(token: _Arg) -> list[_Item]:
    atoms = token if isinstance(token, list) else [token]
    items: list[_Item] = []
    for atom in atoms:
        word = _text(atom, "a FETCH item").upper()
        if word in _MACROS:
            items.extend(_SIMPLE_ITEMS[name] for name in _MACROS[word])
        elif word in _SIMPLE_ITEMS:
            items.append(_SIMPLE_ITEMS[word])
        elif match := _BODY_ITEM.fullmatch(word):
            section = match[2].split(b" ", 1)[0]
            partial = None if match[4] is None else (int(match[4]), int(match[5]))
            name = b"BODY[" + match[2] + b"]"
            if partial is not None:
                name += b"<%d>" % partial[0]
            fields = tuple(match[3].split()) if match[3] is not None else ()
            sets_seen = match[1] is None  # BODY[...] without PEEK, whatever the section
            items.append(_Item("body", name, section, fields, partial, sets_seen))
        else:
            raise _Bad(f"FETCH item {word.decode('ascii', 'replace')} is not implemented")
    if not items:
        raise _Bad("no FETCH items")
    return items


def _split_header(raw: bytes) -> tuple[bytes, bytes]:
    for separator in (b"\r\n\r\n", b"\n\n"):
        index = raw.find(separator)
        if index >= 0:
            end = index + len(separator)
            return raw[:end], raw[end:]
    return raw, b""


def _header_fields(header: bytes, names: tuple[bytes, ...], *, keep: bool) -> bytes:
    """The header lines named *names* (or, with *keep* false, all others), and a blank line."""
    wanted = {name.lower() for name in names}
    out: list[bytes] = []
    taking = False
    for line in header.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if taking:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        taking = (name in wanted) == keep
        if taking:
            out.append(line)
    return b"".join(out) + b"\r\n"


def _section(mail: _Mail, item: _Item) -> bytes:
    header, text = _split_header(mail.raw)
    if item.section == b"":
        data = mail.raw
    elif item.section == b"HEADER":
        data = header
    elif item.section == b"TEXT":
        data = text
    else:
        data = _header_fields(header, item.fields, keep=item.section == b"HEADER.FIELDS")
    if item.partial is not None:
        origin, length = item.partial
        data = data[origin : origin + length]
    return data


def _date(when: datetime.datetime) -> bytes:
    return b'"%2d-%s-%04d %02d:%02d:%02d +0000"' % (
        when.day,
        _MONTHS[when.month - 1],
        when.year,
        when.hour,
        when.minute,
        when.second,
    )


def _parse_date(token: bytes) -> datetime.datetime | None:
    try:
        return email.utils.parsedate_to_datetime(token.decode("ascii").replace("-", " "))
    except (ValueError, TypeError, UnicodeDecodeError):
        return None


def _flags_text(flags: Iterable[bytes]) -> bytes:
    return b"(" + b" ".join(sorted(flags)) + b")"


def _quote(value: str) -> bytes:
    raw = value.encode("utf-8")
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def _uid_set(uids: Sequence[int]) -> bytes:
    return b",".join(b"%d" % uid for uid in uids)


# -- searching ----------------------------------------------------------------------------------

_Predicate: TypeAlias = Callable[[_Mail, int], bool]
"""Whether a mail (with its sequence number, 0 if it has none) matches a search key."""

_FLAG_KEYS: dict[bytes, tuple[bytes, bool]] = {
    b"ANSWERED": (b"\\Answered", True),
    b"DELETED": (b"\\Deleted", True),
    b"DRAFT": (b"\\Draft", True),
    b"FLAGGED": (b"\\Flagged", True),
    b"SEEN": (b"\\Seen", True),
    b"UNANSWERED": (b"\\Answered", False),
    b"UNDELETED": (b"\\Deleted", False),
    b"UNDRAFT": (b"\\Draft", False),
    b"UNFLAGGED": (b"\\Flagged", False),
    b"UNSEEN": (b"\\Seen", False),
}
_HEADER_KEYS = {b"SUBJECT", b"FROM", b"TO", b"CC", b"BCC"}


class _Search:
    """Search keys (RFC 3501 6.4.4, without dates) turned into one predicate."""

    def __init__(
        self, tokens: list[_Arg], *, star_uid: int, star_seq: int, recent_from: int
    ) -> None:
        self.tokens = tokens
        self.pos = 0
        self.star_uid = star_uid
        self.star_seq = star_seq
        self.recent_from = recent_from

    def predicate(self) -> _Predicate:
        if self.tokens and _text(self.tokens[0], "a search key").upper() == b"CHARSET":
            self.pos = 2  # only ASCII searches are meant; the charset changes nothing here
        keys = []
        while self.pos < len(self.tokens):
            keys.append(self._key())
        if not keys:
            raise _Bad("SEARCH needs at least one search key")
        return lambda mail, seq: all(key(mail, seq) for key in keys)

    def _next(self) -> _Arg:
        if self.pos >= len(self.tokens):
            raise _Bad("a search key is missing its argument")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def _key(self) -> _Predicate:
        token = self._next()
        if isinstance(token, list):
            inner = _Search(
                token,
                star_uid=self.star_uid,
                star_seq=self.star_seq,
                recent_from=self.recent_from,
            )
            return inner.predicate()
        word = token.upper()
        if word == b"ALL":
            return lambda mail, seq: True
        if word in _FLAG_KEYS:
            flag, present = _FLAG_KEYS[word]
            return lambda mail, seq: (flag in mail.flags) == present
        if word in (b"KEYWORD", b"UNKEYWORD"):
            keyword = _flag(_text(self._next(), "a keyword"))
            present = word == b"KEYWORD"
            return lambda mail, seq: (keyword in mail.flags) == present
        if word in (b"RECENT", b"OLD", b"NEW"):
            start = self.recent_from
            if word == b"OLD":
                return lambda mail, seq: mail.uid < start
            if word == b"RECENT":
                return lambda mail, seq: mail.uid >= start
            return lambda mail, seq: mail.uid >= start and b"\\Seen" not in mail.flags
        if word == b"UID":
            uids = _Set(self._next(), self.star_uid)
            return lambda mail, seq: mail.uid in uids
        if word == b"NOT":
            inner_key = self._key()
            return lambda mail, seq: not inner_key(mail, seq)
        if word == b"OR":
            left, right = self._key(), self._key()
            return lambda mail, seq: left(mail, seq) or right(mail, seq)
        if word in (b"LARGER", b"SMALLER"):
            size = _number(self._next(), word.decode())
            if word == b"LARGER":
                return lambda mail, seq: len(mail.raw) > size
            return lambda mail, seq: len(mail.raw) < size
        if word in _HEADER_KEYS or word == b"HEADER":
            name = word if word != b"HEADER" else _text(self._next(), "a header name")
            return self._contains(self._header(name), _text(self._next(), "a search string"))
        if word in (b"BODY", b"TEXT"):
            part = (lambda mail: _split_header(mail.raw)[1]) if word == b"BODY" else None
            return self._contains(part, _text(self._next(), "a search string"))
        if word[:1].isdigit() or word[:1] == b"*":
            seqs = _Set(word, self.star_seq)
            return lambda mail, seq: seq in seqs
        raise _Bad(f"search key {word.decode('ascii', 'replace')} is not implemented")

    @staticmethod
    def _header(name: bytes) -> Callable[[_Mail], bytes]:
        def value(mail: _Mail) -> bytes:
            header = _split_header(mail.raw)[0]
            lines = _header_fields(header, (name,), keep=True)
            return b"\n".join(line.split(b":", 1)[-1] for line in lines.splitlines())

        return value

    @staticmethod
    def _contains(part: Callable[[_Mail], bytes] | None, needle: bytes) -> _Predicate:
        wanted = needle.lower()
        if part is None:
            return lambda mail, seq: wanted in mail.raw.lower()
        return lambda mail, seq: wanted in part(mail).lower()


# -- one connection -----------------------------------------------------------------------------


@attrs.frozen
class _Received:
    """One command as it arrived: its raw bytes (literals inline) and its text for the log."""

    raw: bytes
    text: str


class _Session:
    """One client connection, served by its own thread."""

    def __init__(self, server: ScriptedImapServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.wake_reader, self.wake_writer = socket.socketpair()
        self.wake_reader.setblocking(False)
        self.wake_writer.setblocking(False)
        self.buffer = bytearray()
        self.answering_another = False  # in the middle of a command, answering the next one
        self.user: str | None = None
        # The selected folder and this client's view of it: the UIDs in sequence order, as
        # far as it has been told (an EXPUNGE not yet announced keeps its place).
        self.selected: _Folder | None = None
        self.read_only = False
        self.uidvalidity = 0
        self.recent_from = 1
        self.known: list[int] = []
        self.seqs: dict[int, int] = {}
        self.thread = threading.Thread(
            target=self.run, name=f"scripted-imap-{server.port}", daemon=True
        )

    # -- life ----------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.send(b"* OK ScriptedImapServer ready\r\n")
            while True:
                received = self.read_command()
                if received is None:
                    return
                self.handle(received)
        except _Silence:
            self.silence()
        except _Close as close:
            if close.farewell:
                with contextlib.suppress(OSError):
                    self.send(close.farewell)
        except OSError:
            pass  # the client went away, or stop() shut the socket
        finally:
            self.close()
            self.server._forget(self)

    def shut(self) -> None:
        """From another thread: make every read and write of the session thread end."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.wake()

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (it is awake anyway) or closed
            self.wake_writer.send(b"\0")

    def close(self) -> None:
        for sock in (self.sock, self.wake_reader, self.wake_writer):
            with contextlib.suppress(OSError):
                sock.close()

    def silence(self) -> None:
        """Read and drop whatever the client sends, never answer, until it goes."""
        with contextlib.suppress(OSError):
            while not self.server._stopping.is_set() and self.sock.recv(_RECV):
                pass

    # -- reading -------------------------------------------------------------------------------

    def fill(self, *, wake: bool = False) -> bool:
        """Read more into the buffer; with *wake*, return ``False`` if woken up instead."""
        if wake and self.sock not in _readable(self.sock, self.wake_reader):
            return False
        data = self.sock.recv(_RECV)
        if not data:
            raise _Close()
        self.buffer += data
        return True

    def read_line(self, *, wake: bool = False) -> bytes | None:
        """The next line without its line end; ``None`` if woken (with *wake*) first."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end]).removesuffix(b"\r")
                del self.buffer[: end + 1]
                return line
            if len(self.buffer) > _MAX_LINE:
                raise _Close(b"* BYE command line too long (more than %d bytes)\r\n" % _MAX_LINE)
            if not self.fill(wake=wake):
                return None

    def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def read_command(self) -> _Received | None:
        try:
            line = self.read_line()
        except _Close as close:
            if close.farewell:
                raise
            return None
        assert line is not None
        raw, text = line, line
        while match := _LITERAL_AT_END.search(line):
            size = int(match[1])
            if size > _MAX_LITERAL or len(text) > _MAX_LINE:
                tag = raw.split(b" ", 1)[0]
                refusal = b"%s BAD literal too large (more than %d bytes)\r\n" % (tag, _MAX_LITERAL)
                raise _Close(refusal + b"* BYE literal too large\r\n")
            if not match[2]:  # a synchronizing literal waits for our go-ahead
                self.send(b"+ Ready for literal data\r\n")
            data = self.read_exactly(size)
            line = self.read_line() or b""
            raw += b"\r\n" + data + line
            text += line
        return _Received(raw, text.decode("utf-8", "replace"))

    def answer_next_first(self) -> None:
        """With :meth:`ScriptedImapServer.answer_out_of_order`: answer the next command now.

        Waits up to the set time for a whole command line to arrive, and answers it in the
        middle of the one being answered (one command deep).
        """
        wait = self.server._out_of_order
        if wait is None or self.answering_another:
            return
        deadline = time.monotonic() + wait
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.sock not in _readable(self.sock, timeout=remaining):
                return
            self.fill()
        received = self.read_command()
        if received is None:
            return
        self.answering_another = True
        try:
            self.handle(received)
        finally:
            self.answering_another = False

    # -- writing -------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        split = self.server._split
        if split is None:
            self.sock.sendall(data)
            return
        size, pause = split
        for start in range(0, len(data), size):
            if start and pause and self.server._stopping.wait(pause):
                raise _Close()
            self.sock.sendall(data[start : start + size])

    # -- answering -----------------------------------------------------------------------------

    def handle(self, received: _Received) -> None:
        words = received.raw.split(b" ", 3)
        tag = words[0]
        if len(words) < 2 or not tag or not _ATOM.fullmatch(tag):
            self.server._log(received.text)
            self.send(b"* BAD a command is a tag and a command name\r\n")
            return
        verb = words[1].upper()
        uid = verb == b"UID" and len(words) > 2
        command = words[2].upper() if uid else verb
        rest = received.raw.split(b" ", 3 if uid else 2)[3 if uid else 2 :]
        self.server._log(self._loggable(verb, rest, received.text))
        name = (b"UID", command) if uid else (command,)
        if self.server._take_never_answer(name):
            raise _Silence()
        try:
            args = _Parser(rest[0]).tokens() if rest else []
            handler = self.handler(command, uid=uid)
            if handler is None:
                raise _Bad("unknown command")
            self.before(command, uid=uid)
            status, text = handler(args, uid)
        except _Bad as bad:
            status, text = b"BAD", str(bad).encode()
        except _No as no:
            status, text = b"NO", str(no).encode()
        with self.server._lock:
            updates = self.updates(expunges=uid or command not in _BY_SEQUENCE)
        self.send(updates + tag + b" " + status + b" " + text + b"\r\n")
        if command == b"LOGOUT" and status == b"OK":
            raise _Close()

    def _loggable(self, verb: bytes, rest: list[bytes], text: str) -> str:
        """The command as logged: without its tag, and with no password in it."""
        logged = text.split(" ", 1)[1] if " " in text else text
        if verb == b"LOGIN":
            try:
                user = _text(_Parser(rest[0]).tokens()[0], "the user") if rest else b""
            except (_Bad, IndexError):
                user = b""
            return f"LOGIN {user.decode('utf-8', 'replace')} ***".replace("  ", " ")
        if verb == b"AUTHENTICATE" and len(logged.split()) > 2:
            return " ".join(logged.split()[:2]) + " ***"
        return logged

    def handler(
        self, command: bytes, *, uid: bool
    ) -> Callable[[list[_Arg], bool], tuple[bytes, bytes]] | None:
        capabilities = self.server._capabilities
        not_logged_in = {
            b"CAPABILITY": self.capability,
            b"NOOP": self.noop,
            b"LOGOUT": self.logout,
            b"LOGIN": self.login,
        }
        if "AUTH=PLAIN" in capabilities:
            not_logged_in[b"AUTHENTICATE"] = self.authenticate
        logged_in = {
            b"SELECT": self.select,
            b"EXAMINE": self.examine,
            b"STATUS": self.status,
            b"LIST": self.list_folders,
            b"LSUB": self.list_folders,
            b"CREATE": self.create,
            b"APPEND": self.append,
        }
        selected = {
            b"SEARCH": self.search,
            b"FETCH": self.fetch,
            b"STORE": self.store,
            b"COPY": self.copy,
            b"EXPUNGE": self.expunge,
            b"CLOSE": self.close_folder,
            b"UNSELECT": self.unselect,
            b"CHECK": self.noop,
        }
        if "IDLE" in capabilities:
            logged_in[b"IDLE"] = self.idle
        if "MOVE" in capabilities:
            selected[b"MOVE"] = self.move
        if uid:
            with_uid = {b"SEARCH", b"FETCH", b"STORE", b"COPY", b"MOVE"}
            if "UIDPLUS" in capabilities:
                with_uid.add(b"EXPUNGE")
            if command not in with_uid:
                return None
        if command in not_logged_in:
            return not_logged_in[command]
        if command in logged_in or command in selected:
            if self.user is None:
                raise _Bad("log in first")
            if command in selected and self.selected is None:
                raise _Bad("select a folder first")
            return logged_in.get(command) or selected[command]
        return None

    def before(self, command: bytes, *, uid: bool) -> None:
        """Tell the client about new mail before a command that may refer to it."""
        if self.selected is None or command in (b"SELECT", b"EXAMINE", b"IDLE", b"LOGOUT"):
            return
        with self.server._lock:
            updates = self.updates(expunges=False)
        if updates:
            self.send(updates)

    def updates(self, *, expunges: bool) -> bytes:
        """Untagged news about the selected folder since the client last heard (lock held).

        Raises:
            _Close: the folder's UIDVALIDITY changed under this connection.
        """
        folder = self.selected
        if folder is None:
            return b""
        if folder.uidvalidity != self.uidvalidity:
            raise _Close(b"* BYE UIDVALIDITY changed: select the folder again\r\n")
        out = bytearray()
        mails = folder.mails
        if expunges and any(uid not in mails for uid in self.known):
            kept: list[int] = []
            for uid in self.known:
                if uid in mails:
                    kept.append(uid)
                else:  # each EXPUNGE renumbers the mails after it: this one is next in line
                    out += b"* %d EXPUNGE\r\n" % (len(kept) + 1)
            self.set_known(kept)
        last = self.known[-1] if self.known else 0
        new: list[int] = []
        for uid in reversed(mails):  # new mail has the highest UIDs
            if uid <= last:
                break
            new.append(uid)
        if new:
            self.set_known(self.known + new[::-1])
            out += b"* %d EXISTS\r\n" % len(self.known)
        if expunges and folder is self.server._main and self.server._flood:
            count, self.server._flood = self.server._flood, 0
            after = len(self.known) + 1
            out += b"* %d EXISTS\r\n* %d EXPUNGE\r\n" % (after, after) * count
        return bytes(out)

    def set_known(self, uids: list[int]) -> None:
        self.known = uids
        self.seqs = {uid: index + 1 for index, uid in enumerate(uids)}

    def targets(self, token: _Arg, *, uid: bool) -> list[tuple[int, _Mail]]:
        """The mails a message set names, with their sequence numbers, in sequence order."""
        folder = self.selected
        assert folder is not None
        mails = folder.mails
        if uid:
            wanted = _Set(token, folder.star())
            return [(self.seqs[n], mails[n]) for n in self.known if n in wanted and n in mails]
        seqs = _Set(token, len(self.known))
        return [
            (seq, mails[n])
            for seq, n in enumerate(self.known, start=1)
            if seq in seqs and n in mails
        ]

    # -- commands before logging in -------------------------------------------------------------

    def capability(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        self.send(b"* CAPABILITY " + self.server._capability_line() + b"\r\n")
        return b"OK", b"Capability completed"

    def noop(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        return b"OK", b"NOOP completed"

    def logout(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        self.send(b"* BYE Logging out\r\n")
        return b"OK", b"Logout completed"

    def login(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        if len(args) != 2:
            raise _Bad("LOGIN needs a user and a password")
        user, password = (_text(arg, "LOGIN").decode("utf-8", "replace") for arg in args)
        return self.log_in(user, password)

    def authenticate(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        if not args or _text(args[0], "the mechanism").upper() != b"PLAIN":
            raise _No("only AUTHENTICATE PLAIN is implemented")
        if len(args) > 1:
            response = _text(args[1], "the initial response")
        else:
            self.send(b"+ \r\n")
            line = self.read_line()
            assert line is not None
            response = line
        if response == b"*":
            raise _Bad("AUTHENTICATE cancelled")
        try:
            _, user, password = base64.b64decode(response, validate=True).split(b"\0")
        except (binascii.Error, ValueError):
            raise _Bad("malformed AUTHENTICATE PLAIN response") from None
        return self.log_in(user.decode("utf-8", "replace"), password.decode("utf-8", "replace"))

    def log_in(self, user: str, password: str) -> tuple[bytes, bytes]:
        if self.user is not None:
            raise _Bad("already logged in")
        if (user, password) != (self.server.user, self.server._password):
            raise _No("[AUTHENTICATIONFAILED] Authentication failed.")
        self.user = user
        return b"OK", b"Logged in"

    # -- commands after logging in -------------------------------------------------------------

    def select(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        return self.open_folder(args, read_only=False)

    def examine(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        return self.open_folder(args, read_only=True)

    def open_folder(self, args: list[_Arg], *, read_only: bool) -> tuple[bytes, bytes]:
        if len(args) != 1:
            raise _Bad("SELECT and EXAMINE need one folder")
        name = _folder_name(args[0])
        self.selected = None
        self.set_known([])
        server = self.server
        with server._lock:
            folder = server._folders.get(name)
            if folder is None:
                raise _No(f"[NONEXISTENT] Mailbox doesn't exist: {name}")
            mails = folder.mails
            self.set_known(list(mails))
            self.selected, self.read_only = folder, read_only
            self.uidvalidity = folder.uidvalidity
            self.recent_from = folder.recent_from
            if not read_only:
                folder.recent_from = folder.uidnext
            recent = sum(1 for n in mails if n >= self.recent_from)
            unseen = next(
                (seq for seq, n in enumerate(mails, 1) if b"\\Seen" not in mails[n].flags), None
            )
            answer = [
                b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
                b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Ok",
                b"* %d EXISTS" % len(mails),
                b"* %d RECENT" % recent,
            ]
            if unseen is not None:
                answer.append(b"* OK [UNSEEN %d] First unseen" % unseen)
            answer.append(b"* OK [UIDVALIDITY %d] UIDs valid" % folder.uidvalidity)
            answer.append(b"* OK [UIDNEXT %d] Predicted next UID" % folder.uidnext)
        self.send(b"\r\n".join(answer) + b"\r\n")
        mode = b"[READ-ONLY]" if read_only else b"[READ-WRITE]"
        return b"OK", mode + b" Select completed"

    def status(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        if len(args) != 2 or not isinstance(args[1], list):
            raise _Bad("STATUS needs a folder and a list of items")
        name = _folder_name(args[0])
        with self.server._lock:
            folder = self.server._folders.get(name)
            if folder is None:
                raise _No(f"[NONEXISTENT] Mailbox doesn't exist: {name}")
            mails = folder.mails
            values = {
                b"MESSAGES": len(mails),
                b"RECENT": sum(1 for n in mails if n >= folder.recent_from),
                b"UIDNEXT": folder.uidnext,
                b"UIDVALIDITY": folder.uidvalidity,
                b"UNSEEN": sum(1 for mail in mails.values() if b"\\Seen" not in mail.flags),
            }
        answer = []
        for item in args[1]:
            word = _text(item, "a STATUS item").upper()
            if word not in values:
                raise _Bad(f"STATUS item {word.decode('ascii', 'replace')} is not implemented")
            answer.append(b"%s %d" % (word, values[word]))
        self.send(b"* STATUS " + _quote(name) + b" (" + b" ".join(answer) + b")\r\n")
        return b"OK", b"Status completed"

    def list_folders(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        if len(args) != 2:
            raise _Bad("LIST needs a reference and a pattern")
        pattern = _text(args[1], "the pattern").decode("utf-8", "replace")
        if pattern == "":
            self.send(b'* LIST (\\Noselect) "/" ""\r\n')
            return b"OK", b"List completed"
        regex = re.compile(
            "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern)
        )
        with self.server._lock:
            names = [name for name in self.server._folders if regex.fullmatch(name)]
        for name in names:
            self.send(b'* LIST (\\HasNoChildren) "/" ' + _quote(name) + b"\r\n")
        return b"OK", b"List completed"

    def create(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        if len(args) != 1:
            raise _Bad("CREATE needs one folder")
        name = _folder_name(args[0])
        with self.server._lock:
            if name in self.server._folders:
                raise _No(f"[ALREADYEXISTS] Mailbox already exists: {name}")
            self.server._folders[name] = _Folder(name, self.server._main.uidvalidity)
        return b"OK", b"Create completed"

    def append(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        if not 2 <= len(args) <= 4:
            raise _Bad("APPEND needs a folder, optional flags and date, and the mail")
        name = _folder_name(args[0])
        flags: set[bytes] = set()
        when = None
        for extra in args[1:-1]:
            if isinstance(extra, list):
                flags = _flag_list(extra)
            else:
                when = _parse_date(extra)
        raw = _text(args[-1], "the mail")
        with self.server._lock:
            folder = self.server._folders.get(name)
            if folder is None:
                raise _No(f"[TRYCREATE] Mailbox doesn't exist: {name}")
            mail = folder.add(raw, flags, when)
        self.server._notify()
        code = b"[APPENDUID %d %d]" % (folder.uidvalidity, mail.uid)
        return b"OK", code + b" Append completed"

    def idle(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        self.send(b"+ idling\r\n")
        server = self.server
        while True:
            with contextlib.suppress(OSError):
                while self.wake_reader.recv(4096):
                    pass
            with server._lock:
                news = self.updates(expunges=True)
            if news:
                self.send(news)
            line = self.read_line(wake=True)
            if line is None:
                continue
            server._log(line.decode("utf-8", "replace"))
            if server._take_never_answer((line.strip().upper(),)):
                raise _Silence()
            if line.strip().upper() != b"DONE":
                return b"BAD", b"expected DONE"
            return b"OK", b"Idle completed"

    # -- commands in the selected folder -------------------------------------------------------

    def search(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        with self.server._lock:
            folder = self.selected
            assert folder is not None
            match = _Search(
                args,
                star_uid=folder.star(),
                star_seq=len(self.known),
                recent_from=self.recent_from,
            ).predicate()
            found = [
                mail.uid if uid else self.seqs.get(mail.uid, 0)
                for mail in folder.mails.values()
                if match(mail, self.seqs.get(mail.uid, 0))
            ]
        self.send(b"* SEARCH" + b"".join(b" %d" % n for n in found if n) + b"\r\n")
        return b"OK", b"Search completed"

    def fetch(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        if len(args) != 2:
            raise _Bad("FETCH needs a message set and items")
        items = _items(args[1])
        if uid and not any(item.kind == "uid" for item in items):
            items.insert(0, _SIMPLE_ITEMS[b"UID"])
        server = self.server
        wants_literal = any(item.kind == "body" for item in items)
        with server._lock:
            targets = self.targets(args[0], uid=uid)
            bye = server._take(_ByeDuringFetch)
            faults: dict[int, _Fault] = {}
            refusal: str | None = None
            for _, mail in targets:
                for kind in (_Omit, _FetchNo, _HugeLiteral, _Malformed):
                    literal_needed = kind is _HugeLiteral or (
                        kind is _Malformed and server._pending(_Malformed, mail.uid, "literal")
                    )
                    if literal_needed and not wants_literal:
                        continue
                    fault = server._take(kind, mail.uid)
                    if fault is not None:
                        faults[mail.uid] = fault
                        if isinstance(fault, _FetchNo) and refusal is None:
                            refusal = fault.text
                        break
        sent = 0
        for seq, mail in targets:
            if isinstance(bye, _ByeDuringFetch) and sent == bye.after_items:
                raise _Close(b"* BYE the server goes away in the middle of a FETCH\r\n")
            fault = faults.get(mail.uid)
            if isinstance(fault, _Omit | _FetchNo):
                continue
            with server._lock:
                answer = self.fetch_item(seq, mail, items, fault)
            self.send(answer)
            if isinstance(fault, _HugeLiteral):
                if fault.then == "close":
                    raise _Close()
                raise _Silence()
            sent += 1
            if sent == 1:
                self.answer_next_first()  # its answer among this one's items
        if bye is not None:
            raise _Close(b"* BYE the server goes away in the middle of a FETCH\r\n")
        if refusal is not None:
            return b"NO", refusal.encode("utf-8")
        return b"OK", b"Fetch completed"

    def fetch_item(self, seq: int, mail: _Mail, items: list[_Item], fault: _Fault | None) -> bytes:
        r"""One mail's FETCH answer (lock held): reading its body may set ``\Seen``."""
        flags_asked = any(item.kind == "flags" for item in items)
        if any(item.sets_seen for item in items) and not self.read_only:
            if b"\\Seen" not in mail.flags and not flags_asked:
                items = [*items, _SIMPLE_ITEMS[b"FLAGS"]]
            mail.flags.add(b"\\Seen")
        parts: list[bytes] = []
        for item in items:
            if item.kind == "uid":
                value = b"%d" % mail.uid
            elif item.kind == "flags":
                value = _flags_text(mail.flags)
            elif item.kind == "size":
                value = b"%d" % len(mail.raw)
            elif item.kind == "internaldate":
                value = _date(mail.internaldate)
            else:
                data = _section(mail, item)
                if isinstance(fault, _HugeLiteral):
                    head = b" ".join([*parts, item.name])
                    sample = data[:_HUGE_SAMPLE]
                    return b"* %d FETCH (%s {%d}\r\n%s" % (seq, head, fault.announced, sample)
                if isinstance(fault, _Malformed) and fault.how == "literal":
                    fault = None  # only the first literal is cut short
                    value = b"{%d}\r\n" % (len(data) // 2) + data
                else:
                    value = _literal(data)
            parts.append(item.name + b" " + value)
        closing = b"" if isinstance(fault, _Malformed) and fault.how == "parenthesis" else b")"
        return b"* %d FETCH (%s%s\r\n" % (seq, b" ".join(parts), closing)

    def store(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        if len(args) < 3:
            raise _Bad("STORE needs a message set, an action and flags")
        action = _text(args[1], "the STORE action").upper()
        silent = action.endswith(b".SILENT")
        action = action.removesuffix(b".SILENT")
        if action not in (b"FLAGS", b"+FLAGS", b"-FLAGS"):
            raise _Bad(f"STORE {action.decode('ascii', 'replace')} is not implemented")
        flags = _flag_list(args[2] if len(args) == 3 else list(args[2:]))
        if self.read_only:
            raise _No("[READ-ONLY] the folder is selected read-only")
        answer = bytearray()
        with self.server._lock:
            for seq, mail in self.targets(args[0], uid=uid):
                if action == b"FLAGS":
                    mail.flags = set(flags)
                elif action == b"+FLAGS":
                    mail.flags |= flags
                else:
                    mail.flags -= flags
                if not silent:
                    uid_part = b"UID %d " % mail.uid if uid else b""
                    answer += b"* %d FETCH (%sFLAGS %s)\r\n" % (
                        seq,
                        uid_part,
                        _flags_text(mail.flags),
                    )
        if answer:
            self.send(bytes(answer))
        self.answer_next_first()  # its whole answer before this one's OK
        return b"OK", b"Store completed"

    def copy(self, args: list[_Arg], uid: bool, *, move: bool = False) -> tuple[bytes, bytes]:
        if len(args) != 2:
            raise _Bad("COPY and MOVE need a message set and a folder")
        name = _folder_name(args[1])
        server = self.server
        with server._lock:
            target = server._folders.get(name)
            if target is None:
                raise _No(f"[TRYCREATE] Mailbox doesn't exist: {name}")
            if move and self.read_only:
                raise _No("[READ-ONLY] the folder is selected read-only")
            mails = [mail for _, mail in self.targets(args[0], uid=uid)]
            copies = [
                target.add(mail.raw, mail.flags - {b"\\Deleted"}, mail.internaldate)
                for mail in mails
            ]
            if move:
                source = self.selected
                assert source is not None
                for mail in mails:
                    del source.mails[mail.uid]
        server._notify()
        if not mails:
            return b"OK", b"No messages"
        code = b"[COPYUID %d %s %s]" % (
            target.uidvalidity,
            _uid_set([mail.uid for mail in mails]),
            _uid_set([mail.uid for mail in copies]),
        )
        if not move:
            return b"OK", code + b" Copy completed"
        with server._lock:
            gone = self.updates(expunges=True)
        self.send(b"* OK " + code + b" Moved\r\n" + gone)
        return b"OK", b"Move completed"

    def move(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        return self.copy(args, uid, move=True)

    def expunge(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        if self.read_only:
            raise _No("[READ-ONLY] the folder is selected read-only")
        if uid and len(args) != 1:
            raise _Bad("UID EXPUNGE needs a message set")
        with self.server._lock:
            self.remove_deleted(_Set(args[0], self.selected_star()) if uid else None)
        self.server._notify()
        return b"OK", b"Expunge completed"

    def selected_star(self) -> int:
        assert self.selected is not None
        return self.selected.star()

    def remove_deleted(self, only: _Set | None) -> None:
        folder = self.selected
        assert folder is not None
        for mail in list(folder.mails.values()):
            if b"\\Deleted" in mail.flags and (only is None or mail.uid in only):
                del folder.mails[mail.uid]

    def close_folder(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        if not self.read_only:
            with self.server._lock:
                self.remove_deleted(None)
            self.server._notify()
        return self.unselect(args, uid)

    def unselect(self, args: list[_Arg], uid: bool) -> tuple[bytes, bytes]:
        self.selected = None
        self.set_known([])
        return b"OK", b"Completed"


# -- the server ---------------------------------------------------------------------------------


def _check_uid(uid: object) -> int:
    if isinstance(uid, bool) or not isinstance(uid, int) or not 1 <= uid <= _MAX_UID:
        raise ValueError(f"uid must be an int from 1 to {_MAX_UID}, got {uid!r}")
    return uid


def _check_times(times: object) -> int | None:
    if times is None:
        return None
    if isinstance(times, bool) or not isinstance(times, int) or times < 1:
        raise ValueError(f"times must be None (until clear_faults()) or an int >= 1, got {times!r}")
    return times


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or "\r" in value or "\n" in value:
        raise ValueError(f"{name} must be a non-empty str on one line, got {value!r}")
    return value


class ScriptedImapServer:
    r"""An IMAP4rev1 server for tests: one folder in memory, and faults on command.

    It speaks enough IMAP4rev1 for imapclient and :class:`mailtether.ImapListener`: LOGIN
    and AUTHENTICATE PLAIN, SELECT and EXAMINE, SEARCH, FETCH, STORE, COPY, MOVE, EXPUNGE
    (all with their UID forms), STATUS, LIST, CREATE, APPEND, CLOSE, UNSELECT, IDLE, NOOP
    and LOGOUT; anything else is answered ``BAD unknown command``. Each connection is
    served by its own thread, so several clients can be connected at once. Put mail in with
    :meth:`append` (an IDLE client hears ``* n EXISTS`` at once), and turn faults on with
    the methods below: each takes effect before it returns, and lasts until
    :meth:`clear_faults` unless given ``times``.

    The folder named *folder* is the one the faults and the test methods (:meth:`append`,
    :meth:`flags`, :meth:`uids`, :meth:`expunge`) work on. ``INBOX`` and the *folders* named
    exist too, as targets of COPY and MOVE (see :meth:`folder_uids`); clients may CREATE more.

    What is sent on the wire, and in what order, is part of the contract: FETCH answers
    carry ``UID`` first (for UID FETCH), then the items in the order asked, with bodies as
    literals (``{n}\r\n``), and reading a body with ``BODY[]`` or ``RFC822`` sets
    ``\Seen`` (and adds ``FLAGS`` to the answer), as Dovecot does. ``\Recent`` is counted
    (SELECT, STATUS, SEARCH RECENT) but never shown among a mail's flags.

    Args:
        user: The only user name accepted.
        password: Its password. A wrong one is answered ``NO [AUTHENTICATIONFAILED]``.
        folder: The folder the test works on; it exists from the start.
        uidvalidity: The folder's UIDVALIDITY (1 to 2**32 - 1).
        folders: More folders that exist from the start (empty).
        host: Where to listen.
        port: The port; 0 (the default) picks a free one.
        capabilities: What to advertise after ``IMAP4rev1``. Leaving out ``IDLE``,
            ``MOVE``, ``UIDPLUS`` (UID EXPUNGE) or ``AUTH=PLAIN`` also turns that command
            off, for testing a client against a plainer server.

    Raises:
        ValueError: An argument is out of range; the message names it.

    Example:
        >>> from imapclient import IMAPClient
        >>> from mailtether.testing import ScriptedImapServer
        >>> with ScriptedImapServer(user="someone", password="a-secret") as server:
        ...     uid = server.append(b"Subject: hello\r\n\r\nHi!\r\n")
        ...     client = IMAPClient(server.host, port=server.port, ssl=False, timeout=5)
        ...     _ = client.login("someone", "a-secret")
        ...     _ = client.select_folder("INBOX")
        ...     print(client.search(["UNSEEN"]))
        ...     print(client.fetch([uid], ["BODY[]"])[uid][b"BODY[]"])
        ...     print(server.flags(uid))
        ...     _ = client.logout()
        [1]
        b'Subject: hello\r\n\r\nHi!\r\n'
        frozenset({b'\\Seen'})
    """

    def __init__(
        self,
        *,
        user: str,
        password: str,
        folder: str = "INBOX",
        uidvalidity: int = 1,
        folders: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        capabilities: Iterable[str] = _DEFAULT_CAPABILITIES,
    ) -> None:
        self.user = _check_text("user", user)
        """The only user name the server accepts."""
        self._password = _check_text("password", password)
        folder = _check_text("folder", folder)
        self.folder = "INBOX" if folder.upper() == "INBOX" else folder
        """The name of the folder the test works on."""
        self._check_uidvalidity(uidvalidity)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int from 0 to 65535, got {port!r}")
        self._listen = (_check_text("host", host), port)
        self._capabilities = tuple(capabilities)
        for capability in self._capabilities:
            if not isinstance(capability, str) or not _ATOM.fullmatch(capability.encode("utf-8")):
                raise ValueError(f"capabilities must be IMAP atoms, got {capability!r}")
        self._lock = threading.RLock()
        self._main = _Folder(self.folder, uidvalidity)
        self._folders: dict[str, _Folder] = {self.folder: self._main}
        for name in ("INBOX", *folders):
            name = _check_text("folders", name)
            name = "INBOX" if name.upper() == "INBOX" else name
            self._folders.setdefault(name, _Folder(name, uidvalidity))
        self._faults: list[_Armed] = []
        self._split: tuple[int, float] | None = None
        self._out_of_order: float | None = None
        self._flood = 0
        self._commands: list[str] = []
        self._accepted = 0
        self._sessions: set[_Session] = set()
        self._stopping = threading.Event()
        self._address: tuple[str, int] | None = None
        self._listener: socket.socket | None = None
        self._wake_reader: socket.socket | None = None
        self._wake_writer: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def _check_uidvalidity(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_UID:
            raise ValueError(f"uidvalidity must be an int from 1 to {_MAX_UID}, got {value!r}")
        return value

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start listening, and serving connections in background threads.

        Returns:
            The server itself, so ``server = ScriptedImapServer(...).start()`` works.

        Raises:
            RuntimeError: It is already running, or was stopped (start a new one).
            OSError: The address cannot be bound.
        """
        with self._lock:
            if self._thread is not None or self._stopping.is_set():
                raise RuntimeError("a ScriptedImapServer starts once; make a new one")
            family = socket.AF_INET6 if ":" in self._listen[0] else socket.AF_INET
            listener = socket.create_server(self._listen, family=family)
            self._address = listener.getsockname()[:2]
            self._listener = listener
            self._wake_reader, self._wake_writer = socket.socketpair()
            self._thread = threading.Thread(
                target=self._serve, name=f"scripted-imap-{self.port}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection, and wait for their threads to end.

        Open connections are shut down without a word, as when a server is killed.
        Calling it again, or before :meth:`start`, does nothing.

        Raises:
            RuntimeError: A thread did not end within 5 seconds.
        """
        with self._lock:
            thread, self._thread = self._thread, None
            self._listener = None  # closed by the accepting thread as it ends
            self._stopping.set()
            sessions = list(self._sessions)
        if self._wake_writer is not None:
            with contextlib.suppress(OSError):
                self._wake_writer.send(b"\0")
        for session in sessions:
            session.shut()
        threads = [session.thread for session in sessions]
        if thread is not None:
            threads.append(thread)
        for each in threads:
            if each is not threading.current_thread():
                each.join(_STOP_TIMEOUT)
                if each.is_alive():
                    raise RuntimeError(f"{each.name} did not end within {_STOP_TIMEOUT} s")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        listener, wake = self._listener, self._wake_reader
        assert listener is not None
        assert wake is not None
        try:
            while not self._stopping.is_set():
                if listener in _readable(listener, wake):
                    self._accept(listener)
        finally:
            for sock in (listener, wake, self._wake_writer):
                if sock is not None:
                    sock.close()

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except OSError:
            return  # the client gave up before we took it
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._stopping.is_set():
                sock.close()
                return
            self._accepted += 1
            session = _Session(self, sock)
            self._sessions.add(session)
        session.thread.start()

    def _forget(self, session: _Session) -> None:
        with self._lock:
            self._sessions.discard(session)

    # -- what it is ------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` clients connect to.

        Raises:
            RuntimeError: The server was never started.
        """
        if self._address is None:
            raise RuntimeError(
                "ScriptedImapServer is not started: call start() or use it in a with statement"
            )
        return self._address

    @property
    def host(self) -> str:
        """The host clients connect to (``127.0.0.1`` unless told otherwise)."""
        return self.address[0]

    @property
    def port(self) -> int:
        """The port clients connect to."""
        return self.address[1]

    @property
    def connections(self) -> int:
        """How many connections the server has accepted so far, in all."""
        with self._lock:
            return self._accepted

    @property
    def open_connections(self) -> int:
        """How many connections are open now."""
        with self._lock:
            return len(self._sessions)

    @property
    def commands(self) -> list[str]:
        """Every command received so far, in order, without its tag (a copy).

        For example ``"UID FETCH 1:3 (BODY.PEEK[] FLAGS)"``. Passwords are replaced by
        ``***`` (``"LOGIN someone ***"``), a literal appears as its announcement
        (``'APPEND "INBOX" {310}'``), and the ``DONE`` that ends an IDLE is a command too.
        A connection silenced by :meth:`never_answer` or :meth:`huge_literal` reads no
        further commands.
        """
        with self._lock:
            return list(self._commands)

    def _log(self, text: str) -> None:
        with self._lock:
            self._commands.append(text)

    def _capability_line(self) -> bytes:
        return " ".join(("IMAP4rev1", *self._capabilities)).encode("ascii")

    # -- the folder ------------------------------------------------------------------------------

    def append(self, raw: bytes, flags: Iterable[bytes] = ()) -> int:
        r"""Add a mail to the folder, from any thread, at any time; return its UID.

        Connections in IDLE with the folder selected hear ``* n EXISTS`` at once; others
        hear it with their next answer.

        Args:
            raw: The whole mail, headers and body (lines should end with ``\r\n``).
            flags: Its flags, such as ``[b"\\Seen"]``.

        Raises:
            ValueError: *raw* is not bytes, or a flag is not an IMAP atom (or is ``\Recent``).
        """
        if not isinstance(raw, bytes | bytearray):
            raise ValueError(f"raw must be the mail as bytes, got {type(raw).__name__}")
        try:
            checked = _flag_list([bytes(flag) for flag in flags])
        except (_Bad, TypeError):
            raise ValueError(
                f"flags must be IMAP atoms as bytes, other than \\Recent, got {flags!r}"
            ) from None
        with self._lock:
            uid = self._main.add(bytes(raw), checked, None).uid
        self._notify()
        return uid

    def uids(self) -> list[int]:
        """The UIDs in the folder now, in order."""
        with self._lock:
            return list(self._main.mails)

    def folder_uids(self, name: str) -> list[int]:
        """The UIDs in the folder *name* now (the test's folder, ``INBOX``, or another).

        Raises:
            KeyError: There is no such folder.
        """
        with self._lock:
            folder = self._folders.get("INBOX" if name.upper() == "INBOX" else name)
            if folder is None:
                raise KeyError(
                    f"no folder {name!r}: the folders are {sorted(self._folders)}; "
                    "name more with folders=... or CREATE them"
                )
            return list(folder.mails)

    def flags(self, uid: int) -> frozenset[bytes]:
        r"""The flags of the mail *uid* now (``\Recent`` is never among them).

        Raises:
            KeyError: There is no mail *uid* in the folder.
        """
        with self._lock:
            return frozenset(self._mail(uid).flags)

    def message(self, uid: int) -> bytes:
        """The raw bytes of the mail *uid*.

        Raises:
            KeyError: There is no mail *uid* in the folder.
        """
        with self._lock:
            return self._mail(uid).raw

    def expunge(self, uid: int) -> None:
        """Remove the mail *uid* from the folder, as another client's EXPUNGE would.

        Connections that have the folder selected hear ``* n EXPUNGE`` with their next
        answer that may carry one (at once in IDLE; not in the answer to a FETCH, STORE or
        SEARCH by sequence number, as RFC 3501 requires).

        Raises:
            KeyError: There is no mail *uid* in the folder.
        """
        with self._lock:
            self._mail(uid)
            del self._main.mails[uid]
        self._notify()

    def _mail(self, uid: int) -> _Mail:
        mail = self._main.mails.get(uid)
        if mail is None:
            raise KeyError(
                f"no mail with UID {uid!r} in {self.folder!r}; it holds {list(self._main.mails)}"
            )
        return mail

    def change_uidvalidity(self, new: int) -> None:
        """Give the folder a new UIDVALIDITY and number its mails again from UID 1.

        As when a server's index is rebuilt: the next SELECT reports *new*, the mails (the
        same ones, in the same order, with their flags) have UIDs 1 to n, and UIDNEXT is
        n + 1. A connection that has the folder selected gets ``* BYE`` with its next
        answer (at once in IDLE) and is closed, as Dovecot does. Faults set for a UID stay
        on that number, not on the mail.

        Raises:
            ValueError: *new* is not an int from 1 to 2**32 - 1.
        """
        self._check_uidvalidity(new)
        with self._lock:
            folder = self._main
            folder.uidvalidity = new
            mails = list(folder.mails.values())
            for number, mail in enumerate(mails, start=1):
                mail.uid = number
            folder.mails = {mail.uid: mail for mail in mails}
            folder.uidnext = len(mails) + 1
            folder.recent_from = 1
        self._notify()

    def _notify(self) -> None:
        """Wake every connection in IDLE, to tell its client what changed."""
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.wake()

    # -- faults ----------------------------------------------------------------------------------

    def clear_faults(self) -> None:
        """End every fault: those not yet used up, :meth:`split_writes` and a pending flood.

        A connection already silent (after :meth:`never_answer` or :meth:`huge_literal`)
        stays silent; new ones are served normally. :meth:`change_uidvalidity` is a change of
        the folder, not a fault, and stays.
        """
        with self._lock:
            self._faults.clear()
            self._split = None
            self._out_of_order = None
            self._flood = 0

    def omit_from_fetch(self, uid: int, times: int | None = None) -> None:
        """Leave the mail *uid* out of FETCH answers that ask for it; they still answer OK.

        What a server does when a mail is expunged by another client between the SEARCH
        and the FETCH, or when its index is damaged: the client asked for the mail and
        silently does not get it. Each FETCH (by UID or sequence number) whose set includes
        *uid* counts as one of *times*.

        Raises:
            ValueError: *uid* or *times* is out of range.
        """
        self._arm(_Omit(_check_uid(uid)), times)

    def fetch_no(
        self,
        uid: int,
        text: str = "[SERVERBUG] Some messages could not be FETCHed",
        times: int | None = None,
    ) -> None:
        """Answer ``NO text`` to FETCHes that ask for the mail *uid*.

        As Dovecot does when it cannot read one mail: the other mails' items are sent
        first, as usual, then the tagged answer is ``NO`` with *text* instead of ``OK``.
        Each FETCH whose set includes *uid* counts as one of *times*.

        Raises:
            ValueError: *uid* or *times* is out of range, or *text* is empty or spans lines.
        """
        self._arm(_FetchNo(_check_uid(uid), _check_text("text", text)), times)

    def malformed_item(
        self, uid: int, times: int | None = None, *, how: Garble = "parenthesis"
    ) -> None:
        """Garble the FETCH item of the mail *uid*; the rest of the answer is sound.

        With ``how="parenthesis"`` (the default) the item's closing parenthesis is left
        out: ``* 3 FETCH (UID 3 FLAGS () BODY[] {n}`` + the mail + a bare line end. With
        ``how="literal"`` its body literal announces half the mail's size, so the second
        half arrives where the client expects the next response line; a FETCH that asks
        for no body is then not garbled (nor counted). Each garbled FETCH counts as one of
        *times*.

        Raises:
            ValueError: *uid*, *times* or *how* is out of range.
        """
        if how not in ("parenthesis", "literal"):
            raise ValueError(f"how must be 'parenthesis' or 'literal', got {how!r}")
        self._arm(_Malformed(_check_uid(uid), how), times)

    def huge_literal(
        self,
        uid: int,
        announced: int = 2_000_000_000,
        times: int | None = None,
        *,
        then: Then = "stall",
    ) -> None:
        """Announce a literal of *announced* bytes for the mail *uid*, send 1 KiB, and stop.

        The first body item of the mail's FETCH answer is sent as ``{announced}`` followed
        by at most the first 1024 bytes of the data; then, with ``then="stall"`` (the
        default), the connection never writes again (it reads and drops what the client
        sends until it closes), or with ``then="close"`` it is closed. A client that
        trusts the announcement waits, or allocates, forever. Only a FETCH that asks for a
        body item (``BODY[...]``, ``RFC822...``) is affected and counted in *times*.

        Raises:
            ValueError: *uid*, *announced*, *times* or *then* is out of range.
        """
        if isinstance(announced, bool) or not isinstance(announced, int) or announced < 0:
            raise ValueError(f"announced must be an int >= 0, got {announced!r}")
        if then not in ("stall", "close"):
            raise ValueError(f"then must be 'stall' or 'close', got {then!r}")
        self._arm(_HugeLiteral(_check_uid(uid), announced, then), times)

    def bye_during_fetch(self, after_items: int = 1, times: int | None = 1) -> None:
        """In the next FETCH answer, send ``* BYE`` after *after_items* items and close.

        The connection is closed without a tagged answer, as when a server shuts down in
        the middle of a download. A FETCH with fewer items gets them all, then the BYE.
        Each FETCH (on any connection) counts as one of *times* (one, by default).

        Raises:
            ValueError: *after_items* is not an int >= 0, or *times* is out of range.
        """
        if isinstance(after_items, bool) or not isinstance(after_items, int) or after_items < 0:
            raise ValueError(f"after_items must be an int >= 0, got {after_items!r}")
        self._arm(_ByeDuringFetch(after_items), times)

    def flood_expunge(self, count: int) -> None:
        """Put *count* pairs of ``* n EXISTS`` / ``* n EXPUNGE`` in the next response.

        The noise of a mailbox where another client appends and expunges fast: a mail
        appears (``n`` is one past the folder's size) and is expunged, *count* times over,
        so the client's view stays consistent and the folder does not change. It goes to
        the next response, on one connection that has the folder selected, that may carry
        an EXPUNGE (a connection in IDLE gets it at once). Once only.

        Raises:
            ValueError: *count* is not an int >= 1.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be an int >= 1, got {count!r}")
        with self._lock:
            self._flood += count
        self._notify()

    def never_answer(self, command: str = "FETCH", times: int | None = None) -> None:
        """Read *command* and never answer it: a black hole for one command.

        The connection that receives it never writes again: it reads and drops whatever
        the client sends until the client closes, so only a deadline of the client's finds
        out. ``"FETCH"`` matches ``FETCH`` and ``UID FETCH``; ``"UID FETCH"`` only the
        latter; ``"DONE"`` the end of an IDLE; ``"IDLE"`` leaves out even the ``+ idling``.
        Each command it swallows counts as one of *times*.

        Raises:
            ValueError: *command* is not one or two words, or *times* is out of range.
        """
        if not isinstance(command, str) or not _COMMAND_WORDS.fullmatch(command):
            raise ValueError(f"command must be a command name such as 'FETCH', got {command!r}")
        words = tuple(word.encode("ascii") for word in command.upper().split())
        self._arm(_NeverAnswer(words), times)

    def split_writes(self, size: int = 1, pause: float = 0.0) -> None:
        """Send every answer in pieces of *size* bytes, each written on its own.

        TCP may split any answer anywhere; a client's reader must put the pieces together.
        Each piece is its own ``send`` (with Nagle's algorithm off); with a *pause* (in
        seconds) between pieces, each one also arrives on its own, for sure. It applies to
        every connection until :meth:`clear_faults`.

        Raises:
            ValueError: *size* is not an int >= 1, or *pause* is negative.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        if isinstance(pause, bool) or not isinstance(pause, int | float) or not 0 <= pause < 60:
            raise ValueError(f"pause must be a number of seconds from 0 to 60, got {pause!r}")
        with self._lock:
            self._split = (size, float(pause))

    def answer_out_of_order(self, wait: float = 0.5) -> None:
        """Answer pipelined commands out of order, as a server working on them at once does.

        A client may send a command before the answer to the last one is in (RFC 3501
        section 5.5), and a server may work on both at once and mix their answers: Dovecot
        does, for a FETCH and a STORE of other mails. With this, a FETCH waits up to *wait*
        seconds after its first item for the client's next command, and answers it right
        there, between its own items; a STORE waits likewise and answers the next command
        whole before its own ``OK``. It applies to every connection until
        :meth:`clear_faults`.

        Raises:
            ValueError: *wait* is not a number of seconds from 0 to 60.
        """
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= 60:
            raise ValueError(f"wait must be a number of seconds from 0 to 60, got {wait!r}")
        with self._lock:
            self._out_of_order = float(wait)

    def _arm(self, fault: _Fault, times: int | None) -> None:
        armed = _Armed(fault, _check_times(times))
        with self._lock:
            self._faults.append(armed)

    def _take(self, kind: type[_Fault], uid: int | None = None) -> _Fault | None:
        """Use up once the first armed fault of *kind* (for *uid*), and return it (lock held)."""
        for index, armed in enumerate(self._faults):
            fault = armed.fault
            if type(fault) is kind and getattr(fault, "uid", uid) == uid:
                self._use(index, armed)
                return fault
        return None

    def _pending(self, kind: type[_Fault], uid: int, how: str) -> bool:
        """Whether the next fault of *kind* for *uid* is garbled *how* (lock held)."""
        for armed in self._faults:
            fault = armed.fault
            if type(fault) is kind and getattr(fault, "uid", None) == uid:
                return getattr(fault, "how", None) == how
        return False

    def _use(self, index: int, armed: _Armed) -> None:
        if armed.times is None:
            return
        if armed.times == 1:
            del self._faults[index]
        else:
            self._faults[index] = attrs.evolve(armed, times=armed.times - 1)

    def _take_never_answer(self, words: tuple[bytes, ...]) -> bool:
        with self._lock:
            for index, armed in enumerate(self._faults):
                if isinstance(armed.fault, _NeverAnswer) and armed.fault.matches(words):
                    self._use(index, armed)
                    return True
        return False

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self._address else "not started"
        return f"ScriptedImapServer({where}, folder={self.folder!r})"
