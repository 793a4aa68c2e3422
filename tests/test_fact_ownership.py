"""Facts are only what their departments said: fact ids and fact types have owners, inline
facts cannot shadow another department's, quotas keep every subject decidable, and a
subject that cannot be decided says so. Each test is an attack a department's key could
try, against the sample domain and against a domain written here."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import AppFactory
from flask.testing import FlaskClient

from app.policy.access import hash_key
from app.service import DecisionService

ROOT = Path(__file__).resolve().parent.parent
DEPARTMENTS = ("procurement", "finance", "risk", "legal", "operations")



def key_of(name: str) -> str:
    return f"ownership-test-key-{name}"


def as_(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key_of(name)}"}


def write_keys(path: Path, departments: tuple[str, ...], rulesets: list[str]) -> Path:
    path.write_text(yaml.safe_dump({"keys": [
        {"id": f"{d}-service", "sha256": hash_key(key_of(d)), "departments": [d],
         "rulesets": rulesets, "grants": []} for d in departments]}))
    return path


@pytest.fixture
def make_app(app_factory: AppFactory) -> AppFactory:
    return app_factory


@pytest.fixture
def secured(make_app: AppFactory, tmp_path: Path) -> FlaskClient:
    keys = write_keys(tmp_path / "keys.yaml", DEPARTMENTS, ["procurement"])
    return make_app(api_keys_file=keys).test_client()


def fact(fact_type: str, department: str, subject: str = "PR-1", **data: Any) -> dict[str, Any]:
    extra = {k: data.pop(k) for k in ("id", "ttl_seconds") if k in data}
    return {"subject": subject, "type": fact_type, "department": department,
            "data": {"request_id": subject, **data}, **extra}


def pooled(client: FlaskClient, subject: str = "PR-1",
           headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = client.get(f"/v1/subjects/{subject}/facts", headers=headers or as_("finance"))
    assert response.status_code == 200
    return response.get_json()


def service_of(client: FlaskClient) -> DecisionService:
    svc: DecisionService = client.application.extensions["decision_service"]
    return svc


# --- fact ids belong to the department that posted them ----------------------------------


def test_another_department_cannot_take_over_a_fact_by_its_id(secured: FlaskClient) -> None:
    budget = fact("budget_check", "finance", id="budget-AUTH-1", available=50000,
                  cost_center="CC-7", approver="bob")
    assert secured.post("/v1/facts", json=budget, headers=as_("finance")).status_code == 201
    # procurement re-posts the id as a type it owns, with its own department
    takeover = fact("purchase_request", "procurement", id="budget-AUTH-1", amount=1)
    refused = secured.post("/v1/facts", json=takeover, headers=as_("procurement"))
    assert refused.status_code == 403
    assert refused.mimetype == "application/problem+json"
    assert refused.get_json()["detail"].startswith(
        "Fact 'budget-AUTH-1' belongs to the finance department")
    [stored] = pooled(secured)["facts"]
    assert (stored["department"], stored["version"], stored["data"]["available"]) == (
        "finance", 1, 50000)
    # and the retraction that would follow is refused too: it checks the stored fact
    assert secured.delete("/v1/facts/budget-AUTH-1",
                          headers=as_("procurement")).status_code == 403
    assert secured.delete("/v1/facts/budget-AUTH-1", headers=as_("finance")).status_code == 204


def test_the_owner_replaces_its_own_fact(secured: FlaskClient) -> None:
    budget = fact("budget_check", "finance", id="b-1", available=1)
    secured.post("/v1/facts", json=budget, headers=as_("finance"))
    budget["data"]["available"] = 2
    response = secured.post("/v1/facts", json=budget, headers=as_("finance"))
    assert response.status_code == 201
    assert response.get_json()["facts"][0]["version"] == 2


def test_without_api_keys_a_fact_id_still_keeps_its_department(make_app: AppFactory) -> None:
    client = make_app().test_client()
    client.post("/v1/facts", json=fact("purchase_hold", "finance", id="hold-1"))
    refused = client.post("/v1/facts", json=fact("purchase_hold", "legal", id="hold-1"))
    assert refused.status_code == 403
    assert "belongs to the finance department" in refused.get_json()["detail"]


def test_an_expired_fact_no_longer_holds_its_id(make_app: AppFactory) -> None:
    client = make_app().test_client()
    client.post("/v1/facts", json=fact("purchase_hold", "finance", id="hold-1", ttl_seconds=1))
    time.sleep(1.1)
    response = client.post("/v1/facts", json=fact("purchase_hold", "legal", id="hold-1"))
    assert response.status_code == 201
    assert response.get_json()["facts"][0]["version"] == 1


def test_a_batch_with_one_taken_id_stores_nothing(secured: FlaskClient) -> None:
    secured.post("/v1/facts", json=fact("purchase_hold", "finance", id="hold-1"),
                 headers=as_("finance"))
    batch = {"facts": [fact("purchase_request", "procurement", id="req-9", amount=5),
                       fact("purchase_hold", "procurement", id="hold-1")]}
    assert secured.post("/v1/facts", json=batch, headers=as_("procurement")).status_code == 403
    assert [f["id"] for f in pooled(secured)["facts"]] == ["hold-1"]


# --- inline facts cannot shadow another department's -------------------------------------


def test_an_inline_fact_cannot_stand_in_for_another_departments_fact(
        secured: FlaskClient) -> None:
    secured.post("/v1/facts", json=fact("budget_check", "finance", id="budget-AUTH-1",
                                        available=50000), headers=as_("finance"))
    inline = {"id": "budget-AUTH-1", "type": "budget_check", "department": "procurement",
              "data": {"request_id": "PR-1", "available": 99999999}}
    refused = secured.post("/v1/decisions", headers=as_("procurement"), json={
        "subject": "PR-1", "ruleset": "procurement", "facts": [inline]})
    assert refused.status_code == 403
    assert refused.get_json()["detail"] == (
        "The procurement department may not post budget_check facts: only finance may.")


LEGACY_RULES = """\
    ruleset: legacy
    rules:
      - name: funded
        when:
          req: {type: purchase_request}
          bud: {type: budget_check, request_id: "$req.request_id", available: {">=": "$req.amount"}}
        then:
          - propose: {action: notify_finance, params: {request_id: "$req.request_id"}}
