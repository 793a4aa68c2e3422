"""Evaluations are bounded: whatever the facts and rules, one evaluation stops with a clear
error naming its limit, fast, and the engine serves the next evaluation as before.

Each case is one that once took a worker down: a join of thousands of facts by thousands
(3.6 GB in the C core, which cannot be interrupted), a rule joining 8 aliases of one type
(100 s on 8 facts), a backtracking regex in an `unless` (34 s on thirty "a"s)."""

from __future__ import annotations

import json
import resource
import time
from typing import Any

import pytest
from rules_support import fact, procurement, purchase_case, ruleset

from app.rules import evaluate, parse_ruleset
from app.rules.engine import Limits
from app.shared.errors import EvaluationFailed, EvaluationTimeout


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _still_serves() -> None:
    assert len(evaluate(procurement(), purchase_case()).actions) == 1


def test_a_join_of_thousands_by_thousands_is_refused_before_the_core_builds_it() -> None:
    facts = [fact(f"req-{n}", "purchase_request", "procurement", request_id="PR-1",
                  amount=n + 1) for n in range(3500)]
    facts += [fact(f"bud-{n}", "budget_check", "finance", request_id="PR-1",
                   available=10**6) for n in range(3500)]
    before, started = _rss_mb(), time.monotonic()
    with pytest.raises(EvaluationFailed) as refused:
        evaluate(procurement(), facts)
    assert time.monotonic() - started < 2
    assert _rss_mb() - before < 100
    assert str(refused.value).startswith("rule budget_confirmed could join these facts into "
                                         "12,253,500 candidate matches (budget_check: 3500, "
                                         "purchase_request: 3500)")
    assert "(DECISION_MAX_JOIN_CANDIDATES)" in str(refused.value)
    _still_serves()


def test_a_rule_joining_eight_aliases_of_one_type_is_refused_at_once() -> None:
    when = {f"a{i}": {"type": "t"} for i in range(8)}
    rs = parse_ruleset(json.dumps({"ruleset": "eight", "rules": [
        {"name": "all_eight", "when": when, "then": [{"propose": {"action": "x"}}]}]}),
        "eight.json")
    started = time.monotonic()
    with pytest.raises(EvaluationFailed, match="rule all_eight could join these facts"):
        evaluate(rs, [fact(f"f{i}", "t") for i in range(8)])
    assert time.monotonic() - started < 1
    _still_serves()


def test_derived_facts_count_against_the_join_bound_as_they_come() -> None:
    rs = ruleset("""
        ruleset: fanout
        rules:
          - name: spread
            when: {a: {type: seed}}
            then: [{assert: {type: leaf, data: {n: "$a.n"}}}]
          - name: pairs
            when: {x: {type: leaf}, y: {type: leaf}, z: {type: leaf}}
            then: [{propose: {action: pair}}]
    """)
    seeds = [fact(f"s{n}", "seed", n=n) for n in range(100)]
    with pytest.raises(EvaluationFailed, match=r"rule pairs could join these facts .*leaf: "):
        evaluate(rs, seeds, limits=Limits(join_candidates=50_000))
    _still_serves()


def test_an_evaluation_past_its_time_stops_between_calls_into_the_core() -> None:
    rs = ruleset("""
        ruleset: slow
        rules:
          - name: each
            when: {a: {type: t}}
            unless: {b: {type: u, s: {matches: "(x|y)*z"}}}
            then: [{propose: {action: each, params: {n: "$a.n"}}}]
    """)
    facts = [fact(f"t{n}", "t", n=n) for n in range(3000)]
    facts += [fact(f"u{n}", "u", s="xy" * 50) for n in range(300)]
    started = time.monotonic()
    with pytest.raises(EvaluationTimeout, match=r"within 0.2 s \(DECISION_MAX_EVALUATION_SEC"):
        evaluate(rs, facts, limits=Limits(seconds=0.2, actions=10_000))
    assert time.monotonic() - started < 1.5
    _still_serves()


def test_a_backtracking_pattern_in_unless_runs_in_linear_time() -> None:
    rs = ruleset("""
        ruleset: regex
        rules:
          - name: clean
            when: {a: {type: t}}
            unless: {b: {type: u, s: {matches: "(a+)+b"}}}
            then: [{propose: {action: ok}}]
    """)
    started = time.monotonic()
    result = evaluate(rs, [fact("t", "t"), fact("u", "u", s="a" * 30)])
    assert [f.rule for f in result.fired] == ["clean"]
    assert time.monotonic() - started < 0.5


def test_firings_are_capped_and_the_error_names_the_setting() -> None:
    rs = ruleset("""
        ruleset: loop
        rules:
          - {name: grow, when: {a: {type: t}}, then: [{assert: {type: t2, data: {s: "x$a.s"}}}]}
          - {name: again, when: {a: {type: t2}}, then: [{assert: {type: t2, data: {s: "x$a.s"}}}]}
    """)
    with pytest.raises(EvaluationFailed, match=r"within 30 firings \(DECISION_MAX_FIRINGS; "
                                               r"last: rule again\)"):
        evaluate(rs, [fact("f", "t", s="")], limits=Limits(firings=30))
    _still_serves()


def test_too_many_facts_are_refused_with_the_setting_named() -> None:
    facts: list[dict[str, Any]] = [fact(f"f{n}", "t") for n in range(11)]
    with pytest.raises(EvaluationFailed, match=r"11 facts .* at most 10 .*"
                                               r"\(DECISION_MAX_EVALUATION_FACTS\)"):
        evaluate(procurement(), facts, limits=Limits(facts=10))


def test_many_rules_comparing_one_fact_type_still_decide() -> None:
    """65 or more comparisons on one fact type that a fact passes at once overflowed the
    core's stack (error 303 on every evaluation): a decision table of ranges is that."""
    rules = [{"name": f"band_{n}", "when": {"a": {"type": "t", "x": {">": n}}},
              "then": [{"propose": {"action": "band", "params": {"n": n}}}]}
             for n in range(150)]
    rs = parse_ruleset(json.dumps({"ruleset": "bands", "rules": rules}), "bands.json")
    result = evaluate(rs, [fact("f", "t", x=1000)], limits=Limits(actions=1000))
    assert len(result.fired) == 150
