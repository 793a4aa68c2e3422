"""A stand-in executor for trying the service locally (`decision-service echo-executor`):
it prints each CloudEvent the dispatcher delivers and answers 200. Not for production:
real executors act on the action, and answer after they have."""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_EVENT_BYTES = 1_000_000


def describe(event: dict[str, Any]) -> str:
    """One line for a delivered event: the action, its subject, its parameters."""
    data = event.get("data") or {}
    action = data.get("action") or {}
    return (f"{action.get('type', '?')} for {event.get('subject', '?')} (decision "
            f"{data.get('decision_id', '?')}): {json.dumps(action.get('params', {}))}")


def echo_server(host: str, port: int, say: Callable[[str], Any]) -> ThreadingHTTPServer:
    """The server, bound and not yet serving (`serve_forever` it)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_EVENT_BYTES:
                self._answer(413 if length else 400)
                return
            try:
                event = json.loads(self.rfile.read(length))
            except ValueError:
                self._answer(400)
                return
            say(describe(event) if isinstance(event, dict) else "not a CloudEvent")
            self._answer(200)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve_echo(host: str, port: int, say: Callable[[str], Any]) -> None:
    server = echo_server(host, port, say)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