"""


def test_shadowing_is_refused_even_where_no_ruleset_owns_the_type(make_app: AppFactory,
                                                                   tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "legacy.yaml").write_text(textwrap.dedent(LEGACY_RULES))
    client = make_app(rules_dir=rules).test_client()
    client.post("/v1/facts", json=fact("budget_check", "finance", id="bud-1", available=10))
    shadow = {"id": "bud-1", "type": "budget_check", "department": "procurement",
              "data": {"request_id": "PR-1", "available": 10**9}}
    refused = client.post("/v1/decisions", json={"subject": "PR-1", "ruleset": "legacy",
                                                 "facts": [shadow]})
    assert refused.status_code == 403
    assert refused.get_json()["detail"] == (
        "Inline fact 'bud-1' has the id of a pooled fact of the finance department; only "
        "finance may stand in for it.")
    # the owning department may, and the record says which facts were inline
    own = {**shadow, "department": "finance", "data": {"request_id": "PR-1", "available": 20}}
    record = client.post("/v1/decisions", json={"subject": "PR-1", "ruleset": "legacy",
                                                "facts": [own]}).get_json()
    [seen] = record["facts"]
    assert (seen["id"], seen["inline"], seen["data"]["available"]) == ("bud-1", True, 20)


def test_an_inline_fact_without_an_id_never_takes_a_pooled_id(make_app: AppFactory) -> None:
    client = make_app().test_client()
    client.post("/v1/facts", json=fact("purchase_hold", "finance", id="inline-1"))
    inline = {"type": "purchase_hold", "department": "legal", "data": {"request_id": "PR-1"}}
    response = client.post("/v1/decisions", json={"subject": "PR-1", "ruleset": "procurement",
                                                  "facts": [inline]})
    assert response.status_code == 201
    assert sorted(f["id"] for f in response.get_json()["facts"]) == ["inline-1", "inline-1.2"]


# --- fact types belong to departments; derived types to the rules -------------------------


@pytest.mark.parametrize("fact_type", ["budget_check", "risk_assessment", "legal_review",
                                       "urgency_assessment"])
def test_a_department_posts_only_the_fact_types_it_owns(secured: FlaskClient,
                                                        fact_type: str) -> None:
    refused = secured.post("/v1/facts", headers=as_("procurement"),
                           json=fact(fact_type, "procurement", status="cleared"))
    assert refused.status_code == 403
    assert "The procurement department may not post " + fact_type in refused.get_json()[
        "detail"]
    assert pooled(secured)["facts"] == []


def test_one_department_alone_cannot_assemble_a_purchase_order(secured: FlaskClient) -> None:
    """The attack of the issue: procurement posting every department's part itself."""
    batch = {"facts": [
        fact("purchase_request", "procurement", amount=5_000_000, vendor="Globex",
             requester="alice"),
        fact("budget_check", "procurement", available=10**9, approver="bob",
             cost_center="CC-1"),
        fact("risk_assessment", "procurement", score=0.0),
        fact("legal_review", "procurement", status="cleared", reviewer="carol"),
        fact("urgency_assessment", "procurement", level="critical")]}
    refused = secured.post("/v1/facts", json=batch, headers=as_("procurement"))
    assert refused.status_code == 403
    assert len(refused.get_json()["reasons"]) == 4
    assert pooled(secured)["facts"] == []
    assert service_of(secured).redis.zcard("ds:{triggers}:due") == 0


