"""Scenario tests for rulesets (`decision-service rules test`): scenarios that pass, fail
(with a diff) and err, malformed files (exit 2, file and line), coverage, verdicts through
the policy gate, and a candidate's scenarios in a what-if report."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from rules_support import SAMPLE_RULES

from app.cli import main
from app.replay.scenarios import ERROR, FAIL, PASS, bind, coverage, parse_scenarios, run_scenario
from app.rules import evaluate, parse_ruleset
from app.shared.errors import ScenarioInvalid

ROOT = SAMPLE_RULES.parent.parent

# A domain of our own: claims triaged by a decision table, then paid or sent to a person.
CLAIMS_RULES = """\
ruleset: claims
facts:
  claim: {owners: [intake], fields: [claim_id, amount, product]}
  fraud_signal: {owners: [fraud], fields: [claim_id, score]}
rules:
  - table: triage
    hit_policy: first
    priority: 5
    when:
      c: {type: claim}
    inputs:
      amount: c.amount
      product: {field: c.product, values: [auto, home]}
    outputs:
      route: {propose: {action: route_claim, params: {claim_id: "$c.claim_id"}}}
    rows:
      - {amount: ">= 10000", route: {queue: senior}}
      - {amount: "[0..10000)", product: home, route: {queue: property}, rule: home_claim}
      - {amount: "-", route: {queue: fast}}
  - name: hold_suspicious
    priority: 1
    when:
      c: {type: claim}
      f: {type: fraud_signal, claim_id: "$c.claim_id", score: {">": 0.8}}
    then:
      - assert: {type: claim_hold, data: {claim_id: "$c.claim_id"}}
"""

CLAIMS_SCENARIOS = """\
scenarios:
  - name: a small home claim goes to the property team
    facts:
      - {type: claim, data: {claim_id: K-1, amount: 900, product: home}}
    expect:
      fired: [home_claim]
      not_fired: [triage_row1, triage_row3]
      actions: [{type: route_claim, params: {claim_id: K-1, queue: property}}]
  - name: a large claim is said to go fast (wrong)
    facts:
      - {type: claim, data: {claim_id: K-2, amount: 50000, product: auto}}
    expect:
      actions: [{type: route_claim, params: {queue: fast}}]
      not_fired: [triage_row1]
  - name: a fraud signal without an owner's department
    facts:
      - {type: claim, data: {claim_id: K-3, amount: 10, product: auto}}
      - {type: unowned_signal, data: {claim_id: K-3}}
    expect:
      derived: [{type: claim_hold}]
"""

GOVERNANCE = """\
package decision.governance

default allow := false

allow if input.action.type == "route_claim"

