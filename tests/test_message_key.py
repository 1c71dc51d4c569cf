from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mailtether import (
    DuplicateGuard,
    MemoryStore,
    MessageKey,
    _message_key,
    content_digest,
    message_id_of,
)
from mailtether._message_key import _message_id_by_parser

header_names = st.sampled_from(["Message-ID", "Subject", "From", "message-id", "X-Junk", "To"])
header_values = st.binary(max_size=80) | st.text(max_size=80).map(lambda t: t.encode("utf-8"))
headers = st.lists(st.tuples(header_names, header_values), max_size=6)
bodies = st.binary(max_size=200)


@st.composite
def raw_mail(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))  # pure garbage
    lines = [name.encode() + b": " + value for name, value in draw(headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + draw(bodies)


@settings(max_examples=300, deadline=None)
@given(raw_mail())
def test_message_id_of_never_raises(raw: bytes) -> None:
    value = message_id_of(raw)
    assert value is None or (value and len(value) <= 512 and " " not in value)


@settings(max_examples=300, deadline=None)
@given(raw_mail(), raw_mail())
def test_different_mails_are_never_merged(first: bytes, second: bytes) -> None:
    a = MessageKey.imap("acct", "INBOX", 1, 1, raw=first)
    b = MessageKey.imap("acct", "INBOX", 1, 2, raw=second)
    same_content = first.replace(b"\r\n", b"\n") == second.replace(b"\r\n", b"\n")
    assert (a.content_id == b.content_id) == same_content


@settings(max_examples=100, deadline=None)
@given(st.lists(raw_mail(), min_size=1, max_size=8, unique_by=lambda r: r.replace(b"\r\n", b"\n")))
def test_guard_hands_out_every_distinct_mail_once(raws: list[bytes]) -> None:
    guard = DuplicateGuard(MemoryStore(), repeat="skip")
    keys = [MessageKey.imap("acct", "INBOX", 1, uid, raw=raw) for uid, raw in enumerate(raws, 1)]
    assert guard.filter_new(keys) == keys
    for k in keys:
        with guard.claim(k) as claim:
            assert claim.acquired
    assert guard.filter_new(keys) == []


def test_duplicate_message_ids_in_real_mail() -> None:
    one = b"Message-ID: <dup@x>\r\nSubject: one\r\n\r\nA"
    two = b"Message-ID: <dup@x>\r\nSubject: two\r\n\r\nB"
    assert message_id_of(one) == message_id_of(two) == "<dup@x>"
    assert (
        MessageKey.imap("a", "I", 1, 1, raw=one).content_id
        != MessageKey.imap("a", "I", 1, 2, raw=two).content_id
    )


def test_keys_are_unambiguous_whatever_the_names() -> None:
    a = MessageKey.imap('a"|b', "c", 1, 2)
    b = MessageKey.imap("a", '"|bc', 1, 2)
    assert a.id != b.id
    assert MessageKey.from_dict(a.to_dict()) == a


def test_pop3_key() -> None:
    key = MessageKey.pop3("help@example.com", "UID123-abc", raw=b"Subject: x\r\n\r\ny")
    assert key.id == '["pop3","help@example.com","UID123-abc"]'
    assert key.digest == content_digest(b"Subject: x\r\n\r\ny")
    assert str(key) == "help@example.com UIDL UID123-abc"


@pytest.mark.parametrize(
    ("build", "error", "words"),
    [
        (lambda: MessageKey.imap("", "INBOX", 1, 1), ValueError, "account"),
        (lambda: MessageKey.imap("a", "INBOX", 0, 1), ValueError, "uidvalidity"),
        (lambda: MessageKey.imap("a", "INBOX", 1, 2**32), ValueError, "uid"),
        (lambda: MessageKey.imap("a", "INBOX", 1, True), TypeError, "uid"),
        (lambda: MessageKey.pop3("a", "has space"), ValueError, "uidl"),
        (lambda: MessageKey.pop3("a", "x" * 71), ValueError, "uidl"),
        (lambda: MessageKey.imap("a", "INBOX", 1, 1, digest="abc"), ValueError, "digest"),
        (lambda: MessageKey("imap", "a"), ValueError, "needs folder"),
        (lambda: MessageKey("pop3", "a", uid=3, uidl="x"), ValueError, "no uid"),
        (lambda: MessageKey("smtp", "a"), ValueError, "protocol"),  # type: ignore[arg-type]
    ],
)
def test_bad_keys(build: Callable[[], object], error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        build()


def test_raw_must_be_bytes() -> None:
    with pytest.raises(TypeError):
        content_digest("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        message_id_of("text")  # type: ignore[arg-type]


# --- message_id_of: the fast path against the parser it replaces -------------------------
#
# _message_id_by_parser is the reference (the stdlib header parser, as message_id_of was
# before its fast path); message_id_of must give exactly its answer for any input.

_LIMIT = 65536

# Names the parser and the fast path must agree on: the Message-ID in any case, names that
# only contain it, ordinary names; then names the parser does not accept as header names.
_NAMES = [
    b"Message-ID",
    b"message-id",
    b"MESSAGE-ID",
    b"Message-Id",
    b"message-ID",
    b"X-Message-ID",
    b"Message-ID-Alt",
    b"Message-IDs",
    b"Message-I",
    b"Subject",
    b"From",
    b"Content-Type",
    b"Received",
]
_BAD_NAMES = [
    b"",
    b"Message ID",
    b"Message-ID ",
    b"N\xe4me",
    b"Na\x00me",
]
_SEPARATORS = [b": ", b":", b":\t", b":   ", b": \t "]
# Pieces of header values: mostly those of an ordinary Message-ID, then the bytes that
# matter to the parser (line ends, 8-bit, control characters, its own "From " and ":").
_PIECES = [b"<", b">", b"@", b"a1.b2", b"example.com", b" ", b"\t", b"  "] * 8
_PIECES += [b":", b"From ", b"\xe9", b"\xff", b"\x00", b"\x0b", b"\x0c", b"\x1c", b"\x7f"] * 2
_PIECES += [b"\r", b"\n", b"\r\n"]
_LINE_ENDS = [b"\r\n", b"\n", b"\r", b""]

values = st.lists(st.sampled_from(_PIECES), max_size=10).map(b"".join)


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    """A header block of ordinary and broken lines, then maybe a blank line and a body.

    About a third of the blocks are ordinary enough for the fast path; the rest have
    something the parser reads in its own way, and each one is rare enough that a block
    often has only that one.
    """
    style = draw(st.sampled_from([b"\r\n", b"\n"]))
    line_end = st.sampled_from([style] * 40 + _LINE_ENDS)  # mostly the message's own

    def header() -> bytes:
        odds = draw(st.integers(0, 19))
        if odds > 2:
            name = draw(st.sampled_from(_NAMES))
        elif odds:
            name = draw(st.sampled_from(_BAD_NAMES))
        else:
            name = draw(st.binary(min_size=1, max_size=4))
        return name + draw(st.sampled_from(_SEPARATORS)) + draw(values) + draw(line_end)

    def continuation() -> bytes:
        return draw(st.sampled_from([b" ", b"\t", b"    "])) + draw(values) + draw(line_end)

    def odd_line() -> bytes:
        line = draw(st.sampled_from([b"no colon here", b"From x", b":orphan", b"", b"\r"]))
        return line + draw(line_end)

    lines = []
    if draw(st.integers(0, 9)) == 0:
        lines.append(b"From sender@example.com Tue Mar 12 10:15:02 2024" + style)
    for kind in draw(st.lists(st.integers(0, 19), max_size=10)):
        lines.append(header() if kind < 13 else continuation() if kind < 19 else odd_line())
    raw = b"".join(lines)
    if draw(st.integers(0, 4)):
        raw += draw(st.sampled_from([style] * 6 + [b"\r\n", b"\n", b"\r"])) + draw(values)
    if draw(st.integers(0, 7)) == 0:  # put the end (or any part) of the block on the limit
        pad = draw(st.integers(-48, 48))
        if draw(st.booleans()):
            filler = _LIMIT - len(raw) + pad - len(b"X-Pad: " + style)
            raw = b"X-Pad: " + b"p" * max(filler, 0) + style + raw
        else:
            raw = raw[: max(len(raw) + pad, 0)] + b"p" * _LIMIT
    return raw


def _parser_must_not_run(raw: bytes) -> str | None:
    raise AssertionError(f"the parser was asked: {raw[:200]!r}")


@pytest.fixture
def parser_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_message_key, "_message_id_by_parser", _parser_must_not_run)


def _counting_parser(calls: list[bytes]) -> Callable[[bytes], str | None]:
    def counting(raw: bytes) -> str | None:
        calls.append(raw)
        return _message_id_by_parser(raw)

    return counting


@pytest.fixture
def parser_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    calls: list[bytes] = []
    monkeypatch.setattr(_message_key, "_message_id_by_parser", _counting_parser(calls))
    return calls


@settings(max_examples=1000, deadline=None)
@given(header_blocks())
def test_message_id_of_is_the_parsers_answer(raw: bytes) -> None:
    expected = _message_id_by_parser(raw)
    calls: list[bytes] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_message_key, "_message_id_by_parser", _counting_parser(calls))
        assert message_id_of(raw) == expected
    event("parser" if calls else "fast path")
    assert message_id_of(bytearray(raw)) == expected  # type: ignore[arg-type]
    assert message_id_of(memoryview(raw)) == expected  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(raw_mail())
def test_message_id_of_is_the_parsers_answer_on_garbage(raw: bytes) -> None:
    assert message_id_of(raw) == _message_id_by_parser(raw)


# Ordinary mail must never reach the parser: printable ASCII Message-IDs, other headers in
# ASCII or UTF-8 (8-bit is common in the wild), folded or not, LF or CRLF throughout.

ordinary_names = st.sampled_from(
    [b"From", b"To", b"Subject", b"Date", b"Received", b"X-Message-ID", b"DKIM-Signature"]
)
message_id_names = st.sampled_from([b"Message-ID", b"Message-Id", b"message-id", b"MESSAGE-ID"])
ascii_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
utf8_values = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=40
)


@st.composite
def ordinary_mail(draw: st.DrawFn) -> bytes:
    """Well-formed headers, each maybe folded, with any number of Message-IDs."""
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    raw = b""
    for name in draw(st.lists(ordinary_names | message_id_names, max_size=12)):
        values = ascii_values if name.lower() == b"message-id" else utf8_values
        raw += name + draw(st.sampled_from([b":", b": "])) + draw(values).encode() + eol
        for folded in draw(st.lists(values, max_size=2)):
            raw += draw(st.sampled_from([b" ", b"\t"])) + folded.encode() + eol
    return raw + eol + draw(utf8_values).encode() + eol


@settings(max_examples=300, deadline=None)
@given(ordinary_mail())
def test_ordinary_mail_never_reaches_the_parser(raw: bytes) -> None:
    expected = _message_id_by_parser(raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_message_key, "_message_id_by_parser", _parser_must_not_run)
        assert message_id_of(raw) == expected


TYPICAL = (
    b"Return-Path: <alice@example.org>\r\n"
    b"Received: from mx.example.org (mx.example.org [192.0.2.7])\r\n"
    b"\tby mail.example.com (Postfix) with ESMTPS id 4ABCD12345\r\n"
    b"\tfor <support@example.com>; Tue, 12 Mar 2024 10:15:02 +0000 (UTC)\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=mail;\r\n"
    b"\th=From:To:Subject:Date:Message-ID; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\r\n"
    b"From: Alice =?utf-8?q?Exempl=C3=A6?= <alice@example.org>\r\n"
    b"To: Support <support@example.com>\r\n"
    b"Subject: Re: order 1234 \xc3\xa6 has not arrived\r\n"
    b"Date: Tue, 12 Mar 2024 10:15:01 +0000\r\n"
    b"Message-ID: <20240312101501.12345@mail.example.org>\r\n"
    b"References: <abc123@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello,\r\nmy order has not arrived.\r\n"
)


@pytest.mark.usefixtures("parser_forbidden")
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (TYPICAL, "<20240312101501.12345@mail.example.org>"),
        (TYPICAL.replace(b"\r\n", b"\n"), "<20240312101501.12345@mail.example.org>"),
        (TYPICAL + b"x" * 200_000, "<20240312101501.12345@mail.example.org>"),
        (TYPICAL.replace(b"Message-ID:", b"X-Message-ID:"), None),
        (b"message-ID:\r\n  <a@b>\r\n\t<c@d>\r\nMessage-ID: <e@f>\r\n\r\n", "<a@b><c@d>"),
        (b"Message-Id:<x@y>\n\nbody", "<x@y>"),
        (b"Subject: s\r\nMessage-ID:   \r\n\r\n", None),
        (b"Message-ID: <" + b"x" * 600 + b">\r\n\r\n", None),
        (b"Message-ID: <a\x00b>\r\n\r\n", None),
        (b"Message-ID: <a@b>\r\nSubject: \xff\xfe 8-bit\r\n\r\n", "<a@b>"),
        (b"\r\nMessage-ID: <in@body>\r\n", None),
        (b"Subject: x\r\n\r\nMessage-ID: <in@body>\r\n", None),
        (b"Message-ID: <a@b>\r\n", "<a@b>"),  # no blank line, but the header is complete
    ],
)
def test_fast_path(raw: bytes, expected: str | None) -> None:
    assert message_id_of(raw) == expected
    assert _message_id_by_parser(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"From sender Tue Mar 12 10:15:02 2024\r\nMessage-ID: <a@b>\r\n\r\n", "<a@b>"),
        (b"Subject: a\rb\r\nMessage-ID: <a@b>\r\n\r\n", None),  # "b" starts the body
        (b"Message-ID: <a@b>\r \r\n\r\n", "<a@b>"),  # a lone CR, then a continuation line
        (b"Subject: x\r\r\nMessage-ID: <a@b>\r\n\r\n", None),  # "\r" ends the block
        (b" folded first\r\nMessage-ID: <a@b>\r\n\r\n", "<a@b>"),
        (b"Bad line\r\nMessage-ID: <a@b>\r\n\r\n", None),
        (b"Message ID: <a@b>\r\nMessage-ID: <c@d>\r\n\r\n", None),
        (b"N\xe4me: x\r\nMessage-ID: <a@b>\r\n\r\n", None),
        (b":\r\nMessage-ID: <a@b>\r\n\r\n", "<a@b>"),
        (b"Message-ID: <a\xe9@b>\r\n\r\n", "<a\ufffd@b>"),  # what the parser makes of it
        (b"Message-ID: <a@b>", "<a@b>"),
        (b"Subject: no blank line", None),
        (b"", None),
        (b"X-Pad: " + b"p" * _LIMIT + b"\r\nMessage-ID: <a@b>\r\n\r\n", None),
    ],
)
def test_unusual_mail_goes_to_the_parser(
    raw: bytes, expected: str | None, parser_calls: list[bytes]
) -> None:
    assert message_id_of(raw) == expected
    assert parser_calls == [raw]