def test_types_the_rules_derive_cannot_be_posted(secured: FlaskClient) -> None:
    for derived in ("approval", "budget_confirmed", "order_proposed"):
        refused = secured.post("/v1/facts", json=fact(derived, "procurement"),
                               headers=as_("procurement"))
        assert refused.status_code == 403
        assert refused.get_json()["detail"] == (
            f"{derived} facts are derived by the rules (ruleset procurement); no department "
            "may post them.")


def test_nobody_posts_as_the_rules(make_app: AppFactory) -> None:
    client = make_app().test_client()
    response = client.post("/v1/facts", json=fact("purchase_hold", "rules"))
    assert response.status_code == 422
    assert response.get_json()["invalid-params"] == [{"name": "department", "reason": (
        "'rules' is the department of the facts the rules derive; no one posts under it")}]


def test_an_inline_fact_of_a_derived_type_is_refused(secured: FlaskClient) -> None:
    inline = {"type": "approval", "department": "procurement", "data": {"request_id": "PR-1"}}
    refused = secured.post("/v1/decisions", headers=as_("procurement"), json={
        "subject": "PR-1", "ruleset": "procurement", "facts": [inline]})
    assert refused.status_code == 403
    assert "derived by the rules" in refused.get_json()["detail"]


# --- quotas ------------------------------------------------------------------------------


def test_a_department_holds_at_most_its_quota_of_one_type(make_app: AppFactory) -> None:
    client = make_app(max_facts_per_type=3).test_client()
    holds = [fact("purchase_hold", "finance", id=f"hold-{n}") for n in range(3)]
    assert client.post("/v1/facts", json={"facts": holds}).status_code == 201
    refused = client.post("/v1/facts", json=fact("purchase_hold", "finance", id="hold-3"))
    assert refused.status_code == 422
    problem = refused.get_json()
    assert problem["type"] == "urn:decision-service:problem:quota-exceeded"
    assert problem["limit"] == {"name": "DECISION_MAX_FACTS_PER_TYPE", "value": 3,
                                "subject": "PR-1", "department": "finance",
                                "type": "purchase_hold"}
    assert "at most 3 live purchase_hold facts about subject PR-1" in problem["detail"]
    # replacing one is not one more; another department has its own quota
    assert client.post("/v1/facts", json=holds[0]).status_code == 201
    assert client.post("/v1/facts", json=fact("purchase_hold", "legal")).status_code == 201
    # a retraction frees a place
    assert client.delete("/v1/facts/hold-1").status_code == 204
    assert client.post("/v1/facts", json=fact("purchase_hold", "finance",
                                              id="hold-3")).status_code == 201
    quota = client.get("/v1/subjects/PR-1/facts").get_json()["quota"]
    assert quota["max_facts_per_type"] == 3
    assert quota["used"] == {"finance": {"facts": 3, "types": {"purchase_hold": 3}},
                             "legal": {"facts": 1, "types": {"purchase_hold": 1}}}


