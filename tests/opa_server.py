"""An OPA sidecar stand-in for tests: a real HTTP server on loopback that answers OPA's
REST API (Data, Query, Policy and Health APIs) by evaluating the same policy files with
the embedded OPA engine. Knobs make it slow, failing, or an OPA without ad-hoc queries.

`OpaStandIn` serves from a thread of the test's process; `OpaProcess` runs it in a process
of its own, as a sidecar runs (`python tests/opa_server.py POLICY_DIR --port N`), so that a
busy test process does not slow its answers, and killing it is a real outage."""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from conftest import wait_for_ready
from opa_bindings import OpaError

from app.policy.engines import compile_policy_set
from app.policy.files import load_policy_set
from app.store import die_with_parent

KNOBS_PATH = "/_stand-in/knobs"  # POST {"delay_seconds": 1.0, "fail_status": 500}


class _QuietServer(ThreadingHTTPServer):
    """Keeps its open connections, so that closing it is a real outage for keep-alive
    clients too."""

    daemon_threads = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.connections: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (the service's timeout) is not news

    def close_all(self) -> None:
        self.shutdown()
        self.server_close()
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class OpaStandIn:
    def __init__(self, policy_dir: Path, *, bundles: dict[str, str] | None = None,
                 port: int = 0) -> None:
        self.policies = load_policy_set(policy_dir)
        self.engine = compile_policy_set(self.policies)
        if bundles:
            self.engine.add_data({name: {"manifest": {"revision": rev}}
                                  for name, rev in bundles.items()}, path="system.bundles")
        self.bundles = bundles or {}
        self.delay_seconds = 0.0
        self.fail_status: int | None = None
        self.query_api = True
        self.requests: Counter[str] = Counter()
        self.traceparents: list[str | None] = []
        self._lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as OPA and real executors do
            disable_nagle_algorithm = True  # headers and body are two writes

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _serve(self, method: str) -> None:
                path = self.path.split("?")[0]
                if method == "POST" and path == KNOBS_PATH:  # not OPA's: for OpaProcess
                    length = int(self.headers.get("Content-Length") or 0)
                    for name, value in json.loads(self.rfile.read(length)).items():
                        assert name in ("delay_seconds", "fail_status"), name
                        setattr(stand_in, name, value)
                    self._answer(200, {})
                    return
                with stand_in._lock:
                    stand_in.requests[f"{method} {path}"] += 1
                    stand_in.traceparents.append(self.headers.get("traceparent"))
                if stand_in.delay_seconds:
                    time.sleep(stand_in.delay_seconds)
                if stand_in.fail_status is not None:
                    self._answer(stand_in.fail_status, {"code": "internal_error",
                                                        "message": "stand-in told to fail"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                try:
                    status, answer = stand_in.handle(method, self.path, body)
                except OpaError as exc:
                    status, answer = 500, {"code": "internal_error", "message": exc.message}
                self._answer(status, answer)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        self.server = _QuietServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def handle(self, method: str, raw_path: str, body: dict[str, Any]) -> tuple[int, Any]:
        path, _, query = raw_path.partition("?")
        if method == "GET" and path == "/health":
            return 200, {}
        if method == "GET" and path == "/v1/policies":
            return 200, {"result": [{"id": name, "raw": source}
                                    for name, source in self.policies.modules.items()]}
        if method == "POST" and path.startswith("/v1/data/"):
            document = "data." + path.removeprefix("/v1/data/").replace("/", ".")
            rows = self.engine.eval_query(f"x := {document}", body.get("input"))
            answer: dict[str, Any] = {"result": rows[0]["x"]} if rows else {}
            if "provenance=true" in query:
                answer["provenance"] = {"version": "stand-in", "bundles": {
                    name: {"revision": rev} for name, rev in self.bundles.items()}}
            return 200, answer
        if method == "POST" and path == "/v1/query":
            if not self.query_api:
                return 404, {"code": "resource_not_found", "message": "not found"}
            return 200, {"result": self.engine.eval_query(body["query"], body.get("input"))}
        return 404, {"code": "resource_not_found", "message": f"{method} {path}"}

    def close(self) -> None:
        self.server.close_all()


class OpaProcess:
    """The stand-in in a process of its own, on `port`, serving `policy_dir`; it is ready
    when the constructor returns. Its output goes to `log`."""

    def __init__(self, policy_dir: Path, *, port: int, log: Path,
                 start_timeout_seconds: float = 30.0) -> None:
        self.url = f"http://127.0.0.1:{port}"
        with open(log, "ab") as out:
            # Started from a thread that outlives it (see app.store.die_with_parent).
            self.process = subprocess.Popen(
                [sys.executable, __file__, str(policy_dir), "--port", str(port)],
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        try:
            wait_for_ready(self.url, self.process, start_timeout_seconds, path="/health")
        except AssertionError as exc:
            self.kill()
            raise RuntimeError(f"the OPA stand-in did not start: {exc}:\n"
                               f"{log.read_text(errors='replace')[-2000:]}") from exc

    def set_knobs(self, **knobs: Any) -> None:
        """`delay_seconds` before every answer; `fail_status` instead of every answer."""
        requests.post(f"{self.url}{KNOBS_PATH}", json=knobs, timeout=5).raise_for_status()

    def kill(self) -> None:
        """SIGKILL: OPA gone at once, with every connection it held."""
        self.process.kill()
        self.process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve the OPA stand-in until killed.")
    parser.add_argument("policy_dir", type=Path)
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    OpaStandIn(arguments.policy_dir, port=arguments.port)._thread.join()
