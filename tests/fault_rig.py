"""The service as it is deployed, under load, with its parts failing on purpose.

`Rig` runs gunicorn (`decision-service serve`, 2 workers) and two `decision-service worker`
processes against a Redis of its own (the embedded server, killed with SIGKILL and
restarted on its data), the real OPA as a sidecar (`opa run --server` on a fixed port,
pulling the bundle the service serves, its decision log on: SIGKILLed and restarted,
hung with SIGSTOP; tests/opa_sidecar.py) and an executor (tests/executor_server.py:
failing, hanging).

`Load` posts decisions at a fixed rate whatever the answers (an open loop, so a slow
service meets the same pressure, up to 48 requests in flight) and keeps every answer.
`Rig.account` reconciles what the decision log says with what the executor received.
tests/test_faults.py runs the faults; `scripts/reliability soak` runs the rig for ten
minutes.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from conftest import wait_for_ready
from executor_server import Executor
from opa_sidecar import OpaServer, free_port

from app.decisions.log import DecisionLog
from app.dispatch.outbox import Outbox
from app.shared import keys
from app.shared.errors import NotFound
from app.shared.store import EmbeddedRedis, connect

ROOT = Path(__file__).resolve().parent.parent
LEASE_SECONDS = 1.0  # a killed worker's deliveries are taken over this long after the claim
EXECUTOR_TIMEOUT_SECONDS = 0.5
REDIS_TIMEOUT_SECONDS = 0.5
OPA_TIMEOUT_SECONDS = 0.25
SANCTIONED = "Northwind Arms"  # on the sample sanctions list: its orders are denied


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
    sent: float  # seconds since the load started, when it was due (and handed to a thread)
    seconds: float  # from the request going out to its answer
    status: int  # 0: no answer at all
    answered: float = 0.0  # seconds since the load started, when the answer was in
    problem: bool = False  # an application/problem+json body with a detail
    decision_id: str | None = None
    outcomes: dict[str, str] = field(default_factory=dict)  # action type -> verdict
    error: str | None = None


class Load:
    """POST /v1/decisions at `rate` per second for `seconds`, one fresh subject each.

    `http.client`, a connection per thread: a third of what requests costs per call, and
    the load generator shares two cores with everything it measures."""

    def __init__(self, url: str, *, client_timeout: float = 10.0, threads: int = 48) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.client_timeout = client_timeout
        self.threads = threads
        self.started = 0.0
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        if not hasattr(self._local, "connection"):  # reopened by itself after a close
            self._local.connection = http.client.HTTPConnection(
                self.host, self.port, timeout=self.client_timeout)
        connection: http.client.HTTPConnection = self._local.connection
        return connection

    def _one(self, subject: str, sent: float) -> Answer:
        body = json.dumps({"subject": subject, "ruleset": "procurement"})
        connection = self._connection()
        began = time.monotonic()
        try:
            connection.request("POST", "/v1/decisions", body=body, headers={
                "Content-Type": "application/json", "Idempotency-Key": f"load-{subject}"})
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            return Answer(sent, time.monotonic() - began, 0, time.monotonic() - self.started,
                          error=type(exc).__name__)
        answer = Answer(sent, time.monotonic() - began, response.status,
                        time.monotonic() - self.started)
        if response.getheader("Content-Type", "").startswith("application/problem+json"):
            problem = json.loads(payload)
            answer.problem = "detail" in problem
            answer.error = problem.get("detail")
        elif response.status in (200, 201):
            record = json.loads(payload)
            answer.decision_id = record["decision_id"]
            answer.outcomes = {a["type"]: a["verdict"]["outcome"] for a in record["actions"]}
        return answer

    def run(self, subjects: list[str], rate: float, started: float | None = None) -> list[Answer]:
        """Send one request per subject, `rate` per second, from `started` (monotonic)."""
        self.started = time.monotonic() if started is None else started
        with ThreadPoolExecutor(self.threads) as pool:
            futures = []
            for index, subject in enumerate(subjects):
                due = self.started + index / rate
                while (now := time.monotonic()) < due:
                    time.sleep(min(due - now, 0.005))
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

    def summary(self) -> str:
        return (f"{self.decisions} decisions, {self.allowed} allowed actions to send: "
                f"{self.delivered} delivered, {self.parked} parked as failed; "
                f"{sum(self.redelivered.values())} deliveries repeated an accepted "
                f"Idempotency-Key ({len(self.redelivered)} keys); problems: "
                f"{self.problems() or 'none'}")

    def problems(self) -> dict[str, list[str]]:
        return {name: values[:10] for name, values in (
            ("still queued", self.still_queued), ("never received", self.never_received),
            ("sent without allow", self.sent_without_allow),
            ("unknown keys", self.unknown_keys), ("lost decisions", self.lost_decisions))
            if values}


class Rig:
    def __init__(self, directory: Path, *, workers: int = 2, sidecar: bool = True,
                 redis_url: str | None = None) -> None:
        """`sidecar`: policies from the OPA sidecar (which the faults need), else embedded.
        `redis_url`: a Redis (or Redis Cluster) to share, else one of the rig's own."""
        self.directory = directory
        self.sidecar = sidecar
        self.redis = EmbeddedRedis(directory / "redis")
        self.redis_url = redis_url or self.redis.url
        self.own_redis = redis_url is None
        self.opa_port = free_port()
        self.opa: OpaServer | None = None
        self.executor = Executor()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.worker_count = workers
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes] | None] = [None] * workers
        self.decision_ids: set[str] = set()
        self.killed_at = 0.0  # when a worker was last killed (time.monotonic())

    # --- the parts ---------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        executors = self.directory / "executors.yaml"
        executors.write_text(yaml.safe_dump({  # expedite gives up soon: some are parked
            action: {"url": f"{self.executor.url}/{action}",
                     "timeout_seconds": EXECUTOR_TIMEOUT_SECONDS, "max_attempts": attempts}
            for action, attempts in (("issue_purchase_order", 60), ("expedite_delivery", 3))}))
        return {**os.environ, "DECISION_REDIS_URL": self.redis_url,
                "DECISION_REDIS_TIMEOUT_SECONDS": str(REDIS_TIMEOUT_SECONDS),
                "DECISION_DATA_DIR": str(self.directory),
                "DECISION_RULES_DIR": str(self._rules_dir()),
                "DECISION_POLICY_DIR": str(ROOT / "rego"),
                "DECISION_OPA_URL": f"http://127.0.0.1:{self.opa_port}" if self.sidecar else "",
                "DECISION_OPA_TIMEOUT_SECONDS": str(OPA_TIMEOUT_SECONDS),
                "DECISION_EXECUTORS_FILE": str(executors),
                "DECISION_DISPATCH_LEASE_SECONDS": str(LEASE_SECONDS),
                "DECISION_DISPATCH_BACKOFF_SECONDS": "0.1",
                "DECISION_DISPATCH_BACKOFF_MAX_SECONDS": "1",
                "DECISION_BACKGROUND_WORKER": "false",
                "DECISION_WORKER_POLL_SECONDS": "0.05",
                "DECISION_LOG_FORMAT": "json"}

    def _rules_dir(self) -> Path:
        """The sample rules without their fact triggers: the load's decisions are the only
        ones (posting the facts would otherwise decide every subject once more)."""
        rules = self.directory / "rules"
        rules.mkdir(exist_ok=True)
        source = (ROOT / "rules" / "procurement.yaml").read_text()
        (rules / "procurement.yaml").write_text("\n".join(
            line for line in source.splitlines() if not line.startswith("triggers:")))
        return rules

    def _spawn(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        exe = Path(sys.executable).with_name("decision-service")
        with open(self.directory / log, "ab") as out:
            return subprocess.Popen([str(exe), *args], env=self._env(), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        if self.own_redis:
            self.redis.start()
        self.server = self._spawn("serve", "--port", str(self.port), "--workers", "2",
                                  log="serve.log")
        if self.sidecar:  # it pulls its bundle from the service: ready with it (/readyz)
            self.start_opa(wait=False)
        for index in range(self.worker_count):
            self.start_worker(index)
        try:
            wait_for_ready(self.url, self.server, 60)
        except AssertionError as exc:
            raise RuntimeError(f"{exc}:\n{self.log_tail()}") from exc

    def log_tail(self, name: str = "serve.log") -> str:
        path = self.directory / name
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def start_opa(self, *, wait: bool = True) -> None:
        """OPA on its port, pulling the service's bundle; with `wait`, until it has it."""
        self.opa = OpaServer(self.directory / "opa.log", port=self.opa_port,
                             bundle_url=f"{self.url}/v1", wait=wait)

    def kill_opa(self) -> None:
        if self.opa is not None:
            self.opa.kill()
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
        self.kill_opa()
        self.executor.stop()
        if self.own_redis:
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
                assert response.status_code == 201, response.text

    def run(self, subjects: list[str], rate: float, started: float | None = None) -> list[Answer]:
        answers = Load(self.url).run(subjects, rate, started)
        self.decision_ids.update(a.decision_id for a in answers if a.decision_id)
        return answers

    def drain(self, timeout_seconds: float = 120.0) -> None:
        """Wait until nothing is due or in flight in the outbox."""
        client = connect(self.redis_url, timeout_seconds=2.0)
        deadline = time.monotonic() + timeout_seconds
        try:
            while client.zcard(keys.dispatch_due()):
                if time.monotonic() > deadline:
                    raise AssertionError(f"the outbox did not drain in {timeout_seconds}s: "
                                         f"{client.zcard(keys.dispatch_due())} left")
                time.sleep(0.2)
        finally:
            client.close()

    def records(self) -> list[dict[str, Any]]:
        """The decision records of every decision this rig answered 201 for."""
        client = connect(self.redis_url, timeout_seconds=5.0)
        try:
            log = DecisionLog(client, Outbox(client), retention_seconds=86400,
                              idempotency_ttl_seconds=86400)
            return list(log.records(sorted(self.decision_ids)))
        finally:
            client.close()

    def account(self) -> Accounting:
        """Reconcile every decision this rig answered 201 for with the executor."""
        client = connect(self.redis_url, timeout_seconds=5.0)
        log = DecisionLog(client, Outbox(client), retention_seconds=86400,
                          idempotency_ttl_seconds=86400)
        accepted = Counter(d.headers["Idempotency-Key"] for d in self.executor.deliveries
                           if 200 <= d.status < 300)
        received = {d.headers["Idempotency-Key"] for d in self.executor.deliveries}
        result = Accounting(redelivered=Counter({k: n - 1 for k, n in accepted.items()
                                                 if n > 1}))
        known: set[str] = set()
        for decision_id in sorted(self.decision_ids | set(log.all_ids())):
            try:
                record = log.get(decision_id)
            except NotFound:
                if decision_id in self.decision_ids:
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


# --- faults ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    name: str
    begin: Callable[[Rig], None]
    end: Callable[[Rig], None]
    recovers: str  # what comes back: "answers", "verdicts", "deliveries" or "takeover" (the
    # killed worker's deliveries, sent again by another when their lease runs out)


def _restart_redis(rig: Rig) -> None:
    rig.redis.start()  # on its data: the append-only file brings back what was acknowledged


def refuse_some_expedites(rig: Rig) -> None:
    """One expedite in ten fails at every attempt, so some are parked whatever the faults
    do (an expedite waits for its order, which the executor's own faults also delay)."""
    rig.executor.refuses = lambda path, headers: path.endswith("/expedite_delivery") and (
        zlib.crc32(headers.get("Idempotency-Key", "").encode()) % 10 == 0)


def _executor(**knobs: Any) -> Callable[[Rig], None]:
    def set_knobs(rig: Rig) -> None:
        for name, value in knobs.items():
            setattr(rig.executor, name, value)
    return set_knobs


def _pause_opa(rig: Rig) -> None:
    assert rig.opa is not None
    rig.opa.pause()


def _resume_opa(rig: Rig) -> None:
    assert rig.opa is not None
    rig.opa.resume()


def _kill_worker_mid_delivery(rig: Rig) -> None:
    """SIGKILL worker 0 while the executor is answering one of its deliveries."""
    worker = rig.workers[0]
    assert worker is not None
    sender = f"(pid {worker.pid})"
    rig.executor.delay_seconds = 0.02  # long enough to catch a delivery in flight
    since = time.monotonic()
    deadline = since + 5
    while not any(sender in d.headers.get("User-Agent", "") and d.arrived >= since
                  for d in list(rig.executor.in_flight)):
        assert time.monotonic() < deadline, "worker 0 delivered nothing for 5 s"
        time.sleep(0.001)
    rig.kill_worker(0)
    rig.killed_at = time.monotonic()


def _restart_worker(rig: Rig) -> None:
    rig.executor.delay_seconds = 0.0
    rig.start_worker(0)


FAULTS = [
    Fault("Redis killed (SIGKILL), restarted 10 s later", Rig.kill_redis, _restart_redis,
          "answers"),
    Fault("OPA sidecar killed (SIGKILL), restarted 10 s later", Rig.kill_opa, Rig.start_opa,
          "verdicts"),
    Fault("OPA sidecar hung (SIGSTOP) for 10 s, then continued (timeout 250 ms)", _pause_opa,
          _resume_opa, "verdicts"),
    Fault("executor answering 500 for 10 s", _executor(failing_status=500),
          _executor(failing_status=None), "deliveries"),
    Fault("executor hanging for 10 s (timeout 500 ms)", _executor(delay_seconds=10.0),
          _executor(delay_seconds=0.0), "deliveries"),
    Fault("a worker SIGKILLed mid-delivery (restarted 10 s later)", _kill_worker_mid_delivery,
          _restart_worker, "takeover"),
]


@dataclass
class PhaseReport:
    fault: str
    requests: int
    served_per_second: float  # below the rate asked for: the requests queued in the load
    statuses: Counter[int]
    bad_answers: list[str]  # neither 2xx nor a 503 problem
    p50_ms: float
    p99_ms: float
    max_ms: float
    effect: int  # how often the fault showed: 503s, held verdicts, failed attempts
    recovery_seconds: float | None  # from the end of the fault to the first good sign
    after_recovery_bad: int  # bad signs 2 s after the end of the fault


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def sustainable_rate(rig: Rig, *, ceiling: float, share: float = 0.6,
                     seconds: float = 3.0) -> float:
    """The decisions a second this machine holds with room to spare: `share` of what the
    service serves when offered more than it can take (`ceiling` and a half for `seconds`,
    no fault), at most `ceiling`."""
    subjects = [f"calibrate-{i}" for i in range(int(seconds * ceiling * 1.5))]
    rig.post_facts(subjects)
    answers = rig.run(subjects, ceiling * 1.5)
    served = len(answers) / max(a.answered for a in answers)
    return min(ceiling, share * served)


def run_fault(rig: Rig, fault: Fault, prefix: str, *, seconds: float,
              rate: float) -> PhaseReport:
    """`seconds` of load at `rate`; the fault from a third of it to two thirds."""
    subjects = [f"{prefix}-{i}" for i in range(int(seconds * rate))]
    rig.post_facts(subjects)
    started = time.monotonic() + 0.2

    answers: list[Answer] = []
    load = threading.Thread(target=lambda: answers.extend(rig.run(subjects, rate, started)))
    load.start()
    # The faults from this thread: a server started from a thread dies with the thread
    # (the embedded Redis asks for SIGTERM when its parent goes, see app.shared.store).
    time.sleep(max(0.0, started + seconds / 3 - time.monotonic()))
    begun = time.monotonic() - started
    fault.begin(rig)
    time.sleep(max(0.0, started + 2 * seconds / 3 - time.monotonic()))
    fault.end(rig)
    ended = time.monotonic() - started
    load.join()
    ok = [a for a in answers if a.status in (200, 201)]
    bad = [f"{a.sent:.2f}s: {a.status} {a.error}" for a in answers
           if a.status not in (200, 201) and not (a.status == 503 and a.problem)]
    deliveries = [d for d in list(rig.executor.deliveries)
                  if d.arrived >= started and d.path.startswith("/")]
    if fault.recovers == "answers":
        effect = sum(1 for a in answers if a.status == 503)
        good = [a.sent for a in ok if a.sent >= ended]
        after = sum(1 for a in answers if a.sent >= ended + 2 and a not in ok)
    elif fault.recovers == "verdicts":
        held = [a for a in ok if "hold" in a.outcomes.values()]
        effect = len(held)
        good = [a.sent for a in ok if a.sent >= ended and a.outcomes
                and "hold" not in a.outcomes.values()]
        after = sum(1 for a in held if a.sent >= ended + 2)
    elif fault.recovers == "deliveries":
        effect = sum(1 for d in deliveries if not 200 <= d.status < 300
                     or begun <= d.arrived - started < ended)
        good = [d.arrived - started for d in deliveries
                if d.arrived - started >= ended and 200 <= d.status < 300]
        after = 0
    else:  # the kill is the end of this fault: recovery is the takeover of what it held
        kill = rig.killed_at - started
        first: dict[str, float] = {}
        again: dict[str, float] = {}
        for d in deliveries:
            key, at = d.headers["Idempotency-Key"], d.arrived - started
            if key in first and first[key] < kill <= at:
                again.setdefault(key, at)
            first.setdefault(key, at)
        effect = len(again)
        good = [kill + max(at - kill for at in again.values())] if again else []
        ended = kill
        after = 0
    return PhaseReport(
        fault=fault.name, requests=len(answers),
        served_per_second=len(answers) / max(a.answered for a in answers),
        statuses=Counter(a.status for a in answers),
        bad_answers=bad, p50_ms=_percentile([a.seconds for a in answers], 0.5) * 1000,
        p99_ms=_percentile([a.seconds for a in answers], 0.99) * 1000,
        max_ms=max(a.seconds for a in answers) * 1000, effect=effect,
        recovery_seconds=min(good) - ended if good else None, after_recovery_bad=after)