def test_a_department_holds_at_most_its_quota_of_facts(make_app: AppFactory) -> None:
    client = make_app(max_facts_per_department=4).test_client()
    batch = [fact("purchase_hold", "finance", id=f"h-{n}") for n in range(3)] + [
        fact("budget_check", "finance", id="b-1", available=1)]
    assert client.post("/v1/facts", json={"facts": batch}).status_code == 201
    refused = client.post("/v1/facts", json={"facts": [
        fact("budget_check", "finance", id="b-2", available=2)]})
    assert refused.status_code == 422
    assert refused.get_json()["limit"]["name"] == "DECISION_MAX_FACTS_PER_DEPARTMENT"
    assert len(pooled(client)["facts"]) == 4
    # the quota counts a batch as a whole: all of it or none of it
    client.delete("/v1/facts/h-0")
    two = [fact("purchase_hold", "finance", id="h-8"), fact("purchase_hold", "finance",
                                                           id="h-9")]
    assert client.post("/v1/facts", json={"facts": two}).status_code == 422
    assert {f["id"] for f in pooled(client)["facts"]} == {"h-1", "h-2", "b-1"}


def test_expired_facts_free_their_place(make_app: AppFactory) -> None:
    client = make_app(max_facts_per_type=1).test_client()
    client.post("/v1/facts", json=fact("purchase_hold", "finance", ttl_seconds=1))
    assert client.post("/v1/facts", json=fact("purchase_hold", "finance")).status_code == 422
    time.sleep(1.1)
    assert client.post("/v1/facts", json=fact("purchase_hold", "finance")).status_code == 201


def test_a_type_change_of_an_id_counts_against_the_new_type(make_app: AppFactory) -> None:
    client = make_app(max_facts_per_type=1).test_client()
    client.post("/v1/facts", json={"facts": [fact("purchase_hold", "finance", id="x"),
                                             fact("budget_check", "finance", id="y")]})
    assert client.post("/v1/facts", json=fact("budget_check", "finance",
                                              id="x")).status_code == 422
    assert client.delete("/v1/facts/y").status_code == 204
    assert client.post("/v1/facts", json=fact("budget_check", "finance",
                                              id="x")).status_code == 201
    assert pooled(client)["quota"]["used"] == {"finance": {"facts": 1,
                                                           "types": {"budget_check": 1}}}


def test_one_department_filling_its_quotas_cannot_make_a_subject_undecidable(
        make_app: AppFactory) -> None:
    client = make_app().test_client()
    settings = service_of(client).settings
    per_type = settings.max_facts_per_type
    flood = [fact("purchase_request", "procurement", id=f"req-{n}", amount=50000 + n,
                  vendor=f"V{n}", requester="mallory") for n in range(per_type)]
    flood += [fact("purchase_hold", "procurement", id=f"hold-{n}") for n in range(per_type)]
    assert client.post("/v1/facts", json={"facts": flood}).status_code == 201
    assert client.post("/v1/facts", json=fact("purchase_hold", "procurement")).status_code == 422
    response = client.post("/v1/decisions", json={"subject": "PR-1", "ruleset": "procurement"})
    assert response.status_code == 201, response.get_json()
    assert pooled(client)["decision_failures"] == []


# --- a subject that cannot be decided says so ---------------------------------------------

RUNAWAY_RULES = """\
    ruleset: runaway
    facts:
      tick: {owners: [ops]}
    rules:
      - name: start
        when:
          t: {type: tick}
        then:
          - assert: {type: step, data: {n: "$t.n"}}
      - name: again
        when:
          s: {type: step}
        then:
          - assert: {type: step, data: {n: "${s.n}1"}}
"""


