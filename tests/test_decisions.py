"""Decisions end to end: the endpoint, the record, the outbox, delivery to real executors."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from executor_server import Executor
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.service import DecisionService
from app.shared import keys
from app.shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def case(subject: str = "PR-1", *, amount: int = 120000, vendor: str = "Globex",
         approver: str = "bob", legal: str | None = "cleared",
         urgency: str | None = "high") -> list[dict[str, Any]]:
    """What four departments report about one purchase request."""
    facts = [
        {"type": "purchase_request", "department": "procurement",
         "data": {"request_id": subject, "amount": amount, "vendor": vendor,
                  "requester": "alice", "needed_by": "2026-12-01"}},
        {"type": "budget_check", "department": "finance",
         "data": {"request_id": subject, "available": 300000, "approver": approver,
                  "cost_center": "CC-7"}},
        {"type": "risk_assessment", "department": "risk",
         "data": {"request_id": subject, "score": 0.2}},
    ]
    if legal:
        facts.append({"type": "legal_review", "department": "legal",
                      "data": {"request_id": subject, "status": legal, "reviewer": "carol"}})
    if urgency:
        facts.append({"type": "urgency_assessment", "department": "operations",
                      "data": {"request_id": subject, "level": urgency}})
    return [{"subject": subject, **fact} for fact in facts]


@pytest.fixture
def executor() -> Iterator[Executor]:
    server = Executor()
    yield server
    server.stop()


def executors_file(tmp_path: Path, url: str, **options: Any) -> Path:
    path = tmp_path / "executors.yaml"
    path.write_text(yaml.safe_dump({
        action: {"url": f"{url}/{action}", "timeout_seconds": 2, **options}
        for action in ("issue_purchase_order", "expedite_delivery", "request_legal_review",
                       "request_urgency_assessment", "notify_finance")}))
    return path


AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app(redis_url: str, redis_client: redis.Redis,
             tmp_path: Path) -> Iterator[AppFactory]:
    apps: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        settings = Settings.load(environ={}, overrides={
            "redis_url": redis_url, "data_dir": tmp_path, "rules_dir": ROOT / "rules",
            "policy_dir": ROOT / "rego", "background_worker": False,
            "dispatch_backoff_seconds": 0.01, "dispatch_backoff_max_seconds": 0.05,
            **overrides})
        app = create_app(settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["decision_service"].close()


def service_of(app: Flask) -> DecisionService:
    svc: DecisionService = app.extensions["decision_service"]
    return svc


def drain(app: Flask, *, triggers: bool = False, seconds: float = 10.0) -> None:
    """Deliver (and with `triggers`, make triggered decisions) until nothing is due or time
    is up. Tests of explicit decisions leave the decisions their facts trigger alone."""
    svc = service_of(app)
    step = svc.worker.run_once if triggers else svc.dispatcher.run_once
    queues = ["ds:{dispatch}:due", *(["ds:{triggers}:due"] if triggers else [])]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if step() == 0:
            if sum(svc.redis.zcard(queue) for queue in queues) == 0:
                return
            time.sleep(0.02)


def decide(client: FlaskClient, subject: str = "PR-1", **body: Any) -> dict[str, Any]:
    response = client.post("/v1/decisions", json={"subject": subject, "ruleset": "procurement",
                                                  **body})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def statuses(record: dict[str, Any]) -> dict[str, str]:
    return {a["type"]: a["status"] for a in record["actions"]}


def test_the_procurement_case_end_to_end(make_app: AppFactory, executor: Executor,
                                         tmp_path: Path) -> None:
    app = make_app(executors_file=executors_file(tmp_path, executor.url))
    client = app.test_client()
    assert client.post("/v1/facts", json={"facts": case()}).status_code == 201
    record = decide(client)
    # The expedited delivery requires the purchase order: it waits for its dispatch.
    assert statuses(record) == {"issue_purchase_order": "queued",
                                "expedite_delivery": "waiting"}
    order_id = next(a["id"] for a in record["actions"] if a["type"] == "issue_purchase_order")
    expedite = next(a for a in record["actions"] if a["type"] == "expedite_delivery")
    assert expedite["delivery"]["waiting_for"] == [{
        "decision_id": record["decision_id"], "action_id": order_id,
        "type": "issue_purchase_order"}]
    assert record["ruleset"]["name"] == "procurement" and record["ruleset"]["version"]
    assert record["policy"]["revision"]
    assert len(record["facts"]) == 5 and record["fired"] and record["derived_facts"]
    drain(app)

    assert [d.path for d in executor.deliveries] == ["/issue_purchase_order",
                                                    "/expedite_delivery"]
    order = next(d for d in executor.deliveries if d.path == "/issue_purchase_order")
    action = next(a for a in record["actions"] if a["type"] == "issue_purchase_order")
    assert order.headers["Idempotency-Key"] == f"{record['decision_id']}:{action['id']}"
    assert order.headers["Content-Type"] == "application/cloudevents+json"
    event = order.body
    assert (event["specversion"], event["subject"], event["type"]) == (
        "1.0", "PR-1", "decision.action.issue_purchase_order")
    assert event["id"] == order.headers["Idempotency-Key"] and event["source"] and event["time"]
    assert event["data"]["decision_id"] == record["decision_id"]
    assert event["data"]["action"]["params"]["amount"] == 120000

    stored = client.get(f"/v1/decisions/{record['decision_id']}").get_json()
    assert statuses(stored) == {"issue_purchase_order": "dispatched",
                                "expedite_delivery": "dispatched"}
    assert all(a["delivery"]["attempts"] == 1 for a in stored["actions"])


def test_denied_and_held_actions_are_never_sent(make_app: AppFactory, executor: Executor,
                                                tmp_path: Path) -> None:
    app = make_app(executors_file=executors_file(tmp_path, executor.url))
    client = app.test_client()
    client.post("/v1/facts", json={"facts": case("PR-2", vendor="Acme Shell Corp")})
    denied = decide(client, "PR-2")
    assert statuses(denied)["issue_purchase_order"] == "denied"
    order = next(a for a in denied["actions"] if a["type"] == "issue_purchase_order")
    assert "sanctions list" in order["verdict"]["reasons"][0]

    down = make_app(executors_file=executors_file(tmp_path, executor.url),
                    opa_url="http://127.0.0.1:9")  # nothing listens on the discard port
    client = down.test_client()
    client.post("/v1/facts", json={"facts": case("PR-3")})
    held = decide(client, "PR-3")
    assert set(statuses(held).values()) == {"held"}
    assert "unreachable" in held["actions"][0]["verdict"]["reasons"][0]
    drain(app)
    drain(down)
    assert executor.deliveries == []


def test_a_dry_run_gates_but_never_sends(make_app: AppFactory, executor: Executor,
                                         tmp_path: Path) -> None:
    app = make_app(executors_file=executors_file(tmp_path, executor.url))
    client = app.test_client()
    client.post("/v1/facts", json={"facts": case()})
    record = decide(client, dry_run=True)
    assert record["dry_run"] is True
    assert set(statuses(record).values()) == {"dry_run"}
    assert all(a["verdict"]["allow"] for a in record["actions"])
    drain(app)
    assert executor.deliveries == []


def test_an_action_without_an_executor_is_recorded_not_sent(make_app: AppFactory) -> None:
    client = make_app().test_client()
    client.post("/v1/facts", json={"facts": case()})
    assert set(statuses(decide(client)).values()) == {"recorded"}


def test_inline_facts_are_seen_but_not_stored(make_app: AppFactory) -> None:
    client = make_app().test_client()
    client.post("/v1/facts", json={"facts": case(urgency=None)})
    inline = {"type": "urgency_assessment", "department": "operations",
              "data": {"request_id": "PR-1", "level": "critical"}}
    record = decide(client, facts=[inline])
    assert "expedite_delivery" in statuses(record)
    assert record["facts"][-1]["inline"] is True
    pooled = client.get("/v1/subjects/PR-1/facts").get_json()["facts"]
    assert "urgency_assessment" not in {f["type"] for f in pooled}


def test_a_pooled_fact_copied_inline_may_keep_its_subject_if_it_is_the_decisions(
        make_app: AppFactory) -> None:
    """A caller copies a fact from GET /v1/subjects/<s>/facts into a decision request: its
    `subject` is taken when it is the request's, and a fact about another subject is a 422
    that names it, not an "Unknown field" nor a fact decided on under the wrong subject."""
    client = make_app().test_client()
    client.post("/v1/facts", json={"facts": case()})
    pooled = client.get("/v1/subjects/PR-1/facts").get_json()["facts"]
    urgency = next(f for f in pooled if f["type"] == "urgency_assessment")
    copied = {key: urgency[key] for key in ("id", "subject", "type", "department", "data")}
    copied["data"] = {**copied["data"], "level": "critical"}
    body = {"subject": "PR-1", "ruleset": "procurement", "facts": [copied]}
    first = client.post("/v1/decisions", json=body, headers={"Idempotency-Key": "copy-1"})
    assert first.status_code == 201, first.get_json()
    seen = [f for f in first.get_json()["facts"] if f["id"] == urgency["id"]]
    assert [(f["data"]["level"], f.get("inline")) for f in seen] == [("critical", True)]
    # the subject said twice is the same request as said once
    without = {**body, "facts": [{k: v for k, v in copied.items() if k != "subject"}]}
    again = client.post("/v1/decisions", json=without, headers={"Idempotency-Key": "copy-1"})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"

    other = {"subject": "PR-2", "ruleset": "procurement",
             "facts": [{"type": "risk_assessment", "department": "risk",
                        "data": {"request_id": "PR-2", "score": 0.1}}, copied]}
    refused = client.post("/v1/decisions", json=other)
    assert refused.status_code == 422
    assert refused.mimetype == "application/problem+json"
    problem = refused.get_json()
    assert [p["name"] for p in problem["invalid-params"]] == ["facts.1.subject"]
    assert repr(urgency["id"]) in problem["detail"] and "'PR-1', not 'PR-2'" in problem["detail"]
    assert client.get("/v1/decisions?subject=PR-2").get_json()["decisions"] == []


def test_a_retried_request_returns_the_first_decision(make_app: AppFactory, executor: Executor,
                                                      tmp_path: Path) -> None:
    app = make_app(executors_file=executors_file(tmp_path, executor.url))
    client = app.test_client()
    client.post("/v1/facts", json={"facts": case()})
    body = {"subject": "PR-1", "ruleset": "procurement"}
    first = client.post("/v1/decisions", json=body, headers={"Idempotency-Key": "order-77"})
    again = client.post("/v1/decisions", json=body, headers={"Idempotency-Key": "order-77"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["decision_id"] == first.get_json()["decision_id"]
    drain(app)
    assert len(executor.deliveries) == 2  # one decision's two actions, once each
    listed = client.get("/v1/decisions?subject=PR-1").get_json()["decisions"]
    assert len(listed) == 1


def test_an_idempotency_key_reused_for_another_request_is_409(make_app: AppFactory) -> None:
    client = make_app().test_client()
    client.post("/v1/decisions", json={"subject": "PR-1", "ruleset": "procurement"},
                headers={"Idempotency-Key": "k"})
    response = client.post("/v1/decisions", json={"subject": "PR-1", "ruleset": "procurement",
                                                  "dry_run": True},
                           headers={"Idempotency-Key": "k"})
    assert response.status_code == 409
    assert "different request" in response.get_json()["detail"]


def test_executor_down_then_up_delivers_after_recovery(make_app: AppFactory, executor: Executor,
                                                       tmp_path: Path) -> None:
    app = make_app(executors_file=executors_file(tmp_path, executor.url, max_attempts=50))
    client = app.test_client()
    client.post("/v1/facts", json={"facts": case()})
    executor.stop()
    record = decide(client)
    svc = service_of(app)
    for _ in range(5):
        svc.worker.run_once()
        time.sleep(0.03)
    waiting = client.get(f"/v1/decisions/{record['decision_id']}").get_json()
    order = next(a for a in waiting["actions"] if a["type"] == "issue_purchase_order")
    assert order["status"] == "queued"
    assert order["delivery"]["attempts"] >= 1
    assert "could not reach the executor" in order["delivery"]["last_error"]

    executor.start()  # back on the same port
    drain(app)
    assert sorted(d.path for d in executor.deliveries) == ["/expedite_delivery",
                                                          "/issue_purchase_order"]
    done = client.get(f"/v1/decisions/{record['decision_id']}").get_json()
    assert set(statuses(done).values()) == {"dispatched"}


def test_an_executor_failing_for_good_parks_the_action_for_redrive(
        make_app: AppFactory, executor: Executor, tmp_path: Path) -> None:
    app = make_app(executors_file=executors_file(tmp_path, executor.url, max_attempts=3))
    client = app.test_client()
    client.post("/v1/facts", json={"facts": case(urgency="normal")})
    executor.statuses = [500, 500, 500]
    record = decide(client)
    drain(app)
    parked = client.get(f"/v1/decisions/{record['decision_id']}").get_json()
    [order] = parked["actions"]
    assert order["status"] == "failed"
    assert order["delivery"] == {"attempts": 3, "last_error": "the executor answered HTTP 500"}
    [failed] = client.get("/v1/actions/failed").get_json()["failed"]
    assert failed["action"]["id"] == order["id"]
    assert len(set(executor.keys())) == 1  # every attempt under the same key

    response = client.post(f"/v1/decisions/{record['decision_id']}/actions/{order['id']}/redrive")
    assert response.status_code == 202
    drain(app)
    assert statuses(client.get(f"/v1/decisions/{record['decision_id']}").get_json()) == {
        "issue_purchase_order": "dispatched"}
    assert client.get("/v1/actions/failed").get_json()["failed"] == []
    assert len(executor.deliveries) == 4 and len(set(executor.keys())) == 1


def test_a_client_error_is_parked_at_once(make_app: AppFactory, executor: Executor,
                                          tmp_path: Path) -> None:
    app = make_app(executors_file=executors_file(tmp_path, executor.url, max_attempts=8))
    client = app.test_client()
    client.post("/v1/facts", json={"facts": case(urgency="normal")})
    executor.statuses = [422]
    record = decide(client)
    drain(app)
    [order] = client.get(f"/v1/decisions/{record['decision_id']}").get_json()["actions"]
    assert (order["status"], order["delivery"]["attempts"]) == ("failed", 1)


def test_facts_trigger_one_decision_per_batch(make_app: AppFactory, executor: Executor,
                                              tmp_path: Path) -> None:
    app = make_app(executors_file=executors_file(tmp_path, executor.url))
    client = app.test_client()
    posted = client.post("/v1/facts", json={"facts": case(urgency=None)}).get_json()["facts"]
    drain(app, triggers=True)
    [first] = client.get("/v1/decisions?subject=PR-1").get_json()["decisions"]
    assert sorted(f["id"] for f in first["trigger"]["facts"]) == sorted(f["id"] for f in posted)
    assert statuses(first) == {"request_urgency_assessment": "dispatched"}

    client.post("/v1/facts", json={"facts": [{"subject": "PR-1", "type": "urgency_assessment",
                                              "department": "operations",
                                              "data": {"request_id": "PR-1", "level": "high"}}]})
    drain(app, triggers=True)
    latest, _ = client.get("/v1/decisions?subject=PR-1").get_json()["decisions"]
    assert [f["type"] for f in latest["trigger"]["facts"]] == ["urgency_assessment"]
    assert statuses(latest) == {"issue_purchase_order": "dispatched",
                                "expedite_delivery": "dispatched"}


def test_a_fact_of_no_trigger_type_decides_nothing(make_app: AppFactory) -> None:
    app = make_app()
    client = app.test_client()
    client.post("/v1/facts", json={"subject": "PR-1", "type": "weather",
                                   "department": "ops", "data": {}})
    drain(app, triggers=True)
    assert client.get("/v1/decisions?subject=PR-1").get_json()["decisions"] == []


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"subject": "PR-1", "ruleset": "nope"}, 404, None),
    ({"subject": "PR-1"}, 422, "ruleset"),
    ({"subject": "PR-1", "ruleset": "procurement", "dry_run": "yes"}, 422, "dry_run"),
    ({"subject": "PR-1", "ruleset": "procurement", "facts": [{"type": "t"}]}, 422,
     "facts.0.department"),
    ({"subject": "PR-1", "ruleset": "procurement", "extra": 1}, 422, "extra"),
])
def test_a_bad_decision_request_is_a_problem(make_app: AppFactory, body: dict[str, Any],
                                             status: int, field: str | None) -> None:
    response = make_app().test_client().post("/v1/decisions", json=body)
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    if field:
        assert field in [p["name"] for p in response.get_json()["invalid-params"]]


def test_a_bad_idempotency_key_is_a_problem(make_app: AppFactory) -> None:
    response = make_app().test_client().post(
        "/v1/decisions", json={"subject": "PR-1", "ruleset": "procurement"},
        headers={"Idempotency-Key": "x" * 201})
    assert response.status_code == 422
    assert response.get_json()["invalid-params"][0]["name"] == "Idempotency-Key"


def test_unknown_decisions_and_listing_without_subject(make_app: AppFactory) -> None:
    client = make_app().test_client()
    assert client.get("/v1/decisions/nope").status_code == 404
    assert client.get("/v1/decisions").status_code == 422


def test_the_export_writes_json_lines(make_app: AppFactory, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    from click.testing import CliRunner

    from app.cli import main

    client = make_app().test_client()
    client.post("/v1/facts", json={"facts": case()})
    ids = {decide(client)["decision_id"], decide(client)["decision_id"]}
    monkeypatch.setenv("DECISION_REDIS_URL", redis_url)
    out = tmp_path / "decisions.jsonl"
    result = CliRunner().invoke(main, ["decisions", "export", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert {json.loads(line)["decision_id"] for line in out.read_text().splitlines()} == ids


def test_the_export_takes_a_time_range_and_refuses_a_bad_subject(
        make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from click.testing import CliRunner

    from app.cli import main

    client = make_app().test_client()
    client.post("/v1/facts", json={"facts": case() + case("PR-2")})
    pr2 = decide(client, "PR-2")["decision_id"]
    ids = {decide(client)["decision_id"], pr2}
    monkeypatch.setenv("DECISION_REDIS_URL", redis_url)

    def export(*options: str) -> tuple[int, set[str], str]:
        result = CliRunner().invoke(main, ["decisions", "export", *options])
        lines = result.stdout.splitlines() if result.exit_code == 0 else []
        return result.exit_code, {json.loads(line)["decision_id"] for line in lines}, \
            result.output

    now = datetime.now(UTC)
    a_minute_ago = (now - timedelta(minutes=1)).astimezone(timezone(timedelta(hours=2)))
    tomorrow = (now + timedelta(days=1)).strftime("%Y-%m-%d")
    assert export("--since", a_minute_ago.isoformat())[:2] == (0, ids)
    assert export("--since", now.strftime("%Y-%m-%d"), "--until", tomorrow)[:2] == (0, ids)
    assert export("--since", tomorrow)[:2] == (0, set())
    assert export("--until", "2026-01-01T00:00:00Z")[:2] == (0, set())
    assert export("--subject", "PR-2", "--since", a_minute_ago.isoformat())[:2] == (0, {pr2})
    assert export("--subject", "PR-2", "--until", "2026-01-01")[:2] == (0, set())

    code, _, output = export("--subject", "PR 2")
    assert code != 0 and "Invalid value for '--subject'" in output and "letters" in output
    code, _, output = export("--since", "last week")
    assert code != 0 and "'last week' is not a moment" in output
    code, _, output = export("--since", "2026-11-02", "--until", "2026-11-01")
    assert code != 0 and "before --since" in output


def test_an_action_already_queued_for_the_subject_is_not_sent_again(
        make_app: AppFactory, executor: Executor, tmp_path: Path) -> None:
    app = make_app(executors_file=executors_file(tmp_path, executor.url))
    client = app.test_client()
    client.post("/v1/facts", json={"facts": case()})
    first = decide(client)
    drain(app, triggers=True)  # the facts also triggered a decision: same actions
    second = decide(client)
    assert set(statuses(second).values()) == {"recorded"}
    assert first["decision_id"] in second["actions"][0]["delivery"]["not_sent"]
    drain(app)
    assert sorted(d.path for d in executor.deliveries) == ["/expedite_delivery",
                                                          "/issue_purchase_order"]


def test_a_flood_of_triggering_facts_is_decided_in_bounded_batches(make_app: AppFactory) -> None:
    from app.facts.triggers import MAX_TRIGGERING_FACTS

    app = make_app(max_batch=1000, max_facts_per_type=1000)
    client = app.test_client()
    flood = [{"subject": "PR-F", "type": "risk_assessment", "department": "risk",
              "data": {"request_id": "PR-F", "score": 0.1, "n": n}}
             for n in range(MAX_TRIGGERING_FACTS + 100)]
    assert client.post("/v1/facts", json={"facts": flood[:600]}).status_code == 201
    drain(app, triggers=True)
    decisions = client.get("/v1/decisions?subject=PR-F").get_json()["decisions"]
    assert sorted(len(d["trigger"]["facts"]) for d in decisions) == [
        100, MAX_TRIGGERING_FACTS]


def test_a_server_that_lost_its_scripts_still_records_decisions(
        make_app: AppFactory, redis_client: redis.Redis, tmp_path: Path) -> None:
    client = make_app(executors_file=executors_file(tmp_path, "http://127.0.0.1:9")).test_client()
    client.post("/v1/facts", json={"facts": case(urgency="normal")})
    redis_client.script_flush()  # as after a restart without persistence
    response = client.post("/v1/decisions", json={"subject": "PR-1", "ruleset": "procurement"})
    assert response.status_code == 201
    assert statuses(response.get_json()) == {"issue_purchase_order": "queued"}
    assert redis_client.zcard(keys.dispatch_due()) == 1


def test_a_decision_past_an_evaluation_limit_is_a_clear_problem_and_recorded(
        make_app: AppFactory) -> None:
    app = make_app(max_join_candidates=50)
    client = app.test_client()
    requests = [{"subject": "PR-J", "type": "purchase_request", "department": "procurement",
                 "data": {"request_id": "PR-J", "amount": n + 1}} for n in range(10)]
    budgets = [{"subject": "PR-J", "type": "budget_check", "department": "finance",
                "data": {"request_id": "PR-J", "available": 10 * n}} for n in range(10)]
    assert client.post("/v1/facts", json={"facts": requests + budgets}).status_code == 201
    refused = client.post("/v1/decisions", json={"subject": "PR-J", "ruleset": "procurement"})
    assert refused.status_code == 422
    problem = refused.get_json()
    assert "DECISION_MAX_JOIN_CANDIDATES" in problem["detail"]
    assert client.get(f"/v1/decisions/{problem['decision_id']}").get_json()["error"]
    assert decide(client, "PR-2")["actions"] == []  # the next decision runs as ever


def test_a_decision_past_its_time_is_a_503_that_names_the_setting(make_app: AppFactory) -> None:
    app = make_app(max_evaluation_seconds=0.000001)
    client = app.test_client()
    client.post("/v1/facts", json={"facts": case("PR-T")})
    slow = client.post("/v1/decisions", json={"subject": "PR-T", "ruleset": "procurement"})
    assert slow.status_code == 503
    assert slow.headers["Retry-After"]
    assert "DECISION_MAX_EVALUATION_SECONDS" in slow.get_json()["detail"]


@pytest.mark.parametrize(("amount", "available", "fires"), [
    (1e16, 1e20, "budget_confirmed"), (1e20, 1e16, "budget_shortfall"),
    (1e308, 5e-324, "budget_shortfall"), (2**53 + 1, 2.0**53, "budget_shortfall"),
    (2.0**53, 2**53, "budget_confirmed")])
def test_numbers_the_rule_engine_misreads_decide_right_over_http(
        make_app: AppFactory, amount: float, available: float, fires: str) -> None:
    client = make_app().test_client()
    facts = case("PR-N")
    facts[0]["data"]["amount"], facts[1]["data"]["available"] = amount, available
    assert client.post("/v1/facts", json={"facts": facts}).status_code == 201
    record = decide(client, "PR-N")
    fired = {f["rule"] for f in record["fired"]}
    assert fires in fired and ({"budget_confirmed", "budget_shortfall"} - {fires}).isdisjoint(
        fired)


def test_racing_requests_with_one_key_and_different_bodies_get_one_201_and_one_409(
        make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both get past the first look for the key before either records: the commit script
    must still compare the requests."""
    import threading

    import app.decisions.path

    app_ = make_app()
    both_deciding = threading.Barrier(2, timeout=10)
    real = app.decisions.path.make_decision

    def in_step(**kwargs: Any) -> Any:
        both_deciding.wait()
        return real(**kwargs)

    monkeypatch.setattr(app.decisions.path, "make_decision", in_step)
    answers: list[int] = []

    def post(dry_run: bool) -> None:
        response = app_.test_client().post(
            "/v1/decisions", headers={"Idempotency-Key": "race-1"},
            json={"subject": "PR-R", "ruleset": "procurement", "dry_run": dry_run})
        answers.append(response.status_code)

    threads = [threading.Thread(target=post, args=(flag,)) for flag in (False, True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [201, 409]


def _parked_order(make_app: AppFactory, executor: Executor, tmp_path: Path,
                  **overrides: Any) -> tuple[Flask, dict[str, Any], dict[str, Any]]:
    app = make_app(executors_file=executors_file(tmp_path, executor.url, max_attempts=1),
                   **overrides)
    client = app.test_client()
    client.post("/v1/facts", json={"facts": case(urgency="normal")})
    executor.statuses = [500]
    record = decide(client)
    drain(app)
    [order] = client.get(f"/v1/decisions/{record['decision_id']}").get_json()["actions"]
    assert order["status"] == "failed"
    return app, record, order


def test_a_redrive_asks_the_current_policies_again(make_app: AppFactory, executor: Executor,
                                                  tmp_path: Path) -> None:
    policies = tmp_path / "rego"
    shutil.copytree(ROOT / "rego", policies)
    app, record, order = _parked_order(make_app, executor, tmp_path, policy_dir=policies,
                                       policy_reload_seconds=0.01)
    client = app.test_client()
    redrive = f"/v1/decisions/{record['decision_id']}/actions/{order['id']}/redrive"
    # meanwhile compliance put the vendor on the sanctions list
    sanctions = policies / "decision" / "sanctions" / "data.json"
    sanctions.write_text(json.dumps({"vendors": [
        {"name": "Globex", "list": "EU consolidated", "reference": "EU-2026-1"}]}))
    time.sleep(0.05)
    refused = client.post(redrive)
    assert refused.status_code == 409
    problem = refused.get_json()
    assert problem["verdict"]["outcome"] == "deny"
    assert "sanctions list" in problem["verdict"]["reasons"][0]
    [still] = client.get("/v1/actions/failed").get_json()["failed"]
    assert still["redrive_refused"][0]["reasons"] == problem["verdict"]["reasons"]
    parked = client.get(f"/v1/decisions/{record['decision_id']}").get_json()["actions"][0]
    assert parked["status"] == "failed"
    assert parked["verdict"]["outcome"] == "allow"  # the first verdict stays as it was
    assert parked["delivery"]["redrive_refused"][0]["outcome"] == "deny"
    drain(app)
    assert len(executor.deliveries) == 1
    # lifted again: the re-drive goes through, with the verdict it was given
    sanctions.write_text(json.dumps({"vendors": []}))
    time.sleep(0.05)
    allowed = client.post(redrive)
    assert allowed.status_code == 202
    assert allowed.get_json()["verdict"]["outcome"] == "allow"
    drain(app)
    assert statuses(client.get(f"/v1/decisions/{record['decision_id']}").get_json()) == {
        "issue_purchase_order": "dispatched"}


def test_parked_actions_expire_with_their_decision(make_app: AppFactory, executor: Executor,
                                                  tmp_path: Path) -> None:
    app, record, order = _parked_order(make_app, executor, tmp_path,
                                       decision_retention_seconds=1)
    service = service_of(app)
    assert len(service.outbox.failed()) == 1
    time.sleep(1.1)
    assert service.outbox.failed() == []
    assert service.redis.hlen(keys.outbox("PR-1")) == 0
    assert app.test_client().post(f"/v1/decisions/{record['decision_id']}/actions/"
                                  f"{order['id']}/redrive").status_code == 404
