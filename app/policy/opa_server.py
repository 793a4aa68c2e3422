"""The real OPA server as a process of its own: `opa run --server` on loopback, the binary
`make opa` builds from tools/opa into .venv/bin/opa (the OPA version of the embedded
engine), with its decision log on (console).

The service never starts OPA (docker-compose.yml runs the sidecar); this runs it where
the service is measured or checked against the real sidecar: the test suite and
scripts/bench. It serves either a policy directory as plain files, or the bundle a
decision service serves (`bundle_url`, the service's `/v1` base: OPA polls
`GET /v1/bundles/<name>`), as docker-compose.yml runs it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from app.shared.http_client import Endpoint
from app.shared.store import die_with_parent

OPA = Path(sys.executable).with_name("opa")  # .venv/bin/opa
BUNDLE = "decision-service"


class OpaNotBuilt(FileNotFoundError):
    """The OPA binary is not at `OPA`; the message says how to build it."""


def opa_binary() -> Path:
    """The OPA binary, or `OpaNotBuilt` saying why it is not there."""
    if OPA.is_file() and os.access(OPA, os.X_OK):
        return OPA
    raise OpaNotBuilt(f"the real OPA is not built at {OPA}: run `make opa` (it needs Go 1.26 "
                      "and the Go module proxy; tools/opa pins the version)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OpaServer:
    """`opa run --server` on 127.0.0.1:`port` (or on the Unix socket `socket_path`),
    serving `policies` (a directory, as plain files) or pulling the bundle `bundle` from
    `bundle_url`. Ready (health, and with a bundle, the bundle activated) when the
    constructor returns, unless `wait` is False. Its output (the decision log among it,
    one JSON object a line) goes to `log`."""

    def __init__(self, log: Path, *, policies: Path | None = None,
                 bundle_url: str | None = None, bundle: str = BUNDLE,
                 token: str | None = None, port: int | None = None,
                 socket_path: Path | None = None, extra_args: tuple[str, ...] = (),
                 config: dict[str, Any] | None = None, wait: bool = True,
                 env: dict[str, str] | None = None, config_file: Path | None = None,
                 start_timeout_seconds: float = 30.0) -> None:
        self.binary = opa_binary()
        self.log = log
        self.port = port or free_port()
        self.socket_path = socket_path
        addr = f"unix://{socket_path}" if socket_path else f"127.0.0.1:{self.port}"
        self.url = f"unix://{socket_path}" if socket_path else f"http://127.0.0.1:{self.port}"
        settings: dict[str, Any] = {"decision_logs": {"console": True}, **(config or {})}
        if bundle_url is not None:
            service: dict[str, Any] = {"url": bundle_url}
            if token is not None:
                service["credentials"] = {"bearer": {"token": token}}
            settings["services"] = {"decision-service": service}
            settings["bundles"] = {bundle: {
                "service": "decision-service", "resource": f"bundles/{bundle}",
                "polling": {"min_delay_seconds": 1, "max_delay_seconds": 2}}}
        if config_file is None:  # else a file of OPA configuration of its own, with a bundle
            config_file = log.with_suffix(".config.yaml")
            config_file.write_text(yaml.safe_dump(settings))
        self.command = [str(self.binary), "run", "--server", "--skip-version-check",
                        "--addr", addr, "--log-format", "json", "--log-level", "info",
                        "--config-file", str(config_file), *extra_args,
                        *([str(policies)] if policies is not None else [])]
        self.with_bundle = bundle_url is not None or "bundles" in yaml.safe_load(
            config_file.read_text())
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.start_timeout_seconds = start_timeout_seconds
        self.start(wait=wait)

    def start(self, *, wait: bool = True) -> None:
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)
        with open(self.log, "ab") as out:
            # Started from a thread that outlives it (see app.shared.store.die_with_parent).
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT,
                                            env=self.env, preexec_fn=die_with_parent)
        if wait:
            self.wait_until_ready()

    def health(self, *, bundles: bool | None = None) -> int:
        """The status of GET /health (with `?bundles` when OPA pulls a bundle), 0 when
        it does not answer."""
        path = "/health?bundles" if (self.with_bundle if bundles is None else bundles) \
            else "/health"
        try:
            return self.get(path, timeout=1).status_code
        except requests.RequestException:
            return 0

    def get(self, path: str, *, timeout: float = 5) -> requests.Response:
        endpoint = Endpoint(self.url, pool_size=1)
        try:
            return endpoint.request("GET", path, timeout=timeout)
        finally:
            endpoint.close()

    def post(self, path: str, body: Any, *, timeout: float = 5) -> Any:
        """The `result` of a POST to OPA's REST API (None when undefined)."""
        endpoint = Endpoint(self.url, pool_size=1)
        try:
            response = endpoint.request("POST", path, body=json.dumps(body).encode(),
                                        timeout=timeout)
        finally:
            endpoint.close()
        response.raise_for_status()
        return response.json().get("result")

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_seconds
        while self.health() != 200:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"OPA exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"OPA was not ready within {self.start_timeout_seconds}s:"
                                   f"\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def decision_log(self) -> list[dict[str, Any]]:
        """OPA's decision log entries so far (its console output)."""
        entries = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"Decision Log"' in line:
                entries.append(json.loads(line))
        return entries

    def logged_decision(self, decision_id: str | None,
                        seconds: float = 5.0) -> dict[str, Any]:
        """OPA's decision log entry of that id (waiting for OPA to write it)."""
        deadline = time.monotonic() + seconds
        while True:
            for entry in self.decision_log():
                if entry.get("decision_id") == decision_id:
                    return entry
            if time.monotonic() > deadline:
                raise AssertionError(f"OPA logged no decision {decision_id}")
            time.sleep(0.02)

    def requests_served(self) -> dict[str, int]:
        """OPA's own count of HTTP requests, by method and handler (its /metrics)."""
        return requests_served(self.url)

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def pause(self) -> None:
        """SIGSTOP: OPA hangs, connections and all, until `resume`."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: OPA gone at once, with every connection it held."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a stopped process dies too, but say so
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        self.kill()


def requests_served(url: str) -> dict[str, int]:
    """The count of HTTP requests the OPA at `url` served, by method and handler, as its
    /metrics says ("POST v1/data": n)."""
    counts: dict[str, int] = {}
    endpoint = Endpoint(url, pool_size=1)
    try:
        text = endpoint.request("GET", "/metrics", timeout=5).text
    finally:
        endpoint.close()
    for line in text.splitlines():
        if line.startswith("http_request_duration_seconds_count{"):
            labels = dict(part.split("=", 1) for part in
                          line[line.index("{") + 1:line.index("}")].split(","))
            key = f"{labels['method'].strip(chr(34)).upper()} " \
                  f"{labels['handler'].strip(chr(34))}"
            counts[key] = counts.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts
