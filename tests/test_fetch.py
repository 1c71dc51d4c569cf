"""fetch_mail: the listener's bulk FETCH gives exactly what imapclient's fetch gives."""

from __future__ import annotations

import functools
import imaplib
import io
import re
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mailtether.imap._fetch as fetch_module
from mailtether import CommandFailed, ConnectionLost
from mailtether.imap._connection import _bound_literals
from mailtether.imap._fetch import fetch_mail
from strategies import fetch_answers

MAILS = [
    b"Subject: plain\r\n\r\nbody\r\n",
    b"Subject: parens\r\n\r\n)\r\n(\r\n) BODY[] {12}\r\n* 3 FETCH (FLAGS ())\r\n",
    b"Subject: empty body\r\n\r\n",
    b"Subject: lf only\n\nbody\n",
    "Subject: 8-bit\r\n\r\nGr\u00fc\u00dfe \u2709\r\n".encode(),
    b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" * 20000,
    b"Subject: nul-free binary-ish\r\n\r\n" + bytes(range(1, 256)) + b"\r\n",
]
FLAGS = [
    [],
    ["\\Seen"],
    ["\\Flagged", "\\Answered", "$Label1"],
    ["\\Draft", "Junk", "$Forwarded"],
    ["\\Seen", "$MDNSent"],
    [],
    ["custom_kw-1.x"],
]


def imapclient_view(client, uids):
    answer = client.fetch(uids, ["BODY.PEEK[]", "FLAGS"])
    return {
        uid: (bytes(items[b"BODY[]"]), tuple(items[b"FLAGS"]))
        for uid, items in answer.items()
        if b"BODY[]" in items
    }


@pytest.fixture
def filled(mailbox):
    client = mailbox.client()
    for raw, flags in zip(MAILS, FLAGS, strict=True):
        client.append("INBOX", raw, flags=flags)
    client.select_folder("INBOX")
    yield client
    client.logout()


def test_the_same_as_imapclient_and_by_the_fast_path(filled, monkeypatch):
    uids = filled.search(["ALL"])
    expected = imapclient_view(filled, uids)
    assert len(expected) == len(MAILS)

    def no_fallback(*args, **kwargs):
        raise AssertionError("the usual answer went to imapclient's parser")

    monkeypatch.setattr(fetch_module, "parse_fetch_response", no_fallback)
    assert fetch_mail(filled, uids) == expected
    assert fetch_mail(filled, uids[2:4]) == {uid: expected[uid] for uid in uids[2:4]}
    assert fetch_mail(filled, []) == {}
    assert not any(b"\\Seen" in flags for flags in (expected[uids[0]][1],)), "PEEK: not seen"
    assert b"\\Seen" not in imapclient_view(filled, [uids[0]])[uids[0]][1]


def test_gone_mail_is_missing_not_an_error(filled):
    uids = filled.search(["ALL"])
    filled.delete_messages([uids[0]])
    filled.expunge()
    fetched = fetch_mail(filled, uids)
    assert sorted(fetched) == uids[1:]
    assert fetch_mail(filled, [uids[0]]) == {}


def test_unsolicited_answers_go_to_imapclients_parser(filled, mailbox, monkeypatch):
    uids = filled.search(["ALL"])
    other = mailbox.client()
    other.select_folder("INBOX")
    other.add_flags([uids[0]], [b"$ChangedElsewhere"])  # announced to the first session
    other.logout()
    calls = []
    real = fetch_module.parse_fetch_response

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fetch_module, "parse_fetch_response", counted)
    fetched = fetch_mail(filled, uids[1:3])
    assert calls, "an unsolicited FETCH is not the usual shape"
    assert sorted(fetched) == uids[1:3], "the mail not asked for is left out"
    assert fetched == imapclient_view(filled, uids[1:3])


def test_a_strange_answer_falls_back(monkeypatch):
    """Shapes the fast path must refuse (checked on recorded imaplib data)."""
    raw = b"Subject: x\r\n\r\n"
    usual = [(b"1 (UID 7 FLAGS (\\Seen) BODY[] {14}", raw), b")"]
    assert fetch_module._usual(usual) == {7: (raw, (b"\\Seen",))}
    assert fetch_module._usual([None]) == {}
    strange = [
        [(b"1 (FLAGS (\\Seen) UID 7 BODY[] {14}", raw), b")"],  # another order
        [(b"1 (UID 7 FLAGS (\\Seen) BODY[] {15}", raw), b")"],  # length disagrees
        [(b"1 (UID 7 FLAGS (\\Seen) BODY[] {14}", raw), b" MODSEQ (4))"],  # more items
        [(b'1 (UID 7 FLAGS ("odd") BODY[] {14}', raw), b")"],  # not an atom
        [(b"1 (UID 7 FLAGS (\\Seen) BODY[] {14}", raw)],  # no closing
        [b"2 (UID 8 FLAGS (\\Seen))", (b"1 (UID 7 FLAGS () BODY[] {14}", raw), b")"],
        [(b"1 (UID 7 FLAGS () BODY[] {14}", raw), b")"] * 2,  # the same UID twice
    ]
    for data in strange:
        assert fetch_module._usual(data) is None, data