def _runaway_app(make_app: AppFactory, tmp_path: Path,
                 rules_text: str = RUNAWAY_RULES) -> FlaskClient:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "runaway.yaml").write_text(textwrap.dedent(rules_text))
    return make_app(rules_dir=rules, max_firings=500).test_client()


def test_a_decision_that_cannot_run_is_recorded_and_shown_on_the_subject(
        make_app: AppFactory, tmp_path: Path) -> None:
    client = _runaway_app(make_app, tmp_path)
    client.post("/v1/facts", json={"subject": "S-1", "type": "tick", "department": "ops",
                                   "id": "t-1", "data": {"n": "1"}})
    failed = client.post("/v1/decisions", json={"subject": "S-1", "ruleset": "runaway"})
    assert failed.status_code == 422
    problem = failed.get_json()
    assert problem["type"] == "urn:decision-service:problem:evaluation-failed"
    assert "did not come to rest within 500 firings (DECISION_MAX_FIRINGS" in problem["detail"]
    assert failed.headers["Location"] == f"/v1/decisions/{problem['decision_id']}"
    record = client.get(f"/v1/decisions/{problem['decision_id']}").get_json()
    assert record["error"]["detail"] == problem["detail"]
    assert (record["fired"], record["actions"], len(record["facts"])) == ([], [], 1)
    [failure] = pooled(client, "S-1")["decision_failures"]
    assert (failure["ruleset"], failure["decision_id"]) == ("runaway", problem["decision_id"])
    # once the facts change so that a decision runs, the subject is decidable again
    assert client.delete("/v1/facts/t-1").status_code == 204
    assert client.post("/v1/decisions", json={"subject": "S-1",
                                              "ruleset": "runaway"}).status_code == 201
    assert pooled(client, "S-1")["decision_failures"] == []


def test_a_triggered_decision_that_cannot_run_is_recorded_once_not_retried(
        make_app: AppFactory, tmp_path: Path) -> None:
    client = _runaway_app(make_app, tmp_path, RUNAWAY_RULES.replace(
        "    rules:", "    triggers: [tick]\n    rules:"))
    client.post("/v1/facts", json={"subject": "S-1", "type": "tick", "department": "ops",
                                   "data": {"n": "1"}})
    svc = service_of(client)
    assert svc.decider.run_triggers_once() == 1
    assert svc.redis.zcard("ds:{triggers}:due") == 0
    [failure] = pooled(client, "S-1")["decision_failures"]
    record = client.get(f"/v1/decisions/{failure['decision_id']}").get_json()
    assert record["trigger"]["facts"][0]["type"] == "tick" and record["error"]


# --- the same protections on a domain of its own ------------------------------------------

LENDING_RULES = """\
    ruleset: lending
    triggers: [loan_application, credit_report]
    facts:
      loan_application: {owners: [sales]}
      credit_report: {owners: [credit]}
    rules:
      - name: approve
        when:
          app: {type: loan_application}
          cr: {type: credit_report, applicant: "$app.applicant", rating: {in: [A, B]}}
        then:
          - assert: {type: loan_approved, data: {applicant: "$app.applicant"}}
          - propose: {action: pay_out, params: {applicant: "$app.applicant",
                                                amount: "$app.amount"}}
"""


@pytest.fixture
def lending(make_app: AppFactory, tmp_path: Path) -> FlaskClient:
    rules = tmp_path / "lending-rules"
    rules.mkdir()
    (rules / "lending.yaml").write_text(textwrap.dedent(LENDING_RULES))
    keys = write_keys(tmp_path / "lending-keys.yaml", ("sales", "credit"), ["lending"])
    return make_app(rules_dir=rules, api_keys_file=keys, max_facts_per_type=2).test_client()


def loan(fact_type: str, department: str, **data: Any) -> dict[str, Any]:
    extra = {"id": data.pop("id")} if "id" in data else {}
    return {"subject": "L-1", "type": fact_type, "department": department,
            "data": {"applicant": "ann", **data}, **extra}


