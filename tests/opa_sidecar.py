"""The real OPA sidecar for tests: app.policy.opa_server's `opa run --server`, which the
benchmarks run too, with what only tests need around it. `ServedApp` serves a decision
service (the Flask app, in a thread of the test's process) for OPA to pull its bundle
from.

Where the binary is missing (no Go, see `make opa`), `require_opa()` (and so `OpaServer`)
skips the test and says why; with DECISION_TEST_OPA=required (CI: .ci/run) it fails
instead.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from app.policy import opa_server
from app.policy.opa_server import OpaNotBuilt, free_port, opa_binary

__all__ = ["OpaServer", "ServedApp", "free_port", "require_opa"]


def require_opa() -> Path:
    """The OPA binary, or skip (fail with DECISION_TEST_OPA=required) saying why."""
    try:
        return opa_binary()
    except OpaNotBuilt as missing:
        if os.environ.get("DECISION_TEST_OPA") == "required":
            pytest.fail(str(missing))
        pytest.skip(str(missing))


class OpaServer(opa_server.OpaServer):
    """app.policy.opa_server.OpaServer, skipping the test where OPA is not built."""

    def __init__(self, log: Path, **options: Any) -> None:
        require_opa()
        super().__init__(log, **options)


class ServedApp:
    """A decision service's Flask app, served on loopback from a thread (werkzeug), so that
    an OPA sidecar can pull its policy bundle."""

    def __init__(self, flask_app: Flask, *, port: int = 0) -> None:
        self.app = flask_app
        self.server: BaseWSGIServer = make_server("127.0.0.1", port, flask_app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
