"""Coordination across a plan: the rules see the policy's verdicts, and an action that
requires another is delivered only after it, never when it is denied, held or parked.

On a domain of its own (opening customer accounts), not the sample's: the behaviour, not
the example.
"""

from __future__ import annotations

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
from rules_support import own_domain

from app import create_app
from app.dispatch.outbox import Outbox, member_of
from app.service import DecisionService
from app.shared import keys
from app.shared.config import Settings

RULES = """
ruleset: onboarding
description: Accounts for new customers.
facts:
  application: {owners: [sales], fields: [customer_id, country, email]}
  kyc_check: {owners: [compliance], fields: [customer_id, status]}
  contact: {owners: [sales], fields: [customer_id, email]}
rules:
  - name: open
    when:
      app: {type: application}
      kyc: {type: kyc_check, customer_id: "$app.customer_id"}
    then:
      - propose: {action: open_account,
                  params: {customer_id: "$app.customer_id", country: "$app.country",
                           kyc: "$kyc.status"}}
  - name: welcome
    when:
      app: {type: application}
      kyc: {type: kyc_check, customer_id: "$app.customer_id"}
      how: {type: contact, customer_id: "$app.customer_id"}
    then:
      - propose: {action: send_welcome_pack, requires: [open_account],
                  params: {customer_id: "$app.customer_id", email: "$how.email"}}
  - name: card
    when:
      app: {type: application}
      kyc: {type: kyc_check, customer_id: "$app.customer_id"}
    then:
      - propose: {action: issue_card, requires: [send_welcome_pack],
                  params: {customer_id: "$app.customer_id"}}
  - name: refused
    when:
      verdict: {type: verdict, action: open_account, allow: false}
      app: {type: application, customer_id: "$verdict.customer_id"}
    then:
      - propose: {action: tell_sales,
                  params: {customer_id: "$app.customer_id", reasons: "$verdict.reasons",
                           outcome: "$verdict.outcome"}}
  - name: reserve
    when:
      app: {type: application}
    unless:
      verdict: {type: verdict, action: open_account, allow: false}
    then:
      - propose: {action: reserve_number, params: {customer_id: "$app.customer_id"}}
"""

POLICY = """package decision.governance

default allow := false

allow if {
	input.action.type != "open_account"
	count(deny) == 0
}

allow if {
	input.action.type == "open_account"
	input.action.params.kyc == "passed"
	count(deny) == 0
}

deny contains msg if {
	input.action.type == "open_account"
	input.action.params.kyc != "passed"
	msg := sprintf("KYC for %s is %s, not passed.",
		[input.action.params.customer_id, input.action.params.kyc])
}

# A country under review: a denial that is no reason holds the account (a malformed answer).
deny contains 1 if {
	input.action.type == "open_account"
	input.action.params.country == "XX"
}
"""

ACTIONS = ("open_account", "send_welcome_pack", "issue_card", "tell_sales", "reserve_number")
AppFactory = Callable[..., Flask]


@pytest.fixture
def domain(tmp_path: Path) -> tuple[Path, Path]:
    return own_domain(tmp_path, {"onboarding.yaml": RULES}, POLICY)


@pytest.fixture
def executor() -> Iterator[Executor]:
    server = Executor()
    yield server
    server.stop()


def executors(tmp_path: Path, urls: dict[str, str], name: str = "executors.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({action: {"url": f"{url}/{action}", "timeout_seconds": 2,
                                             "max_attempts": 2}
                                    for action, url in urls.items()}))
    return path


@pytest.fixture
def make_app(redis_url: str, redis_client: redis.Redis, tmp_path: Path,
             domain: tuple[Path, Path], executor: Executor) -> Iterator[AppFactory]:
    apps: list[Flask] = []
    rules, policies = domain

    def make(**overrides: Any) -> Flask:
        app = create_app(Settings.load(environ={}, overrides={
            "redis_url": redis_url, "data_dir": tmp_path, "rules_dir": rules,
            "policy_dir": policies, "background_worker": False,
            "executors_file": executors(tmp_path, dict.fromkeys(ACTIONS, executor.url)),
            "dispatch_backoff_seconds": 0.01, "dispatch_backoff_max_seconds": 0.05,
            **overrides}))
        apps.append(app)
        return app

    yield make
    for app in apps:
        if "decision_service" in app.extensions:
            app.extensions["decision_service"].close()


def service_of(app: Flask) -> DecisionService:
    svc: DecisionService = app.extensions["decision_service"]
    return svc