def test_a_mail_not_asked_for_is_left_out(filled, monkeypatch):
    """A server that answers with more than was asked for: only the asked-for mails come back."""
    uids = filled.search(["ALL"])
    imap = filled._imap
    real = imap._untagged_response
    extra = [(b"9 (UID 999 FLAGS () BODY[] {14}", b"Subject: x\r\n\r\n"), b")"]

    def with_extra(typ, data, name):  # type: ignore[no-untyped-def]
        typ, answer = real(typ, data, name)
        return typ, [*answer, *extra]

    monkeypatch.setattr(imap, "_untagged_response", with_extra)
    assert sorted(fetch_mail(filled, uids[:2])) == uids[:2]
    monkeypatch.setattr(fetch_module, "_usual", lambda data: None)  # imapclient's parser too
    assert sorted(fetch_mail(filled, uids[:2])) == uids[:2]


def test_an_answer_that_does_not_parse_is_a_refusal_that_shows_no_mail_text():
    secret_text = b"Subject: payroll of everyone"
    garbled = [(b"1 (UID 5 BODY[] {28}", secret_text), b" FLAGS ((("]
    with pytest.raises(CommandFailed) as caught:
        fetch_module._parsed(garbled, False)
    assert (
        str(caught.value.message) == "the server's FETCH answer could not be read (ProtocolError)"
    )
    assert "payroll" not in str(caught.value)
    assert not isinstance(caught.value, ConnectionLost), "the connection goes on"


@pytest.mark.parametrize(
    ("uids", "expected"),
    [([5], "5"), ([1, 2, 3], "1:3"), ([3, 1, 2, 8, 10, 11], "1:3,8,10:11"), ([7, 7, 9], "7,9")],
)
def test_a_message_set_writes_runs_as_ranges(uids, expected):
    assert fetch_module.message_set(uids) == expected


def test_search_uids_is_imapclients_search_as_a_compact_array(filled):
    uids = sorted(filled.search(["ALL"]))
    assert list(fetch_module.search_uids(filled, 0)) == uids
    assert list(fetch_module.search_uids(filled, uids[2])) == uids[3:]
    assert list(fetch_module.search_uids(filled, uids[-1])) == [], "n:* past the end: nothing"
    assert list(fetch_module.search_uids(filled, uids[-1] + 100)) == []
    assert fetch_module.search_uids(filled, 0).itemsize <= 8


def test_fetch_sizes_is_imapclients_rfc822_size(filled):
    uids = sorted(filled.search(["ALL"]))
    expected = {
        uid: items[b"RFC822.SIZE"] for uid, items in filled.fetch(uids, ["RFC822.SIZE"]).items()
    }
    assert fetch_module.fetch_sizes(filled, uids) == expected
    assert fetch_module.fetch_sizes(filled, [uids[0], uids[3], uids[4]]) == {
        uid: expected[uid] for uid in (uids[0], uids[3], uids[4])
    }


def test_fetch_sizes_through_split_packets_is_imapclients_rfc822_size(mailbox):
    """Runs of lines taken from the buffer whole, a line cut at the buffer's end read on."""
    from imapclient import IMAPClient

    from mailtether.testing import FaultProxy

    client = mailbox.client()
    for n in range(600):  # ~20 KB of answer: several buffers' worth
        client.append("INBOX", b"Subject: %d\r\n\r\n%s\r\n" % (n, b"x" * n))
    client.logout()
    with FaultProxy(("127.0.0.1", mailbox.server.imap_port)) as proxy:
        proxy.fragment(1, 700, gap=0.0005, direction="down", seed=7)
        split = IMAPClient("127.0.0.1", port=proxy.port, ssl=False, timeout=10)
        split.login(mailbox.user, mailbox.password)
        split.select_folder("INBOX")
        uids = sorted(split.search(["ALL"]))
        expected = {
            uid: items[b"RFC822.SIZE"] for uid, items in split.fetch(uids, ["RFC822.SIZE"]).items()
        }
        assert len(expected) == 600
        assert fetch_module.fetch_sizes(split, uids) == expected
        assert fetch_module.fetch_sizes(split, uids[::7]) == {u: expected[u] for u in uids[::7]}
        assert split.noop()[0], "the connection reads on where it was"
        split.logout()


