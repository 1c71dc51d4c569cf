from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailtether import DuplicateGuard, MemoryStore, MessageKey, content_digest, message_id_of

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
def test_message_id_of_never_raises(raw):
    value = message_id_of(raw)
    assert value is None or (value and len(value) <= 512 and " " not in value)


@settings(max_examples=300, deadline=None)
@given(raw_mail(), raw_mail())
def test_different_mails_are_never_merged(first, second):
    a = MessageKey.imap("acct", "INBOX", 1, 1, raw=first)
    b = MessageKey.imap("acct", "INBOX", 1, 2, raw=second)
    same_content = first.replace(b"\r\n", b"\n") == second.replace(b"\r\n", b"\n")
    assert (a.content_id == b.content_id) == same_content


@settings(max_examples=100, deadline=None)
@given(st.lists(raw_mail(), min_size=1, max_size=8, unique_by=lambda r: r.replace(b"\r\n", b"\n")))
def test_guard_hands_out_every_distinct_mail_once(raws):
    guard = DuplicateGuard(MemoryStore(), repeat="skip")
    keys = [MessageKey.imap("acct", "INBOX", 1, uid, raw=raw) for uid, raw in enumerate(raws, 1)]
    assert guard.filter_new(keys) == keys
    for k in keys:
        with guard.claim(k) as claim:
            assert claim.acquired
    assert guard.filter_new(keys) == []


def test_duplicate_message_ids_in_real_mail():
    one = b"Message-ID: <dup@x>\r\nSubject: one\r\n\r\nA"
    two = b"Message-ID: <dup@x>\r\nSubject: two\r\n\r\nB"
    assert message_id_of(one) == message_id_of(two) == "<dup@x>"
    assert (
        MessageKey.imap("a", "I", 1, 1, raw=one).content_id
        != MessageKey.imap("a", "I", 1, 2, raw=two).content_id
    )


def test_keys_are_unambiguous_whatever_the_names():
    a = MessageKey.imap('a"|b', "c", 1, 2)
    b = MessageKey.imap("a", '"|bc', 1, 2)
    assert a.id != b.id
    assert MessageKey.from_dict(a.to_dict()) == a


def test_pop3_key():
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
        (lambda: MessageKey("smtp", "a"), ValueError, "protocol"),
    ],
)
def test_bad_keys(build, error, words):
    with pytest.raises(error, match=words):
        build()


def test_raw_must_be_bytes():
    with pytest.raises(TypeError):
        content_digest("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        message_id_of("text")  # type: ignore[arg-type]