def test_a_domain_of_its_own_keeps_types_ids_and_quotas(lending: FlaskClient) -> None:
    report = loan("credit_report", "credit", id="cr-1", rating="C")
    assert lending.post("/v1/facts", json=report, headers=as_("credit")).status_code == 201
    forged = lending.post("/v1/facts", json=loan("credit_report", "sales", rating="A"),
                          headers=as_("sales"))
    assert forged.status_code == 403
    assert "only credit may" in forged.get_json()["detail"]
    derived = lending.post("/v1/facts", json=loan("loan_approved", "sales"),
                           headers=as_("sales"))
    assert derived.status_code == 403
    takeover = lending.post("/v1/facts", json=loan("loan_application", "sales", id="cr-1",
                                                   amount=5), headers=as_("sales"))
    assert takeover.status_code == 403
    assert "belongs to the credit department" in takeover.get_json()["detail"]
    shadow = {"id": "cr-1", "type": "credit_report", "department": "sales",
              "data": {"applicant": "ann", "rating": "A"}}
    smuggled = lending.post("/v1/decisions", headers=as_("sales"), json={
        "subject": "L-1", "ruleset": "lending", "facts": [shadow]})
    assert smuggled.status_code == 403
    for n in range(2):
        assert lending.post("/v1/facts", json=loan("loan_application", "sales", amount=n),
                            headers=as_("sales")).status_code == 201
    full = lending.post("/v1/facts", json=loan("loan_application", "sales", amount=9),
                        headers=as_("sales"))
    assert (full.status_code, full.get_json()["limit"]["value"]) == (422, 2)


# --- what a review of the above found, each closed ----------------------------------------


def test_a_refused_takeover_leaves_the_owners_id_as_it_was(make_app: AppFactory) -> None:
    """On Redis Cluster the id's owner key lives apart from the fact: a refused re-post
    must not move or shorten it (it once did, and the fact was stuck for good)."""
    client = make_app().test_client()
    client.post("/v1/facts", json=fact("purchase_hold", "finance", id="hold-1"))
    takeover = fact("purchase_hold", "legal", id="hold-1", ttl_seconds=1)
    assert client.post("/v1/facts", json=takeover).status_code == 403
    svc = service_of(client)
    assert svc.redis.ttl("ds:fact:hold-1") == -1
    assert svc.redis.get("ds:fact:hold-1") == "PR-1"
    elsewhere = fact("purchase_hold", "legal", subject="PR-2", id="hold-1")
    assert client.post("/v1/facts", json=elsewhere).status_code == 409
    assert client.delete("/v1/facts/hold-1").status_code == 204


def test_a_refused_batch_claims_no_new_id(make_app: AppFactory) -> None:
    client = make_app(max_facts_per_type=1).test_client()
    client.post("/v1/facts", json=fact("purchase_hold", "finance", subject="PR-2"))
    batch = {"facts": [fact("purchase_hold", "legal", id="new-1"),
                       fact("purchase_hold", "finance", subject="PR-2", id="new-2")]}
    assert client.post("/v1/facts", json=batch).status_code == 422
    svc = service_of(client)
    assert svc.redis.get("ds:fact:new-2") is None
    assert client.post("/v1/facts", json=fact("purchase_hold", "legal", subject="PR-3",
                                              id="new-2")).status_code == 201


def test_all_departments_together_hold_at_most_the_subject_quota(make_app: AppFactory) -> None:
    client = make_app(max_facts_per_subject=3).test_client()
    posted = [fact("purchase_hold", department) for department in ("finance", "legal", "risk")]
    assert client.post("/v1/facts", json={"facts": posted}).status_code == 201
    refused = client.post("/v1/facts", json=fact("purchase_hold", "procurement"))
    assert refused.status_code == 422
    assert refused.get_json()["limit"] == {"name": "DECISION_MAX_FACTS_PER_SUBJECT", "value": 3,
                                           "subject": "PR-1"}
    assert refused.get_json()["detail"].startswith(
        "All departments together may hold at most 3 live facts about subject PR-1")


