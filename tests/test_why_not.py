"""Why a rule did not fire: the nearest partial match of a rule in a recorded decision,
through the real service (Redis, embedded OPA), computed from the record on the ruleset
version the decision ran with.

Mostly on a domain of its own (insurance claims), not the sample's: the behaviour, not the
example; one test on the sample's procurement chain.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from rules_support import own_domain

from app import create_app
from app.cli import main
from app.policy.access import hash_key
from app.shared import keys
from app.shared.config import Settings

RULES = """
ruleset: claims
description: Insurance claims, from filing to payment.
facts:
  claim: {owners: [intake], fields: [claim_id, amount, policy_no, payee]}
  policy_record: {owners: [underwriting], fields: [policy_no, limit, status]}
  adjuster_report: {owners: [adjusting], fields: [claim_id, assessed, photos]}
  fraud_flag: {owners: [fraud], fields: [claim_id, reason]}
rules:
  - name: covered
    when:
      c: {type: claim}
      p: {type: policy_record, policy_no: "$c.policy_no", status: active,
          limit: {">=": "$c.amount"}}
    then:
      - assert: {type: coverage, data: {claim_id: "$c.claim_id", policy_no: "$p.policy_no"}}
  - name: assessed
    when:
      c: {type: claim}
      r: {type: adjuster_report, claim_id: "$c.claim_id", photos: {exists: true},
          assessed: {"<=": "$c.amount"}}
    then:
      - assert: {type: assessment, data: {claim_id: "$c.claim_id", assessed: "$r.assessed"}}
  - name: pay
    when:
      cov: {type: coverage}
      ok: {type: assessment, claim_id: "$cov.claim_id"}
      c: {type: claim, claim_id: "$cov.claim_id"}
    unless:
      flag: {type: fraud_flag, claim_id: "$cov.claim_id"}
    then:
      - propose: {action: pay_claim,
                  params: {claim_id: "$c.claim_id", amount: "$ok.assessed", payee: "$c.payee"}}
  - name: payment_refused
    when:
      v: {type: verdict, action: pay_claim, allow: false}
      c: {type: claim, claim_id: "$v.claim_id"}
    then:
      - propose: {action: tell_claimant, params: {claim_id: "$c.claim_id",
                                                  reasons: "$v.reasons"}}
"""

# A join over four aliases whose last never matches: every combination of the first three
# is a partial match (100 x 100 x 100), more than the search may try.
BULK = """
ruleset: bulk
facts:
  part_a: {owners: [intake]}
  part_b: {owners: [intake]}
  part_c: {owners: [intake]}
  part_d: {owners: [intake]}
rules:
  - name: assemble
    when:
      a: {type: part_a}
      b: {type: part_b, n: {">": "$a.n"}}
      c: {type: part_c, n: {">": "$b.n"}}
      d: {type: part_d}
    then:
      - propose: {action: assemble, params: {n: "$a.n"}}
"""

POLICY = """package decision.governance

default allow := false

allow if count(deny) == 0

