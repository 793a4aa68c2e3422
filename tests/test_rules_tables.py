"""Decision tables: rows compile to rules (a firing says which table and row), each hit
policy means what DMN says, and a table is checked for overlapping rows, rows no input
reaches and inputs no row covers, within limits a hostile table cannot stretch."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from flask.testing import FlaskClient
from rules_support import fact, procurement

from app.rules import evaluate, parse_ruleset
from app.rules.loader import rule_files
from app.rules.tables import MAX_TABLE_ROWS
from app.shared.errors import RulesetInvalid

# A domain of our own: insurance claims triaged by a table of amount, product and region.
CLAIMS = """\
ruleset: claims
facts:
  claim: {{owners: [intake], fields: [claim_id, amount, product, region]}}
rules:
  - table: triage
    hit_policy: {policy}
    priority: 5
    when:
      c: {{type: claim}}
    inputs:
      amount: c.amount
      product: {{field: c.product, values: [auto, home, travel]}}
    outputs:
      route: {{propose: {{action: route_claim, params: {{claim_id: "$c.claim_id"}}}}}}
      flag: {{assert: {{type: claim_flag, data: {{claim_id: "$c.claim_id"}}}}}}
    rows:
{rows}
"""


def claims(rows: str, policy: str = "unique") -> Any:
    return parse_ruleset(CLAIMS.format(policy=policy, rows=rows), "claims.yaml")


def claim(claim_id: str, amount: Any, product: str = "auto") -> dict[str, Any]:
    return fact(claim_id, "claim", "intake", claim_id=claim_id, amount=amount, product=product,
                region="EU")


def problems_of(text: str, file: str = "claims.yaml") -> list[str]:
    with pytest.raises(RulesetInvalid) as caught:
        parse_ruleset(text, file)
    return [str(problem) for problem in caught.value.problems]


COMPLETE = """\
      - {amount: "< 1000", product: "-", route: {queue: fast}}
      - {amount: "[1000..10000)", product: [auto, travel], route: {queue: standard}}
      - {amount: "[1000..10000)", product: home, route: {queue: property}, flag: {why: home}}
      - {amount: ">= 10000", product: "-", route: {queue: senior}, flag: true}"""


def test_a_unique_table_fires_the_one_matching_row_and_records_table_and_row() -> None:
    table = claims(COMPLETE)
    assert not table.warnings, table.warnings
    assert [(r.name, r.table, r.row, r.line) for r in table.rules] == [
        ("triage_row1", "triage", 1, 17), ("triage_row2", "triage", 2, 18),
        ("triage_row3", "triage", 3, 19), ("triage_row4", "triage", 4, 20)]
    result = evaluate(table, [claim("C-1", 500), claim("C-2", 5000, "home"),
                              claim("C-3", 1000, "travel"), claim("C-4", 10000, "home"),
                              claim("C-5", "a lot")])
    fired = sorted((f.facts["c"], f.rule, f.table, f.row) for f in result.fired)
    assert fired == [("C-1", "triage_row1", "triage", 1), ("C-2", "triage_row3", "triage", 3),
                     ("C-3", "triage_row2", "triage", 2), ("C-4", "triage_row4", "triage", 4)]
    assert result.fired[0].as_dict()["table"] == "triage"
    queues = {a.params["claim_id"]: a.params["queue"] for a in result.actions}
    assert queues == {"C-1": "fast", "C-2": "property", "C-3": "standard", "C-4": "senior"}
    flags = sorted((d["data"]["claim_id"], d["data"].get("why")) for d in result.derived_facts)
    assert flags == [("C-2", "home"), ("C-4", None)]


def test_first_fires_only_the_first_matching_row() -> None:
    table = claims("""\
      - {amount: ">= 10000", product: "-", route: {queue: senior}}
      - {amount: ">= 5000", product: home, route: {queue: property}}
      - {amount: "-", product: "-", route: {queue: general}}""", policy="first")
    result = evaluate(table, [claim("C-1", 20000, "home"), claim("C-2", 6000, "home"),
                              claim("C-3", 6000, "auto"), claim("C-4", None)])
    fired = sorted((f.facts["c"], f.row) for f in result.fired)
    assert fired == [("C-1", 1), ("C-2", 2), ("C-3", 3), ("C-4", 3)]
    # The catch-all row is why there is no gap; nothing is unreachable.
    assert not table.warnings, table.warnings


def test_collect_fires_every_matching_row() -> None:
    table = claims("""\
      - {amount: ">= 1000", route: {queue: review}}
      - {product: home, flag: true}
      - {amount: "< 1000", route: {queue: fast}}""", policy="collect")
    result = evaluate(table, [claim("C-1", 5000, "home")])
    assert [f.row for f in result.fired] == [1, 2]
    assert [a.params["queue"] for a in result.actions] == ["review"]
    assert [d["type"] for d in result.derived_facts] == ["claim_flag"]


def test_overlapping_rows_of_a_unique_table_are_an_error_naming_both() -> None:
    problems = problems_of(CLAIMS.format(policy="unique", rows="""\
      - {amount: "[0..5000]", product: "-", route: {queue: a}}
      - {amount: "[5000..9000)", product: home, route: {queue: b}}
      - {amount: ">= 9000", product: "-", route: {queue: c}}
      - {amount: "< 0", product: "-", route: {queue: d}}"""))
    assert problems == [
        "claims.yaml:17: table triage: row 1 (line 17) and row 2 (line 18) overlap, and the "
        "hit policy is unique: both match amount = 5000, product = 'home' (make them "
        "exclusive, or use hit_policy: first or collect)"]


def test_unreachable_rows_and_gaps_are_warnings_with_examples() -> None:
    table = claims("""\
      - {amount: "< 1000", product: "-", route: {queue: fast}}
      - {amount: "[1000..5000)", product: [auto, home], route: {queue: standard}}
      - {amount: "[2000..3000]", product: auto, route: {queue: never}}
      - {amount: "(7..7)", product: travel, route: {queue: empty}}
      - {amount: "> 5000", product: "-", route: {queue: senior}}""", policy="first")
    warnings = [str(w) for w in table.warnings]
    assert warnings == [
        "claims.yaml:20: table triage: row 4 (line 20) can never match: a cell of it matches "
        "no value (an empty range)",
        "claims.yaml:19: table triage: row 3 (line 19) is never reached: under hit policy "
        "first, row(s) 2 match every input it does",
        "claims.yaml:5: table triage: no row covers some inputs, e.g. amount = 5000, "
        "product = 'auto'; amount = 1000, product = 'travel'",
    ]
    # The shadowed row never fires, whatever the engine proposes.
    result = evaluate(table, [claim("C-1", 2500, "auto")])
    assert [f.row for f in result.fired] == [2]


def test_a_numeric_column_with_bounds_is_checked_for_gaps_only_within_them() -> None:
    table = parse_ruleset("""\