def test_fetch_sizes_reads_other_shapes_and_keeps_news_of_new_mail():
    from imapclient import IMAPClient

    from scripted import Scripted

    answer = (
        b"* 1 FETCH (RFC822.SIZE 10 UID 5)\r\n"  # the items the other way round
        b"* 2 FETCH (UID 6 FLAGS (\\Seen) RFC822.SIZE 20)\r\n"  # with flags the server adds
        b"* 9 EXISTS\r\n"  # new mail, told in passing
        b"* 3 FETCH (UID 7 BODY[HEADER] {5}\r\nabcde RFC822.SIZE 30)\r\n"  # a literal: skipped
        b"* 4 FETCH (UID 99 RFC822.SIZE 40)\r\n"  # not asked for
        b"TAG OK done\r\n"
    )
    with Scripted.imap({b"UID": answer}) as server:
        client = IMAPClient("127.0.0.1", port=server.port, ssl=False, timeout=5)
        client.login("someone", "a-long-secret")
        client.select_folder("INBOX")
        assert fetch_module.fetch_sizes(client, [5, 6, 7]) == {5: 10, 6: 20}
        assert client._imap.untagged_responses.get("EXISTS") == [b"9"]
        assert client.noop()[0].startswith(b"done"), "the connection reads on where it was"
        client.shutdown()


def test_fetch_sizes_reads_the_usual_lines_without_the_slow_road(monkeypatch):
    from imapclient import IMAPClient

    from scripted import Scripted

    answer = (
        b"* 1 FETCH (UID 5 RFC822.SIZE 10)\r\n* 2 FETCH (RFC822.SIZE 20 UID 6)\r\nTAG OK done\r\n"
    )

    def slow(imap, line):  # type: ignore[no-untyped-def]
        raise AssertionError(f"the usual line {line!r} took the slow road")

    monkeypatch.setattr(fetch_module, "_other_line", slow)
    with Scripted.imap({b"UID": answer}) as server:
        client = IMAPClient("127.0.0.1", port=server.port, ssl=False, timeout=5)
        client.login("someone", "a-long-secret")
        client.select_folder("INBOX")
        assert fetch_module.fetch_sizes(client, [5, 6]) == {5: 10, 6: 20}
        client.shutdown()


def test_fetch_sizes_raises_the_servers_no():
    from imapclient import IMAPClient
    from imapclient.exceptions import IMAPClientError

    from scripted import Scripted

    with Scripted.imap({b"UID": b"TAG NO [SERVERBUG] cannot\r\n"}) as server:
        client = IMAPClient("127.0.0.1", port=server.port, ssl=False, timeout=5)
        client.login("someone", "a-long-secret")
        client.select_folder("INBOX")
        with pytest.raises(IMAPClientError, match=r"fetch failed: \[SERVERBUG\] cannot"):
            fetch_module.fetch_sizes(client, [5])
        client.shutdown()


def test_search_uids_reads_a_listing_longer_than_imaplibs_line_bound():
    """200,000 UIDs are 1.3 MB on one line; imaplib refuses lines over 1,000,000 bytes."""
    from imapclient import IMAPClient

    from scripted import Scripted

    numbers = b" ".join(b"%d" % uid for uid in range(1, 200_001))
    answer = b"* SEARCH " + numbers + b"\r\n* 200001 EXISTS\r\nTAG OK done\r\n"
    with Scripted.imap({b"UID": answer}) as server:
        client = IMAPClient("127.0.0.1", port=server.port, ssl=False, timeout=5)
        client.login("someone", "a-long-secret")
        client.select_folder("INBOX")
        uids = fetch_module.search_uids(client, 0)
        assert len(uids) == 200_000
        assert list(uids[:3]) == [1, 2, 3]
        assert uids[-1] == 200_000
        assert list(fetch_module.search_uids(client, 199_998)) == [199_999, 200_000]
        assert client._imap.untagged_responses.get("EXISTS") == [b"200001", b"200001"]
        client.shutdown()


class _Trickle(io.RawIOBase):
    """The reading end of a socket that gives at most *most* bytes a read."""

    def __init__(self, data: bytes, most: int) -> None:
        self._data, self._at, self._most = data, 0, most

    def readable(self) -> bool:
        return True

    def readinto(self, buffer):  # type: ignore[no-untyped-def]
        piece = self._data[self._at : self._at + min(len(buffer), self._most)]
        buffer[: len(piece)] = piece
        self._at += len(piece)
        return len(piece)