deny contains msg if {
	input.action.type == "pay_claim"
	input.action.params.amount > 5000
	msg := sprintf("Claim %s: %v is above what is paid without review.",
		[input.action.params.claim_id, input.action.params.amount])
}
"""

AppFactory = Callable[..., Flask]


@pytest.fixture
def domain(tmp_path: Path) -> tuple[Path, Path]:
    return own_domain(tmp_path, {"claims.yaml": RULES, "bulk.yaml": BULK}, POLICY)


def overrides(redis_url: str, tmp_path: Path, domain: tuple[Path, Path]) -> dict[str, Any]:
    rules, policies = domain
    return {"redis_url": redis_url, "data_dir": tmp_path, "rules_dir": rules,
            "policy_dir": policies, "background_worker": False, "rules_reload_seconds": 0}


@pytest.fixture
def make_app(redis_url: str, redis_client: redis.Redis, tmp_path: Path,
             domain: tuple[Path, Path]) -> Iterator[AppFactory]:
    apps: list[Flask] = []

    def make(**extra: Any) -> Flask:
        app = create_app(Settings.load(environ={}, overrides={
            **overrides(redis_url, tmp_path, domain), **extra}))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["decision_service"].close()


def post_claim(client: FlaskClient, claim: str, *, amount: Any = 3000, limit: Any = 5000,
               status: str = "active", assessed: Any = 2500, photos: bool = True,
               flagged: bool = False) -> None:
    """What four departments report about one claim (ids are the claim's, by department)."""
    report: dict[str, Any] = {"claim_id": claim, "assessed": assessed}
    if photos:
        report["photos"] = 3
    facts = [
        {"id": f"{claim}-claim", "type": "claim", "department": "intake",
         "data": {"claim_id": claim, "amount": amount, "policy_no": f"P-{claim}",
                  "payee": "dana"}},
        {"id": f"{claim}-policy", "type": "policy_record", "department": "underwriting",
         "data": {"policy_no": f"P-{claim}", "limit": limit, "status": status}},
        {"id": f"{claim}-report", "type": "adjuster_report", "department": "adjusting",
         "data": report},
    ]
    if flagged:
        facts.append({"id": f"{claim}-flag", "type": "fraud_flag", "department": "fraud",
                      "data": {"claim_id": claim, "reason": "same photos as CL-0"}})
    response = client.post("/v1/facts", json={"facts": [{"subject": claim, **f}
                                                        for f in facts]})
    assert response.status_code == 201, response.get_json()


def decide(client: FlaskClient, subject: str, ruleset: str = "claims") -> dict[str, Any]:
    response = client.post("/v1/decisions", json={"subject": subject, "ruleset": ruleset})
    assert response.status_code == 201, response.get_json()
    return dict(response.get_json())


def why_not(client: FlaskClient, decision_id: str, rule: str) -> dict[str, Any]:
    response = client.get(f"/v1/decisions/{decision_id}/why-not", query_string={"rule": rule})
    assert response.status_code == 200, response.get_json()
    assert response.mimetype == "application/json"
    return dict(response.get_json())


def steps_of(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["alias"] or step["condition"]: step for step in answer["steps"]}


# --- joins, negation, chains, field tests -------------------------------------------------


def test_a_join_that_fails_on_its_comparison_shows_both_values(make_app: AppFactory) -> None:
    client = make_app().test_client()
    post_claim(client, "CL-1", amount=8000, limit=5000)
    record = decide(client, "CL-1")
    answer = why_not(client, record["decision_id"], "covered")
    assert answer["fired"] is False and answer["capped"] is False
    assert (answer["decision_id"], answer["rule"], answer["ruleset"]) == (
        record["decision_id"], "covered", "claims")
    assert answer["ruleset_version"] == record["ruleset"]["version"]
    steps = steps_of(answer)
    assert [s["status"] for s in answer["steps"]] == ["matched", "failed", "not reached"]
    assert steps["c"]["facts"] == ["CL-1-claim"] and steps["c"]["condition"] == "c: {type: claim}"
    failed = steps["p"]
    assert failed["condition"] == ('p: {type: policy_record, policy_no: "$c.policy_no", '
                                   'status: active, limit: {">=": "$c.amount"}}')
    assert failed["facts"] == ["CL-1-policy"]  # the nearest policy record: it joined
    assert "policy_no, status matched" in failed["detail"]
    assert "fails limit >= $c.amount" in failed["detail"]
    assert "its limit is 5000" in failed["detail"] and "$c.amount (8000)" in failed["detail"]
    assert answer["explanation"].startswith("Rule covered did not fire: c=CL-1-claim matched, "
                                            "but p did not")
    assert "5000" in answer["explanation"] and "8000" in answer["explanation"]
    # The same question with the join itself failing: another policy number altogether.
    post_claim(client, "CL-2")
    client.post("/v1/facts", json={"subject": "CL-2", "id": "CL-2-policy",
                                   "type": "policy_record", "department": "underwriting",
                                   "data": {"policy_no": "P-OTHER", "limit": 9000,
                                            "status": "active"}})
    other = steps_of(why_not(client, decide(client, "CL-2")["decision_id"], "covered"))["p"]
    assert other["status"] == "failed" and other["facts"] == ["CL-2-policy"]
    assert 'its policy_no is "P-OTHER", not $c.policy_no ("P-CL-2")' in other["detail"]


def test_the_nearest_match_is_chosen_over_every_combination(make_app: AppFactory) -> None:
    """Two claims in one case: the first has no policy record at all, the second one whose
    limit is too low. The answer is about the second: it got as far, and nearer."""
    client = make_app().test_client()
    facts = [
        {"id": "A-claim", "type": "claim", "department": "intake",
         "data": {"claim_id": "A", "amount": 100, "policy_no": "P-A", "payee": "eve"}},
        {"id": "B-claim", "type": "claim", "department": "intake",
         "data": {"claim_id": "B", "amount": 7000, "policy_no": "P-B", "payee": "eve"}},
        {"id": "B-policy", "type": "policy_record", "department": "underwriting",
         "data": {"policy_no": "P-B", "limit": 6000, "status": "active"}},
    ]
    assert client.post("/v1/facts", json={"facts": [{"subject": "CASE-AB", **f}
                                                    for f in facts]}).status_code == 201
    answer = why_not(client, decide(client, "CASE-AB")["decision_id"], "covered")
    steps = steps_of(answer)
    assert steps["c"]["facts"] == ["B-claim"] and steps["p"]["facts"] == ["B-policy"]
    assert "its limit is 6000, and 6000 >= $c.amount (7000) is false" in steps["p"]["detail"]


def test_an_unless_names_the_fact_that_blocked_the_rule(make_app: AppFactory) -> None:
    client = make_app().test_client()
    post_claim(client, "CL-3", flagged=True)
    record = decide(client, "CL-3")
    assert record["actions"] == []
    answer = why_not(client, record["decision_id"], "pay")
    assert answer["fired"] is False
    steps = steps_of(answer)
    assert [steps[a]["status"] for a in ("cov", "ok", "c")] == ["matched"] * 3
    derived = {f["type"]: f["id"] for f in record["derived_facts"]}
    assert steps["cov"]["facts"] == [derived["coverage"]]
    assert steps["ok"]["facts"] == [derived["assessment"]]
    assert steps["c"]["facts"] == ["CL-3-claim"]
    needs = steps["then: $c.claim_id, $ok.assessed, $c.payee"]
    assert needs["status"] == "matched" and needs["alias"] is None
    flag = steps["flag"]
    assert flag["condition"] == 'unless flag: {type: fraud_flag, claim_id: "$cov.claim_id"}'
    assert flag["status"] == "failed" and flag["facts"] == ["CL-3-flag"]
    assert "fraud_flag CL-3-flag is such a fact" in flag["detail"]
    assert "unless flag found fraud_flag CL-3-flag, which blocks it" in answer["explanation"]


def test_a_chained_rule_names_the_missing_derived_fact_and_why_it_was_not_derived(
        make_app: AppFactory) -> None:
    client = make_app().test_client()
    post_claim(client, "CL-4", photos=False)
    record = decide(client, "CL-4")
    assert [f["rule"] for f in record["fired"]] == ["covered"]
    answer = why_not(client, record["decision_id"], "pay")
    steps = steps_of(answer)
    assert steps["cov"]["status"] == "matched"
    missing = steps["ok"]
    assert missing["status"] == "failed" and missing["facts"] == []
    assert missing["detail"].startswith(
        "there is no assessment fact; assessment facts are derived by rule assessed, and none "
        "was derived [Rule assessed did not fire: c=CL-4-claim matched, but r did not: the "
        "nearest adjuster_report fact, CL-4-report (claim_id matched), fails photos exists: "
        "it has no field photos")
    assert steps["c"]["status"] == "not reached" and steps["flag"]["status"] == "not reached"
    assert "there is no assessment fact" in answer["explanation"]
    # The deriving rule, asked itself: the exists test, on the report that lacks the field.
    assessed = steps_of(why_not(client, record["decision_id"], "assessed"))["r"]
    assert assessed["facts"] == ["CL-4-report"]
    assert assessed["detail"].endswith("fails photos exists: it has no field photos")


def test_a_field_of_the_wrong_type_is_named_with_its_kind(make_app: AppFactory) -> None:
    client = make_app().test_client()
    post_claim(client, "CL-5", assessed="2500")
    record = decide(client, "CL-5")
    detail = steps_of(why_not(client, record["decision_id"], "assessed"))["r"]["detail"]
    assert 'fails assessed <= $c.amount: its assessed is a string, "2500", and $c.amount ' \
           "(3000) is a number: <= compares only numbers with numbers and strings with " \
           "strings" in detail


def test_a_rule_that_fired_says_so_with_its_facts(make_app: AppFactory) -> None:
    client = make_app().test_client()
    post_claim(client, "CL-6")
    record = decide(client, "CL-6")
    answer = why_not(client, record["decision_id"], "pay")
    assert answer["fired"] is True
    firing = next(f for f in record["fired"] if f["rule"] == "pay")
    assert {s["alias"]: s["facts"] for s in answer["steps"] if s["alias"] in firing["facts"]} \
        == {alias: [fact_id] for alias, fact_id in firing["facts"].items()}
    assert {s["status"] for s in answer["steps"]} == {"matched"}
    assert record["rounds"] == 2  # the rules read verdicts: the second saw the first's
    assert answer["explanation"] == (
        f"Rule pay fired in this decision, first on cov={firing['facts']['cov']}, "
        f"ok={firing['facts']['ok']}, c=CL-6-claim (round 1 of 2).")
    covered = steps_of(why_not(client, record["decision_id"], "covered"))
    assert covered["p"]["detail"] == ('policy_record CL-6-policy: policy_no "P-CL-6" == '
                                      '$c.policy_no ("P-CL-6"); status "active" == "active"; '
                                      'limit 5000 >= $c.amount (3000)')


def test_a_rule_on_the_policys_verdicts_shows_the_verdict_it_saw(make_app: AppFactory) -> None:
    client = make_app().test_client()
    post_claim(client, "CL-7")  # 2,500 is paid: allowed
    allowed = decide(client, "CL-7")
    [verdict] = allowed["verdict_facts"]
    step = steps_of(why_not(client, allowed["decision_id"], "payment_refused"))["v"]
    assert step["status"] == "failed" and step["facts"] == [verdict["id"]]
    assert "fails allow == false: its allow is true, not false" in step["detail"]
    post_claim(client, "CL-8", amount=9000, limit=10000, assessed=7000)  # denied
    denied = decide(client, "CL-8")
    assert {a["type"]: a["status"] for a in denied["actions"]}["pay_claim"] == "denied"
    answer = why_not(client, denied["decision_id"], "payment_refused")
    assert answer["fired"] is True
    assert steps_of(answer)["v"]["facts"] == [denied["verdict_facts"][0]["id"]]
    assert "allow false == false" in steps_of(answer)["v"]["detail"]


def test_a_comparison_on_a_masked_value_says_it_is_masked(make_app: AppFactory) -> None:
    client = make_app(mask_fields=("policy_record.limit",)).test_client()
    post_claim(client, "CL-13", amount=8000, limit=5000)
    record = decide(client, "CL-13")
    assert "facts.CL-13-policy.limit" in record["masked"]
    detail = steps_of(why_not(client, record["decision_id"], "covered"))["p"]["detail"]
    assert 'its limit is a string, "**masked**"' in detail
    assert "masked in the record" in detail and "not the value the rules saw" in detail


def test_the_sample_procurement_chain_goes_back_to_the_budget(client: FlaskClient) -> None:
    facts = [
        {"type": "purchase_request", "department": "procurement", "id": "PR-9-req",
         "data": {"request_id": "PR-9", "amount": 80000, "vendor": "Globex",
                  "requester": "alice"}},
        {"type": "budget_check", "department": "finance", "id": "PR-9-bud",
         "data": {"request_id": "PR-9", "available": 50000, "cost_center": "CC-7",
                  "approver": "bob"}},
        {"type": "risk_assessment", "department": "risk", "id": "PR-9-rsk",
         "data": {"request_id": "PR-9", "score": 0.2}},
        {"type": "urgency_assessment", "department": "operations", "id": "PR-9-urg",
         "data": {"request_id": "PR-9", "level": "high"}},
    ]
    assert client.post("/v1/facts", json={"facts": [{"subject": "PR-9", **f}
                                                    for f in facts]}).status_code == 201
    response = client.post("/v1/decisions", json={"subject": "PR-9", "ruleset": "procurement"})
    record = response.get_json()
    answer = why_not(client, record["decision_id"], "issue_purchase_order")
    ok = steps_of(answer)["ok"]
    assert ok["status"] == "failed"
    assert "there is no approval fact; approval facts are derived by rule approve_purchase" \
        in ok["detail"]
    assert "Rule budget_confirmed did not fire" in ok["detail"]
    assert "its available is 50000, and 50000 >= $req.amount (80000) is false" in ok["detail"]


# --- bounds, errors, hostile input ----------------------------------------------------------


def test_a_join_too_large_to_search_is_capped_and_says_so(make_app: AppFactory) -> None:
    client = make_app().test_client()
    facts = [{"subject": "BULK-1", "type": f"part_{part}", "department": "intake",
              "data": {"n": n}} for part, n in (("a", 0), ("b", 1), ("c", 2)) for _ in range(100)]
    assert client.post("/v1/facts", json={"facts": facts}).status_code == 201
    # The engine refuses the join too (DECISION_MAX_JOIN_CANDIDATES); the failure is recorded.
    response = client.post("/v1/decisions", json={"subject": "BULK-1", "ruleset": "bulk"})
    assert response.status_code == 422
    decision_id = response.get_json()["decision_id"]
    started = time.monotonic()
    answer = why_not(client, decision_id, "assemble")
    assert time.monotonic() - started < 10
    assert answer["capped"] is True and answer["fired"] is False
    assert "The search stopped after 100,000 checks" in answer["explanation"]
    assert "The decision itself failed" in answer["explanation"]
    steps = steps_of(answer)
    assert [steps[a]["status"] for a in "abcd"] == ["matched", "matched", "matched", "failed"]
    assert steps["d"]["detail"] == ("there is no part_d fact; none was on file for the "
                                    "subject when it was decided (they are posted by intake)")


def test_an_unknown_rule_is_a_422_naming_the_version(make_app: AppFactory) -> None:
    client = make_app().test_client()
    post_claim(client, "CL-9")
    record = decide(client, "CL-9")
    response = client.get(f"/v1/decisions/{record['decision_id']}/why-not?rule=approve")
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["type"] == "urn:decision-service:problem:unknown-rule"
    assert record["ruleset"]["version"] in problem["detail"]
    [param] = problem["invalid-params"]
    assert param["name"] == "rule"
    assert "its rules: covered, assessed, pay, payment_refused" in param["reason"]


def test_an_unknown_decision_is_a_404(make_app: AppFactory) -> None:
    client = make_app().test_client()
    for decision_id in ("3f0c5a34-0000-4000-8000-000000000000", "x" * 5000, "a%20b"):
        response = client.get(f"/v1/decisions/{decision_id}/why-not?rule=covered")
        assert response.status_code == 404, decision_id
        assert response.mimetype == "application/problem+json"
        assert "no decision with id" in response.get_json()["detail"]


def test_hostile_rule_names_are_refused_before_anything_is_read(make_app: AppFactory) -> None:
    client = make_app().test_client()
    post_claim(client, "CL-10")
    decision_id = decide(client, "CL-10")["decision_id"]
    for rule in ("x" * 1_000_000, "covered\n", "covered;DROP", "<script>", "cövered", "",
                 "../covered", "$c.amount", "a" * 65):
        started = time.monotonic()
        response = client.get(f"/v1/decisions/{decision_id}/why-not",
                              query_string={"rule": rule})
        assert time.monotonic() - started < 2
        assert response.status_code == 422, rule[:40]
        assert response.mimetype == "application/problem+json"
        problem = response.get_json()
        assert [p["name"] for p in problem["invalid-params"]] == ["rule"]
        assert len(response.data) < 2000  # the value is not echoed back
    missing = client.get(f"/v1/decisions/{decision_id}/why-not")
    assert missing.status_code == 422
    assert missing.get_json()["invalid-params"] == [{"name": "rule",
                                                     "reason": "Missing data for required "
                                                               "field."}]


def test_a_decision_is_explained_on_its_own_version_or_not_at_all(
        make_app: AppFactory, domain: tuple[Path, Path], redis_client: redis.Redis) -> None:
    rules, _ = domain
    client = make_app().test_client()
    post_claim(client, "CL-11", amount=8000)
    record = decide(client, "CL-11")
    version = record["ruleset"]["version"]
    # The live file moves on: `covered` is now `coverage_ok`, with a higher limit rule.
    (rules / "claims.yaml").write_text(RULES.replace("name: covered", "name: coverage_ok"))
    fresh = make_app().test_client()  # a process that never loaded the old version
    answer = why_not(fresh, record["decision_id"], "covered")  # from the archive
    assert answer["ruleset_version"] == version and answer["fired"] is False
    assert fresh.get(f"/v1/decisions/{record['decision_id']}/why-not?rule=coverage_ok"
                     ).status_code == 422  # not a rule of the version the decision ran with
    # The archive loses that version: no other version answers for it.
    assert redis_client.delete(keys.archived_ruleset("claims", version)) == 1
    response = make_app().test_client().get(
        f"/v1/decisions/{record['decision_id']}/why-not?rule=covered")
    assert response.status_code == 410 and response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["type"] == "urn:decision-service:problem:ruleset-unavailable"
    assert f"ruleset claims version {version}" in problem["detail"]
    assert "neither archived nor loaded" in problem["detail"]


def test_why_not_needs_a_key_when_keys_are_on(make_app: AppFactory, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(yaml.safe_dump({"keys": [
        {"id": "analyst", "sha256": hash_key("analyst-key-0123456789"), "departments": [],
         "rulesets": [], "grants": ["analyst"]}]}))
    client = make_app(api_keys_file=keys_file).test_client()
    url = "/v1/decisions/3f0c5a34-0000-4000-8000-000000000000/why-not?rule=covered"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"X-API-Key": "analyst-key-0123456789"}).status_code == 404


