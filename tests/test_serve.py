"""`decision-service serve` as `make run` starts it: embedded Redis, gunicorn, real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import wait_for_ready
from opa_sidecar import free_port


@pytest.mark.parametrize("access_log", [False, True])
def test_serve_starts_redis_and_the_api_then_stops_both(tmp_path: Path, access_log: bool) -> None:
    port = free_port()
    env = {**os.environ, "DECISION_DATA_DIR": str(tmp_path / "var"), "DECISION_PORT": str(port),
           "DECISION_ACCESS_LOG": str(access_log).lower()}
    env.pop("DECISION_REDIS_URL", None)
    exe = Path(sys.executable).with_name("decision-service")
    server = subprocess.Popen([str(exe), "serve"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_ready(base, server, 30)
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert {b"GOGC=400", b"GOMAXPROCS=1"} <= set(environ), "embedded OPA's Go settings"
        facts = [
            {"subject": "PR-7", "type": "purchase_request", "department": "procurement",
             "data": {"request_id": "PR-7", "amount": 90000}},
            {"subject": "PR-7", "type": "budget_check", "department": "finance",
             "data": {"request_id": "PR-7", "available": 150000}},
            {"subject": "PR-7", "type": "risk_assessment", "department": "risk",
             "data": {"request_id": "PR-7", "score": 0.3}},
        ]
        posted = requests.post(f"{base}/v1/facts", json={"facts": facts}, timeout=5)
        assert posted.status_code == 201
        pooled = requests.get(f"{base}/v1/subjects/PR-7/facts", timeout=5).json()["facts"]
        assert sorted(f["department"] for f in pooled) == ["finance", "procurement", "risk"]
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}" in output
    access_lines = [line for line in output.splitlines()
                    if '"gunicorn.access"' in line and "POST /v1/facts" in line]
    assert len(access_lines) == (1 if access_log else 0), output
    assert not (tmp_path / "var" / "redis.sock").exists(), "the embedded Redis must stop too"


def _serve_env(tmp_path: Path, port: int) -> dict[str, str]:
    env = {**os.environ, "DECISION_DATA_DIR": str(tmp_path / "var"), "DECISION_PORT": str(port)}
    env.pop("DECISION_REDIS_URL", None)
    return env


def test_a_second_serve_on_a_busy_port_fails_at_once(tmp_path: Path) -> None:
    """No "listening" line, no Redis started, no gunicorn retrying for seconds: a clear
    refusal and a non-zero exit."""
    exe = Path(sys.executable).with_name("decision-service")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = int(holder.getsockname()[1])
        result = subprocess.run([str(exe), "serve"], env=_serve_env(tmp_path, port),
                                capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "listening" not in result.stdout + result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Address already in use" in result.stderr
    assert not (tmp_path / "var" / "redis.sock").exists(), "no Redis started for nothing"


def test_ctrl_c_stops_the_api_before_redis_and_each_instance_has_its_control_socket(
        tmp_path: Path) -> None:
    """Ctrl-C signals the terminal's whole process group: the embedded Redis is not in it,
    so it outlives the web workers and stops after them (before, it stopped with them and
    every shutdown logged "Redis did not answer"). gunicorn's control socket is this
    instance's, in the data directory, not ~/.gunicorn/gunicorn.ctl shared by all."""
    port = free_port()
    home = tmp_path / "home"
    home.mkdir()
    env = {**_serve_env(tmp_path, port), "HOME": str(home)}
    env.pop("XDG_RUNTIME_DIR", None)
    exe = Path(sys.executable).with_name("decision-service")
    server = subprocess.Popen([str(exe), "serve"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    control = tmp_path / "var" / f"gunicorn-{port}.ctl"
    try:
        wait_for_ready(f"http://127.0.0.1:{port}", server, 30)
        assert control.is_socket()
        assert not (home / ".gunicorn").exists()
    finally:
        os.killpg(server.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        output, _ = server.communicate(timeout=30)
    assert "Redis did not answer" not in output, output
    assert "Traceback" not in output, output
    assert not (tmp_path / "var" / "redis.sock").exists(), "the embedded Redis must stop too"
    assert not control.exists()
