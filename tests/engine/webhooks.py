"""A local webhook and heartbeat receiver for the tests: a real HTTP server on loopback that
records every request and answers with the statuses it is told to (then 200).

Tests wait on it with a condition variable (``wait_for``), never with sleeps.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from daemon.adapters import webhook as notify


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.body)
        return document

    def header(self, name: str) -> str | None:
        """HTTP header names are case-insensitive (urllib sends ``X-cbr-replicator-...``)."""
        return self.headers.get(name.lower())

    def signed_with(self, secret: str) -> bool:
        timestamp = self.header(notify.TIMESTAMP_HEADER) or ""
        expected = notify.sign(secret, timestamp, self.body)
        return self.header(notify.SIGNATURE_HEADER) == expected


class Receiver:
    """``statuses`` are the answers to the first requests, in order; 200 after them."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[Received] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._record(self)

            def do_GET(self) -> None:
                receiver._record(self)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True
        )

    def _record(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        with self._changed:
            self.requests.append(
                Received(
                    handler.command,
                    handler.path,
                    {key.lower(): value for key, value in handler.headers.items()},
                    body,
                )
            )
            status = self.statuses.pop(0) if self.statuses else 200
            self._changed.notify_all()
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def events(self) -> list[dict[str, Any]]:
        """The JSON events posted, in order (every try of a retried delivery included)."""
        return [request.event for request in self.posts()]

    def event_names(self) -> list[str]:
        return [event["event"] for event in self.events()]

    def posts(self) -> list[Received]:
        with self._changed:
            return [request for request in self.requests if request.method == "POST"]

    def pings(self, path: str = "") -> list[Received]:
        with self._changed:
            return [r for r in self.requests if r.method == "GET" and r.path.startswith(path)]

    def wait_for(self, ready: Callable[[Receiver], bool], timeout: float = 20.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: ready(self), timeout=timeout):
                raise AssertionError(f"receiver: condition not met; got {self.requests}")

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def receiving(statuses: list[int] | None = None) -> Iterator[Receiver]:
    """For fixtures: a started receiver, stopped at the end."""
    receiver = Receiver(statuses).start()
    try:
        yield receiver
    finally:
        receiver.stop()