@pytest.mark.parametrize("offset", range(-12, 13))
@pytest.mark.parametrize(
    "tail",
    [
        b"Message-ID: <a@b>\r\n\r\n",
        b"Message-ID: <a@b>\r\n <c@d>\r\n\r\n",
        b"Message-ID: <a@b>\n\tc\n\n",
        b"Subject: x\r\n\r\nMessage-ID: <in@body>\r\n",
    ],
)
def test_the_64_kib_limit_cuts_where_the_parser_cuts(offset: int, tail: bytes) -> None:
    raw = b"X-Pad: " + b"p" * (_LIMIT - 9 - len(tail) + offset) + b"\r\n" + tail + b"body"
    assert message_id_of(raw) == _message_id_by_parser(raw)
    assert message_id_of(bytearray(raw)) == _message_id_by_parser(raw)  # type: ignore[arg-type]


_texts = st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t)


@given(
    account=_texts,
    folder=_texts,
    uidvalidity=st.integers(1, 2**32 - 1),
    uid=st.integers(1, 2**32 - 1),
    message_id=st.none() | _texts,
    digest=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
)
def test_ids_are_the_json_of_their_parts(
    account: str,
    folder: str,
    uidvalidity: int,
    uid: int,
    message_id: str | None,
    digest: str | None,
) -> None:
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    key = MessageKey.imap(account, folder, uidvalidity, uid, message_id=message_id, digest=digest)
    assert key.id == encode(["imap", account, folder, uidvalidity, uid])
    assert MessageKey.from_id(key.id) == MessageKey.imap(account, folder, uidvalidity, uid)
    expected = None if digest is None else encode([account, folder, message_id or "", digest])
    assert key.content_id == expected


