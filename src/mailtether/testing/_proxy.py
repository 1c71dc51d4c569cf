"""``FaultProxy``: a TCP proxy that injects the network faults mail listeners meet.

Put it between any client and server in a test, point the client at
:attr:`FaultProxy.address`, and change the weather while traffic flows:

- :meth:`~FaultProxy.reset_all`: every open connection gets a TCP RST, on both sides, as when
  a NAT box or firewall forgets the connection or the server host reboots. The client's next
  read or write raises :class:`ConnectionResetError`.
- :meth:`~FaultProxy.blackhole`: sockets stay open but nothing passes either way, on open
  and new connections. This is the half-open connection: the proxy's kernel still
  acknowledges every packet, so writes succeed and TCP keepalive sees nothing wrong; only an
  application deadline (a NOOP that gets no answer) finds it. Nothing is lost: like TCP
  retransmission after a network recovers, what was held back flows on
  :meth:`~FaultProxy.pass_through`.
- :meth:`~FaultProxy.refuse_new`: the port is closed, so new connections get
  :class:`ConnectionRefusedError` (the server is down); open ones are untouched.
- :meth:`~FaultProxy.drop_new`: new connections are accepted and then hear nothing (a
  firewall that drops packets, a server too busy to answer); open ones are untouched.
- :meth:`~FaultProxy.set_latency` and :meth:`~FaultProxy.set_bandwidth`: a slow or far-away
  link. Latency delays every chunk without limiting throughput, as a long pipe does; it can
  be set for each direction apart (a slow uplink, a server slow to answer).
- :meth:`~FaultProxy.cut_after` and :meth:`~FaultProxy.cut_on`: each connection is reset
  after exactly N more bytes, or in the middle of a given piece of a reply.
- :meth:`~FaultProxy.rewrite`: a man in the middle that changes bytes on the way (strip
  STARTTLS from a capability list).
- :meth:`~FaultProxy.pass_through`: every fault cleared, for open and new connections.

Every fault method takes effect before it returns, so a test can call it and then act at once.

One background thread serves every connection with :mod:`selectors`; standard library only.

Why one module of about 900 lines: that thread owns every socket and all fault state, and
every fault method is a command run on it (no locks around shared state); the fault modes
are branches of its one per-chunk state machine, which reads best in one place.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import math
import random
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

__all__ = ["FaultProxy"]

Direction = Literal["down", "up"]
"""``"down"``: server to client; ``"up"``: client to server."""

Directions = Direction | Literal["both"]
"""One direction, or ``"both"``: what a fault that can apply to either way takes."""

_T = TypeVar("_T")

_CHUNK = 65536
# Past this much waiting to be forwarded in one direction, stop reading that side: the sender's
# buffers fill and its writes block, the backpressure a real network applies.
_HIGH_WATER = 256 * 1024
_CONNECT_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
# A cut resets only once its last bytes have left our kernel (or after this long): an RST
# discards whatever is still unsent, and "exactly N bytes" would become "at most N".
_DRAIN_BEFORE_RESET = 1.0
_DRAIN_POLL = 0.002
# When throttled, send this many seconds' worth of bytes at a time.
_BANDWIDTH_SLICE = 0.01

_DATA, _EOF, _RESET = "data", "eof", "reset"
_WAITING, _CONNECTING, _OPEN, _CLOSED = "waiting", "connecting", "open", "closed"
_WAKE, _ACCEPT = object(), object()

if sys.platform == "linux":
    import fcntl
    import termios

    def _unsent(sock: socket.socket) -> int:
        """Bytes sent on *sock* that the peer has not acknowledged yet (SIOCOUTQ)."""
        try:
            answer = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except (OSError, ValueError):
            return 0
        return int(struct.unpack("i", answer)[0])

else:  # pragma: no cover - elsewhere the RST may overtake the last bytes of a cut

    def _unsent(sock: socket.socket) -> int:
        return 0


def _check_direction(direction: object) -> Direction:
    if direction == "down":
        return "down"
    if direction == "up":
        return "up"
    raise ValueError(
        f"direction must be 'down' (server to client) or 'up' (client to server), got {direction!r}"
    )


def _check_directions(direction: object) -> tuple[Direction, ...]:
    """The directions *direction* names: ``"down"``, ``"up"`` or ``"both"``."""
    if direction == "both":
        return ("down", "up")
    if direction in ("down", "up"):
        return (_check_direction(direction),)
    raise ValueError(
        "direction must be 'down' (server to client), 'up' (client to server) or 'both', "
        f"got {direction!r}"
    )


def _check_address(name: str, value: object, *, port_zero: bool) -> tuple[str, int]:
    lowest = 0 if port_zero else 1
    if isinstance(value, tuple) and len(value) == 2:
        host, port = value
        if (
            isinstance(host, str)
            and host
            and isinstance(port, int)
            and not isinstance(port, bool)
            and lowest <= port <= 65535
        ):
            return host, port
    raise ValueError(
        f"{name} must be a (host, port) tuple with a port from {lowest} to 65535, got {value!r}"
    )


def _close(sock: socket.socket | None, *, reset: bool) -> None:
    """Close *sock*; with *reset*, send an RST instead of a FIN (SO_LINGER 0)."""
    if sock is None:
        return
    if reset:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Cut:
    """A pending cut of one direction of one connection: after N bytes, or inside a pattern."""

    def __init__(self, remaining: int | None, pattern: bytes | None) -> None:
        self.remaining = remaining
        self.pattern = pattern
        self.tail = b""  # the end of what passed, to find a pattern split across chunks

    def allowance(self, data: bytes) -> int | None:
        """How many bytes of *data* to forward before the reset, or ``None``: all, no cut."""
        if self.remaining is not None:
            if len(data) < self.remaining:
                self.remaining -= len(data)
                return None
            return self.remaining
        assert self.pattern is not None
        seen = self.tail + data
        index = seen.find(self.pattern)
        if index < 0:
            keep = len(self.pattern) - 1
            self.tail = seen[-keep:] if keep else b""
            return None
        middle = index + max(1, len(self.pattern) // 2)
        return max(0, middle - len(self.tail))


class _Fragments:
    """How one direction is cut into pieces: sizes and gaps drawn from a seeded generator."""

    def __init__(self, smallest: int, largest: int, gap: float, seed: int | None) -> None:
        self.smallest = smallest
        self.largest = largest
        self.gap_most = float(gap)
        self.random = random.Random(seed)

    def split(self, data: bytes) -> list[bytes]:
        pieces = []
        start = 0
        while start < len(data):
            size = self.random.randint(self.smallest, self.largest)
            pieces.append(data[start : start + size])
            start += size
        return pieces

    def gap(self) -> float:
        return self.random.uniform(0.0, self.gap_most)


class _Item:
    """Something on its way in one direction: bytes, an end of stream, or a reset."""

    __slots__ = ("checked", "data", "due", "kind")

    def __init__(self, due: float, kind: str, data: bytes = b"") -> None:
        self.due = due
        self.kind = kind
        self.data = data
        self.checked = False  # whether a cut has looked at it yet


class _Pipe:
    """One direction of one connection: what was read from *source* and waits for *target*."""

    def __init__(self, direction: Direction, source: socket.socket, target: socket.socket):
        self.direction: Direction = direction
        self.source = source
        self.target = target
        self.queue: collections.deque[_Item] = collections.deque()
        self.queued = 0
        self.read_done = False  # EOF, reset or a cut: read no more from source
        self.write_blocked = False
        self.finished = False  # EOF passed on
        self.next_send = 0.0  # bandwidth pacing
        self.reset_deadline: float | None = None


class _Link:
    """One proxied connection: its sockets, its state, and its two pipes."""

    def __init__(self, client: socket.socket, *, dropped: bool, cuts: dict[Direction, _Cut]):
        self.client = client
        self.upstream: socket.socket | None = None
        self.state = _WAITING
        self.dropped = dropped  # accepted while drop_new was on
        self.cuts: dict[Direction, _Cut | None] = {"down": None, "up": None}
        self.cuts.update(cuts)
        self.addresses: list[tuple[socket.AddressFamily, tuple[Any, ...]]] = []
        self.connect_deadline = 0.0
        self.pipes: dict[Direction, _Pipe] = {}


class _Command(Generic[_T]):
    """A fault change for the proxy thread to run; the caller waits for it."""

    def __init__(self, function: Callable[[], _T]) -> None:
        self.function = function
        self.done = threading.Event()
        self.result: _T | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.function()
        except BaseException as error:  # handed to the caller, who raises it
            self.error = error
        finally:
            self.done.set()


class FaultProxy:
    """A TCP proxy for tests that resets, black-holes, delays, throttles or cuts connections.

    Start it (or use it as a context manager), connect your client to :attr:`address` instead
    of the server, and call the fault methods at any time, from any thread. Each takes effect
    before it returns. Faults stay on until :meth:`pass_through`; several can be combined.

    Args:
        upstream: The ``(host, port)`` of the real server.
        listen: Where to listen; port 0 (the default) picks a free port.

    Raises:
        ValueError: *upstream* or *listen* is not a ``(host, port)`` tuple.

    Example:
        >>> import socket, socketserver, threading
        >>> from mailtether.testing import FaultProxy
        >>> class Echo(socketserver.BaseRequestHandler):
        ...     def handle(self):
        ...         while data := self.request.recv(1024):
        ...             self.request.sendall(data)
        >>> server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
        >>> threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
        >>> with FaultProxy(server.server_address) as proxy:
        ...     with socket.create_connection(proxy.address, timeout=5) as client:
        ...         client.sendall(b"ping")
        ...         print(client.recv(1024))
        ...         proxy.blackhole()
        ...         client.settimeout(0.2)
        ...         client.sendall(b"anyone?")
        ...         try:
        ...             client.recv(1024)
        ...         except TimeoutError:
        ...             print("silence")
        b'ping'
        silence
        >>> server.shutdown(); server.server_close()
    """

    def __init__(
        self, upstream: tuple[str, int], *, listen: tuple[str, int] = ("127.0.0.1", 0)
    ) -> None:
        self._upstream = _check_address("upstream", upstream, port_zero=False)
        self._listen = _check_address("listen", listen, port_zero=True)
        self._address: tuple[str, int] | None = None
        # Fault settings: changed only by the proxy thread while it runs.
        self._blackholed = False
        self._refusing = False
        self._dropping = False
        self._latency: dict[Direction, float] = {"down": 0.0, "up": 0.0}
        self._bandwidth: float | None = None
        self._cuts: dict[Direction, tuple[int | None, bytes | None] | None] = {
            "down": None,
            "up": None,
        }
        self._rewrites: dict[Direction, tuple[tuple[bytes, bytes], ...]] = {"down": (), "up": ()}
        self._fragments: dict[Direction, _Fragments | None] = {"down": None, "up": None}
        # Owned by the proxy thread while it runs.
        self._links: set[_Link] = set()
        self._accepted = 0
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_reader: socket.socket | None = None
        self._wake_writer: socket.socket | None = None
        self._running = False
        self._stopping = False
        # Shared with callers.
        self._lock = threading.Lock()
        self._commands: collections.deque[_Command[Any]] = collections.deque()
        self._taking_commands = False
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start listening and forwarding in a background thread.

        Returns:
            The proxy itself, so ``proxy = FaultProxy(...).start()`` works.

        Raises:
            RuntimeError: It is already running.
            OSError: The listen address cannot be bound.
        """
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("FaultProxy is already running; stop() it before starting again")
            listener = self._bind(self._listen)
            try:
                self._address = listener.getsockname()[:2]
                selector = selectors.DefaultSelector()
                self._wake_reader, self._wake_writer = socket.socketpair()
            except BaseException:
                listener.close()
                raise
            self._wake_reader.setblocking(False)
            self._wake_writer.setblocking(False)
            selector.register(self._wake_reader, selectors.EVENT_READ, _WAKE)
            self._selector = selector
            if self._refusing:  # refuse_new() before start(): bound only to learn the port
                _close(listener, reset=False)
            else:
                self._listener = listener
                selector.register(listener, selectors.EVENT_READ, _ACCEPT)
            self._running = True
            self._stopping = False
            self._taking_commands = True
            self._thread = threading.Thread(
                target=self._serve, name=f"faultproxy-{self._address[1]}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Close every connection and the listener, and wait for the thread to end.

        Open connections are closed normally (a FIN to each side); use :meth:`reset_all` first
        for an abrupt end. Calling it again, or before :meth:`start`, does nothing.
        """
        with self._lock:
            thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake()
        if thread is not threading.current_thread():
            thread.join(_STOP_TIMEOUT)
            if thread.is_alive():
                raise RuntimeError(f"FaultProxy thread did not end within {_STOP_TIMEOUT} s")
        with self._lock:
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what it is ------------------------------------------------------------------------------

    @property
    def upstream(self) -> tuple[str, int]:
        """The ``(host, port)`` of the real server."""
        return self._upstream

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect: ``(host, port)``.

        Raises:
            RuntimeError: The proxy was never started.
        """
        if self._address is None:
            raise RuntimeError(
                "FaultProxy is not started: call start() or use it in a with statement"
            )
        return self._address

    @property
    def host(self) -> str:
        """The host clients connect to."""
        return self.address[0]

    @property
    def port(self) -> int:
        """The port clients connect to."""
        return self.address[1]

    @property
    def connections(self) -> int:
        """How many client connections are open now (including silent, held ones)."""
        return len(self._links)

    @property
    def accepted(self) -> int:
        """How many client connections the proxy has accepted in all."""
        return self._accepted

    # -- faults ----------------------------------------------------------------------------------

    def pass_through(self) -> None:
        """Clear every fault: open and new connections carry traffic normally again.

        Black-holed and dropped connections resume, and what they held back is delivered;
        the port reopens after :meth:`refuse_new`; latency, bandwidth, cuts and rewrites end.

        Raises:
            RuntimeError: The port closed by :meth:`refuse_new` was taken meanwhile.
        """
        self._call(self._pass_through)

    def reset_all(self) -> int:
        """Reset every open connection with a TCP RST, to the client and to the server.

        Returns:
            How many connections were reset.
        """
        return self._call(self._reset_all)

    def blackhole(self) -> None:
        """Pass nothing either way on open and new connections, and keep their sockets open.

        Writes still succeed, until the buffers fill; reads wait forever; no FIN or RST gets
        through, and a new connection is accepted but never reaches the server.
        """
        self._call(self._set, "_blackholed", True)

    def refuse_new(self) -> None:
        """Close the port: new connections are refused; open ones are not touched."""
        self._call(self._refuse_new)

    def drop_new(self) -> None:
        """Accept new connections but never answer or forward them; open ones are not touched."""
        self._call(self._set, "_dropping", True)

    def set_latency(self, seconds: float, *, direction: Directions = "both") -> None:
        """Deliver every chunk in *direction* *seconds* after it arrived (0 clears it).

        With the default ``"both"``, a round trip takes at least twice *seconds*. With
        ``"up"`` only your commands are late (a slow uplink); with ``"down"`` only the
        server's answers are (a server slow to answer, a congested downlink). Setting one
        direction leaves the other as it was. Throughput is not limited: chunks in flight are
        delayed together, as on a long link. Lasts until :meth:`pass_through`.

        Example:
            >>> from mailtether.testing import FaultProxy
            >>> proxy = FaultProxy(("127.0.0.1", 1))
            >>> proxy.set_latency(0.2, direction="down")
            >>> proxy.set_latency(0.05, direction="up")
            >>> repr(proxy).endswith("faults=[latency=0.2s(down), latency=0.05s(up)])")
            True

        Args:
            seconds: The delay, in seconds.
            direction: ``"up"`` (client to server), ``"down"`` (server to client) or
                ``"both"`` (the default).

        Raises:
            ValueError: *seconds* is negative or not finite, or *direction* is unknown.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ValueError(f"seconds must be a number >= 0, got {seconds!r}")
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be finite and >= 0, got {seconds!r}")
        self._call(self._set_latency, _check_directions(direction), float(seconds))

    def set_bandwidth(self, bytes_per_second: float | None) -> None:
        """Throttle each connection to *bytes_per_second* in each direction; ``None`` clears.

        Raises:
            ValueError: *bytes_per_second* is not a finite number > 0 or ``None``.
        """
        if bytes_per_second is not None and (
            isinstance(bytes_per_second, bool)
            or not isinstance(bytes_per_second, int | float)
            or not math.isfinite(bytes_per_second)
            or bytes_per_second <= 0
        ):
            raise ValueError(
                f"bytes_per_second must be a finite number > 0 or None, got {bytes_per_second!r}"
            )
        rate = None if bytes_per_second is None else float(bytes_per_second)
        self._call(self._set, "_bandwidth", rate)

    def cut_after(self, n_bytes: int, *, direction: Direction = "down") -> None:
        """On each connection, forward exactly *n_bytes* more in *direction*, then reset it.

        It applies to open connections (counting from now) and to every new one, until
        :meth:`pass_through`. ``cut_after(0)`` resets a connection as soon as anything would
        pass in *direction*.

        Args:
            n_bytes: How many more bytes get through before the reset.
            direction: ``"down"`` (server to client, the default) or ``"up"``.

        Raises:
            ValueError: *n_bytes* is not an int >= 0, or *direction* is unknown.
        """
        if isinstance(n_bytes, bool) or not isinstance(n_bytes, int) or n_bytes < 0:
            raise ValueError(f"n_bytes must be an int >= 0, got {n_bytes!r}")
        self._call(self._set_cut, _check_direction(direction), (n_bytes, None))

    def cut_on(self, pattern: bytes, *, direction: Direction = "down") -> None:
        """Reset each connection in the middle of *pattern*, when it next passes in *direction*.

        Everything before the match and the first half of the match (at least one byte) is
        delivered; the rest never arrives, as when a connection dies halfway through a server
        reply. A match split across reads is found too. It applies to open and new
        connections until :meth:`pass_through`.

        Args:
            pattern: The bytes to cut inside, for example ``b"* 3 EXISTS"``.
            direction: ``"down"`` (server to client, the default) or ``"up"``.

        Raises:
            ValueError: *pattern* is empty or not bytes, or *direction* is unknown.
        """
        if not isinstance(pattern, bytes | bytearray) or not pattern:
            raise ValueError(f"pattern must be non-empty bytes, got {pattern!r}")
        self._call(self._set_cut, _check_direction(direction), (None, bytes(pattern)))

    def rewrite(self, old: bytes, new: bytes, *, direction: Direction = "down") -> None:
        """Replace *old* with *new* in everything passing in *direction* from now on.

        A man in the middle, for tests: ``rewrite(b"STARTTLS", b"XTARTTLS")`` strips the
        STARTTLS capability, the downgrade a client must refuse. A match split across two
        reads is not replaced (IMAP capability lines arrive whole), and the rule lasts until
        :meth:`pass_through`.

        Raises:
            ValueError: *old* is empty or not bytes, *new* is not bytes, or *direction* is
                unknown.
        """
        if not isinstance(old, bytes) or not old:
            raise ValueError(f"old must be non-empty bytes, got {old!r}")
        if not isinstance(new, bytes):
            raise ValueError(f"new must be bytes, got {new!r}")
        self._call(self._add_rewrite, _check_direction(direction), old, new)

    def fragment(
        self,
        smallest: int = 1,
        largest: int = 7,
        gap: float = 0.003,
        *,
        direction: Directions = "down",
        seed: int | None = None,
    ) -> None:
        """Pass the stream on in pieces of *smallest* to *largest* bytes, 0 to *gap* s apart.

        What a long path, a small MTU or a TLS record boundary can do to any line: a
        client that assumes a line arrives in one read breaks on it (imapclient's
        ``idle_check`` does: issue #519). No byte is lost or reordered. Sizes and gaps are
        drawn from *seed*, so a failure can be replayed. Lasts until :meth:`pass_through`.

        Example:
            >>> from mailtether.testing import FaultProxy
            >>> proxy = FaultProxy(("127.0.0.1", 1))
            >>> proxy.fragment(1, 7, gap=0.003, seed=42)

        Raises:
            ValueError: the sizes are not whole numbers with 1 <= *smallest* <= *largest*,
                *gap* is negative or not finite, or *direction* is unknown.
        """
        for name, value in (("smallest", smallest), ("largest", largest)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if smallest > largest:
            raise ValueError(f"smallest ({smallest}) must not exceed largest ({largest})")
        if isinstance(gap, bool) or not isinstance(gap, int | float) or not 0 <= gap < math.inf:
            raise ValueError(f"gap must be a finite number of seconds >= 0, got {gap!r}")
        for each in _check_directions(direction):
            self._call(self._set_fragments, each, _Fragments(smallest, largest, gap, seed))

    # -- fault changes, run by the proxy thread --------------------------------------------------

    def _set_fragments(self, direction: Direction, fragments: _Fragments) -> None:
        self._fragments[direction] = fragments

    def _set_latency(self, directions: tuple[Direction, ...], seconds: float) -> None:
        for direction in directions:
            self._latency[direction] = seconds

    def _call(self, function: Callable[..., _T], *args: object) -> _T:
        """Run ``function(*args)`` on the proxy thread (or here, if it is not running)."""
        command: _Command[_T] = _Command(lambda: function(*args))
        with self._lock:
            queued = self._taking_commands and threading.current_thread() is not self._thread
            if queued:
                self._commands.append(command)
        if not queued:
            command.run()
        else:
            self._wake()
            command.done.wait()
        if command.error is not None:
            raise command.error
        return command.result  # type: ignore[return-value]

    def _set(self, name: str, value: object) -> None:
        setattr(self, name, value)

    def _pass_through(self) -> None:
        self._blackholed = False
        self._dropping = False
        self._latency = {"down": 0.0, "up": 0.0}
        self._bandwidth = None
        self._cuts = {"down": None, "up": None}
        self._rewrites = {"down": (), "up": ()}
        self._fragments = {"down": None, "up": None}
        for link in self._links:
            link.cuts = {"down": None, "up": None}
        if self._refusing:
            if self._running and self._selector is not None:
                try:
                    listener = self._bind(self.address)
                except OSError as error:
                    raise RuntimeError(
                        f"FaultProxy could not reopen {self.host}:{self.port} after refuse_new(): "
                        f"{error}; another program took the port, so start a new proxy"
                    ) from error
                self._listener = listener
                self._selector.register(listener, selectors.EVENT_READ, _ACCEPT)
            self._refusing = False

    def _reset_all(self) -> int:
        links = list(self._links)
        for link in links:
            self._end(link, reset=True)
        return len(links)

    def _refuse_new(self) -> None:
        self._refusing = True
        listener, self._listener = self._listener, None
        if listener is not None:
            self._unwatch(listener)
            _close(listener, reset=False)  # connections still in the backlog are reset

    def _set_cut(self, direction: Direction, spec: tuple[int | None, bytes | None]) -> None:
        self._cuts[direction] = spec
        for link in self._links:
            link.cuts[direction] = _Cut(*spec)

    def _add_rewrite(self, direction: Direction, old: bytes, new: bytes) -> None:
        self._rewrites[direction] = (*self._rewrites[direction], (old, new))

    # -- the proxy thread ------------------------------------------------------------------------

    def _bind(self, where: tuple[str, int]) -> socket.socket:
        family = socket.AF_INET6 if ":" in where[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(where)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _wake(self) -> None:
        writer = self._wake_writer
        if writer is not None:
            with contextlib.suppress(OSError):  # full (it is awake anyway) or already closed
                writer.send(b"\0")

    def _serve(self) -> None:
        selector = self._selector
        assert selector is not None
        timeout: float | None = None
        try:
            while not self._stopping:
                for key, mask in selector.select(timeout):
                    self._dispatch(key.fileobj, key.data, mask)  # type: ignore[arg-type]
                self._run_commands()
                wake_at = self._service()
                timeout = None if wake_at is None else max(0.0, wake_at - time.monotonic())
        finally:
            with self._lock:
                self._taking_commands = False
                pending = list(self._commands)
                self._commands.clear()
            self._shut_down()
            for command in pending:
                command.run()

    def _run_commands(self) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                command = self._commands.popleft()
            command.run()

    def _shut_down(self) -> None:
        for link in list(self._links):
            self._end(link, reset=False)
        self._running = False
        if self._listener is not None:
            _close(self._listener, reset=False)
            self._listener = None
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        writer, self._wake_writer = self._wake_writer, None
        _close(writer, reset=False)
        _close(self._wake_reader, reset=False)
        self._wake_reader = None

    def _dispatch(self, sock: socket.socket, data: object, mask: int) -> None:
        if data is _WAKE:
            with contextlib.suppress(OSError):
                while sock.recv(4096):
                    pass
        elif data is _ACCEPT:
            self._accept(sock)
        elif isinstance(data, _Link) and data.state != _CLOSED:
            self._on_event(data, sock, mask)

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except ConnectionAbortedError:
                continue
            except OSError:  # nothing more to accept (or out of file descriptors)
                return
            self._accepted += 1
            client.setblocking(False)
            with contextlib.suppress(OSError):
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cuts = {
                direction: _Cut(*spec) for direction, spec in self._cuts.items() if spec is not None
            }
            self._links.add(_Link(client, dropped=self._dropping, cuts=cuts))

    def _on_event(self, link: _Link, sock: socket.socket, mask: int) -> None:
        now = time.monotonic()
        if link.state == _CONNECTING:
            if sock is link.upstream and mask & selectors.EVENT_WRITE:
                self._finish_connect(link)
            return
        if link.state != _OPEN:
            return
        for pipe in link.pipes.values():
            if mask & selectors.EVENT_WRITE and sock is pipe.target:
                pipe.write_blocked = False
            if mask & selectors.EVENT_READ and sock is pipe.source:
                self._read(link, pipe, now)
            if link.state == _CLOSED:
                return

    def _read(self, link: _Link, pipe: _Pipe, now: float) -> None:
        if not self._wants_read(link, pipe):
            return
        try:
            data = pipe.source.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by that side: the RST travels on, after what came before it
            pipe.read_done = True
            pipe.queue.append(_Item(now + self._latency[pipe.direction], _RESET))
            return
        if not data:
            pipe.read_done = True
            pipe.queue.append(_Item(now + self._latency[pipe.direction], _EOF))
            return
        for old, new in self._rewrites[pipe.direction]:
            data = data.replace(old, new)
        if not data:
            return
        due = max(now + self._latency[pipe.direction], pipe.queue[-1].due if pipe.queue else 0.0)
        fragments = self._fragments[pipe.direction]
        pieces = [data] if fragments is None else fragments.split(data)
        for index, piece in enumerate(pieces):
            if index and fragments is not None:
                due += fragments.gap()
            pipe.queue.append(_Item(due, _DATA, piece))
        pipe.queued += len(data)

    def _wants_read(self, link: _Link, pipe: _Pipe) -> bool:
        return (
            link.state == _OPEN
            and not self._blackholed
            and not pipe.read_done
            and pipe.queued < _HIGH_WATER
        )

    def _service(self) -> float | None:
        """Move every connection on as far as it can go now; return when to look again."""
        now = time.monotonic()
        wake_at: float | None = None
        for link in list(self._links):
            when: float | None = None
            held = self._blackholed or (link.dropped and self._dropping)
            if link.state == _WAITING and not held:
                self._start_connect(link, now)
            if link.state == _CONNECTING:
                if now >= link.connect_deadline:
                    self._end(link, reset=True)
                else:
                    when = link.connect_deadline
            for pipe in list(link.pipes.values()):
                if link.state != _OPEN:
                    break
                pipe_at = self._flush(link, pipe, now)
                if pipe_at is not None and (when is None or pipe_at < when):
                    when = pipe_at
            if link.state != _CLOSED:
                self._update_watch(link)
                if when is not None and (wake_at is None or when < wake_at):
                    wake_at = when
        return wake_at

    def _start_connect(self, link: _Link, now: float) -> None:
        host, port = self._upstream
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            self._end(link, reset=True)
            return
        link.addresses = [(info[0], info[4]) for info in infos]
        link.connect_deadline = now + _CONNECT_TIMEOUT
        link.state = _CONNECTING
        self._try_next_address(link)

    def _try_next_address(self, link: _Link) -> None:
        while link.addresses:
            family, sockaddr = link.addresses.pop(0)
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            error = sock.connect_ex(sockaddr)
            if error in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                link.upstream = sock
                return
            sock.close()
        self._end(link, reset=True)  # the server is down: so is the connection

    def _finish_connect(self, link: _Link) -> None:
        upstream = link.upstream
        assert upstream is not None
        error = upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self._unwatch(upstream)
            _close(upstream, reset=False)
            link.upstream = None
            self._try_next_address(link)
            return
        with contextlib.suppress(OSError):
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link.state = _OPEN
        link.pipes = {
            "up": _Pipe("up", link.client, upstream),
            "down": _Pipe("down", upstream, link.client),
        }

    def _flush(self, link: _Link, pipe: _Pipe, now: float) -> float | None:
        """Send what is due in *pipe*; return when it next has something to do, if known."""
        if self._blackholed:
            return None
        while pipe.queue:
            item = pipe.queue[0]
            if item.due > now:
                return item.due
            if item.kind == _EOF:
                with contextlib.suppress(OSError):
                    pipe.target.shutdown(socket.SHUT_WR)
                pipe.queue.popleft()
                pipe.finished = True
                if all(other.finished for other in link.pipes.values()):
                    self._end(link, reset=False)
                return None
            if item.kind == _RESET:
                if pipe.reset_deadline is None:
                    pipe.reset_deadline = now + _DRAIN_BEFORE_RESET
                if now < pipe.reset_deadline and _unsent(pipe.target) > 0:
                    return now + _DRAIN_POLL
                self._end(link, reset=True)
                return None
            if not item.checked:
                item.checked = True
                self._apply_cut(link, pipe, item)
            if pipe.write_blocked:
                return None
            size = len(item.data)
            rate = self._bandwidth
            if rate is not None:
                if now < pipe.next_send:
                    return pipe.next_send
                size = min(size, max(1, int(rate * _BANDWIDTH_SLICE)))
            sent = 0
            if size:
                try:
                    sent = pipe.target.send(item.data[:size])
                except (BlockingIOError, InterruptedError):
                    pipe.write_blocked = True
                    return None
                except OSError:  # that side is gone: tell the other one the same way
                    self._end(link, reset=True)
                    return None
            item.data = item.data[sent:]
            pipe.queued -= sent
            if rate is not None:
                pipe.next_send = max(pipe.next_send, now) + sent / rate
            if sent < size:
                pipe.write_blocked = True
                return None
            if not item.data:
                pipe.queue.popleft()
        return None

    def _apply_cut(self, link: _Link, pipe: _Pipe, item: _Item) -> None:
        cut = link.cuts[pipe.direction]
        if cut is None:
            return
        allowance = cut.allowance(item.data)
        if allowance is None:
            return
        link.cuts[pipe.direction] = None
        item.data = item.data[:allowance]
        pipe.queue = collections.deque([item, _Item(item.due, _RESET)])
        pipe.queued = len(item.data)
        pipe.read_done = True

    def _update_watch(self, link: _Link) -> None:
        client_events = 0
        upstream_events = 0
        if link.state == _CONNECTING:
            upstream_events = selectors.EVENT_WRITE
        elif link.state == _OPEN:
            up, down = link.pipes["up"], link.pipes["down"]
            if self._wants_read(link, up):
                client_events |= selectors.EVENT_READ
            if down.write_blocked:
                client_events |= selectors.EVENT_WRITE
            if self._wants_read(link, down):
                upstream_events |= selectors.EVENT_READ
            if up.write_blocked:
                upstream_events |= selectors.EVENT_WRITE
        self._watch(link.client, client_events, link)
        if link.upstream is not None:
            self._watch(link.upstream, upstream_events, link)

    def _watch(self, sock: socket.socket, events: int, link: _Link) -> None:
        selector = self._selector
        assert selector is not None
        try:
            key: selectors.SelectorKey | None = selector.get_key(sock)
        except KeyError:
            key = None
        if key is None:
            if events:
                selector.register(sock, events, link)
        elif not events:
            selector.unregister(sock)
        elif key.events != events:
            selector.modify(sock, events, link)

    def _unwatch(self, sock: socket.socket) -> None:
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)

    def _end(self, link: _Link, *, reset: bool) -> None:
        """Close both sides of *link*: with an RST if *reset*, else with a FIN."""
        if link.state == _CLOSED:
            return
        link.state = _CLOSED
        self._links.discard(link)
        for sock in (link.client, link.upstream):
            if sock is not None:
                self._unwatch(sock)
                _close(sock, reset=reset)

    def __repr__(self) -> str:
        faults = []
        if self._blackholed:
            faults.append("blackhole")
        if self._refusing:
            faults.append("refuse_new")
        if self._dropping:
            faults.append("drop_new")
        down, up = self._latency["down"], self._latency["up"]
        if down == up:
            if down:
                faults.append(f"latency={down:g}s")
        else:
            faults.extend(
                f"latency={seconds:g}s({direction})"
                for direction, seconds in (("down", down), ("up", up))
                if seconds
            )
        if self._bandwidth is not None:
            faults.append(f"bandwidth={self._bandwidth:g}B/s")
        for direction, fragments in self._fragments.items():
            if fragments is not None:
                faults.append(
                    f"fragment={fragments.smallest}-{fragments.largest}B/"
                    f"{fragments.gap_most:g}s({direction})"
                )
        for direction, spec in self._cuts.items():
            if spec is not None:
                n_bytes, pattern = spec
                what = f"cut_after={n_bytes}" if pattern is None else f"cut_on={pattern!r}"
                faults.append(f"{what}({direction})")
        for direction, rules in self._rewrites.items():
            faults.extend(f"rewrite={old!r}->{new!r}({direction})" for old, new in rules)
        return (
            f"FaultProxy(upstream={self._upstream!r}, address={self._address!r}, "
            f"faults=[{', '.join(faults)}])"
        )