ruleset: scores
facts: {score: {owners: [exams]}}
rules:
  - table: bands
    when: {s: {type: score}}
    inputs: {value: {field: s.value, min: 0, max: 100}}
    outputs: {grade: {assert: {type: grade, data: {}}}}
    rows:
      - {value: "[0..50)", grade: {g: low}}
      - {value: "(50..100]", grade: {g: high}}
""", "scores.yaml")
    assert [str(w) for w in table.warnings] == [
        "scores.yaml:4: table bands: no row covers some inputs, e.g. value = 50"]


def test_a_table_in_a_json_rule_file() -> None:
    document = {"ruleset": "j", "rules": [{
        "table": "t", "hit_policy": "unique", "when": {"a": {"type": "x"}},
        "inputs": {"flag": "a.flag"},
        "outputs": {"out": {"propose": {"action": "go", "params": {}}}},
        "rows": [{"flag": True, "out": {"why": "yes"}, "rule": "go_when_flagged"},
                 {"flag": False}]}]}
    table = parse_ruleset(json.dumps(document), "j.json")
    result = evaluate(table, [fact("f1", "x", flag=True), fact("f2", "x", flag=1)])
    assert [(f.rule, f.row, f.facts["a"]) for f in result.fired] == [
        ("go_when_flagged", 1, "f1")]


@pytest.mark.parametrize(("rows", "message"), [
    ('      - {amount: ">= 1e999", route: true}', "1e999 is not a finite number"),
    ('      - {amount: "< 99999999999999999999", route: true}',
     "99999999999999999999 does not fit in 64 bits"),
    ('      - {amount: "[5..", route: true}', "is not a cell of numeric column amount"),
    ('      - {amount: ">= 5", product: {nested: 1}, route: true}', "a cell is '-', a value"),
    ('      - {amount: ">= 5", product: cars, route: true}',
     "'cars' is not one of column product's values"),
    ('      - {amount: ">= 5", product: [auto, home, travel, auto, home, travel, auto, home, '
     'travel, auto, home, travel, auto, home, travel, auto, home], route: true}',
     "a list of 1 to 16 values"),
    ('      - {amount: ">= 5", route: maybe}', "an output cell is '-' (not taken), true"),
    ('      - {amount: ">= 5", colour: red, route: true}', "unknown key 'colour'"),
    ('      - {amount: ">= 5", route: {"claim_id": "$nope.x"}}', "which is not matched"),
    ('      - {amount: ">= 5", route: true, rule: "bad name"}', "the rule name must be"),
])
def test_odd_cells_are_refused_with_the_row_and_line(rows: str, message: str) -> None:
    text = CLAIMS.format(policy="collect", rows=rows + '\n      - {amount: "< 0"}')
    problems = problems_of(text)
    assert any(message in problem and "claims.yaml:17" in problem for problem in problems), \
        problems


def test_a_mixed_column_is_refused() -> None:
    problems = problems_of(CLAIMS.format(policy="collect", rows="""\
      - {amount: ">= 1000", route: true}
      - {amount: lots, route: true}"""))
    assert any("claims.yaml:18" in p and "'lots' is not a cell of numeric column amount" in p
               for p in problems), problems


def test_a_hostile_table_is_refused_fast_with_a_clear_error() -> None:
    rows = "\n".join(f'      - {{amount: "[{n}..{n + 1})", route: true}}' for n in range(5000))
    started = time.perf_counter()
    problems = problems_of(CLAIMS.format(policy="unique", rows=rows))
    assert time.perf_counter() - started < 5
    assert any(f"rows: a list of 1 to {MAX_TABLE_ROWS} rows (got 5000)" in p for p in problems)


def test_a_table_too_fragmented_to_check_is_refused_within_its_budget() -> None:
    # Every row cuts every earlier one in all eight columns: checking it for unreachable
    # rows and gaps would take millions of pieces of input space.
    inputs = {f"c{i}": f"a.c{i}" for i in range(8)}
    rows = [{**{f"c{i}": f"[{(n * (i + 3)) % 97}..{(n * (i + 3)) % 97 + 40})" for i in range(8)},
             "out": True} for n in range(MAX_TABLE_ROWS)]
    document = {"ruleset": "frag", "rules": [{
        "table": "frag", "hit_policy": "first", "when": {"a": {"type": "x"}},
        "inputs": inputs, "outputs": {"out": {"propose": {"action": "go", "params": {}}}},
        "rows": rows}]}
    started = time.perf_counter()
    with pytest.raises(RulesetInvalid) as caught:
        parse_ruleset(json.dumps(document), "frag.json")
    assert time.perf_counter() - started < 5
    assert "table frag is too fragmented to check for overlaps and gaps (more than " \
        in caught.value.detail
    assert "split it into smaller tables" in caught.value.detail


def test_a_wide_table_of_ranges_still_decides() -> None:
    """Two hundred rows of ranges on one field: the core sees only that the field is
    there (it overflowed on 65 comparisons a fact passed at once)."""
    rows = "\n".join(f'      - {{amount: "[{n * 10}..{n * 10 + 10})", route: {{band: {n}}}}}'
                     for n in range(MAX_TABLE_ROWS))
    table = claims(rows)
    result = evaluate(table, [claim("C-1", 1234)])
    assert [(f.row, a.params["band"]) for f, a in zip(result.fired, result.actions,
                                                      strict=True)] == [(124, 123)]


def test_the_sample_moves_its_risk_routing_into_a_table() -> None:
    sample = procurement()
    rows = {r.name: (r.table, r.row) for r in sample.rules if r.table}
    assert rows == {"risk_acceptable": ("risk_routing", 1),
                    "risk_escalation": ("risk_routing", 3)}
    assert not sample.warnings


def test_scenario_files_are_not_rule_files(tmp_path: Any) -> None:
    (tmp_path / "a.yaml").write_text("ruleset: a\n")
    (tmp_path / "a_test.yaml").write_text("scenarios: []\n")
    (tmp_path / "b_test.json").write_text("{}")
    assert [p.name for p in rule_files(tmp_path)] == ["a.yaml"]


def test_a_decision_records_the_table_and_row_that_fired(client: FlaskClient) -> None:
    facts = [
        {"type": "purchase_request", "department": "procurement",
         "data": {"request_id": "T-1", "amount": 500, "vendor": "Initech", "requester": "al"}},
        {"type": "risk_assessment", "department": "risk",
         "data": {"request_id": "T-1", "score": 0.9}}]
    response = client.post("/v1/decisions", json={"subject": "T-1", "ruleset": "procurement",
                                                  "facts": facts, "dry_run": True})
    assert response.status_code == 201, response.get_json()
    fired = {f["rule"]: f for f in response.get_json()["fired"]}
    assert fired["risk_escalation"]["table"] == "risk_routing"
    assert fired["risk_escalation"]["row"] == 3
    assert "table" not in fired["legal_not_needed"]


LISTED = """\
ruleset: listed
facts:
  order: {{owners: [sales], fields: [order_id, amount]}}
