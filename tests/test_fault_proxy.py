"""FaultProxy: every mode does what it says (each test fails if its mode did nothing)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from mailtether.testing import FaultProxy

GREETING = b"HELLO\r\n"


class _Echo(socketserver.BaseRequestHandler):
    """Greets, then echoes each chunk; ``BIG`` asks for 100 000 bytes. Records what it saw."""

    server: _Server

    def handle(self) -> None:
        self.server.opened += 1
        self.request.sendall(GREETING)
        while True:
            try:
                data = self.request.recv(65536)
            except ConnectionResetError:
                self.server.endings.append("reset")
                return
            if not data:
                self.server.endings.append("eof")
                return
            self.server.received.append(data)
            self.server.arrivals.append(time.monotonic())
            reply = b"x" * 100_000 if data.strip() == b"BIG" else data
            try:
                self.request.sendall(reply)
            except OSError:
                self.server.endings.append("reset")
                return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.received: list[bytes] = []
        self.arrivals: list[float] = []  # when each chunk of received came in
        self.endings: list[str] = []
        self.opened = 0

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server_address[:2]
        assert isinstance(host, str)
        return host, port


@pytest.fixture
def echo() -> Iterator[_Server]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def proxy(echo: _Server) -> Iterator[FaultProxy]:
    with FaultProxy(echo.address) as running:
        yield running


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for something that happens on another thread (not a schedule under test)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def connect(proxy: FaultProxy, timeout: float = 5.0) -> socket.socket:
    client = socket.create_connection(proxy.address, timeout=timeout)
    assert read_exactly(client, len(GREETING)) == GREETING
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


def is_reset(client: socket.socket) -> bool:
    """Whether the connection was reset: on this write, or on the read after it."""
    try:
        client.sendall(b"x")
        client.recv(10)
    except ConnectionResetError:
        return True
    return False


def round_trip(client: socket.socket, message: bytes) -> float:
    started = time.monotonic()
    client.sendall(message)
    assert read_exactly(client, len(message)) == message
    return time.monotonic() - started


# -- plain forwarding --------------------------------------------------------------------------


def test_passes_traffic_both_ways(proxy, echo):
    with connect(proxy) as client:
        client.sendall(b"ping")
        assert read_exactly(client, 4) == b"ping"
        client.sendall(b"BIG")
        assert read_exactly(client, 100_000) == b"x" * 100_000
        assert proxy.connections == 1
    assert b"".join(echo.received) == b"pingBIG"
    assert proxy.accepted == 1
    eventually(lambda: proxy.connections == 0)  # the client's FIN went through and back


def test_half_close_passes_the_fin_and_the_rest_of_the_reply(proxy, echo):
    with connect(proxy) as client:
        client.sendall(b"last words")
        client.shutdown(socket.SHUT_WR)
        assert read_until_closed(client) == (b"last words", "eof")
    eventually(lambda: echo.endings == ["eof"])
    eventually(lambda: proxy.connections == 0)


def connect_and_read(proxy: FaultProxy) -> tuple[bytes, str]:
    """Connect and read until closed; a reset while connecting counts as ``(b"", "reset")``."""
    try:
        client = socket.create_connection(proxy.address, timeout=5)
    except ConnectionResetError:  # the reset can already arrive during connection set-up
        return b"", "reset"
    with client:
        return read_until_closed(client)


def test_a_server_that_is_down_resets_the_client():
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        free_port = placeholder.getsockname()[1]
    with FaultProxy(("127.0.0.1", free_port)) as proxy:
        assert connect_and_read(proxy) == (b"", "reset")
        eventually(lambda: proxy.connections == 0)
        assert proxy.accepted == 1


# -- reset_all ---------------------------------------------------------------------------------


def test_reset_all_sends_rst_to_both_sides_of_open_connections(proxy, echo):
    with connect(proxy) as first, connect(proxy) as second:
        eventually(lambda: proxy.connections == 2)
        assert proxy.reset_all() == 2
        assert proxy.connections == 0
        for client in (first, second):
            assert is_reset(client)
        eventually(lambda: echo.endings == ["reset", "reset"])  # the server got an RST too
    with connect(proxy) as fresh:  # new connections still work
        assert round_trip(fresh, b"again") < 1


# -- blackhole ---------------------------------------------------------------------------------


def test_blackhole_keeps_sockets_open_and_forwards_nothing(proxy, echo):
    with connect(proxy, timeout=0.3) as client:
        eventually(lambda: echo.opened == 1)
        proxy.blackhole()
        client.sendall(b"lost?")  # the write succeeds: the proxy's kernel acknowledges it
        with pytest.raises(TimeoutError):
            client.recv(10)
        assert proxy.connections == 1, "the connection is still open"
        assert echo.received == [], "the server saw nothing"
        assert echo.endings == [], "and no FIN or RST either"
        with (
            socket.create_connection(proxy.address, timeout=0.3) as late,
            pytest.raises(TimeoutError),
        ):
            late.recv(7)  # new connections are black-holed too: no greeting
        assert echo.opened == 1, "the new connection never reached the server"


def test_pass_through_after_a_blackhole_delivers_what_was_held(proxy, echo):
    with connect(proxy) as client:
        proxy.blackhole()
        client.sendall(b"held")
        with socket.create_connection(proxy.address, timeout=5) as late:
            proxy.pass_through()
            assert read_exactly(client, 4) == b"held"  # nothing lost, as TCP retransmits
            assert read_exactly(late, len(GREETING)) == GREETING
            assert round_trip(late, b"fine") < 1
    assert echo.received[0] == b"held"


# -- refuse_new --------------------------------------------------------------------------------


def test_refuse_new_closes_the_port_but_keeps_open_connections(proxy, echo):
    with connect(proxy) as open_one:
        proxy.refuse_new()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy.address, timeout=2).close()
        assert round_trip(open_one, b"still") < 1
    assert echo.opened == 1
    port = proxy.port
    proxy.pass_through()
    assert proxy.port == port  # the same port opens again
    with connect(proxy) as client:
        assert round_trip(client, b"open") < 1


def test_refuse_new_before_start():
    proxy = FaultProxy(("127.0.0.1", 9))
    proxy.refuse_new()
    with proxy, pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=2).close()


# -- drop_new ----------------------------------------------------------------------------------


def test_drop_new_accepts_and_stays_silent(proxy, echo):
    with connect(proxy) as open_one:
        proxy.drop_new()
        with socket.create_connection(proxy.address, timeout=0.3) as dropped:
            with pytest.raises(TimeoutError):
                dropped.recv(7)  # no greeting ever comes
            assert echo.opened == 1, "the dropped connection never reached the server"
            assert round_trip(open_one, b"fine") < 1  # open connections are untouched
            proxy.pass_through()  # the network recovers: the late connection goes through
            dropped.settimeout(5)
            assert read_exactly(dropped, len(GREETING)) == GREETING


# -- latency and bandwidth ---------------------------------------------------------------------


def test_latency_delays_each_way(proxy):
    with connect(proxy) as client:
        proxy.set_latency(0.1)
        assert round_trip(client, b"slow") >= 0.2  # 0.1 up + 0.1 down
        proxy.set_latency(0)
        assert round_trip(client, b"fast") < 0.1


def test_latency_delays_chunks_without_queueing_them_one_after_another(proxy):
    with connect(proxy) as client:
        proxy.set_latency(0.2)
        started = time.monotonic()
        for index in range(5):
            client.sendall(b"%d" % index)
            time.sleep(0.01)  # separate chunks on the wire (this sleep is the workload)
        assert read_exactly(client, 5) == b"01234"
        took = time.monotonic() - started
        assert 0.4 <= took < 1.0  # one round trip of delay, not five


def one_way_times(client: socket.socket, echo: _Server) -> tuple[float, float]:
    """Send a ping; return how long it took to reach the server, and its echo to come back."""
    sent = time.monotonic()
    client.sendall(b"ping")
    assert read_exactly(client, 4) == b"ping"
    answered = time.monotonic()
    assert b"".join(echo.received) == b"ping"
    arrived = echo.arrivals[0]
    return arrived - sent, answered - arrived


def test_latency_down_delays_the_answers_only(proxy, echo):
    with connect(proxy) as client:
        proxy.set_latency(0.3, direction="down")
        up, down = one_way_times(client, echo)
    assert up < 0.15, "the request reached the server at once"
    assert down >= 0.3


def test_latency_up_delays_the_requests_only(proxy, echo):
    proxy.set_latency(0.3, direction="up")
    started = time.monotonic()
    with connect(proxy) as client:
        assert time.monotonic() - started < 0.15, "the greeting came down at once"
        up, down = one_way_times(client, echo)
    assert up >= 0.3
    assert down < 0.15, "the echo came back at once"


def test_latency_of_one_direction_leaves_the_other_as_it_was(proxy):
    proxy.set_latency(0.2, direction="up")
    proxy.set_latency(0.1, direction="down")
    assert "latency=0.1s(down), latency=0.2s(up)" in repr(proxy)
    proxy.set_latency(0, direction="up")  # clears just that one
    assert "faults=[latency=0.1s(down)]" in repr(proxy)
    proxy.set_latency(0.3)  # "both", the default: the same each way
    assert "faults=[latency=0.3s]" in repr(proxy)
    proxy.set_latency(0.3, direction="both")
    assert "faults=[latency=0.3s]" in repr(proxy)
    proxy.pass_through()
    assert "faults=[]" in repr(proxy)
    with connect(proxy) as client:
        assert round_trip(client, b"cleared") < 0.5  # not 0.6: 0.3 s each way


def test_bandwidth_throttles_down(proxy):
    with connect(proxy) as client:
        proxy.set_bandwidth(250_000)
        started = time.monotonic()
        client.sendall(b"BIG")
        assert len(read_exactly(client, 100_000)) == 100_000
        assert time.monotonic() - started >= 0.35  # 100 kB at 250 kB/s: 0.4 s
        proxy.set_bandwidth(None)
        started = time.monotonic()
        client.sendall(b"BIG")
        assert len(read_exactly(client, 100_000)) == 100_000
        assert time.monotonic() - started < 0.3


def test_bandwidth_throttles_up(proxy, echo):
    with connect(proxy) as client:
        proxy.set_bandwidth(100_000)
        started = time.monotonic()
        client.sendall(b"y" * 30_000)
        eventually(lambda: sum(map(len, echo.received)) == 30_000)
        assert time.monotonic() - started >= 0.25  # 30 kB at 100 kB/s: 0.3 s


# -- cuts --------------------------------------------------------------------------------------


def test_cut_after_forwards_exactly_n_bytes_then_resets(proxy, echo):
    with connect(proxy) as client:
        proxy.cut_after(1000)
        client.sendall(b"BIG")
        data, ending = read_until_closed(client)
        assert data == b"x" * 1000
        assert ending == "reset"
        assert proxy.connections == 0
    eventually(lambda: echo.endings == ["reset"])
    with socket.create_connection(proxy.address, timeout=5) as again:  # new ones are cut too,
        again.sendall(b"BIG")  # counting from their first byte
        assert read_until_closed(again) == (GREETING + b"x" * (1000 - len(GREETING)), "reset")


def test_cut_after_zero_cuts_before_the_greeting(proxy):
    proxy.cut_after(0)
    assert connect_and_read(proxy) == (b"", "reset")
    eventually(lambda: proxy.accepted == 1)


def test_cut_after_upstream(proxy, echo):
    with connect(proxy) as client:
        proxy.cut_after(3, direction="up")
        client.sendall(b"abcdef")
        data, _ = read_until_closed(client)
        assert data == b""  # the echo of "abc" could not come back: the link was gone
    eventually(lambda: echo.endings == ["reset"])
    assert b"".join(echo.received) == b"abc"


def test_cut_on_stops_in_the_middle_of_a_reply(proxy):
    with connect(proxy) as client:
        proxy.cut_on(b"* 3 EXISTS")
        client.sendall(b"* 1 RECENT\r\n* 3 EXISTS\r\nA1 OK done\r\n")
        assert read_until_closed(client) == (b"* 1 RECENT\r\n* 3 E", "reset")


def test_cut_on_finds_a_pattern_split_across_chunks(proxy):
    with connect(proxy) as client:
        proxy.cut_on(b"NEEDLE")
        client.sendall(b"hay NEE")
        assert read_exactly(client, 7) == b"hay NEE"
        client.sendall(b"DLE more")
        # The middle of NEEDLE has already passed: the cut comes before any more bytes.
        assert read_until_closed(client) == (b"", "reset")


def test_cut_on_upstream(proxy, echo):
    with connect(proxy) as client:
        proxy.cut_on(b"STORE 1 +FLAGS", direction="up")
        client.sendall(b"A1 STORE 1 +FLAGS (\\Seen)\r\n")
        read_until_closed(client)
    eventually(lambda: echo.endings == ["reset"])
    assert b"".join(echo.received) == b"A1 STORE 1"  # and the first 7 bytes of 14


def test_pass_through_clears_cuts(proxy):
    proxy.cut_after(0)
    proxy.pass_through()
    with connect(proxy) as client:
        assert round_trip(client, b"whole") < 1


# -- rewrite -----------------------------------------------------------------------------------


def test_rewrite_changes_bytes_on_the_way(proxy, echo):
    with connect(proxy) as client:
        proxy.rewrite(b"STARTTLS", b"XTARTTLS")
        proxy.rewrite(b"secret", b"public", direction="up")
        client.sendall(b"CAPABILITY IMAP4rev1 STARTTLS secret\r\n")
        assert read_exactly(client, 38) == b"CAPABILITY IMAP4rev1 XTARTTLS public\r\n"
        assert b"".join(echo.received) == b"CAPABILITY IMAP4rev1 STARTTLS public\r\n"
        proxy.pass_through()
        assert round_trip(client, b"STARTTLS") < 1


# -- while traffic flows -----------------------------------------------------------------------


def test_faults_changed_under_load_never_lose_or_reorder_bytes(proxy, echo):
    payload = bytes(range(256)) * 800  # 200 kB
    with connect(proxy, timeout=10) as client:
        sender = threading.Thread(target=client.sendall, args=(payload,))
        sender.start()
        for _ in range(3):
            proxy.blackhole()
            proxy.set_latency(0.005)
            proxy.set_bandwidth(2_000_000)
            proxy.pass_through()
        received = read_exactly(client, len(payload))
        sender.join(10)
    assert received == payload


# -- life cycle --------------------------------------------------------------------------------


def test_stop_is_quick_closes_everything_and_leaves_no_threads(echo):
    before = threading.active_count()
    proxy = FaultProxy(echo.address).start()
    clients = [connect(proxy) for _ in range(3)]
    proxy.set_latency(30)  # nothing waits out a fault when stopping
    clients[0].sendall(b"in flight")
    proxy.blackhole()
    held = socket.create_connection(proxy.address, timeout=5)
    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < 0.5
    for client in [*clients, held]:
        assert read_until_closed(client)[0] == b""
        client.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("faultproxy")]
    eventually(lambda: threading.active_count() == before)  # the echo handlers end too
    proxy.stop()  # again: nothing to do


def test_it_can_start_again_after_stop(echo):
    proxy = FaultProxy(echo.address, listen=("127.0.0.1", 0))
    with proxy, pytest.raises(RuntimeError, match="already running"):
        proxy.start()
    with proxy, connect(proxy) as client:
        assert round_trip(client, b"again") < 1


def test_address_before_start():
    proxy = FaultProxy(("localhost", 143))
    with pytest.raises(RuntimeError, match="not started"):
        proxy.address  # noqa: B018
    assert proxy.upstream == ("localhost", 143)
    assert proxy.connections == proxy.accepted == 0


def test_a_host_name_upstream_and_host_port_properties(echo):
    with FaultProxy(("localhost", echo.address[1])) as proxy, connect(proxy) as client:
        assert (proxy.host, proxy.port) == proxy.address
        assert proxy.host == "127.0.0.1"
        assert round_trip(client, b"by name") < 1


def test_repr_names_upstream_address_and_faults(proxy, echo):
    text = repr(proxy)
    assert repr(echo.address) in text
    assert repr(proxy.address) in text
    assert "faults=[]" in text
    proxy.blackhole()
    proxy.set_latency(0.5)
    proxy.cut_on(b"EXISTS")
    text = repr(proxy)
    assert "blackhole" in text
    assert "latency=0.5s" in text
    assert "cut_on=b'EXISTS'(down)" in text
    proxy.pass_through()
    assert "faults=[]" in repr(proxy)
    assert "address=None" in repr(FaultProxy(("127.0.0.1", 1)))


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda p: p.set_latency(-1), "seconds"),
        (lambda p: p.set_latency(float("nan")), "seconds"),
        (lambda p: p.set_latency(float("inf")), "seconds"),
        (lambda p: p.set_latency("1"), "seconds"),
        (lambda p: p.set_latency(0.1, direction="sideways"), "direction must be .* or 'both'"),
        (lambda p: p.set_latency(0.1, direction=None), "direction"),
        (lambda p: p.set_latency(-1, direction="up"), "seconds"),
        (lambda p: p.set_bandwidth(0), "bytes_per_second"),
        (lambda p: p.set_bandwidth(-5.0), "bytes_per_second"),
        (lambda p: p.cut_after(-1), "n_bytes"),
        (lambda p: p.cut_after(1.5), "n_bytes"),
        (lambda p: p.cut_on(b""), "pattern"),
        (lambda p: p.cut_on("text"), "pattern"),
        (lambda p: p.cut_after(5, direction="sideways"), "direction"),
        (lambda p: p.cut_on(b"x", direction="DOWN"), "direction"),
        (lambda p: p.rewrite(b"", b"x"), "old"),
        (lambda p: p.rewrite(b"x", "y"), "new"),
    ],
)
def test_bad_arguments(call, words):
    proxy = FaultProxy(("127.0.0.1", 1))
    with pytest.raises(ValueError, match=words):
        call(proxy)
    assert "faults=[]" in repr(proxy)  # nothing was half-applied


@pytest.mark.parametrize(
    ("upstream", "listen", "words"),
    [
        (("127.0.0.1", 0), ("127.0.0.1", 0), "upstream"),
        (("127.0.0.1", 70_000), ("127.0.0.1", 0), "upstream"),
        (("127.0.0.1", "143"), ("127.0.0.1", 0), "upstream"),
        ("127.0.0.1:143", ("127.0.0.1", 0), "upstream"),
        (("127.0.0.1", 143), ("127.0.0.1", -1), "listen"),
        (("127.0.0.1", 143), ("", 0), "listen"),
    ],
)
def test_bad_addresses(upstream, listen, words):
    with pytest.raises(ValueError, match=words):
        FaultProxy(upstream, listen=listen)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0, 7), {}, "smallest must be a whole number >= 1"),
        ((1, 2.5), {}, "largest must be a whole number >= 1"),
        ((8, 7), {}, r"smallest \(8\) must not exceed largest \(7\)"),
        ((1, 7), {"gap": float("nan")}, "gap must be a finite number"),
        ((1, 7), {"gap": -1}, "gap must be a finite number"),
        ((1, 7), {"direction": "sideways"}, "direction must be"),
    ],
)
def test_fragment_refuses_bad_settings_by_name(args, kwargs, message):
    proxy = FaultProxy(("127.0.0.1", 1))
    with pytest.raises(ValueError, match=message):
        proxy.fragment(*args, **kwargs)


def test_fragmented_bytes_arrive_whole_in_order_and_in_pieces():
    server = socket.create_server(("127.0.0.1", 0))
    with server, FaultProxy(server.getsockname()) as proxy:
        proxy.fragment(1, 3, gap=0.002, seed=7)
        assert "fragment=1-3B" in repr(proxy)
        client = socket.create_connection(proxy.address)
        upstream, _ = server.accept()
        payload = bytes(range(256)) * 4
        upstream.sendall(payload)
        received, reads = b"", 0
        client.settimeout(5)
        while len(received) < len(payload):
            chunk = client.recv(65536)
            assert chunk
            received += chunk
            reads += 1
        assert received == payload, "nothing lost, nothing reordered"
        assert reads > 20, "it came in many pieces"
        client.close()
        upstream.close()
