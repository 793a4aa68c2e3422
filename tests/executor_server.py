"""An executor for tests: a real HTTP server on loopback that records what it receives
and answers as told (a status per attempt, a delay), and can go down and come back."""

from __future__ import annotations

import json
import threading
import time
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


class Executor:
    def __init__(self, port: int = 0) -> None:
        self.deliveries: list[Delivery] = []
        self.statuses: list[int] = []  # answers for the next attempts; then 200
        self.failing_status: int | None = None  # while set, the answer to every attempt
        self.delay_seconds = 0.0
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
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with executor._lock:
                    status = (executor.statuses.pop(0) if executor.statuses else
                              executor.failing_status or 200)
                    executor.deliveries.append(Delivery(self.path, dict(self.headers), body,
                                                        status, time.monotonic()))
                if executor.delay_seconds:
                    time.sleep(executor.delay_seconds)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def keys(self) -> list[str]:
        return [d.headers["Idempotency-Key"] for d in self.deliveries]
