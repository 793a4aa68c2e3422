"""The servers the HTTP benchmarks load, each under gunicorn in a process group of its own,
and wrk against them, with the CPU every process spent per request.

`server()` starts the service (`decision-service serve`, API keys on), or, through this
script's hidden subcommands, the floor (`serve-floor`: parse the body, read the fact hash)
or the service with its policy gate answering without OPA (`serve-without-opa`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.policy.opa_server import free_port
from app.shared.store import connect

from .common import ROOT, SCRIPT, SUBJECTS

FLOOR_REDIS_ENV = "BENCH_FLOOR_REDIS_URL"
FLOOR_OPA_ENV = "BENCH_FLOOR_OPA"


def _make_floor() -> Any:
    """The floor: a Flask JSON endpoint that parses the same body and reads the subject's
    fact hash from Redis, and nothing else. With `FLOOR_OPA_ENV` set, it also makes one
    call into embedded OPA with the sample policies loaded, for a query that reads
    nothing (`x := true`, no input): what entering OPA costs, whatever it evaluates."""
    from flask import Flask, request

    from app.policy.embedded import compile_policy_set, evaluate_query
    from app.policy.files import load_policy_set
    from app.shared import keys

    app = Flask("floor")
    client = connect(os.environ[FLOOR_REDIS_ENV], timeout_seconds=5.0)
    opa = compile_policy_set(load_policy_set(ROOT / "rego")) if os.environ.get(
        FLOOR_OPA_ENV) else None

    @app.post("/v1/decisions")
    def floor() -> Any:
        body = request.get_json()
        answer = {"subject": body["subject"],
                  "facts": list(client.hgetall(keys.subject_facts(body["subject"])).values())}
        if opa is not None:
            answer["opa"] = evaluate_query(opa, "x := true", None)
        return answer

    return app


def serve_floor(port: int) -> None:
    from gunicorn.app.base import BaseApplication

    class Floor(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"127.0.0.1:{port}")
            self.cfg.set("workers", 2)
            self.cfg.set("loglevel", "warning")

        def load(self) -> Any:
            return _make_floor()

    Floor().run()


class _AllowWithoutOpa:
    """For the ablation row only: a gate that allows every action without evaluating
    anything. Never part of the service."""

    kind = "embedded"
    revision = "ablation"
    policy_set = None

    def decide(self, path: str, common: dict[str, Any], items: list[dict[str, Any]], *,
               item_key: str = "action") -> Any:
        from app.policy.engines import Answer

        return Answer([{"allow": True, "deny": []} for _ in items], self.revision)

    def readiness(self) -> str:
        return "ok"

    def stable_revision(self) -> str | None:
        return None


def serve_without_opa() -> None:
    """`decision-service serve` exactly (its gunicorn settings, from the environment), but
    each worker's policy gate answers without OPA."""
    import app.api
    from app.cli.common import load_settings
    from app.cli.serve import run_gunicorn

    create_app = app.api.create_app

    def without_opa(config: Any = None) -> Any:
        flask_app = create_app(config)
        flask_app.extensions["decision_service"].policy.engine = _AllowWithoutOpa()
        return flask_app

    app.api.create_app = without_opa  # run_gunicorn imports it in each worker
    run_gunicorn(load_settings())


def _wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    import requests

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{url} exited"
        try:
            requests.get(url, timeout=5)
            return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


