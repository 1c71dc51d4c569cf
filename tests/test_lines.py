"""LineReader over a real socketpair: pieces of any size, a trickle, a bound, EOF, literals."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from mailtether import ConnectionLost, ResponseTimeout
from mailtether._errors import LineTooLong, PeerClosed
from mailtether._lines import LineReader

LONG = 10.0  # a deadline no passing test comes near


class OneByteAtATime(socket.socket):
    """A real socket whose every recv returns at most one byte, and that counts them."""

    receives = 0

    def recv_into(self, buffer, nbytes=0, flags=0):
        self.receives += 1
        return super().recv_into(buffer, 1, flags)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield ours, theirs


@pytest.fixture
def one_byte_pair() -> Iterator[tuple[OneByteAtATime, socket.socket]]:
    ours, theirs = socket.socketpair()
    slow = OneByteAtATime(fileno=ours.detach())
    with slow, theirs:
        yield slow, theirs


def deadline(seconds: float = LONG) -> float:
    return time.monotonic() + seconds


def test_lines_split_into_single_bytes(one_byte_pair):
    ours, theirs = one_byte_pair
    stream = b"* OK hello\r\n\r\n* CAPABILITY IMAP4rev1\r\n"
    theirs.sendall(stream)
    reader = LineReader(ours)
    assert reader.readline(deadline()) == b"* OK hello"
    assert reader.readline(deadline()) == b""
    assert reader.readline(deadline()) == b"* CAPABILITY IMAP4rev1"
    assert ours.receives == len(stream), "every byte came in a recv of its own"


def test_many_lines_in_one_piece(pair):
    ours, theirs = pair
    theirs.sendall(b"+OK one\r\n+OK two\r\n.\r\n")
    reader = LineReader(ours)
    assert [reader.readline(deadline()) for _ in range(3)] == [b"+OK one", b"+OK two", b"."]


def test_a_line_at_the_bound_is_read(pair):
    ours, theirs = pair
    theirs.sendall(b"x" * 16 + b"\r\n")
    assert LineReader(ours, max_line=16).readline(deadline()) == b"x" * 16


def test_a_line_over_the_bound_raises(pair):
    ours, theirs = pair
    theirs.sendall(b"x" * 17 + b"\r\nnext\r\n")
    with pytest.raises(LineTooLong, match="longer than 16 bytes"):
        LineReader(ours, max_line=16).readline(deadline())


def test_a_line_that_never_ends_raises_at_the_bound_not_at_the_deadline(one_byte_pair):
    ours, theirs = one_byte_pair
    theirs.sendall(b"x" * 100)  # no CRLF, and nothing more comes
    with pytest.raises(LineTooLong):
        LineReader(ours, max_line=16).readline(deadline())
    assert ours.receives == 18, "it stops reading once the bound is passed"


def test_a_trickle_cannot_hold_a_read_past_its_deadline(pair):
    ours, theirs = pair
    stop = threading.Event()

    def trickle() -> None:  # the fault: one byte every 5 ms, never a line end
        while not stop.wait(0.005):
            theirs.send(b"x")

    writer = threading.Thread(target=trickle, daemon=True)
    writer.start()
    # A bound of 1000 bytes (5 s of trickle) makes a per-recv timeout fail as LineTooLong.
    reader = LineReader(ours, max_line=1000)
    started = time.monotonic()
    try:
        with pytest.raises(ResponseTimeout, match="bytes had arrived"):
            reader.readline(started + 0.2)
    finally:
        stop.set()
        writer.join()
    assert 0.2 <= time.monotonic() - started < 1.0


def test_what_arrived_before_the_deadline_is_kept(pair):
    ours, theirs = pair
    reader = LineReader(ours)
    theirs.sendall(b"* OK half")
    with pytest.raises(ResponseTimeout):
        reader.readline(deadline(0.05))
    theirs.sendall(b" a line\r\n")
    assert reader.readline(deadline()) == b"* OK half a line"


def test_a_buffered_line_is_returned_after_the_deadline(pair):
    ours, theirs = pair
    reader = LineReader(ours)
    theirs.sendall(b"one\r\ntwo\r\n")
    assert reader.readline(deadline()) == b"one"
    assert reader.readline(time.monotonic() - 1) == b"two"


def test_eof_mid_line_raises_peer_closed(pair):
    ours, theirs = pair
    reader = LineReader(ours)
    theirs.sendall(b"* OK done\r\n* OK hal")
    theirs.shutdown(socket.SHUT_WR)
    assert reader.readline(deadline()) == b"* OK done"
    with pytest.raises(PeerClosed, match="8 bytes of it had arrived") as raised:
        reader.readline(deadline())
    assert isinstance(raised.value, ConnectionLost)


def test_eof_between_lines_raises_peer_closed(pair):
    ours, theirs = pair
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(PeerClosed, match="before a whole line: "):
        LineReader(ours).readline(deadline())


@pytest.mark.parametrize("sockets", ["pair", "one_byte_pair"])
def test_a_literal_is_read_whole_crlf_and_all(sockets, request):
    ours, theirs = request.getfixturevalue(sockets)
    theirs.sendall(b"* 1 FETCH (BODY[] {12}\r\nhello\r\nworld)\r\n* 2 FETCH (BODY[] {0}\r\n)\r\n")
    reader = LineReader(ours, max_line=32)
    assert reader.readline(deadline()) == b"* 1 FETCH (BODY[] {12}"
    assert reader.read_exactly(12, deadline()) == b"hello\r\nworld"
    assert reader.readline(deadline()) == b")"
    assert reader.readline(deadline()) == b"* 2 FETCH (BODY[] {0}"
    assert reader.read_exactly(0, deadline()) == b""
    assert reader.readline(deadline()) == b")"


def test_a_literal_longer_than_a_line_may_be(pair):
    ours, theirs = pair
    body = bytes(range(256)) * 1024  # 256 KiB, more than one recv, CR and LF among them
    writer = threading.Thread(target=theirs.sendall, args=(body + b"tail\r\n",))
    writer.start()
    reader = LineReader(ours, max_line=16)
    assert reader.read_exactly(len(body), deadline()) == body
    assert reader.readline(deadline()) == b"tail"
    writer.join()


def test_eof_mid_literal_raises_peer_closed(pair):
    ours, theirs = pair
    theirs.sendall(b"hello")
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(PeerClosed, match="before 12 bytes"):
        LineReader(ours).read_exactly(12, deadline())


def test_a_literal_that_trickles_past_its_deadline(pair):
    ours, theirs = pair
    theirs.sendall(b"hel")
    reader = LineReader(ours)
    with pytest.raises(ResponseTimeout, match="3 bytes had arrived"):
        reader.read_exactly(5, deadline(0.05))
    theirs.sendall(b"lo")
    assert reader.read_exactly(5, deadline()) == b"hello"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "64"])
def test_max_line_must_be_a_positive_whole_number(pair, bad):
    with pytest.raises(ValueError, match=r"LineReader\.max_line"):
        LineReader(pair[0], max_line=bad)


def test_read_exactly_refuses_a_negative_count(pair):
    with pytest.raises(ValueError, match="0 or more"):
        LineReader(pair[0]).read_exactly(-1, deadline())


def test_repr_says_the_bound_and_what_is_buffered(pair):
    ours, theirs = pair
    reader = LineReader(ours, max_line=100)
    theirs.sendall(b"one\r\ntwo")
    reader.readline(deadline())
    assert repr(reader) == "LineReader(max_line=100, buffered=3)"