def _over(
    answer: bytes, most: int, buffer: int, *, in_place: bool, earlier: list[Any] | None = None
) -> tuple[Any, Any]:
    """An imaplib connection (and its imapclient) that reads *answer*, after a FETCH sent.

    *earlier*: FETCH responses imaplib kept from before (a flag changed elsewhere).
    """
    imap = imaplib.IMAP4.__new__(imaplib.IMAP4)
    imap.debug, imap.tagged_commands, imap.untagged_responses = 0, {}, {}
    imap._cmd_log_len, imap._cmd_log_idx, imap._cmd_log = 10, 0, {}
    imap._mode_ascii()
    imap.tagre = re.compile(rb"(?P<tag>ABCD\d+) (?P<type>[A-Z]+) (?P<data>.*)", re.ASCII)
    imap.file = io.BufferedReader(_Trickle(answer, most), buffer)
    imap.tagged_commands[b"ABCD2"] = None  # a STORE sent before the FETCH, answered in between
    if earlier:
        imap.untagged_responses["FETCH"] = list(earlier)
    imap._command = lambda *args: imap.tagged_commands.update({b"ABCD1": None}) or b"ABCD1"
    if not in_place:  # imaplib's own road, every response read by _get_response
        imap.readline = functools.partial(imaplib.IMAP4.readline, imap)
    _bound_literals(imap, 1024)
    return imap, SimpleNamespace(_imap=imap, use_uid=True, normalise_times=True)


def _read_through(
    answer: bytes, most: int, buffer: int, earlier: list[Any], *, in_place: bool
) -> tuple[Any, ...]:
    imap, client = _over(answer, most, buffer, in_place=in_place, earlier=earlier)
    try:
        outcome: Any = fetch_module.send_fetch(client, list(range(1, 8)))()
    except Exception as error:
        outcome = (type(error), str(error))
    # The FETCH responses of an answer that is not OK are left unread by both: not compared.
    kept = {name: data for name, data in imap.untagged_responses.items() if name != "FETCH"}
    return outcome, kept, imap.tagged_commands, imap.file.read()


@settings(max_examples=400, deadline=None)
@given(
    fetch_answers,
    st.integers(1, 80),
    st.sampled_from([64, 256, 8192]),
    st.sampled_from([[], [b"3 (UID 3 FLAGS (\\Seen))"], [(b"2 (UID 2 BODY[] {1}", b"x"), b")"]]),
)
def test_reading_in_place_is_imaplibs_road(answer, most, buffer, earlier):
    """Any answer, arriving in any pieces: the same mails, errors and connection state."""
    expected = _read_through(answer, most, buffer, earlier, in_place=False)
    assert _read_through(answer, most, buffer, earlier, in_place=True) == expected


def test_usual_responses_whole_in_the_buffer_skip_imaplib(monkeypatch):
    raws = [b"Subject: %d\r\n\r\n)\r\n* 1 FETCH (UID 9)\r\n" % n for n in range(40)]
    answer = b"".join(
        b"* %d FETCH (UID %d FLAGS (\\Seen $L) BODY[] {%d}\r\n%s)\r\n" % (n, n, len(raw), raw)
        for n, raw in enumerate(raws, start=1)
    )
    imap, client = _over(answer + b"* 41 EXISTS\r\nABCD1 OK done\r\n", 8192, 8192, in_place=True)
    lines = []
    real = imap._get_response
    monkeypatch.setattr(imap, "_get_response", lambda: lines.append(1) or real())
    monkeypatch.setattr(fetch_module, "_usual", None)  # nor its per-response list
    uids = list(range(1, 41))
    fetched = fetch_module.send_fetch(client, uids)()
    assert fetched == {n: (raw, (b"\\Seen", b"$L")) for n, raw in zip(uids, raws, strict=True)}
    assert len(lines) == 2, "imaplib read the EXISTS and the tagged line only"
    assert imap.untagged_responses == {"EXISTS": [b"41"]}


def test_a_literal_over_the_connections_bound_is_refused_in_place():
    answer = b"* 1 FETCH (UID 1 FLAGS () BODY[] {2000}\r\n%s)\r\nABCD1 OK done\r\n" % (b"x" * 2000)
    _, client = _over(answer, 8192, 8192, in_place=True)
    with pytest.raises(imaplib.IMAP4.abort, match="command: FETCH => the server announced"):
        fetch_module.send_fetch(client, [1])()


def test_fetch_responses_kept_from_before_come_first_as_in_imaplib():
    """A flag change told before the answer: imapclient reads it first, the answer's wins."""
    answer = b"* 1 FETCH (UID 3 FLAGS (Junk) BODY[] {1}\r\ny)\r\nABCD1 OK done\r\n"
    earlier = [b"3 (UID 3 FLAGS (\\Seen))"]
    for in_place in (False, True):
        assert _read_through(answer, 80, 8192, earlier, in_place=in_place)[0] == {
            3: (b"y", (b"Junk",))
        }