SERVER_GROUPS: dict[str, int] = {}  # base URL -> process group of the server


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU the processes have used so far (from /proc)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _group(pgid: int) -> list[int]:
    """The processes of a process group (a server and its gunicorn workers)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(stat.parent.name))
    return pids


# The service runs as production does: with API keys, asking the access policy on every
# /v1 request. wrk sends this key (of the procurement portal) to every server.
BENCH_KEY = "bench-procurement-portal-key-0123456789"


@functools.cache
def _keys_file() -> Path:
    from app.policy.access import hash_key

    path = Path(tempfile.mkdtemp(prefix="bench-keys-")) / "api-keys.yaml"
    path.write_text(json.dumps({"keys": [{
        "id": "procurement-portal", "sha256": hash_key(BENCH_KEY),
        "departments": ["procurement"], "rulesets": ["procurement"], "grants": []}]}))
    return path


@contextlib.contextmanager
def server(kind: str, redis_url: str, *, port: int | None = None, workers: int = 2,
           keys: bool = True, environment: dict[str, str] | None = None) -> Iterator[str]:
    """A server of `kind` on `port`; the service kinds with API keys on unless `keys` is
    false. It runs the code of this checkout (PYTHONPATH), whatever the virtualenv has
    installed."""
    port = port or free_port()
    env = {**os.environ, "DECISION_REDIS_URL": redis_url, "DECISION_PORT": str(port),
           "DECISION_WORKERS": str(workers), "DECISION_BACKGROUND_WORKER": "false",
           "DECISION_RULES_DIR": str(ROOT / "rules"), "DECISION_POLICY_DIR": str(ROOT / "rego"),
           "PYTHONPATH": str(ROOT), FLOOR_REDIS_ENV: redis_url, **(environment or {})}
    if kind.startswith("service") and keys:
        env["DECISION_API_KEYS_FILE"] = str(_keys_file())
    if kind == "service":
        command = [str(Path(sys.executable).with_name("decision-service")), "serve"]
    elif kind == "service-without-opa":
        command = [sys.executable, str(SCRIPT), "serve-without-opa"]
    else:
        if kind == "floor+opa":
            env[FLOOR_OPA_ENV] = "1"
        command = [sys.executable, str(SCRIPT), "serve-floor", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/healthz", process)
        SERVER_GROUPS[f"http://127.0.0.1:{port}"] = process.pid
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


_WRK_DECISIONS = """
math.randomseed(os.time())
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %KEY%"
request = function()
  local subject = string.format("PR-%05d", math.random(0, %SUBJECTS% - 1))
  return wrk.format(nil, "/v1/decisions",
                    nil, '{"subject": "' .. subject .. '", "ruleset": "procurement"}')
end
"""


def wrk_decisions() -> str:
    return _WRK_DECISIONS.replace("%SUBJECTS%", str(SUBJECTS)).replace("%KEY%", BENCH_KEY)


def wrk(url: str, script: str, *, connections: int, seconds: int,
         redis_url: str | None = None, opa_pids: tuple[int, ...] = ()) -> dict[str, float]:
    """wrk's figures; with `redis_url`, also the CPU time the server's processes, Redis and
    the OPA sidecar (`opa_pids`) spent per request meanwhile (`server_cpu_us`,
    `redis_cpu_us`, `opa_cpu_us`)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script)
    servers = _group(SERVER_GROUPS[re.sub(r"^(https?://[^/]+).*", r"\1", url)])
    redis_pid = []
    if redis_url is not None:
        with contextlib.closing(connect(redis_url, timeout_seconds=5.0, cluster=False)) as client:
            redis_pid = [int(client.info("server")["process_id"])]
    opa = list(opa_pids)
    before = cpu_seconds(servers), cpu_seconds(redis_pid), cpu_seconds(opa)
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", lua.name, url],
        capture_output=True, text=True, check=True).stdout
    after = cpu_seconds(servers), cpu_seconds(redis_pid), cpu_seconds(opa)
    os.unlink(lua.name)
    if not re.search(r"^\s+50%\s+[\d.]+", output, re.M):
        raise RuntimeError(f"wrk printed no latency distribution:\n{output}")

    def ms(text: str) -> float:
        value, unit = re.match(r"([\d.]+)(us|ms|s|m)?", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0,
                               None: 1.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    requests = float(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
            "p50": ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1)),  # type: ignore[union-attr]
            "p99": ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1)),  # type: ignore[union-attr]
            "non2xx": float(errors.group(1)) if errors else 0.0,
            "server_cpu_us": (after[0] - before[0]) / requests * 1e6,
            "redis_cpu_us": (after[1] - before[1]) / requests * 1e6,
            "opa_cpu_us": (after[2] - before[2]) / requests * 1e6}


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    return sorted(runs, key=lambda run: run["rps"])[len(runs) // 2]
