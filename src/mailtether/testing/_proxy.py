"""``FaultProxy``: a TCP proxy that injects the network faults mail listeners meet.

Put it between any client and server in a test, then, while traffic flows:

- :meth:`~FaultProxy.reset_all` — every open connection gets a TCP RST, as when a NAT box or
  firewall forgets the connection, or the server host reboots;
- :meth:`~FaultProxy.blackhole` — sockets stay open but nothing gets through either way: the
  half-open connection that only an application-level deadline (a keepalive) can find,
  because the proxy's kernel still acknowledges every packet;
- :meth:`~FaultProxy.refuse_new` — new connections are refused (the server is down);
- :meth:`~FaultProxy.drop_new` — new connections are accepted and then hear nothing (a
  firewall that drops packets, a server too busy to answer);
- :meth:`~FaultProxy.set_latency` and :meth:`~FaultProxy.set_bandwidth` — a slow network;
- :meth:`~FaultProxy.cut_after` and :meth:`~FaultProxy.cut_on` — the connection dies after
  N bytes, or in the middle of a given server reply;
- :meth:`~FaultProxy.rewrite` — a man in the middle that changes bytes on the way (strip
  STARTTLS from a capability list);
- :meth:`~FaultProxy.pass_through` — everything back to normal.

Standard library only; runs in background threads; a context manager.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Literal, Self

__all__ = ["FaultProxy"]

Direction = Literal["down", "up"]
_CHUNK = 65536
_TICK = 0.02  # how often idle pumps look at the fault settings and the stop flag


def _check_direction(direction: object) -> Direction:
    if direction not in ("down", "up"):
        raise ValueError(f"direction must be 'down' (server to client) or 'up', got {direction!r}")
    return direction


def _reset(sock: socket.socket) -> None:
    """Close *sock* with an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Cut:
    """A pending cut of one direction: after *remaining* bytes, or inside *pattern*."""

    def __init__(self, remaining: int | None, pattern: bytes | None) -> None:
        self.remaining = remaining
        self.pattern = pattern
        self.tail = b""

    def allowance(self, data: bytes) -> int | None:
        """How many bytes of *data* to forward before cutting, or None for all of it."""
        if self.remaining is not None:
            if len(data) < self.remaining:
                self.remaining -= len(data)
                return None
            return self.remaining
        assert self.pattern is not None
        seen = self.tail + data
        index = seen.find(self.pattern)
        if index < 0:
            self.tail = seen[-(len(self.pattern) - 1) :] if len(self.pattern) > 1 else b""
            return None
        middle = index + max(1, len(self.pattern) // 2)
        return max(0, middle - len(self.tail))


class _Link:
    """One proxied connection: a client socket, an upstream socket, two pumps."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket | None):
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()
        self.cuts: dict[Direction, _Cut | None] = {"down": None, "up": None}
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        if self.upstream is None:  # a dropped connection: hold it open, say nothing
            thread = threading.Thread(target=self._park, name="faultproxy-park", daemon=True)
            self.threads.append(thread)
        else:
            for direction, source, target in (
                ("up", self.client, self.upstream),
                ("down", self.upstream, self.client),
            ):
                thread = threading.Thread(
                    target=self._pump,
                    args=(direction, source, target),
                    name=f"faultproxy-{direction}",
                    daemon=True,
                )
                self.threads.append(thread)
        for thread in self.threads:
            thread.start()

    def _park(self) -> None:
        while not self.closed.is_set():
            try:
                ready, _, _ = select.select([self.client], [], [], _TICK)
                if ready and not self.client.recv(_CHUNK):
                    break
            except (OSError, ValueError):
                break
        self.close()

    def _pump(self, direction: Direction, source: socket.socket, target: socket.socket) -> None:
        proxy = self.proxy
        try:
            while not self.closed.is_set():
                ready, _, _ = select.select([source], [], [], _TICK)
                if not ready:
                    continue
                data = source.recv(_CHUNK)
                if proxy._blackholed:
                    if not data:  # keep the other side open: a black hole passes no FIN
                        self.closed.wait()
                        return
                    continue  # swallowed, as by a network that drops everything
                if not data:
                    with contextlib.suppress(OSError):
                        target.shutdown(socket.SHUT_WR)
                    return
                for old, new in proxy._rewrites[direction]:
                    data = data.replace(old, new)
                with self.lock:
                    cut = self.cuts[direction]
                allowance = cut.allowance(data) if cut is not None else None
                if allowance is not None:
                    self._send(target, data[:allowance])
                    self.reset()
                    return
                self._send(target, data)
        except (OSError, ValueError):
            pass
        self.close()

    def _send(self, target: socket.socket, data: bytes) -> None:
        proxy = self.proxy
        if proxy._latency:
            time.sleep(proxy._latency)
        rate = proxy._bandwidth
        if rate is None:
            target.sendall(data)
            return
        step = max(1, int(rate / 50))
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            target.sendall(piece)
            time.sleep(len(piece) / rate)

    def set_cut(self, direction: Direction, cut: _Cut | None) -> None:
        with self.lock:
            self.cuts[direction] = cut

    def reset(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.proxy._forget(self)  # first, so no one who sees the reset counts it as open
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.proxy._forget(self)
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(timeout)


class FaultProxy:
    """A TCP proxy for tests that can reset, black-hole, delay, throttle or cut connections.

    Args:
        upstream: The ``(host, port)`` of the real server.
        listen: Where to listen; port 0 (the default) picks a free port.

    Example:
        >>> import socket, socketserver, threading
        >>> from mailtether.testing import FaultProxy
        >>> class Echo(socketserver.BaseRequestHandler):
        ...     def handle(self):
        ...         while data := self.request.recv(1024):
        ...             self.request.sendall(data)
        >>> server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
        >>> threading.Thread(target=server.serve_forever, daemon=True).start()
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
        host, port = upstream
        if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"upstream must be (host, port), got {upstream!r}")
        self.upstream = (host, port)
        """The real server."""
        self._listen_at = listen
        self._server: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._blackholed = False
        self._refusing = False
        self._dropping = False
        self._latency = 0.0
        self._bandwidth: float | None = None
        self._rewrites: dict[Direction, tuple[tuple[bytes, bytes], ...]] = {"down": (), "up": ()}
        self._cuts: dict[Direction, tuple[int | None, bytes | None] | None] = {
            "down": None,
            "up": None,
        }
        self.accepted = 0
        """How many connections the proxy has accepted in all."""

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start listening and forwarding in background threads."""
        if self._thread is not None:
            raise RuntimeError("FaultProxy is already running")
        self._stop.clear()
        self._bind(self._listen_at)
        self._thread = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def _bind(self, where: tuple[str, int]) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(where)
        server.listen(64)
        self._server = server
        self._address = server.getsockname()[:2]

    def stop(self) -> None:
        """Close every connection and the listener, and wait for the threads to end."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5)
        self._close_listener()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()
        for link in links:
            link.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect: ``(host, port)``."""
        if self._address is None:
            raise RuntimeError("FaultProxy is not started")
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
        """How many client connections are open now."""
        with self._lock:
            return len(self._links)

    # -- faults ----------------------------------------------------------------------------------

    def pass_through(self) -> None:
        """Clear every fault: open and new connections carry traffic normally again."""
        self._blackholed = False
        self._dropping = False
        self._latency = 0.0
        self._bandwidth = None
        self._cuts = {"down": None, "up": None}
        self._rewrites = {"down": (), "up": ()}
        with self._lock:
            links = list(self._links)
        for link in links:
            link.set_cut("down", None)
            link.set_cut("up", None)
        if self._refusing:
            self._refusing = False
            self._bind(self.address)

    def reset_all(self) -> int:
        """Send a TCP RST on every open connection, both sides; return how many."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.reset()
        return len(links)

    def blackhole(self) -> None:
        """Forward nothing on open and new connections, and keep their sockets open."""
        self._blackholed = True

    def refuse_new(self) -> None:
        """Refuse new connections (the port is closed); open ones are not touched."""
        self._refusing = True
        self._close_listener()

    def drop_new(self) -> None:
        """Accept new connections but never answer or forward them; open ones are not touched."""
        self._dropping = True

    def set_latency(self, seconds: float) -> None:
        """Delay every forwarded chunk, both ways, by *seconds* (0 clears)."""
        if not isinstance(seconds, int | float) or not 0 <= seconds < float("inf"):
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        self._latency = float(seconds)

    def set_bandwidth(self, bytes_per_second: float | None) -> None:
        """Throttle every connection to *bytes_per_second* each way; ``None`` clears."""
        if bytes_per_second is not None and (
            not isinstance(bytes_per_second, int | float) or not 0 < bytes_per_second < float("inf")
        ):
            raise ValueError(
                f"bytes_per_second must be a finite number > 0 or None, got {bytes_per_second!r}"
            )
        self._bandwidth = None if bytes_per_second is None else float(bytes_per_second)

    def cut_after(self, n_bytes: int, *, direction: Direction = "down") -> None:
        """On each connection, forward *n_bytes* more in *direction*, then reset it."""
        if isinstance(n_bytes, bool) or not isinstance(n_bytes, int) or n_bytes < 0:
            raise ValueError(f"n_bytes must be an int >= 0, got {n_bytes!r}")
        self._set_cut(_check_direction(direction), (n_bytes, None))

    def cut_on(self, pattern: bytes, *, direction: Direction = "down") -> None:
        """Reset each connection in the middle of *pattern* when it next passes in *direction*.

        The bytes before the middle of the match are forwarded; the rest never arrive, as
        when a connection dies halfway through a server reply.
        """
        if not isinstance(pattern, bytes) or not pattern:
            raise ValueError(f"pattern must be non-empty bytes, got {pattern!r}")
        self._set_cut(_check_direction(direction), (None, pattern))

    def rewrite(self, old: bytes, new: bytes, *, direction: Direction = "down") -> None:
        """Replace *old* with *new* in everything passing in *direction* from now on.

        A man in the middle, for tests: ``rewrite(b"STARTTLS", b"XTARTTLS")`` strips the
        STARTTLS capability, the downgrade a client must refuse. (A match split across two
        reads is not replaced; IMAP capability lines arrive whole.)
        """
        if not isinstance(old, bytes) or not old or not isinstance(new, bytes):
            raise ValueError("old must be non-empty bytes and new must be bytes")
        direction = _check_direction(direction)
        self._rewrites[direction] = (*self._rewrites[direction], (old, new))

    def _set_cut(self, direction: Direction, spec: tuple[int | None, bytes | None]) -> None:
        self._cuts[direction] = spec
        with self._lock:
            links = list(self._links)
        for link in links:
            link.set_cut(direction, _Cut(*spec))

    # -- internals -------------------------------------------------------------------------------

    def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            # shutdown() first: on Linux it stops the listener at once, even while the accept
            # thread is still inside select() holding a reference to the socket.
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                server.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            server = self._server
            if server is None:
                self._stop.wait(_TICK)
                continue
            try:
                ready, _, _ = select.select([server], [], [], _TICK)
                if not ready:
                    continue
                client, _ = server.accept()
            except (OSError, ValueError):
                continue  # the listener was closed (refuse_new) or is being replaced
            self.accepted += 1
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream: socket.socket | None = None
            if not self._dropping:
                try:
                    upstream = socket.create_connection(self.upstream, timeout=10)
                    upstream.settimeout(None)
                    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    _reset(client)  # the server is down: so is the connection
                    continue
            link = _Link(self, client, upstream)
            for direction, spec in self._cuts.items():
                if spec is not None:
                    link.set_cut(direction, _Cut(*spec))
            with self._lock:
                self._links.add(link)
            link.start()

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def __repr__(self) -> str:
        faults = []
        if self._blackholed:
            faults.append("blackhole")
        if self._refusing:
            faults.append("refusing")
        if self._dropping:
            faults.append("dropping")
        if self._latency:
            faults.append(f"latency={self._latency:g}s")
        if self._bandwidth is not None:
            faults.append(f"bandwidth={self._bandwidth:g}B/s")
        if any(self._cuts.values()):
            faults.append("cut")
        if any(self._rewrites.values()):
            faults.append("rewrite")
        where = f"{self._address[0]}:{self._address[1]}" if self._address else "not started"
        return (
            f"FaultProxy({self.upstream[0]}:{self.upstream[1]} via {where}, "
            f"{', '.join(faults) or 'passing'})"
        )
