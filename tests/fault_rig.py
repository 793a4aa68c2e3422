"""The service as it is deployed, under load, with its parts failing on purpose.

`Rig` runs gunicorn (`decision-service serve`, 2 workers) and two `decision-service worker`
processes against a Redis of its own (the embedded server, killed with SIGKILL and
restarted on its data), an OPA sidecar (tests/opa_server.py on a fixed port: stopped,
restarted, made slow) and an executor (tests/executor_server.py: failing, hanging).
`Load` posts decisions at a fixed rate whatever the answers (an open loop, so a slow
service meets the same pressure) and keeps every answer. `Rig.account` reconciles what
the decision log says with what the executor received. tests/test_faults.py runs the
faults; scripts/soak runs the rig for ten minutes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from executor_server import Executor
from opa_server import OpaStandIn

from app.decision_log import DecisionLog
from app.dispatch import Outbox
from app.errors import NotFound
from app.store import EmbeddedRedis, connect

ROOT = Path(__file__).resolve().parent.parent
LEASE_SECONDS = 1.5  # a killed worker's deliveries are taken over this long after the claim
EXECUTOR_TIMEOUT_SECONDS = 0.5
REDIS_TIMEOUT_SECONDS = 0.5
OPA_TIMEOUT_SECONDS = 0.25
SANCTIONED = "Northwind Arms"  # on the sample sanctions list: its orders are denied


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def facts_of(subject: str, index: int) -> list[dict[str, Any]]:
    """The sample case: every tenth vendor is sanctioned, every third order is urgent."""
    vendor = SANCTIONED if index % 10 == 0 else "Globex"
    urgency = "high" if index % 3 == 0 else "normal"
    facts = [
        ("purchase_request", "procurement", {"amount": 120000, "vendor": vendor,
                                             "requester": "alice", "needed_by": "2026-12-01"}),
        ("budget_check", "finance", {"available": 300000, "approver": "bob",
                                     "cost_center": "CC-7"}),
        ("risk_assessment", "risk", {"score": 0.2}),
        ("legal_review", "legal", {"status": "cleared", "reviewer": "carol"}),
        ("urgency_assessment", "operations", {"level": urgency}),
    ]
    return [{"subject": subject, "type": kind, "department": department,
             "data": {"request_id": subject, **data}} for kind, department, data in facts]


@dataclass
class Answer:
    sent: float  # seconds since the load started
    seconds: float
    status: int  # 0: no answer at all
    problem: bool = False  # an application/problem+json body with a detail
    decision_id: str | None = None
    outcomes: dict[str, str] = field(default_factory=dict)  # action type -> verdict
    error: str | None = None


class Load:
    """POST /v1/decisions at `rate` per second for `seconds`, one fresh subject each."""

    def __init__(self, url: str, *, client_timeout: float = 10.0, threads: int = 48) -> None:
        self.url = url
        self.client_timeout = client_timeout
        self.threads = threads
        self.started = 0.0
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        session: requests.Session = self._local.session
        return session

    def _one(self, subject: str, sent: float) -> Answer:
        began = time.monotonic()
        try:
            response = self._session().post(
                f"{self.url}/v1/decisions", timeout=self.client_timeout,
                json={"subject": subject, "ruleset": "procurement"},
                headers={"Idempotency-Key": f"load-{subject}"})
        except requests.RequestException as exc:
            return Answer(sent, time.monotonic() - began, 0, error=type(exc).__name__)
        answer = Answer(sent, time.monotonic() - began, response.status_code)
        if response.headers.get("Content-Type", "").startswith("application/problem+json"):
            answer.problem = "detail" in response.json()
            answer.error = response.json().get("detail")
        elif response.status_code in (200, 201):
            record = response.json()
            answer.decision_id = record["decision_id"]
            answer.outcomes = {a["type"]: a["verdict"]["outcome"] for a in record["actions"]}
        return answer

    def run(self, subjects: list[str], rate: float,
            at: Callable[[float], None] = lambda _: None) -> list[Answer]:
        """Send one request per subject, `rate` per second; `at(seconds)` is called as the
        schedule advances (the faults hang off it)."""
        self.started = time.monotonic()
        with ThreadPoolExecutor(self.threads) as pool:
            futures = []
            for index, subject in enumerate(subjects):
                due = self.started + index / rate
                while (now := time.monotonic()) < due:
                    time.sleep(min(due - now, 0.005))
                at(now - self.started)
                futures.append(pool.submit(self._one, subject, now - self.started))
            return [future.result() for future in futures]


@dataclass
class Accounting:
    decisions: int = 0
    allowed: int = 0  # allowed actions that were to be sent
    delivered: int = 0  # of those: received and accepted by the executor
    parked: int = 0  # of those: parked as failed after their last attempt
    still_queued: list[str] = field(default_factory=list)
    never_received: list[str] = field(default_factory=list)  # dispatched, executor saw none
    sent_without_allow: list[str] = field(default_factory=list)
    unknown_keys: list[str] = field(default_factory=list)  # received, in no decision
    lost_decisions: list[str] = field(default_factory=list)  # answered 201, not in the log
    redelivered: Counter[str] = field(default_factory=Counter)  # accepted again, same key

    def problems(self) -> dict[str, list[str]]:
        return {name: values[:10] for name, values in (
            ("still queued", self.still_queued), ("never received", self.never_received),
            ("sent without allow", self.sent_without_allow),
            ("unknown keys", self.unknown_keys), ("lost decisions", self.lost_decisions))
            if values}


class Rig:
    def __init__(self, directory: Path, *, workers: int = 2) -> None:
        self.directory = directory
        self.redis = EmbeddedRedis(directory / "redis")
        self.opa_port = free_port()
        self.opa: OpaStandIn | None = None
        self.executor = Executor()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.worker_count = workers
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes] | None] = [None] * workers
        self.decision_ids: set[str] = set()

    # --- the parts ---------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        executors = self.directory / "executors.yaml"
        executors.write_text(yaml.safe_dump({
            action: {"url": f"{self.executor.url}/{action}",
                     "timeout_seconds": EXECUTOR_TIMEOUT_SECONDS, "max_attempts": 60}
            for action in ("issue_purchase_order", "expedite_delivery")}))
        return {**os.environ, "DECISION_REDIS_URL": self.redis.url,
                "DECISION_REDIS_TIMEOUT_SECONDS": str(REDIS_TIMEOUT_SECONDS),
                "DECISION_DATA_DIR": str(self.directory),
                "DECISION_RULES_DIR": str(ROOT / "rules"),
                "DECISION_POLICY_DIR": str(ROOT / "rego"),
                "DECISION_OPA_URL": f"http://127.0.0.1:{self.opa_port}",
                "DECISION_OPA_TIMEOUT_SECONDS": str(OPA_TIMEOUT_SECONDS),
                "DECISION_EXECUTORS_FILE": str(executors),
                "DECISION_DISPATCH_LEASE_SECONDS": str(LEASE_SECONDS),
                "DECISION_DISPATCH_BACKOFF_SECONDS": "0.1",
                "DECISION_DISPATCH_BACKOFF_MAX_SECONDS": "1",
                "DECISION_BACKGROUND_WORKER": "false",
                "DECISION_WORKER_POLL_SECONDS": "0.05",
                "DECISION_LOG_FORMAT": "json"}

    def _spawn(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        exe = Path(sys.executable).with_name("decision-service")
        with open(self.directory / log, "ab") as out:
            return subprocess.Popen([str(exe), *args], env=self._env(), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        self.redis.start()
        self.start_opa()
        self.server = self._spawn("serve", "--port", str(self.port), "--workers", "2",
                                  log="serve.log")
        for index in range(self.worker_count):
            self.start_worker(index)
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.server.poll() is not None:
                raise RuntimeError("the service did not become ready:\n" + self.log_tail())
            time.sleep(0.1)

    def log_tail(self, name: str = "serve.log") -> str:
        path = self.directory / name
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def start_opa(self) -> None:
        self.opa = OpaStandIn(ROOT / "rego", port=self.opa_port)

    def stop_opa(self) -> None:
        if self.opa is not None:
            self.opa.close()
            self.opa = None

    def start_worker(self, index: int) -> None:
        self.workers[index] = self._spawn("worker", log=f"worker-{index}.log")

    def kill_worker(self, index: int) -> None:
        process = self.workers[index]
        if process is not None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            self.workers[index] = None

    def kill_redis(self) -> None:
        process = self.redis._process
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.redis._process = None

    def stop(self) -> None:
        for index in range(self.worker_count):
            process = self.workers[index]
            if process is not None:
                process.terminate()
                process.wait(timeout=15)
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
        self.stop_opa()
        self.executor.stop()
        self.redis.stop()

    def alive(self) -> dict[str, bool]:
        """Which processes are still running (none may die of a fault it did not get)."""
        return {"serve": self.server is not None and self.server.poll() is None,
                **{f"worker-{i}": p is not None and p.poll() is None
                   for i, p in enumerate(self.workers)}}

    # --- load and accounting -----------------------------------------------------------

    def post_facts(self, subjects: Iterable[str], first_index: int = 0) -> None:
        facts = [fact for index, subject in enumerate(subjects, first_index)
                 for fact in facts_of(subject, index)]
        with requests.Session() as session:
            for start in range(0, len(facts), 1000):
                response = session.post(f"{self.url}/v1/facts", timeout=30,
                                        json={"facts": facts[start:start + 1000]})
                response.raise_for_status()

    def run(self, subjects: list[str], rate: float,
            at: Callable[[float], None] = lambda _: None) -> list[Answer]:
        answers = Load(self.url).run(subjects, rate, at)
        self.decision_ids.update(a.decision_id for a in answers if a.decision_id)
        return answers

    def drain(self, timeout_seconds: float = 120.0) -> None:
        """Wait until nothing is due or in flight in the outbox."""
        client = connect(self.redis.url, timeout_seconds=2.0)
        deadline = time.monotonic() + timeout_seconds
        try:
            while client.zcard("ds:{dispatch}:due"):
                if time.monotonic() > deadline:
                    raise AssertionError(f"the outbox did not drain in {timeout_seconds}s: "
                                         f"{client.zcard('ds:{dispatch}:due')} left")
                time.sleep(0.2)
        finally:
            client.close()

    def account(self) -> Accounting:
        """Reconcile every decision this rig answered 201 for with the executor."""
        client = connect(self.redis.url, timeout_seconds=5.0)
        log = DecisionLog(client, Outbox(client), retention_seconds=86400,
                          idempotency_ttl_seconds=86400)
        accepted = Counter(d.headers["Idempotency-Key"] for d in self.executor.deliveries
                           if 200 <= d.status < 300)
        received = {d.headers["Idempotency-Key"] for d in self.executor.deliveries}
        result = Accounting(redelivered=Counter({k: n - 1 for k, n in accepted.items()
                                                 if n > 1}))
        known: set[str] = set()
        for decision_id in sorted(self.decision_ids):
            try:
                record = log.get(decision_id)
            except NotFound:
                result.lost_decisions.append(decision_id)
                continue
            result.decisions += 1
            for action in record["actions"]:
                key = f"{decision_id}:{action['id']}"
                known.add(key)
                if not action["verdict"]["allow"]:
                    if key in received:
                        result.sent_without_allow.append(key)
                    continue
                if action["status"] == "recorded":  # allowed, not to be sent (see the log)
                    continue
                result.allowed += 1
                if action["status"] == "dispatched":
                    result.delivered += 1
                    if not accepted[key]:
                        result.never_received.append(key)
                elif action["status"] == "failed":
                    result.parked += 1
                else:
                    result.still_queued.append(f"{key} {json.dumps(action.get('delivery'))}")
        result.unknown_keys = sorted(received - known)
        client.close()
        return result