def test_the_endpoint_is_in_the_openapi_document(make_app: AppFactory) -> None:
    document = make_app().test_client().get("/openapi.json").get_json()
    operation = document["paths"]["/v1/decisions/{decision_id}/why-not"]["get"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WhyNot"}
    [rule] = [p for p in operation["parameters"] if p["name"] == "rule"]
    assert rule["in"] == "query" and rule["required"] is True
    assert rule["schema"]["pattern"].startswith("^[A-Za-z]")
    step = document["components"]["schemas"]["WhyNotStep"]
    assert set(step["required"]) == {"condition", "alias", "status", "facts", "detail"}


# --- the command line ---------------------------------------------------------------------


def test_the_command_line_prints_the_answer_as_text_or_json(
        make_app: AppFactory, domain: tuple[Path, Path], redis_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_app().test_client()
    post_claim(client, "CL-12", amount=8000)
    decision_id = decide(client, "CL-12")["decision_id"]
    rules, policies = domain
    for name, value in (("REDIS_URL", redis_url), ("RULES_DIR", rules),
                        ("POLICY_DIR", policies), ("DATA_DIR", tmp_path)):
        monkeypatch.setenv(f"DECISION_{name}", str(value))
    text = CliRunner().invoke(main, ["decisions", "why-not", decision_id, "covered"])
    assert text.exit_code == 0, text.output
    assert f"decision {decision_id}, ruleset claims version" in text.output
    assert "rule covered: did not fire" in text.output
    assert "FAIL  p: {type: policy_record" in text.output and "[CL-12-policy]" in text.output
    assert "its limit is 5000" in text.output
    as_json = CliRunner().invoke(main, ["decisions", "why-not", decision_id, "covered",
                                        "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == why_not(client, decision_id, "covered")
    unknown = CliRunner().invoke(main, ["decisions", "why-not", decision_id, "nope"])
    assert unknown.exit_code == 1 and "has no rule 'nope'" in unknown.output
    hostile = CliRunner().invoke(main, ["decisions", "why-not", decision_id, "x;" * 100])
    assert hostile.exit_code == 1 and "rule: a rule name" in hostile.output
    gone = CliRunner().invoke(main, ["decisions", "why-not", "no-such-decision", "covered"])
    assert gone.exit_code == 1 and "no decision with id 'no-such-decision'" in gone.output


SIZES = """\
ruleset: sizes
facts:
  order: {owners: [sales], fields: [order_id, amount]}
rules:
  - table: sizes
    hit_policy: first
    when:
      o: {type: order}
    inputs:
      amount: o.amount
    outputs:
      size: {propose: {action: size_order, params: {order_id: "$o.order_id"}}}
    rows:
      - {rule: big, amount: ">= 100", size: {size: big}}
      - {rule: medium, amount: ">= 10", size: {size: medium}}
"""


def test_a_row_an_earlier_row_of_a_first_table_took_says_which(
        make_app: AppFactory, domain: tuple[Path, Path]) -> None:
    (domain[0] / "sizes.yaml").write_text(SIZES)
    client = make_app().test_client()
    response = client.post("/v1/decisions", json={
        "subject": "O-1", "ruleset": "sizes", "dry_run": True,
        "facts": [{"type": "order", "department": "sales",
                   "data": {"order_id": "O-1", "amount": 500}}]})
    assert response.status_code == 201, response.get_json()
    assert [f["rule"] for f in response.get_json()["fired"]] == ["big"]
    answer = why_not(client, response.get_json()["decision_id"], "medium")
    assert answer["fired"] is False
    assert ("it is row 2 of table sizes, whose hit policy is first, and row 1 (rule big) "
            "matches these facts") in answer["explanation"], answer["explanation"]
