"""FaultProxy: every mode does what it says (each test fails if its mode did nothing)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from mailtether.testing import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    """Echoes each chunk; says 'HELLO\\r\\n' first; 'BIG' asks for 100 000 bytes."""

    def handle(self) -> None:
        self.request.sendall(b"HELLO\r\n")
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.server.received.append(data)  # type: ignore[attr-defined]
            if data.strip() == b"BIG":
                self.request.sendall(b"x" * 100_000)
            else:
                self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    received: list[bytes]


@pytest.fixture
def echo() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Echo)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def proxy(echo: _Server) -> Iterator[FaultProxy]:
    with FaultProxy(echo.server_address) as running:
        yield running


def connect(proxy: FaultProxy, timeout: float = 5.0) -> socket.socket:
    client = socket.create_connection(proxy.address, timeout=timeout)
    assert client.recv(7) == b"HELLO\r\n"
    return client


def read_exactly(client: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = client.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_until_closed(client: socket.socket) -> tuple[bytes, str]:
    """Read until EOF or reset; return what came and how it ended."""
    data = b""
    while True:
        try:
            chunk = client.recv(65536)
        except ConnectionResetError:
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk


def test_passes_traffic(proxy, echo):
    with connect(proxy) as client:
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"
    assert echo.received == [b"ping"]
    assert proxy.accepted == 1


def test_reset_all_sends_rst_to_open_connections(proxy):
    with connect(proxy) as first, connect(proxy) as second:
        eventually(lambda: proxy.connections == 2)
        assert proxy.reset_all() == 2
        for client in (first, second):
            client.sendall(b"x")  # queued locally; the RST is already there
            with pytest.raises(ConnectionResetError):
                client.recv(10)
    with connect(proxy) as fresh:  # new connections still work
        fresh.sendall(b"again")
        assert fresh.recv(5) == b"again"


def test_blackhole_keeps_sockets_open_and_forwards_nothing(proxy, echo):
    with connect(proxy, timeout=0.3) as client:
        proxy.blackhole()
        client.sendall(b"lost")
        with pytest.raises(TimeoutError):
            client.recv(10)
        assert proxy.connections == 1, "the connection is still open"
        assert echo.received == [], "the server saw nothing"
        with (
            socket.create_connection(proxy.address, timeout=0.3) as late,
            pytest.raises(TimeoutError),
        ):
            late.recv(7)  # new connections are black-holed too: no greeting


def test_pass_through_after_a_blackhole(proxy):
    proxy.blackhole()
    proxy.pass_through()
    with connect(proxy) as client:
        client.sendall(b"back")
        assert client.recv(4) == b"back"


def test_refuse_new_closes_the_port_but_keeps_open_connections(proxy):
    with connect(proxy) as open_one:
        proxy.refuse_new()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy.address, timeout=2).close()
        open_one.sendall(b"still")
        assert open_one.recv(5) == b"still"
    proxy.pass_through()
    with connect(proxy) as client:
        client.sendall(b"open")
        assert client.recv(4) == b"open"


def test_drop_new_accepts_and_stays_silent(proxy, echo):
    with connect(proxy) as open_one:
        proxy.drop_new()
        with (
            socket.create_connection(proxy.address, timeout=0.3) as dropped,
            pytest.raises(TimeoutError),
        ):
            dropped.recv(7)  # no greeting ever comes
        open_one.sendall(b"fine")
        assert open_one.recv(4) == b"fine"


def test_latency_delays_each_way(proxy):
    with connect(proxy) as client:
        proxy.set_latency(0.15)
        started = time.monotonic()
        client.sendall(b"slow")
        assert client.recv(4) == b"slow"
        assert time.monotonic() - started >= 0.3  # 0.15 up + 0.15 down
        proxy.set_latency(0)
        started = time.monotonic()
        client.sendall(b"fast")
        assert client.recv(4) == b"fast"
        assert time.monotonic() - started < 0.15


def test_bandwidth_throttles(proxy):
    with connect(proxy) as client:
        proxy.set_bandwidth(250_000)
        started = time.monotonic()
        client.sendall(b"BIG")
        assert len(read_exactly(client, 100_000)) == 100_000
        assert time.monotonic() - started >= 0.3  # 100 kB at 250 kB/s: 0.4 s
        proxy.set_bandwidth(None)


def test_cut_after_forwards_exactly_n_bytes_then_resets(proxy):
    with connect(proxy) as client:
        proxy.cut_after(1000)
        client.sendall(b"BIG")
        data, ending = read_until_closed(client)
        assert len(data) == 1000
        assert ending in ("reset", "eof")
        assert proxy.connections == 0


def test_cut_after_upstream(proxy, echo):
    with connect(proxy) as client:
        proxy.cut_after(3, direction="up")
        client.sendall(b"abcdef")
        data, _ = read_until_closed(client)
        # The RST may overtake the three bytes inside the server's kernel, so the server
        # sees a prefix of them, never more.
        assert b"abc".startswith(b"".join(echo.received))
        assert b"abc".startswith(data)
        assert proxy.connections == 0


def test_cut_on_stops_in_the_middle_of_a_reply(proxy):
    with connect(proxy) as client:
        proxy.cut_on(b"* 3 EXISTS")
        client.sendall(b"* 1 RECENT\r\n* 3 EXISTS\r\nA1 OK done\r\n")
        data, ending = read_until_closed(client)
        assert data == b"* 1 RECENT\r\n* 3 E"
        assert ending in ("reset", "eof")


def test_cut_on_finds_a_pattern_split_across_chunks(proxy):
    with connect(proxy) as client:
        proxy.cut_on(b"NEEDLE")
        client.sendall(b"hay NEE")
        assert read_exactly(client, 7) == b"hay NEE"
        client.sendall(b"DLE more")
        data, _ = read_until_closed(client)
        assert data == b""  # the middle of NEEDLE was already passed: cut at once


def test_rewrite_changes_bytes_on_the_way(proxy, echo):
    with connect(proxy) as client:
        proxy.rewrite(b"STARTTLS", b"XTARTTLS")
        proxy.rewrite(b"secret", b"public", direction="up")
        client.sendall(b"CAPABILITY IMAP4rev1 STARTTLS secret\r\n")
        assert read_exactly(client, 38) == b"CAPABILITY IMAP4rev1 XTARTTLS public\r\n"
        assert b"".join(echo.received) == b"CAPABILITY IMAP4rev1 STARTTLS public\r\n"
        proxy.pass_through()
        client.sendall(b"STARTTLS")
        assert read_exactly(client, 8) == b"STARTTLS"


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda p: p.set_latency(-1), "seconds"),
        (lambda p: p.set_latency(float("nan")), "seconds"),
        (lambda p: p.set_bandwidth(0), "bytes_per_second"),
        (lambda p: p.cut_after(-1), "n_bytes"),
        (lambda p: p.cut_on(b""), "pattern"),
        (lambda p: p.cut_on("text"), "pattern"),
        (lambda p: p.cut_after(5, direction="sideways"), "direction"),
        (lambda p: p.rewrite(b"", b"x"), "old must be"),
    ],
)
def test_bad_arguments(proxy, call, words):
    with pytest.raises(ValueError, match=words):
        call(proxy)


def test_bad_upstream():
    with pytest.raises(ValueError, match="upstream"):
        FaultProxy(("127.0.0.1", 0))


def test_stop_is_quick_and_leaves_no_threads(echo):
    before = threading.active_count()
    proxy = FaultProxy(echo.server_address).start()
    clients = [connect(proxy) for _ in range(3)]
    proxy.blackhole()
    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < 1.0
    for client in clients:
        client.close()
    eventually(lambda: threading.active_count() <= before + 3)  # echo handlers wind down
    assert not [t for t in threading.enumerate() if t.name.startswith("faultproxy")]


def test_repr_names_the_faults(proxy):
    assert "passing" in repr(proxy)
    proxy.blackhole()
    proxy.set_latency(0.5)
    assert "blackhole" in repr(proxy)
    assert "latency=0.5s" in repr(proxy)


def eventually(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)
