"""What-ifs run an analyst's candidate rules and policies in a sandbox: a child process with
a time and memory budget, no built-in that reaches outside, its own network namespace.
Each test is a hostile or careless candidate that once reached, hung or grew the serving
worker; now it is refused, or reported as that candidate's error, and the worker is as it
was."""

from __future__ import annotations

import json
import os
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AppFactory
from flask.testing import FlaskClient

from app.replay.sandbox import Budget, Sandbox
from app.rules import engine
from app.shared.errors import CandidateFailed

CASE = [
    {"type": "purchase_request", "department": "procurement",
     "data": {"request_id": "W-1", "amount": 5000, "vendor": "Globex", "requester": "alice"}},
    {"type": "budget_check", "department": "finance",
     "data": {"request_id": "W-1", "available": 9000, "approver": "bob", "cost_center": "C"}},
    {"type": "risk_assessment", "department": "risk", "data": {"request_id": "W-1", "score": 0.1}},
]


def whatif(client: FlaskClient, **body: Any) -> Any:
    return client.post("/v1/replays", json={
        "fact_sets": [{"subject": "W-1", "ruleset": "procurement", "facts": CASE}], **body})


def policy(rule: str) -> dict[str, str]:
    return {"decision/probe/probe.rego": f"package decision.probe\n\n{rule}\n"}


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A port on loopback that records whatever reaches it."""
    received: list[bytes] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            received.append(connection.recv(4096))
            connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    stop.set()
    thread.join()
    server.close()


@pytest.mark.parametrize("call", [
    'x := http.send({"method": "post", "url": "http://127.0.0.1:%d/forged", "body": {}})',
    'x := http.send({"method": "get", "url": "https://127.0.0.1:%d", '
    '"tls_ca_cert_file": "/etc/passwd"})',
    "x := opa.runtime().env # %d",
    'x := net.lookup_ip_addr("localhost") # %d',
])
def test_a_candidate_policy_that_reaches_outside_is_refused(
        app_factory: AppFactory, listener: tuple[int, list[bytes]], call: str) -> None:
    port, received = listener
    response = whatif(app_factory().test_client(), policies=policy(call % port))
    assert response.status_code == 422
    assert response.get_json()["invalid-params"][0]["name"] == "decision/probe/probe.rego"
    assert "reaches outside the policy" in response.get_json()["detail"]
    time.sleep(0.3)
    assert received == []


def test_a_candidate_that_eats_memory_is_stopped_at_its_budget(app_factory: AppFactory) -> None:
    client = app_factory(whatif_memory_mb=200).test_client()
    before = _rss_mb()
    started = time.monotonic()
    hungry = "x := count([y | some y in numbers.range(0, 100000000)])"
    report = whatif(client, policies={
        **policy(hungry), "decision/governance/extra.rego":
            "package decision.governance\n\nimport data.decision.probe\n\n"
            "deny contains \"big\" if probe.x > 0\n"}).get_json()
    assert time.monotonic() - started < 15
    error = report["summary"]["candidate_error"]
    assert "200 MB" in error or "the sandbox stopped" in error, error
    assert report["results"][0]["error"] == error
    assert _rss_mb() - before < 50
    assert client.get("/healthz").status_code == 200


def test_a_candidate_that_spins_is_stopped_at_its_time_budget(app_factory: AppFactory) -> None:
    client = app_factory(whatif_seconds=1.5).test_client()
    spin = ("x := sum([1 | some i in numbers.range(1, 20000); "
            "some j in numbers.range(1, 20000)])")
    started = time.monotonic()
    report = whatif(client, policies={
        **policy(spin), "decision/governance/extra.rego":
            "package decision.governance\n\nimport data.decision.probe\n\n"
            "deny contains \"busy\" if probe.x > 0\n"}).get_json()
    assert time.monotonic() - started < 5
    assert report["summary"]["candidate_error"] == (
        "the candidate ran past its time budget of 1.5 s (DECISION_WHATIF_SECONDS)")


def test_one_whatif_at_a_time_and_the_worker_stays_free(app_factory: AppFactory) -> None:
    app = app_factory(whatif_seconds=3)
    spin = ("x := sum([1 | some i in numbers.range(1, 20000); "
            "some j in numbers.range(1, 20000)])")
    body = {"policies": {**policy(spin), "decision/governance/extra.rego":
                         "package decision.governance\n\nimport data.decision.probe\n\n"
                         "deny contains \"busy\" if probe.x > 0\n"}}
    first = threading.Thread(target=lambda: whatif(app.test_client(), **body))
    first.start()
    time.sleep(0.8)
    second = whatif(app.test_client(), **body)
    assert second.status_code == 429
    assert second.headers["Retry-After"]
    assert "DECISION_WHATIF_CONCURRENCY" in second.get_json()["detail"]
    started = time.monotonic()
    assert app.test_client().get("/healthz").status_code == 200
    assert time.monotonic() - started < 0.5
    first.join()
    assert whatif(app.test_client(), **body).status_code == 200  # the slot is free again


def test_sixty_distinct_candidate_rulesets_leave_the_worker_as_it_was(
        app_factory: AppFactory) -> None:
    client = app_factory().test_client()
    source = (client.application.extensions["decision_service"].rulesets.get("procurement")
              .source)
    whatif(client, ruleset={"name": "procurement", "source": source + "\n# warm-up\n"})
    registered, before = len(engine._HANDLES), _rss_mb()
    for n in range(60):
        response = whatif(client, ruleset={"name": "procurement",
                                           "source": source + f"\n# candidate {n}\n"})
        assert response.status_code == 200
        assert response.get_json()["summary"]["decisions"] == 1
    assert len(engine._HANDLES) == registered  # none of them registered in this process
    assert _rss_mb() - before < 10


def test_hostile_candidate_data_is_refused_fast(app_factory: AppFactory) -> None:
    client = app_factory().test_client()
    levels = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n"
        for i in range(8))
    for name, text in (("decision/bomb/data.yaml", levels),
                       ("decision/deep/data.json", "[" * 100_000 + "]" * 100_000)):
        started = time.monotonic()
        response = whatif(client, policies={name: text})
        assert response.status_code == 422
        assert response.get_json()["invalid-params"][0]["name"].startswith(name)
        assert time.monotonic() - started < 5  # a sandbox's start, and no more


def test_candidate_rules_that_would_run_away_are_errors_of_their_case(
        app_factory: AppFactory) -> None:
    client = app_factory().test_client()
    eight = {"ruleset": "procurement", "rules": [{
        "name": "all_eight", "when": {f"a{i}": {"type": "budget_check"} for i in range(8)},
        "then": [{"propose": {"action": "x"}}]}]}
    facts = [{**CASE[1], "id": f"b{n}"} for n in range(8)]
    started = time.monotonic()
    response = client.post("/v1/replays", json={
        "fact_sets": [{"subject": "W-1", "ruleset": "procurement", "facts": facts}],
        "ruleset": {"name": "procurement", "source": json.dumps(eight)}})
    assert time.monotonic() - started < 5
    [result] = response.get_json()["results"]
    assert "DECISION_MAX_JOIN_CANDIDATES" in result["error"]


def test_the_sandbox_has_a_network_of_its_own_and_no_privileges() -> None:
    from app.replay.sandbox import CandidateSources
    from app.rules.engine import Limits

    with Sandbox.start(Budget(seconds=5, memory_mb=256)) as sandbox:
        sandbox.load(CandidateSources(), governance_path="decision/governance",
                     access_path="decision/access", limits=Limits())  # it is serving now
        theirs = os.readlink(f"/proc/{sandbox.pid}/ns/net")
        status = Path(f"/proc/{sandbox.pid}/status").read_text()
    assert "NoNewPrivs:\t1" in status
    if os.getuid() == 0:
        assert "\nUid:\t65534\t" in status
    if theirs == os.readlink("/proc/self/ns/net"):
        pytest.skip("this kernel lets no unprivileged process have a network namespace")
    assert theirs != os.readlink("/proc/self/ns/net")


def test_a_stopped_sandbox_says_why_on_every_later_call() -> None:
    from app.replay.sandbox import CandidateSources
    from app.rules.engine import Limits

    with Sandbox.start(Budget(seconds=5, memory_mb=256)) as sandbox:
        source = ("ruleset: s\nrules:\n"
                  "  - {name: r, when: {a: {type: t}}, then: [{propose: {action: x}}]}\n")
        loaded = sandbox.load(CandidateSources({"s.yaml": source}),
                              governance_path="decision/governance",
                              access_path="decision/access", limits=Limits())
        ruleset = loaded.rulesets["s"]
        os.kill(sandbox.pid, 9)
        with pytest.raises(CandidateFailed, match="the sandbox stopped"):
            sandbox.evaluate(ruleset, [])
        with pytest.raises(CandidateFailed, match="not run: the sandbox stopped"):
            sandbox.evaluate(ruleset, [])