rules:
  - table: listed
    hit_policy: {policy}
    when:
      o: {{type: order}}
    inputs:
      amount: {amount}
    outputs:
      route: {{propose: {{action: route_order, params: {{order_id: "$o.order_id"}}}}}}
    rows:
{rows}
"""


@pytest.mark.parametrize("policy", ["collect", "unique", "first"])
@pytest.mark.parametrize("amount", ["o.amount", "{field: o.amount, min: 0, max: 1000000000}"])
def test_a_table_of_listed_numbers_is_checked_within_its_budget(policy: str,
                                                                amount: str) -> None:
    """Each row a list of 16 numbers: one piece of input space ends up holding thousands of
    intervals, each cut against every row's (it took minutes, charged 1 step a cut)."""
    rows = "\n".join(f"      - {{amount: {[n * 16 + k for k in range(16)]}, route: true}}"
                     for n in range(MAX_TABLE_ROWS))
    started = time.perf_counter()
    try:
        ruleset = parse_ruleset(LISTED.format(policy=policy, amount=amount, rows=rows),
                                "listed.yaml")
    except RulesetInvalid as caught:
        assert "table listed is too fragmented to check for overlaps and gaps" \
            in caught.detail, caught.detail
    else:  # checked: no row overlaps another; one rule a row
        # (not evaluated here: registering 200 rules of 16-value lists in durable_rules'
        # C core takes minutes on its own, which the check of the table cannot change)
        assert not any("overlap" in w for w in ruleset.warnings), ruleset.warnings
        assert len(ruleset.rules) == MAX_TABLE_ROWS
    assert time.perf_counter() - started < 10