deny contains "senior claims need a second reader" if input.action.params.queue == "senior"
"""


@pytest.fixture
def claims_dir(tmp_path: Path) -> Path:
    (tmp_path / "claims.yaml").write_text(CLAIMS_RULES)
    (tmp_path / "claims_test.yaml").write_text(CLAIMS_SCENARIOS)
    policies = tmp_path / "rego" / "decision" / "governance"
    policies.mkdir(parents=True)
    (policies / "governance.rego").write_text(GOVERNANCE)
    return tmp_path


def run(*args: str) -> Any:
    return CliRunner().invoke(main, ["rules", "test", *args])


def test_the_sample_scenarios_pass_and_fire_every_rule() -> None:
    result = run(str(SAMPLE_RULES.parent), "--coverage")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert sum(": PASS (" in line for line in lines) == 10
    assert "PASS: 10/10" in lines
    assert "coverage: ruleset procurement: 13/13 rules fired by a scenario" in lines
    assert "rules/procurement_test.yaml:114: a requester approving their own budget is " \
           "refused, and told why: PASS" in result.output


def test_pass_fail_and_error_each_say_so_with_a_diff(claims_dir: Path) -> None:
    result = run(str(claims_dir), "--coverage", "--policies", str(claims_dir / "rego"))
    assert result.exit_code == 1, result.output
    out = result.output
    assert f"{claims_dir}/claims_test.yaml:2: a small home claim goes to the property team: " \
           "PASS" in out
    assert f"{claims_dir}/claims_test.yaml:9: a large claim is said to go fast (wrong): FAIL" \
        in out
    assert ("    no route_claim proposed with these params\n"
            '      - expected: {"params": {"queue": "fast"}, "type": "route_claim"}\n'
            '      + actual:   {"params": {"claim_id": "K-2", "queue": "senior"}, '
            '"type": "route_claim"}\n') in out
    assert ("    rule triage_row1 fired, and should not have\n"
            '      - expected: "not triage_row1"\n'
            '      + actual:   "triage_row1 (table triage, row 1)"\n') in out
    assert f"{claims_dir}/claims_test.yaml:15: a fraud signal without an owner's department: " \
           "ERROR" in out
    assert "fact 2 (unowned_signal) names no department, and ruleset claims declares no " \
           "owner of its type" in out
    assert "PASS: 1/3\nFAIL: 1/3\nERROR: 1/3\n" in out
    assert "coverage: ruleset claims: 2/4 rules fired by a scenario" in out
    assert "  not fired: triage_row3 (table triage, row 3, line 19)\n" \
           "  not fired: hold_suspicious (line 20)" in out


def test_verdicts_are_expected_through_the_policies(claims_dir: Path) -> None:
    (claims_dir / "claims_test.yaml").write_text(textwrap.dedent("""\
        ruleset: claims
        scenarios:
          - name: a senior claim is routed, and the policy stops it
            facts:
              - {type: claim, data: {claim_id: K-9, amount: 20000, product: auto}}
            expect:
              verdicts:
                - {action: route_claim, params: {queue: senior}, outcome: deny, allow: false,
                   reasons: [second reader]}
          - name: a fast claim is allowed (it is not)
            policies: true
            facts:
              - {type: claim, data: {claim_id: K-8, amount: 20, product: auto}}
            expect:
              verdicts: [{action: route_claim, outcome: deny}]
        """))
    result = run(str(claims_dir), "--policies", str(claims_dir / "rego"))
    assert result.exit_code == 1, result.output
    assert "a senior claim is routed, and the policy stops it: PASS" in result.output
    assert "a fast claim is allowed (it is not): FAIL" in result.output
    assert ('      + actual:   {"action": "route_claim", "outcome": "allow", "params": '
            '{"claim_id": "K-8", "queue": "fast"}, "reasons": []}') in result.output


@pytest.mark.parametrize(("text", "where"), [
    ("scenarios:\n  - name: x\n    facts: []\n    expect: {firedd: [a]}\n",
     "claims_test.yaml:4: scenarios.0.expect.firedd: Unknown field."),
    ("scenarios:\n  - name: x\n    facts:\n      - {type: claim, department: rules}\n"
     "    expect: {fired: [home_claim]}\n",
     "claims_test.yaml:4: scenarios.0.facts.0.department: 'rules' is the department"),
    ("scenarios:\n  - name: x\n    facts: []\n    expect: {}\n",
     "claims_test.yaml:4: scenarios.0.expect: expects nothing"),
    ("scenarios:\n  - name: x\n    facts: [\n", "claims_test.yaml:4: not valid YAML"),
    ("scenarios:\n  - &a {name: x}\n  - *a\n", "claims_test.yaml:3: not valid YAML: anchors"),
    ("ruleset: nowhere\nscenarios: []\n", "claims_test.yaml:2: scenarios: Length must be"),
])
def test_a_malformed_scenario_file_exits_2_with_file_and_line(
        claims_dir: Path, text: str, where: str) -> None:
    (claims_dir / "claims_test.yaml").write_text(text)
    result = run(str(claims_dir))
    assert result.exit_code == 2, result.output
    assert f"error: {claims_dir}/{where}" in result.output


def test_a_scenario_file_for_a_ruleset_that_is_not_there_exits_2(claims_dir: Path) -> None:
    (claims_dir / "other_test.yaml").write_text(
        "scenarios: [{name: x, facts: [], expect: {fired: [a]}}]\n")
    result = run(str(claims_dir / "other_test.yaml"))
    assert result.exit_code == 2
    assert ("other_test.yaml: tests the ruleset of other.yaml (it names no ruleset:), which "
            "none of the valid rule files beside it is") in result.output


def test_a_json_scenario_file_and_one_file_at_a_time(claims_dir: Path) -> None:
    (claims_dir / "claims_test.yaml").unlink()
    (claims_dir / "claims_test.json").write_text(json.dumps({"ruleset": "claims", "scenarios": [{
        "name": "held", "facts": [
            {"type": "claim", "id": "c", "data": {"claim_id": "K-5", "amount": 5}},
            {"type": "fraud_signal", "data": {"claim_id": "K-5", "score": 0.9}}],
        "expect": {"fired": ["hold_suspicious", "triage_row3"],
                   "derived": [{"type": "claim_hold", "data": {"claim_id": "K-5"}}],
                   "not_derived": ["claim_paid"]}}]}))
    result = run(str(claims_dir / "claims_test.json"))
    assert result.exit_code == 0, result.output
    assert "claims_test.json: held: PASS" in result.output


def test_scenarios_in_python() -> None:
    ruleset = parse_ruleset(CLAIMS_RULES, "claims.yaml")
    data, lines = parse_scenarios(CLAIMS_SCENARIOS, "claims_test.yaml")
    scenarios = bind(data, lines, "claims_test.yaml", ruleset)
    results = [run_scenario(s, ruleset, file="claims_test.yaml", evaluator=evaluate, gate=None)
               for s in scenarios.scenarios]
    assert [r.outcome for r in results] == [PASS, FAIL, ERROR]
    assert results[0].fired == ["home_claim"]
    assert coverage(ruleset, results) == ["triage_row3 (table triage, row 3, line 19)",
                                          "hold_suspicious (line 20)"]
    with pytest.raises(ScenarioInvalid) as caught:
        parse_scenarios("x" * 1_000_001, "big_test.yaml")
    assert "larger than 1000000 bytes" in caught.value.detail


def test_a_scenario_that_needs_policies_without_any_errs() -> None:
    ruleset = parse_ruleset(CLAIMS_RULES, "claims.yaml")
    data, lines = parse_scenarios(
        "scenarios: [{name: v, facts: [], policies: true, expect: {fired: [home_claim]}}]",
        "claims_test.yaml")
    [scenario] = bind(data, lines, "claims_test.yaml", ruleset).scenarios
    result = run_scenario(scenario, ruleset, file="f", evaluator=evaluate, gate=None)
    assert result.outcome == ERROR
    assert "there are none here" in result.failures[0]


CANDIDATE_SCENARIOS = """\
ruleset: procurement
scenarios:
  - name: a 60,000 order needs no legal review
    facts:
      - {type: purchase_request, data: {request_id: S-1, amount: 60000, vendor: Globex}}
    expect: {fired: [legal_not_needed], not_proposed: [request_legal_review]}
  - name: a 180,000 order does
    facts:
      - {type: purchase_request, data: {request_id: S-2, amount: 180000, vendor: Globex}}
    expect: {fired: [legal_review_required]}
  - name: a refused order tells the requester, through the live policies
    facts:
      - {type: purchase_request, data: {request_id: S-3, amount: 40000, vendor: Globex,
                                        requester: alice, needed_by: "2026-12-15"}}
      - {type: budget_check, data: {request_id: S-3, available: 300000, approver: alice,
                                    cost_center: CC-1}}
      - {type: risk_assessment, data: {request_id: S-3, score: 0.2}}
      - {type: urgency_assessment, data: {request_id: S-3, level: normal}}
    expect:
      fired: [order_refused]
      verdicts: [{action: issue_purchase_order, outcome: deny,
                  reasons: [segregation of duties]}]
