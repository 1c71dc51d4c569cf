"""A webhook receiver for tests: HTTP(S) on 127.0.0.1 that keeps the JSON posted, or fails."""

from __future__ import annotations

import collections
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from servers.tls import TestCA

__all__ = ["WebhookReceiver"]


class WebhookReceiver:
    """Keeps each POST's JSON in :attr:`received`; :attr:`faults` script the next requests.

    Each request takes the next fault, if any: ``"500"`` (or any status code) answers with
    it, ``"close"`` closes the connection without an answer, ``"hang"`` answers nothing
    until the receiver stops. Every request's path and headers are in :attr:`requests`.
    """

    def __init__(self, *, ca: TestCA | None = None) -> None:
        self.received: list[dict[str, Any]] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.faults: collections.deque[str] = collections.deque()
        self._ca = ca
        self._arrived = threading.Condition()
        self._stopping = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._arrived:
                    receiver.requests.append((self.path, dict(self.headers.items())))
                    fault = receiver.faults.popleft() if receiver.faults else ""
                if fault == "hang":
                    receiver._stopping.wait(30)
                    self.close_connection = True
                    return
                if fault == "close":
                    self.close_connection = True
                    return
                if fault:
                    self.send_response(int(fault))
                    self.send_header("Content-Length", "9")
                    self.end_headers()
                    self.wfile.write(b"not now\r\n")
                    return
                with receiver._arrived:
                    receiver.received.append(json.loads(body))
                    receiver._arrived.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that gave up (a timeout test) is no error of the server's

        self._server = Server(("127.0.0.1", 0), Handler)
        if ca is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(ca.cert_pem), str(ca.key_pem))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def url(self, path: str = "/hook") -> str:
        """The receiver's URL, ``http://`` or (with a CA) ``https://``, on 127.0.0.1."""
        return f"{'https' if self._ca else 'http'}://127.0.0.1:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until *count* bodies arrived (real time, at most *timeout*); return them."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.received) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(self.received)} of {count} webhooks arrived")
                self._arrived.wait(remaining)
            return list(self.received)

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
