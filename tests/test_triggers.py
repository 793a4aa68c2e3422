"""Decisions triggered by posted facts: asked for in the same step that stores the facts;
parked with their reason when they cannot run as things are, listed and re-driven by an
operator; retried with backoff and a limit when they failed for a passing reason."""

from __future__ import annotations

import re
import textwrap
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from conftest import AppFactory
from flask.testing import FlaskClient

from app.cli import main
from app.facts.triggers import member_of
from app.service import DecisionService
from app.shared import keys

LOOPING = """\
    ruleset: looping
    triggers: [tick]
    facts:
      tick: {owners: [ops]}
      stop: {owners: [ops]}
    rules:
      - name: start
        when: {t: {type: tick}}
        unless: {s: {type: stop}}
        then: [{assert: {type: step, data: {n: "$t.n"}}}]
      - name: again
        when: {s: {type: step}}
        unless: {x: {type: stop}}
        then: [{assert: {type: step, data: {n: "${s.n}1"}}}]
"""


def tick(subject: str = "S-1", **extra: Any) -> dict[str, Any]:
    return {"subject": subject, "type": "tick", "department": "ops", "data": {"n": "1"},
            **extra}


def looping_app(app_factory: AppFactory, tmp_path: Path, **overrides: Any) -> FlaskClient:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "looping.yaml").write_text(textwrap.dedent(LOOPING))
    return app_factory(rules_dir=rules, max_firings=200, **overrides).test_client()


def service_of(client: FlaskClient) -> DecisionService:
    svc: DecisionService = client.application.extensions["decision_service"]
    return svc


def test_facts_and_the_decision_they_ask_for_are_one_write(app_factory: AppFactory,
                                                          tmp_path: Path) -> None:
    client = looping_app(app_factory, tmp_path, max_facts_per_type=1)
    svc = service_of(client)
    assert client.post("/v1/facts", json=tick(id="t-1")).status_code == 201
    assert svc.redis.lrange(keys.subject_trigger_pending("S-1", "looping"), 0, -1) == [
        '{"id": "t-1", "type": "tick", "department": "ops"}']
    assert svc.redis.zscore(keys.triggers_due(), member_of("S-1", "looping")) is not None
    # a post that stores nothing asks for nothing
    svc.redis.delete(keys.triggers_due())
    assert client.post("/v1/facts", json={"facts": [tick("S-2"), tick("S-2")]}
                       ).status_code == 422
    assert svc.redis.zcard(keys.triggers_due()) == 0
    assert svc.redis.llen(keys.subject_trigger_pending("S-2", "looping")) == 0


def test_a_decision_that_cannot_run_is_parked_listed_and_redriven(app_factory: AppFactory,
                                                                  tmp_path: Path) -> None:
    client = looping_app(app_factory, tmp_path)
    svc = service_of(client)
    client.post("/v1/facts", json=tick())
    assert svc.decider.run_triggers_once() == 1
    assert svc.decider.run_triggers_once() == 0  # parked: not tried again by itself
    [parked] = client.get("/v1/triggers/parked").get_json()["parked"]
    assert (parked["subject"], parked["ruleset"], parked["pending_facts"]) == (
        "S-1", "looping", 1)
    assert "did not come to rest within 200 firings" in parked["reason"]
    failed = client.get(f"/v1/decisions/{parked['decision_id']}").get_json()
    assert failed["error"]["detail"] in parked["reason"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert re.search(r"^decision_triggers_parked 1$", metrics, re.MULTILINE)
    # the operator stops the loop and re-drives it
    client.post("/v1/facts", json={"subject": "S-1", "type": "stop", "department": "ops",
                                   "data": {}})
    redrive = client.post("/v1/subjects/S-1/triggers/looping/redrive")
    assert (redrive.status_code, redrive.get_json()) == (202, {"status": "due"})
    assert svc.decider.run_triggers_once() == 1
    assert client.get("/v1/triggers/parked").get_json()["parked"] == []
    assert svc.redis.llen(keys.subject_trigger_pending("S-1", "looping")) == 0
    [decided, _] = client.get("/v1/decisions?subject=S-1").get_json()["decisions"]
    assert "error" not in decided and decided["trigger"]["facts"][0]["type"] == "tick"
    assert client.post("/v1/subjects/S-1/triggers/looping/redrive").status_code == 404


def test_new_facts_try_a_parked_decision_again(app_factory: AppFactory, tmp_path: Path) -> None:
    client = looping_app(app_factory, tmp_path)
    svc = service_of(client)
    client.post("/v1/facts", json=tick(id="t-1"))
    svc.decider.run_triggers_once()
    assert len(svc.triggers.parked()) == 1
    client.delete("/v1/facts/t-1")  # the looping fact is gone; a new report comes in
    client.post("/v1/facts", json={**tick(), "type": "stop", "data": {}})
    client.post("/v1/facts", json=tick(id="t-2"))
    assert svc.decider.run_triggers_once() == 1
    assert svc.triggers.parked() == []


def test_a_passing_failure_is_retried_with_backoff_then_parked(app_factory: AppFactory,
                                                               tmp_path: Path) -> None:
    client = looping_app(app_factory, tmp_path, max_evaluation_seconds=0.000001,
                         trigger_max_attempts=3, dispatch_backoff_seconds=0.01,
                         dispatch_backoff_max_seconds=0.01)
    svc = service_of(client)
    client.post("/v1/facts", json=tick())
    member = member_of("S-1", "looping")
    assert svc.decider.run_triggers_once() == 1
    first = svc.redis.zscore(keys.triggers_due(), member)
    assert first is not None and svc.triggers.parked() == []  # deferred, not parked
    attempts = 1
    while not svc.triggers.parked():
        time.sleep(0.02)
        attempts += svc.decider.run_triggers_once()
        assert attempts <= 3
    [parked] = svc.triggers.parked()
    assert parked["attempts"] == 3
    assert "DECISION_MAX_EVALUATION_SECONDS" in parked["reason"]
    assert parked["reason"].endswith("(after 3 attempts)")


def test_the_cli_lists_and_redrives_parked_triggers(app_factory: AppFactory, tmp_path: Path,
                                                    monkeypatch: Any) -> None:
    client = looping_app(app_factory, tmp_path)
    svc = service_of(client)
    client.post("/v1/facts", json=tick())
    svc.decider.run_triggers_once()
    for name, value in (("REDIS_URL", svc.settings.redis_url),
                        ("RULES_DIR", str(svc.settings.rules_dir)),
                        ("DATA_DIR", str(tmp_path))):
        monkeypatch.setenv(f"DECISION_{name}", str(value))
    listed = CliRunner().invoke(main, ["triggers", "parked"])
    assert listed.exit_code == 0, listed.output
    assert "\nS-1 looping attempts=0 pending_facts=1 decision=" in "\n" + listed.output
    redriven = CliRunner().invoke(main, ["triggers", "redrive", "--all"])
    assert "1 triggered decision(s) due again" in redriven.output
    assert svc.triggers.parked() == []