"""


def whatif(client: FlaskClient, ruleset: dict[str, Any]) -> Any:
    return client.post("/v1/replays", json={"fact_sets": [{
        "subject": "S-0", "ruleset": "procurement", "facts": [
            {"type": "purchase_request", "department": "procurement",
             "data": {"request_id": "S-0", "amount": 60000, "vendor": "Globex"}}]}],
        "ruleset": ruleset})


def test_a_candidates_scenarios_run_in_the_what_if(client: FlaskClient) -> None:
    source = SAMPLE_RULES.read_text().replace(
        'amount: {"<=": 100000}', 'amount: {"<=": 50000}').replace(
        'amount: {">": 100000}', 'amount: {">": 50000}')
    response = whatif(client, {"name": "procurement", "source": source,
                               "scenarios": CANDIDATE_SCENARIOS})
    assert response.status_code == 200, response.get_json()
    report = response.get_json()
    assert report["results"][0]["changed"] is True
    scenarios = report["scenarios"]
    assert (scenarios["passed"], scenarios["failed"]) == (2, 1)
    outcomes = {r["name"]: r["outcome"] for r in scenarios["results"]}
    assert outcomes == {"a 60,000 order needs no legal review": "FAIL",
                        "a 180,000 order does": "PASS",
                        "a refused order tells the requester, through the live policies": "PASS"}
    [failed] = [r for r in scenarios["results"] if r["outcome"] == "FAIL"]
    assert failed["file"] == "procurement_test.yaml" and failed["line"] == 3
    assert failed["failures"][0].startswith("rule legal_not_needed did not fire")
    # Without scenarios, the report has none.
    plain = whatif(client, {"name": "procurement", "source": source}).get_json()
    assert "scenarios" not in plain


def test_malformed_candidate_scenarios_are_a_422_with_the_line(client: FlaskClient) -> None:
    response = whatif(client, {"name": "procurement", "source": SAMPLE_RULES.read_text(),
                               "scenarios": "scenarios:\n  - name: x\n    facts: 3\n"})
    assert response.status_code == 422
    problem = response.get_json()
    assert problem["type"] == "urn:decision-service:problem:invalid-scenarios"
    assert "procurement_test.yaml:3: scenarios.0.facts: Not a valid list." in problem["detail"]


def test_the_cli_replay_runs_the_scenarios_beside_candidate_rules(
        tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECISION_REDIS_URL", redis_url)
    monkeypatch.setenv("DECISION_RULES_DIR", str(ROOT / "rules"))
    monkeypatch.setenv("DECISION_POLICY_DIR", str(ROOT / "rego"))
    candidates = tmp_path / "candidate"
    candidates.mkdir()
    (candidates / "procurement.yaml").write_text(SAMPLE_RULES.read_text())
    (candidates / "procurement_test.yaml").write_text(CANDIDATE_SCENARIOS)
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, [
        "replay", "--fact-sets", str(ROOT / "tests" / "golden" / "procurement.jsonl"),
        "--rules", str(candidates), "--json", str(report), "--fail-on-change"])
    assert result.exit_code == 0, result.output
    assert "scenarios of the candidate rules: 3 passed, 0 failed" in result.output
    assert json.loads(report.read_text())["scenarios"]["passed"] == 3


def test_a_time_the_clock_cannot_write_is_an_error_of_its_scenario(claims_dir: Path) -> None:
    (claims_dir / "claims_test.yaml").write_text(textwrap.dedent("""\
        ruleset: claims
        scenarios:
          - name: decided in year one
            created_at: "0001-01-01T00:00:00+01:00"
            facts:
              - {type: claim, data: {claim_id: K-1, amount: 100, product: home}}
            expect: {not_fired: [hold_suspicious]}
        """))
    result = run(str(claims_dir))
    assert result.exit_code == 1, result.output
    assert "decided in year one: ERROR" in result.output
    assert "created_at 0001-01-01T00:00:00+01:00 cannot be used" in result.output
    assert "Traceback" not in result.output