def test_with_uid_and_with_content_are_the_keys_imap_would_make() -> None:
    raw = b"Message-ID: <d@x>\r\nSubject: s\r\n\r\nbody\r\n"
    base = MessageKey.imap("support@example.com", "INBOX", 7, 1)
    derived = base.with_uid(42).with_content(raw)
    made = MessageKey.imap("support@example.com", "INBOX", 7, 42, raw=raw)
    assert derived == made
    assert hash(derived) == hash(made)
    assert (derived.id, derived.content_id) == (made.id, made.content_id)
    listed = base.with_uid(42)
    assert listed.id == made.id  # known before the content, as a listing knows it
    assert listed.with_content(raw).id == made.id
    assert base.with_uid(5) == MessageKey.imap("support@example.com", "INBOX", 7, 5)
    for bad in (0, 2**32, -1):
        with pytest.raises(ValueError, match="between 1 and"):
            base.with_uid(bad)
    with pytest.raises(TypeError):
        base.with_uid(True)
    with pytest.raises(TypeError):
        MessageKey.pop3("a", "uidl-1").with_uid(3)


def test_with_content_on_pop3_keys() -> None:
    raw = b"Message-ID: <p@x>\r\n\r\nbody\r\n"
    key = MessageKey.pop3("a", "uidl-1")
    assert key.with_content(raw) == MessageKey.pop3("a", "uidl-1", raw=raw)


def test_scope_is_the_id_prefix_of_one_mailbox_generation() -> None:
    key = MessageKey.imap("a", "INBOX", 7, 3)
    assert key.id.startswith(key.scope)
    assert MessageKey.imap("a", "INBOX", 7, 99).scope == key.scope
    # another UIDVALIDITY (even one that starts with the same digits) is another scope
    for other in (MessageKey.imap("a", "INBOX", 71, 3), MessageKey.imap("a", "INBOX2", 7, 3)):
        assert not other.id.startswith(key.scope)
    pop = MessageKey.pop3("a", "u1")
    assert pop.id.startswith(pop.scope)
    assert not MessageKey.pop3("ab", "u1").id.startswith(pop.scope)
    assert not key.id.startswith(pop.scope)