def test_the_subject_quota_leaves_room_to_decide(make_app: AppFactory) -> None:
    from app.shared.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="DECISION_MAX_FACTS_PER_SUBJECT"):
        make_app(max_facts_per_subject=9_500)


def test_dry_runs_and_inline_facts_do_not_change_what_the_subject_says(
        make_app: AppFactory, tmp_path: Path) -> None:
    client = _runaway_app(make_app, tmp_path)
    decide = {"subject": "S-1", "ruleset": "runaway"}
    tick = {"type": "tick", "department": "ops", "data": {"n": "1"}}
    # a dry run or inline facts that cannot be decided do not mark the subject
    assert client.post("/v1/decisions", json={**decide, "dry_run": True,
                                              "facts": [tick]}).status_code == 422
    assert client.post("/v1/decisions", json={**decide, "facts": [tick]}).status_code == 422
    assert pooled(client, "S-1")["decision_failures"] == []
    # the pool itself does; a dry run that decides cannot hide it
    client.post("/v1/facts", json={"subject": "S-1", "id": "t-1", **tick})
    assert client.post("/v1/decisions", json=decide).status_code == 422
    stand_in = {**tick, "id": "t-1", "type": "tick", "data": {"n": "2"}}
    client.post("/v1/decisions", json={**decide, "dry_run": True, "facts": [stand_in]})
    assert [f["ruleset"] for f in pooled(client, "S-1")["decision_failures"]] == ["runaway"]


def test_pooled_facts_the_rulesets_no_longer_admit_are_left_out_and_named(
        make_app: AppFactory, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "legacy.yaml").write_text(textwrap.dedent(LEGACY_RULES))
    client = make_app(rules_dir=rules).test_client()
    client.post("/v1/facts", json={"facts": [
        fact("purchase_request", "finance", id="forged-req", amount=5),
        fact("budget_check", "finance", id="bud", available=10)]})
    owned = textwrap.dedent(LEGACY_RULES).replace(
        "ruleset: legacy\n", "ruleset: legacy\nfacts:\n  purchase_request: {owners: "
        "[procurement]}\n  budget_check: {owners: [finance]}\n")
    (rules / "legacy.yaml").write_text(owned)
    service_of(client).rulesets.reload(force=True)
    record = client.post("/v1/decisions", json={"subject": "PR-1",
                                                "ruleset": "legacy"}).get_json()
    assert [f["id"] for f in record["facts"]] == ["bud"]
    assert record["ignored_facts"] == [{
        "id": "forged-req", "type": "purchase_request", "department": "finance",
        "reason": "The finance department may not post purchase_request facts: only "
                  "procurement may."}]
    assert record["fired"] == []


def test_a_retraction_removes_only_the_fact_it_was_allowed_to(make_app: AppFactory) -> None:
    from app.shared.errors import Conflict

    client = make_app().test_client()
    client.post("/v1/facts", json=fact("purchase_hold", "finance", id="hold-1"))
    with pytest.raises(Conflict, match="posted again by another department"):
        service_of(client).facts.retract("hold-1", department="legal")
    assert [f["id"] for f in pooled(client)["facts"]] == ["hold-1"]


UNPINNED = """\
    ruleset: payouts
    {facts}rules:
      - name: pay
        when:
          x: {{department: finance}}
        then:
          - propose: {{action: pay_out}}
"""


def test_a_condition_that_does_not_name_its_type_cannot_escape_ownership() -> None:
    from app.rules import parse_ruleset
    from app.shared.errors import RulesetInvalid

    with pytest.raises(RulesetInvalid, match="alias x does not name its fact type"):
        parse_ruleset(textwrap.dedent(UNPINNED.format(
            facts="facts:\n      order: {owners: [sales]}\n    ")), "payouts.yaml")
    legacy = parse_ruleset(textwrap.dedent(UNPINNED.format(facts="")), "payouts.yaml")
    assert "alias x does not name its fact type" in legacy.warnings[0].message
