"""`bench sidecar`: embedded OPA against the real OPA sidecar (app.policy.opa_server) over
TCP and over a Unix socket, in-process and over HTTP, with the CPU of every process a
decision goes through; then what a delivery to an executor costs the dispatching thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from app.dispatch.dispatcher import Dispatcher
from app.dispatch.echo import echo_server
from app.policy.opa_server import OPA, OpaServer, free_port, requests_served
from app.service import DecisionService
from app.shared.store import connect

from .common import (
    SUBJECTS,
    open_service,
    percentile,
    pin_to_one_core,
    pool,
    running_redis,
    sample_facts,
    table,
    unpin,
)
from .servers import cpu_seconds, median_run, server, wrk, wrk_decisions


def _thread_cpu_us(call: Callable[[], Any], repeats: int) -> float:
    """Median over 5 runs of `repeats` calls: CPU of this thread per call, in µs. The
    servers it talks to answer from other threads (or processes): not counted."""
    call()
    runs = []
    for _ in range(5):
        started = time.thread_time()
        for _ in range(repeats):
            call()
        runs.append((time.thread_time() - started) / repeats * 1e6)
    return statistics.median(runs)


def _post_cpu_rows(url: str) -> list[tuple[str, str]]:
    """One POST of a delivery's size, through a requests Session as the service sent them
    until 2026-12-01 and through app.shared.http_client.Endpoint, in alternating runs."""
    from app.shared.http_client import Endpoint, pooled_session

    body = json.dumps({"specversion": "1.0", "id": "d" * 36 + ":" + "a" * 16,
                       "data": {"action": {"type": "issue_purchase_order"}}}).encode()
    headers = {"Content-Type": "application/cloudevents+json", "Idempotency-Key": "k"}
    session, endpoint = pooled_session(pool_size=1), Endpoint(url, pool_size=1)
    calls = {"requests' Session.post": lambda: session.post(
                 url, data=body, headers=headers, timeout=5),
             "app.shared.http_client.Endpoint": lambda: endpoint.request(
                 "POST", body=body, headers=headers, timeout=5)}
    runs: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(3):
        for name, call in calls.items():
            runs[name].append(_thread_cpu_us(call, 300))
    endpoint.close()
    session.close()
    return [(f"one POST to the executor through {name}: CPU of the calling thread (µs)",
             f"{statistics.median(values):,.0f}") for name, values in runs.items()]


MODES = {"embedded": "embedded OPA (in the worker)",
         "tcp": "OPA sidecar, HTTP on loopback (keep-alive)",
         "unix": "OPA sidecar, HTTP over a Unix socket (keep-alive)"}


@contextlib.contextmanager
def sidecars(redis_url: str, directory: Path) -> Iterator[dict[str, Any]]:
    """A gunicorn service (2 workers) per mode, and for the sidecar modes the real OPA
    (`make opa`) pulling the bundle that service serves, its decision log on (to a file),
    as docker-compose.yml runs it: {mode: {"url", "opa_url", "opa_pid"}}."""
    from app.policy.embedded import GO_RUNTIME

    # The sidecar runs with Go's defaults (as docker-compose.yml runs it), not with the
    # settings this process took for embedded OPA (exec_with_go_runtime).
    go_defaults = {k: v for k, v in os.environ.items() if k not in GO_RUNTIME}
    with contextlib.ExitStack() as stack:
        modes: dict[str, Any] = {}
        for mode in MODES:
            port, environment, opa_url = free_port(), {}, None
            if mode != "embedded":
                opa_port = free_port()
                sock = directory / f"opa-{mode}.sock"
                opa_url = f"unix://{sock}" if mode == "unix" else f"http://127.0.0.1:{opa_port}"
                environment["DECISION_OPA_URL"] = opa_url
            # keys off: the sidecar pulls its bundle without one
            base = stack.enter_context(server("service", redis_url, port=port, keys=False,
                                              environment=environment))
            entry = {"url": base, "opa_url": opa_url, "opa_pid": None}
            if mode != "embedded":
                opa = OpaServer(directory / f"opa-{mode}.log", bundle_url=f"{base}/v1",
                                port=opa_port, socket_path=sock if mode == "unix" else None,
                                env=go_defaults)
                stack.callback(opa.close)
                assert opa.process is not None
                entry["opa_pid"] = opa.process.pid
                deadline = time.monotonic() + 30  # ready: OPA runs the service's bundle
                while _http_status(f"{base}/readyz") != 200:
                    assert time.monotonic() < deadline, f"{mode}: the service never got ready"
                    time.sleep(0.2)
            modes[mode] = entry
        yield modes


def _http_status(url: str) -> int:
    import requests

    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return 0


def _in_process(service: DecisionService, subject: str, opa_pid: int | None, redis_pid: int,
                decisions: int) -> dict[str, float]:
    """`decisions` decisions on `subject` from this thread: wall time per decision (median,
    p99) and CPU per decision of this thread, the OPA sidecar and Redis."""
    walls = []
    opa = [opa_pid] if opa_pid else []
    cpu_before = time.thread_time(), cpu_seconds(opa), cpu_seconds([redis_pid])
    for _ in range(decisions):
        started = time.perf_counter()
        service.decider.decide(subject=subject, ruleset_name="procurement")
        walls.append(time.perf_counter() - started)
    cpu_after = time.thread_time(), cpu_seconds(opa), cpu_seconds([redis_pid])
    thread, opa_cpu, redis_cpu = ((b - a) / decisions * 1e6
                                  for a, b in zip(cpu_before, cpu_after, strict=True))
    return {"p50": statistics.median(walls) * 1e6, "p99": percentile(walls, 0.99) * 1e6,
            "thread": thread, "opa": opa_cpu, "redis": redis_cpu,
            "total": thread + opa_cpu + redis_cpu}


def _opa_requests_per_decision(services: dict[str, Any], modes: dict[str, Any],
                               cases: dict[int, list[dict[str, Any]]]) -> list[tuple[str, str]]:
    """Requests to OPA per decision, as OPA counts them (its /metrics)."""
    rows = []
    for actions, facts in cases.items():
        subject = facts[0]["subject"]
        for mode in ("tcp", "unix"):
            services[mode].decider.decide(subject=subject, ruleset_name="procurement")
            opa_url = modes[mode]["opa_url"]
            before = requests_served(opa_url).get("POST v1/data", 0)
            record = services[mode].decider.decide(subject=subject,
                                                   ruleset_name="procurement").record
            assert len(record["actions"]) == actions, record["actions"]
            assert all(a["verdict"]["opa_decision_id"] for a in record["actions"])
            after = requests_served(opa_url).get("POST v1/data", 0)
            rows.append((f"{MODES[mode]}: a decision with {actions} action(s), HTTP "
                         "requests to OPA (OPA's own count)", f"{after - before}"))
    return rows


def run(decisions: int = 1000, seconds: int = 8, rounds: int = 3) -> str:
    """Embedded OPA, and the real OPA sidecar over TCP and over a Unix socket, in one run:
    in-process (one deciding thread) and over HTTP (gunicorn, wrk), with the CPU of every
    process a decision goes through; then the delivery path's CPU."""
    if not OPA.is_file():
        return (f"### The OPA sidecar against embedded OPA\n\nThe OPA binary is not built "
                f"({OPA}): `make opa`.")
    rows: list[tuple[str, str]] = []
    http_rows: list[tuple[str, str]] = []
    with running_redis() as url, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        with contextlib.closing(connect(url, timeout_seconds=5.0, cluster=False)) as client:
            redis_pid = int(client.info("server")["process_id"])
        seed = open_service(url)
        pool(seed)
        cases = {1: sample_facts("S-1", 0), 2: sample_facts("S-2", 1)}  # 1 and 2 actions
        for facts in cases.values():
            seed.facts.put(facts)
        seed.close()
        with sidecars(url, Path(tmp)) as modes:
            services = {mode: open_service(url, opa_url=entry["opa_url"])
                        for mode, entry in modes.items()}
            rows += _opa_requests_per_decision(services, modes, cases)
            runs: dict[tuple[str, int], list[dict[str, float]]] = {}
            for mode, service in services.items():  # warm up every path
                for facts in cases.values():
                    _in_process(service, facts[0]["subject"], modes[mode]["opa_pid"],
                                redis_pid, 200)
            pin_to_one_core()
            try:
                for _ in range(rounds):
                    for actions, facts in cases.items():
                        for mode, service in services.items():
                            runs.setdefault((mode, actions), []).append(_in_process(
                                service, facts[0]["subject"], modes[mode]["opa_pid"],
                                redis_pid, decisions))
            finally:
                unpin()
            for service in services.values():
                service.close()
            for (mode, actions), mode_runs in runs.items():
                run = sorted(mode_runs, key=lambda r: r["total"])[len(mode_runs) // 2]
                rows.append((f"{MODES[mode]}, {actions} action(s): wall per decision, "
                             "median / p99 (µs)", f"{run['p50']:,.0f} / {run['p99']:,.0f}"))
                rows.append((f"{MODES[mode]}, {actions} action(s): CPU per decision, "
                             "deciding thread + OPA + Redis = total (µs)",
                             f"{run['thread']:,.0f} + {run['opa']:,.0f} + "
                             f"{run['redis']:,.0f} = {run['total']:,.0f}"))
            if shutil.which("wrk") is None:
                http_rows.append(("over HTTP", "wrk is not installed (`make bench`)"))
            else:
                http_rows = _sidecar_http(modes, url, seconds=seconds, rounds=rounds)
    rows += _delivery_rows()
    return "\n".join([
        "### The OPA sidecar against embedded OPA",
        "",
        "The same decisions with embedded OPA and with the real OPA server (`opa run "
        "--server`, v1.20.2 as built by `make opa`, its decision log on, pulling the bundle "
        "the service serves) as a sidecar on this machine, over HTTP on loopback and over a "
        "Unix socket, both with kept-alive connections. Servers, sidecars and Redis run side "
        "by side; each round measures every mode in turn, and a figure is the median round. "
        "CPU is counted for every process a decision goes through.",
        "",
        f"In-process: {decisions} decisions per round ({rounds} rounds) from one thread of "
        "this process pinned to one core (`DecisionPath.decide`: read the pool, evaluate, "
        "ask OPA, record), on a subject whose decision proposes 1 action and one that "
        "proposes 2 (one batch request to the sidecar).",
        "",
        table(rows),
        "",
        f"Over HTTP: `POST /v1/decisions` on random subjects of {SUBJECTS} (the sample's 12 "
        "facts each), API keys off (the sidecars pull their bundle without one), gunicorn "
        "with 2 sync workers per mode, wrk with 8 connections, "
        f"{rounds} rounds of {seconds} s per mode; wrk, the workers, the sidecar and Redis "
        "share the machine's 2 cores.",
        "",
        table(http_rows),
    ])


def _sidecar_http(modes: dict[str, Any], redis_url: str, *, seconds: int,
                  rounds: int) -> list[tuple[str, str]]:
    script = wrk_decisions()
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for entry in modes.values():  # warm up
        wrk(entry["url"], script, connections=8, seconds=3)
    for _ in range(rounds):
        for mode, entry in modes.items():
            pids = (entry["opa_pid"],) if entry["opa_pid"] else ()
            runs[mode].append(wrk(entry["url"], script, connections=8, seconds=seconds,
                                   redis_url=redis_url, opa_pids=pids))
    rows = []
    for mode, mode_runs in runs.items():
        run = median_run(mode_runs)
        total = run["server_cpu_us"] + run["opa_cpu_us"] + run["redis_cpu_us"]
        rows.append((f"{MODES[mode]}: decisions/s, p50 / p99 (ms)",
                     f"{run['rps']:,.0f}, {run['p50']:.2f} / {run['p99']:.2f} (rounds: "
                     + ", ".join(f"{r['rps']:,.0f}" for r in mode_runs) + ")"))
        rows.append((f"{MODES[mode]}: CPU per decision, gunicorn workers + OPA + Redis = "
                     "total (µs)", f"{run['server_cpu_us']:,.0f} + {run['opa_cpu_us']:,.0f} + "
                                   f"{run['redis_cpu_us']:,.0f} = {total:,.0f}"))
    rows.append(("answers other than 2xx (all runs)",
                 f"{sum(r['non2xx'] for mode_runs in runs.values() for r in mode_runs):.0f}"))
    return rows


def _delivery_rows() -> list[tuple[str, str]]:
    """The CPU of a delivery to an executor, from the dispatching thread. The executor is
    the echo executor (`decision-service echo-executor`), in a thread of this process: it
    answers 200, and what it says of each delivery counts them."""
    delivered: list[str] = []
    executor = echo_server("127.0.0.1", 0, delivered.append)
    threading.Thread(target=executor.serve_forever, daemon=True).start()
    po_url = f"http://127.0.0.1:{executor.server_address[1]}/po"
    rows = []
    try:
        with running_redis() as url, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            executors = Path(tmp) / "executors.yaml"
            executors.write_text(f"issue_purchase_order: {{url: '{po_url}'}}\n")
            service = open_service(url, executors_file=executors)
            # One delivery at a time, from this thread (a batch of one is not handed to the
            # dispatcher's threads): the queued purchase orders of fresh subjects.
            dispatcher = Dispatcher(service.outbox, service.executors, batch_size=1)
            for n in range(1 + 5 * 300):  # what _thread_cpu_us calls
                service.facts.put(sample_facts(f"D-{n}", 0))
                service.decider.decide(subject=f"D-{n}", ruleset_name="procurement")
            before = len(delivered)
            cpu = _thread_cpu_us(dispatcher.run_once, 300)
            assert len(delivered) - before == 1 + 5 * 300, len(delivered)
            rows.append(("a delivery to an executor: CPU of the dispatching thread "
                         "(µs, the executor's excluded)", f"{cpu:,.0f}"))
            rows.extend(_post_cpu_rows(po_url))
            dispatcher.close()
            service.close()
    finally:
        executor.shutdown()
        executor.server_close()
    return rows