def post(client: FlaskClient, customer: str, *, kyc: str = "passed", country: str = "NL",
         contact: bool = True) -> None:
    facts: list[dict[str, Any]] = [
        {"type": "application", "department": "sales",
         "data": {"customer_id": customer, "country": country, "email": f"{customer}@x.test"}},
        {"type": "kyc_check", "department": "compliance",
         "data": {"customer_id": customer, "status": kyc}}]
    if contact:
        facts.append({"type": "contact", "department": "sales",
                      "data": {"customer_id": customer, "email": f"{customer}@x.test"}})
    response = client.post("/v1/facts", json={"facts": [{"subject": customer, **f}
                                                        for f in facts]})
    assert response.status_code == 201, response.get_json()


def decide(client: FlaskClient, customer: str, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/decisions", json={"subject": customer, "ruleset": "onboarding",
                                                  **body})
    assert response.status_code == 201, response.get_json()
    return dict(response.get_json())


def by_type(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {action["type"]: action for action in record["actions"]}


def statuses(record: dict[str, Any]) -> dict[str, str]:
    return {action["type"]: action["status"] for action in record["actions"]}


def drain(app: Flask, seconds: float = 10.0) -> None:
    svc = service_of(app)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if svc.dispatcher.run_once() == 0:
            due = svc.redis.zrangebyscore("ds:{dispatch}:due", "-inf", time.time() * 1000)
            if not due:
                return
            time.sleep(0.02)


# --- verdicts are facts ---------------------------------------------------------------


def test_a_denial_is_a_fact_the_rules_react_to_and_its_dependents_are_blocked(
        make_app: AppFactory, executor: Executor) -> None:
    app = make_app()
    client = app.test_client()
    post(client, "C-1", kyc="failed")
    record = decide(client, "C-1")
    actions = by_type(record)
    assert statuses(record) == {
        "open_account": "denied", "send_welcome_pack": "blocked", "issue_card": "blocked",
        "reserve_number": "withdrawn", "tell_sales": "queued"}
    # The rules saw the denial in a second round and told sales why, in the policy's words.
    assert actions["tell_sales"]["params"] == {
        "customer_id": "C-1", "reasons": ["KYC for C-1 is failed, not passed."],
        "outcome": "deny"}
    assert actions["tell_sales"]["round"] == 2 and actions["open_account"]["round"] == 1
    assert record["rounds"] == 3  # the third proposed nothing new
    refused = next(f for f in record["fired"] if f["rule"] == "refused")
    verdict = next(f for f in record["verdict_facts"] if f["id"] == refused["facts"]["verdict"])
    assert (verdict["type"], verdict["department"]) == ("verdict", "policy")
    assert verdict["data"]["action"] == "open_account" and verdict["data"]["allow"] is False
    assert verdict["data"]["customer_id"] == "C-1"  # the params, to join on
    assert refused["round"] == 2
    # Each dependent says which prerequisite stops it, and why.
    welcome = actions["send_welcome_pack"]
    assert welcome["verdict"]["allow"] is True
    assert welcome["delivery"]["blocked"] == (
        f"it requires open_account ({actions['open_account']['id']}), which the policy "
        "denied: KYC for C-1 is failed, not passed.")
    assert welcome["delivery"]["prerequisite"]["status"] == "denied"
    card = actions["issue_card"]
    assert card["delivery"]["blocked"].startswith(
        f"it requires send_welcome_pack ({welcome['id']}), which is blocked: it requires "
        "open_account")
    assert "no longer proposed" in actions["reserve_number"]["delivery"]["withdrawn"] or \
        "no longer" in actions["reserve_number"]["delivery"]["withdrawn"]
    stored = client.get(f"/v1/decisions/{record['decision_id']}").get_json()
    assert statuses(stored) == statuses(record)
    drain(app)
    assert [d.path for d in executor.deliveries] == ["/tell_sales"]


def test_a_held_prerequisite_blocks_and_the_rules_see_the_hold(make_app: AppFactory,
                                                               executor: Executor) -> None:
    app = make_app()
    client = app.test_client()
    post(client, "C-2", country="XX")
    record = decide(client, "C-2")
    actions = by_type(record)
    assert actions["open_account"]["status"] == "held"
    assert actions["send_welcome_pack"]["status"] == "blocked"
    assert "which the policy held" in actions["send_welcome_pack"]["delivery"]["blocked"]
    assert actions["tell_sales"]["params"]["outcome"] == "hold"
    drain(app)
    assert [d.path for d in executor.deliveries] == ["/tell_sales"]


def test_rules_that_keep_reacting_end_the_decision_with_a_clear_error(
        make_app: AppFactory, domain: tuple[Path, Path]) -> None:
    rules, _ = domain
    (rules / "echo.yaml").write_text("""
ruleset: echo
facts:
  application: {owners: [sales]}
rules:
  - name: start
    when: {app: {type: application}}
    then: [{propose: {action: echo, params: {n: 0}}}]
  - name: again
    when: {v: {type: verdict, action: echo}}
    then: [{propose: {action: echo, params: {n: "$v.round"}}}]
""")
    client = make_app(max_rounds=3).test_client()
    post(client, "C-3")
    response = client.post("/v1/decisions", json={"subject": "C-3", "ruleset": "echo"})
    assert response.status_code == 422
    problem = response.get_json()
    assert "still changed what it proposed after 3 rounds" in problem["detail"]
    assert "DECISION_MAX_ROUNDS" in problem["detail"]
    failed = client.get(f"/v1/decisions/{problem['decision_id']}").get_json()
    assert failed["error"]["detail"] == problem["detail"] and failed["actions"] == []


def test_a_ruleset_that_reads_no_verdicts_decides_in_one_round(make_app: AppFactory,
                                                              domain: tuple[Path, Path]) -> None:
    rules, _ = domain
    (rules / "onboarding.yaml").write_text(RULES.split("  - name: refused")[0])
    client = make_app().test_client()
    post(client, "C-4", kyc="failed")
    record = decide(client, "C-4")
    assert record["rounds"] == 1 and record["verdict_facts"] == []
    assert "tell_sales" not in statuses(record)


def test_verdicts_come_only_from_the_gate(make_app: AppFactory) -> None:
    client = make_app().test_client()
    forged = {"subject": "C-5", "type": "verdict", "department": "sales",
              "data": {"action": "open_account", "allow": False}}
    response = client.post("/v1/facts", json=forged)
    assert response.status_code == 403
    assert "verdict facts are the policy gate's verdicts" in response.get_json()["detail"]
    as_policy = client.post("/v1/facts", json={**forged, "type": "note", "department": "policy"})
    assert as_policy.status_code == 422
    assert "policy gate's verdicts" in str(as_policy.get_json()["invalid-params"])
    post(client, "C-5")
    inline = client.post("/v1/decisions", json={"subject": "C-5", "ruleset": "onboarding",
                                                "facts": [{k: v for k, v in forged.items()
                                                           if k != "subject"}]})
    assert inline.status_code == 403


def test_a_decision_in_rounds_replays_unchanged_and_a_what_if_shows_what_unblocks(
        make_app: AppFactory) -> None:
    client = make_app().test_client()
    post(client, "C-6", kyc="failed")
    record = decide(client, "C-6")
    same = client.post("/v1/replays", json={"decision_ids": [record["decision_id"]]})
    assert same.status_code == 200
    assert same.get_json()["results"][0]["changed"] is False
    lenient = POLICY.replace('input.action.params.kyc == "passed"',
                             'input.action.params.kyc in {"passed", "failed"}').replace(
        'input.action.params.kyc != "passed"', 'input.action.params.kyc == "refused"')
    what_if = client.post("/v1/replays", json={
        "decision_ids": [record["decision_id"]],
        "policies": {"decision/governance/governance.rego": lenient}})
    assert what_if.status_code == 200, what_if.get_json()
    report = what_if.get_json()
    delta = report["results"][0]["diff"]
    assert {b["type"] for b in delta["blocked"]["no_longer"]} == {"send_welcome_pack",
                                                                 "issue_card"}
    assert "which the policy denied" in delta["blocked"]["no_longer"][0]["reason"]
    assert [v["type"] for v in delta["verdicts"]] == ["open_account"]
    assert [a["type"] for a in delta["actions"]["removed"]] == ["tell_sales"]
    assert report["summary"]["blocked"] == {"now": 0, "no_longer": 2}


def test_a_dry_run_shows_what_would_be_blocked(make_app: AppFactory) -> None:
    client = make_app().test_client()
    post(client, "C-7", kyc="failed")
    denied = decide(client, "C-7", dry_run=True)
    assert statuses(denied)["send_welcome_pack"] == "blocked"
    post(client, "C-8")
    allowed = decide(client, "C-8", dry_run=True)
    assert set(statuses(allowed).values()) == {"dry_run"}


# --- dependent actions in the outbox ---------------------------------------------------


def test_dependents_are_delivered_in_order_by_any_worker_after_a_restart(
        make_app: AppFactory, executor: Executor) -> None:
    deciding = make_app()
    client = deciding.test_client()
    post(client, "C-10")
    record = decide(client, "C-10")
    actions = by_type(record)
    assert statuses(record) == {"open_account": "queued", "send_welcome_pack": "waiting",
                                "issue_card": "waiting", "reserve_number": "queued"}
    assert actions["issue_card"]["delivery"]["waiting_for"] == [{
        "decision_id": record["decision_id"], "action_id": actions["send_welcome_pack"]["id"],
        "type": "send_welcome_pack"}]
    service_of(deciding).close()  # the process that decided is gone
    deciding.extensions.pop("decision_service")

    worker = service_of(make_app())  # another process delivers
    assert worker.dispatcher.run_once() == 2  # what waits is not even due
    assert sorted(d.path for d in executor.deliveries) == ["/open_account", "/reserve_number"]
    now = by_type(worker.decisions.get(record["decision_id"]))
    assert (now["send_welcome_pack"]["status"], now["issue_card"]["status"]) == (
        "queued", "waiting")
    assert worker.dispatcher.run_once() == 1
    assert worker.dispatcher.run_once() == 1
    assert [d.path for d in executor.deliveries][2:] == ["/send_welcome_pack", "/issue_card"]
    done = worker.decisions.get(record["decision_id"])
    assert set(statuses(done).values()) == {"dispatched"}


def test_a_parked_prerequisite_blocks_what_waits_for_it_and_later_decisions(
        make_app: AppFactory, executor: Executor, tmp_path: Path) -> None:
    refusing = Executor()
    refusing.failing_status = 400  # a 4xx no retry can fix: parked at once
    try:
        urls = {**dict.fromkeys(ACTIONS, executor.url), "open_account": refusing.url}
        app = make_app(executors_file=executors(tmp_path, urls, "refusing.yaml"))
        client = app.test_client()
        post(client, "C-11")
        first = decide(client, "C-11")
        drain(app)
        stored = by_type(client.get(f"/v1/decisions/{first['decision_id']}").get_json())
        assert stored["open_account"]["status"] == "failed"
        for blocked, by in (("send_welcome_pack", "open_account"),
                            ("issue_card", "send_welcome_pack")):
            assert stored[blocked]["status"] == "blocked"
            assert stored[blocked]["delivery"]["prerequisite"]["type"] == by
        assert stored["send_welcome_pack"]["delivery"]["blocked"] == (
            f"it requires open_account ({stored['open_account']['id']}), which was parked "
            "after failed delivery: the executor answered HTTP 400")
        assert [d.path for d in executor.deliveries] == ["/reserve_number"]

        # Asked again, the same account is the one already parked: the welcome is blocked
        # at once, in the new decision's record.
        second = decide(client, "C-11")
        assert by_type(second)["open_account"]["status"] == "recorded"
        assert by_type(second)["send_welcome_pack"]["status"] == "blocked"
        assert "was parked after failed delivery" in by_type(
            second)["send_welcome_pack"]["delivery"]["blocked"]
        drain(app)
        assert [d.path for d in executor.deliveries] == ["/reserve_number"]
    finally:
        refusing.stop()


def test_a_dependent_waits_for_the_prerequisite_an_earlier_decision_queued(
        make_app: AppFactory, executor: Executor) -> None:
    app = make_app()
    client = app.test_client()
    post(client, "C-12", contact=False)
    first = decide(client, "C-12")
    assert statuses(first) == {"open_account": "queued", "issue_card": "blocked",
                               "reserve_number": "queued"}
    assert by_type(first)["issue_card"]["delivery"]["blocked"] == (
        "it requires send_welcome_pack, which this decision does not propose")
    client.post("/v1/facts", json={"subject": "C-12", "type": "contact", "department": "sales",
                                   "data": {"customer_id": "C-12", "email": "c@x.test"}})
    second = decide(client, "C-12")  # the account is not delivered yet
    assert by_type(second)["open_account"]["status"] == "recorded"
    welcome = by_type(second)["send_welcome_pack"]
    assert welcome["status"] == "waiting"
    assert welcome["delivery"]["waiting_for"] == [{
        "decision_id": first["decision_id"], "action_id": by_type(first)["open_account"]["id"],
        "type": "open_account"}]
    assert by_type(second)["issue_card"]["status"] == "waiting"
    drain(app)
    paths = [d.path for d in executor.deliveries]
    assert paths.index("/open_account") < paths.index("/send_welcome_pack") < paths.index(
        "/issue_card")
    assert set(statuses(client.get(f"/v1/decisions/{second['decision_id']}").get_json())
               .values()) == {"recorded", "dispatched"}


def test_a_dependent_of_a_delivered_prerequisite_goes_at_once(make_app: AppFactory,
                                                             executor: Executor) -> None:
    app = make_app()
    client = app.test_client()
    post(client, "C-13", contact=False)
    decide(client, "C-13")
    drain(app)  # the account is open
    client.post("/v1/facts", json={"subject": "C-13", "type": "contact", "department": "sales",
                                   "data": {"customer_id": "C-13", "email": "c@x.test"}})
    second = decide(client, "C-13")
    assert by_type(second)["send_welcome_pack"]["status"] == "queued"
    assert by_type(second)["issue_card"]["status"] == "waiting"
    drain(app)
    assert [d.path for d in executor.deliveries][-2:] == ["/send_welcome_pack", "/issue_card"]


# --- what a hostile review found -------------------------------------------------------


def test_an_expired_parked_prerequisite_is_not_taken_for_a_delivered_one(
        make_app: AppFactory, executor: Executor, tmp_path: Path) -> None:
    refusing = Executor()
    refusing.failing_status = 400
    try:
        urls = {**dict.fromkeys(ACTIONS, executor.url), "open_account": refusing.url}
        app = make_app(executors_file=executors(tmp_path, urls, "refusing.yaml"))
        client = app.test_client()
        post(client, "C-20")
        decide(client, "C-20")
        drain(app)
        svc = service_of(app)
        later = Outbox(svc.redis, clock=lambda: time.time() + 31 * 86400,
                       retention_seconds=svc.settings.decision_retention_seconds)
        assert later.expire_parked() == 1  # the retention period passed for it
        refusing.failing_status = None  # and the executor works again
        second = decide(client, "C-20")
        assert by_type(second)["open_account"]["status"] == "queued"  # queued afresh
        assert by_type(second)["send_welcome_pack"]["status"] == "waiting"
        drain(app)
        assert [d.path for d in refusing.deliveries] == ["/open_account", "/open_account"]
        paths = [d.path for d in executor.deliveries]
        assert paths.index("/send_welcome_pack") < paths.index("/issue_card")
        assert refusing.deliveries[-1].arrived < next(
            d.arrived for d in executor.deliveries if d.path == "/send_welcome_pack")
    finally:
        refusing.stop()


def test_no_posted_fact_can_take_a_verdicts_id(make_app: AppFactory) -> None:
    client = make_app().test_client()
    post(client, "C-21", kyc="failed")
    record = decide(client, "C-21")
    [verdict_id] = [f["id"] for f in record["verdict_facts"]
                    if f["data"]["action"] == "open_account"]
    squat = client.post("/v1/facts", json={
        "subject": "C-21", "id": verdict_id, "type": "contact", "department": "sales",
        "data": {"customer_id": "C-21", "email": "x@x.test"}})
    assert squat.status_code == 422  # a verdict's id holds a character no fact id may
    assert decide(client, "C-21")["rounds"] == 3


def test_one_policy_revision_judges_every_round(make_app: AppFactory,
                                                domain: tuple[Path, Path]) -> None:
    _, policies = domain
    app = make_app(policy_reload_seconds=0.001)
    svc = service_of(app)
    real, calls = svc.decider.evaluate, []

    def deploying_midway(ruleset: Any, facts: Any, *, seconds: float | None = None) -> Any:
        calls.append(1)
        if len(calls) == 2:  # an operator deploys new policies while the decision runs
            (policies / "decision" / "governance" / "governance.rego").write_text(
                POLICY + '\ndeny contains "sales is not told today" if {\n'
                         '\tinput.action.type == "tell_sales"\n}\n')
            time.sleep(0.01)
        return real(ruleset, facts, seconds=seconds)

    svc.decider.evaluate = deploying_midway  # type: ignore[method-assign]
    client = app.test_client()
    post(client, "C-22", kyc="failed")
    record = decide(client, "C-22")
    assert len(calls) > 3  # the decision ran again, on the new revision alone
    revisions = {a["verdict"]["policy_revision"] for a in record["actions"]}
    assert revisions == {record["policy"]["revision"]}
    assert by_type(record)["tell_sales"]["status"] == "denied"
    replayed = client.post("/v1/replays", json={"decision_ids": [record["decision_id"]]})
    assert replayed.get_json()["results"][0]["changed"] is False


def test_a_withdrawn_action_leaves_no_verdict_for_the_last_round(
        make_app: AppFactory, domain: tuple[Path, Path]) -> None:
    rules, _ = domain
    (rules / "onboarding.yaml").write_text(RULES + """
  - name: number_reserved
    when:
      verdict: {type: verdict, action: reserve_number, allow: true}
    then:
      - propose: {action: print_number_card, params: {customer_id: "$verdict.customer_id"}}
""")
    client = make_app().test_client()
    post(client, "C-23", kyc="failed")
    record = decide(client, "C-23")
    assert by_type(record)["reserve_number"]["status"] == "withdrawn"
    assert by_type(record)["print_number_card"]["status"] == "withdrawn"
    last = {f["data"]["action"] for f in record["verdict_facts"]}
    assert "reserve_number" not in last and "open_account" in last


def test_params_too_deep_for_a_fact_are_left_out_of_the_verdict(make_app: AppFactory) -> None:
    client = make_app().test_client()
    deep: Any = "bottom"
    for _ in range(31):
        deep = [deep]
    post(client, "C-24", kyc="failed", contact=False)
    client.post("/v1/facts", json={"subject": "C-24", "type": "contact", "department": "sales",
                                   "data": {"customer_id": "C-24", "email": deep}})
    record = decide(client, "C-24")
    assert record["rounds"] == 3
    [welcome] = [f for f in record["verdict_facts"] if f["data"]["action"] ==
                 "send_welcome_pack"]
    assert "params" not in welcome["data"]  # a level deeper than the fact allows
    assert welcome["data"]["email"] == deep and welcome["data"]["customer_id"] == "C-24"


def test_all_rounds_share_one_time_budget(make_app: AppFactory) -> None:
    app = make_app(max_evaluation_seconds=0.5)
    svc = service_of(app)
    real, given = svc.decider.evaluate, []

    def slow(ruleset: Any, facts: Any, *, seconds: float | None = None) -> Any:
        given.append(seconds)
        time.sleep(0.2)
        return real(ruleset, facts, seconds=seconds)

    svc.decider.evaluate = slow  # type: ignore[method-assign]
    client = app.test_client()
    post(client, "C-25", kyc="failed")  # three rounds: more than the budget
    response = client.post("/v1/decisions", json={"subject": "C-25", "ruleset": "onboarding"})
    assert response.status_code == 503
    assert "did not come to rest within 0.5 s" in response.get_json()["detail"]
    assert given[0] == pytest.approx(0.5, abs=0.05) and given[1] < given[0] - 0.15


def test_a_replay_judges_sending_by_the_executors_the_decision_had(
        make_app: AppFactory, executor: Executor, tmp_path: Path) -> None:
    partial = dict.fromkeys(("send_welcome_pack", "issue_card"), executor.url)
    first = make_app(executors_file=executors(tmp_path, partial, "partial.yaml"))
    client = first.test_client()
    post(client, "C-26")
    record = decide(client, "C-26")
    assert by_type(record)["open_account"]["status"] == "recorded"  # no executor then
    assert by_type(record)["send_welcome_pack"]["status"] == "blocked"
    now = make_app().test_client()  # every action has an executor today
    replayed = now.post("/v1/replays", json={"decision_ids": [record["decision_id"]]})
    assert replayed.get_json()["results"][0]["changed"] is False


def test_a_claim_made_early_does_not_take_over_a_live_one(make_app: AppFactory) -> None:
    app = make_app()
    post(app.test_client(), "C-27")
    record = decide(app.test_client(), "C-27")
    svc = service_of(app)
    member = member_of("C-27", record["decision_id"], by_type(record)["open_account"]["id"])
    first, claimed = svc.outbox.claim(limit=10, lease_seconds=30)
    assert member in claimed
    assert svc.outbox.adopt(member, first, time.time() + 30) is not None
    svc.redis.zadd(keys.dispatch_due(), {member: 0})  # made due early (a release, on Cluster)
    second, again = svc.outbox.claim(limit=10, lease_seconds=30)
    assert member in again and second > first
    assert svc.outbox.adopt(member, second, time.time() + 30) is None  # the first holds it
