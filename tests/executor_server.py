"""An executor for tests: a real HTTP server on loopback that records what it receives
and answers as told (a status per attempt, a delay), and can go down and come back."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int = 200  # what the executor answered (after delay_seconds)
    arrived: float = 0.0  # time.monotonic()
    client_port: int = 0  # the same for requests on one kept-alive connection


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a dispatcher that gave up (its timeout) is not news


class Executor:
    def __init__(self, port: int = 0) -> None:
        self.deliveries: list[Delivery] = []
        self.statuses: list[int] = []  # answers for the next attempts; then 200
        self.failing_status: int | None = None  # while set, the answer to every attempt
        # Deliveries this says no to are answered 500 at every attempt: (path, headers) ->
        # refuse (say, one action in ten of a type, by its Idempotency-Key).
        self.refuses: Callable[[str, dict[str, str]], bool] | None = None
        self.delay_seconds = 0.0
        self.in_flight: list[Delivery] = []  # arrived, not answered yet
        self._lock = threading.Lock()
        self.port = port
        self.server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        executor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as OPA and real executors do
            disable_nagle_algorithm = True  # headers and body are two writes

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with executor._lock:
                    status = (executor.statuses.pop(0) if executor.statuses else
                              executor.failing_status or 200)
                    if executor.refuses is not None and executor.refuses(
                            self.path, dict(self.headers)):
                        status = 500
                    delivery = Delivery(self.path, dict(self.headers), body, status,
                                        time.monotonic(), self.client_address[1])
                    executor.deliveries.append(delivery)
                    executor.in_flight.append(delivery)
                try:
                    if executor.delay_seconds:
                        time.sleep(executor.delay_seconds)
                finally:
                    with executor._lock:
                        executor.in_flight.remove(delivery)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = _QuietServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def keys(self) -> list[str]:
        return [d.headers["Idempotency-Key"] for d in self.deliveries]
