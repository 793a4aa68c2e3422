"""Evaluating facts: chaining, negation, priorities, strict matching, isolation, endurance."""

from __future__ import annotations

import json
import threading
from typing import Any

import durable_rules_engine as core
import pytest
from rules_support import SAMPLE_RULES, fact, procurement, purchase_case, ruleset

from app.rules import engine, evaluate
from app.rules.compiler import compile_ruleset
from app.rules.engine import Limits
from app.shared.errors import EvaluationFailed, InvalidInput


def action_types(facts: list[dict[str, Any]]) -> list[str]:
    return [a.type for a in evaluate(procurement(), facts).actions]


def fired(facts: list[dict[str, Any]]) -> list[str]:
    return [f.rule for f in evaluate(procurement(), facts).fired]


def test_a_fully_cleared_request_becomes_a_purchase_order() -> None:
    result = evaluate(procurement(), purchase_case())
    [order] = result.actions
    assert order.type == "issue_purchase_order"
    assert order.rule == "issue_purchase_order"
    assert order.params == {"request_id": "PR-1", "amount": 120000, "vendor": "Globex",
                            "requester": "alice", "approver": "bob", "urgency": "normal"}
    assert result.ruleset == "procurement"


def test_rules_fire_in_order_with_the_facts_they_matched() -> None:
    result = evaluate(procurement(), purchase_case())
    assert [f.rule for f in result.fired] == [
        "budget_confirmed", "risk_acceptable", "legal_review_cleared", "approve_purchase",
        "issue_purchase_order"]
    assert result.fired[0].facts == {"req": "PR-1-req", "bud": "PR-1-bud"}
    derived = {d["type"]: d["id"] for d in result.derived_facts}
    assert result.fired[3].facts == {"req": "PR-1-req", "bc": derived["budget_confirmed"],
                                     "rc": derived["risk_cleared"], "lc": derived["legal_cleared"]}


def test_derived_facts_chain_two_levels_deep() -> None:
    result = evaluate(procurement(), purchase_case(urgency="critical"))
    by_type = {d["type"]: d for d in result.derived_facts}
    assert by_type["approval"]["rule"] == "approve_purchase"  # from three derived facts
    assert by_type["approval"]["department"] == "rules"
    assert by_type["order_proposed"]["data"] == {"request_id": "PR-1", "urgency": "critical"}
    assert [a.type for a in result.actions] == ["issue_purchase_order", "expedite_delivery"]


def test_a_missing_department_holds_the_order_back() -> None:
    assert "issue_purchase_order" not in action_types(purchase_case(score=0.9))
    assert action_types(purchase_case(score=0.9)) == ["escalate_to_risk_committee"]
    assert action_types(purchase_case(available=1000)) == ["notify_finance"]


def test_negation_large_orders_wait_for_legal() -> None:
    assert action_types(purchase_case(legal=None)) == ["request_legal_review"]
    assert "request_legal_review" not in action_types(purchase_case(legal="cleared"))
    assert "request_legal_review" not in action_types(purchase_case(amount=5000, legal=None))


def test_negation_holds_whatever_the_order_of_the_facts() -> None:
    # durable_rules queues an activation when the request arrives and does not withdraw it
    # when the negating legal review arrives later: the engine must not be fooled by that.
    facts = purchase_case(legal="cleared")
    for ordering in (facts, list(reversed(facts))):
        assert "legal_review_required" not in [f.rule for f in evaluate(procurement(),
                                                                         ordering).fired]


def test_negation_by_a_fact_derived_later_in_the_chain() -> None:
    rs = ruleset("""
        ruleset: late_negation
        rules:
          - name: first_notice
            priority: 1
            when: {a: {type: order}}
            then: [{assert: {type: hold, data: {order: $a.id}}}]
          - name: ship_unless_held
            priority: 5
            when: {a: {type: order}}
            unless: {h: {type: hold, order: $a.id}}
            then: [{propose: {action: ship, params: {order: $a.id}}}]
    """)
    assert evaluate(rs, [fact("o1", "order")]).actions == []
    assert [f.rule for f in evaluate(rs, [fact("o1", "order")]).fired] == ["first_notice"]


def test_lower_priority_runs_first_and_ties_keep_file_order() -> None:
    rs = ruleset("""
        ruleset: order
        rules:
          - {name: c, priority: 5, when: {a: {type: t}}, then: [{propose: {action: c}}]}
          - {name: a, priority: 1, when: {a: {type: t}}, then: [{propose: {action: a}}]}
          - {name: d, priority: 5, when: {a: {type: t}}, then: [{propose: {action: d}}]}
          - {name: b, when: {a: {type: t}}, then: [{propose: {action: b}}]}
    """)
    assert [f.rule for f in evaluate(rs, [fact("f", "t")]).fired] == ["b", "a", "c", "d"]


def test_priorities_keep_their_order_whatever_their_size() -> None:
    # durable_rules keeps `pri` in an unsigned short: big or negative values must not wrap.
    rs = ruleset("""
        ruleset: wide
        rules:
          - {name: late, priority: 1000, when: {a: {type: t}}, then: [{propose: {action: l}}]}
          - {name: middle, priority: 20, when: {a: {type: t}, b: {type: u}},
             then: [{propose: {action: m}}]}
          - {name: early, priority: -1000, when: {a: {type: u}}, then: [{propose: {action: e}}]}
          - {name: second, priority: 10, when: {a: {type: t}}, then: [{propose: {action: s}}]}
    """)
    facts = [fact("1", "t"), fact("2", "u")]
    assert [f.rule for f in evaluate(rs, facts).fired] == ["early", "second", "middle", "late"]
    sample = [f.rule for f in evaluate(procurement(), purchase_case(legal=None)).fired]
    assert sample.index("risk_acceptable") < sample.index("legal_review_required")


STRICT = """
    ruleset: strict
    rules:
      - {name: flag_true, when: {a: {flag: true}}, then: [{propose: {action: flagged}}]}
      - {name: small, when: {a: {amount: {"<": 10}}}, then: [{propose: {action: small}}]}
      - {name: one, when: {a: {amount: 1}}, then: [{propose: {action: one}}]}
      - {name: not_one, when: {a: {amount: {"!=": 1}}}, then: [{propose: {action: not_one}}]}
      - {name: has_vendor, when: {a: {vendor: {exists: true}}}, then: [{propose: {action: v}}]}
      - {name: no_vendor, when: {a: {vendor: {exists: false}}}, then: [{propose: {action: nv}}]}
"""


@pytest.mark.parametrize(("data", "actions"), [
    ({"flag": True}, ["flagged", "nv"]),
    ({"flag": 1}, ["nv"]),  # durable_rules alone would call 1 true
    ({"flag": "true"}, ["nv"]),
    ({"amount": 5}, ["small", "not_one", "nv"]),
    ({"amount": "5"}, ["not_one", "nv"]),  # a string is not less than 10
    ({"amount": 1.0}, ["small", "one", "nv"]),  # 1.0 is the JSON number 1
    ({"amount": True}, ["not_one", "nv"]),  # a boolean is not a number
    ({"amount": None, "vendor": None}, ["nv"]),  # null fails every comparison
    ({"vendor": "Globex"}, ["v"]),
])
def test_conditions_compare_json_values_strictly(data: dict[str, Any], actions: list[str]) -> None:
    result = evaluate(ruleset(STRICT), [fact("f", "t", **data)])
    assert sorted(a.type for a in result.actions) == sorted(actions)


def test_matches_uses_the_whole_value() -> None:
    rs = ruleset("""
        ruleset: rx
        rules:
          - {name: r, when: {a: {code: {matches: '^PR-\\d{3}$'}}}, then: [{propose: {action: m}}]}
    """)
    hits = [code for code in ("PR-123", "PR-1234", "xPR-123", "PR-12")
            if evaluate(rs, [fact("f", "t", code=code)]).actions]
    assert hits == ["PR-123"]


def _raw_core_matches(rs: Any, facts: list[dict[str, Any]]) -> set[tuple[str, ...]]:
    """What the C core alone fires for `facts`: (rule key, fact ids...) per activation."""
    handle = core.create_ruleset(f"probe-{rs.version}-{len(facts)}-{id(facts)}",
                                 json.dumps(compile_ruleset(rs)))
    _, state = core.assert_facts(handle, json.dumps([engine.core_view(f) for f in facts]))
    fired = set()
    started = core.start_action_for_state(handle, state)
    message = started[1] if started else None
    while message:
        [(key, matched)] = json.loads(message).items()
        fired.add((key, *sorted(f["_id"] for f in matched.values())))
        message = core.complete_and_start_action(handle, state)
    return fired


PROBE_VALUES: list[Any] = ["x", "x1", "x.22", "m", "a", "z", 2, 2.0, 1, 1.5, 3, -1, True, False,
                           None, "2", [2], {"v": 2}, "missing"]


def _probe_fact(index: int, value: Any, tag: str = "p", field: str = "v") -> dict[str, Any]:
    data = {} if value == "missing" else {field: value}
    return {"sid": "0", "id": f"{tag}{index}", "_e": tag, "_id": f"{tag}{index}",
            "type": "t", "department": "d", **data}


def test_durable_rules_alone_matches_at_least_what_the_rules_mean() -> None:
    """The core finds candidates, Test.holds decides: the core must never miss a true match."""
    rs = ruleset("""
        ruleset: superset
        rules:
          - {name: eq_s, when: {a: {v: "x"}}, then: [{propose: {action: a}}]}
          - {name: eq_n, when: {a: {v: 2}}, then: [{propose: {action: a}}]}
          - {name: eq_b, when: {a: {v: false}}, then: [{propose: {action: a}}]}
          - {name: ne, when: {a: {v: {"!=": 2}}}, then: [{propose: {action: a}}]}
          - {name: lt, when: {a: {v: {"<": 2}}}, then: [{propose: {action: a}}]}
          - {name: le, when: {a: {v: {"<=": "m"}}}, then: [{propose: {action: a}}]}
          - {name: gt, when: {a: {v: {">": 1.5}}}, then: [{propose: {action: a}}]}
          - {name: ge, when: {a: {v: {">=": 2}}}, then: [{propose: {action: a}}]}
          - {name: in_, when: {a: {v: {in: [x, 2, true]}}}, then: [{propose: {action: a}}]}
          - {name: mt, when: {a: {v: {matches: 'x.?[0-9]+'}}}, then: [{propose: {action: a}}]}
          - {name: ex, when: {a: {v: {exists: true}}}, then: [{propose: {action: a}}]}
          - {name: nex, when: {a: {v: {exists: false}}}, then: [{propose: {action: a}}]}
    """, "superset.yaml")
    for index, value in enumerate(PROBE_VALUES):
        probe = _probe_fact(index, value, tag=f"s{index}")
        raw = _raw_core_matches(rs, [probe])
        for rule in rs.rules:
            if rule.holds({"a": probe}, []):
                assert (f"r{rule.index}", probe["_id"]) in raw, (rule.name, value)


def test_durable_rules_alone_joins_at_least_what_the_rules_mean() -> None:
    rs = ruleset("""
        ruleset: joins
        rules:
          - {name: eq, when: {a: {type: t}, b: {w: $a.v}}, then: [{propose: {action: a}}]}
          - {name: ne, when: {a: {type: t}, b: {w: {"!=": $a.v}}}, then: [{propose: {action: a}}]}
          - {name: lt, when: {a: {type: t}, b: {w: {"<": $a.v}}}, then: [{propose: {action: a}}]}
          - {name: ge, when: {a: {type: t}, b: {w: {">=": $a.v}}}, then: [{propose: {action: a}}]}
    """, "joins.yaml")
    values = PROBE_VALUES
    missed = []
    for left_index, left in enumerate(values):
        lefts = [_probe_fact(left_index, left, tag="L")]
        rights = [_probe_fact(i, value, tag="R", field="w") for i, value in enumerate(values)]
        for right in rights:
            right["_e"] = "L"
        raw = _raw_core_matches(rs, lefts + rights)
        assert evaluate(rs, [{"id": f["_id"], "type": f["type"], "department": "d",
                              "data": {k: v for k, v in f.items() if k in ("v", "w")}}
                             for f in lefts + rights]) is not None
        for rule in rs.rules:
            for right in rights:
                if rule.holds({"a": lefts[0], "b": right}, []):
                    expected = (f"r{rule.index}", *sorted([lefts[0]["_id"], right["_id"]]))
                    if expected not in raw:
                        missed.append((rule.name, left, right.get("w", "missing")))
    assert missed == []


def test_evaluations_never_join_facts_of_another_evaluation() -> None:
    rs = procurement()
    first = purchase_case("PR-1", urgency=None)  # approved, but no urgency yet
    second = [f for f in purchase_case("PR-1") if f["type"] == "urgency_assessment"]
    assert [a.type for a in evaluate(rs, first).actions] == ["request_urgency_assessment"]
    assert evaluate(rs, second).actions == []  # the first evaluation's approval is gone


def test_eight_threads_evaluating_different_subjects_get_exactly_their_results() -> None:
    rs = procurement()
    errors: list[str] = []

    def work(worker: int) -> None:
        for round_ in range(100):
            request_id = f"PR-{worker}-{round_}"
            amount = 1000 * (worker + 1) + round_
            result = evaluate(rs, purchase_case(request_id, amount=amount, legal=None))
            orders = [a for a in result.actions if a.type == "issue_purchase_order"]
            if len(orders) != 1 or orders[0].params["request_id"] != request_id or \
                    orders[0].params["amount"] != amount:
                errors.append(f"{request_id}: {[a.as_dict() for a in result.actions]}")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.slow
def test_5000_evaluations_run_past_the_sid_limit_without_growing() -> None:
    rs = procurement()
    for warm_up in range(500):
        evaluate(rs, purchase_case(f"W-{warm_up}"))
    before = _rss_kib()
    for index in range(5000):
        result = evaluate(rs, purchase_case(f"PR-{index}", amount=1000 + index))
        assert result.actions[0].params["amount"] == 1000 + index
    growth_mib = (_rss_kib() - before) / 1024
    assert growth_mib < 4, f"RSS grew by {growth_mib:.1f} MiB over 5000 evaluations"


def test_no_fact_stays_in_the_engine_after_an_evaluation() -> None:
    rs = procurement()
    evaluate(rs, purchase_case())
    engine.register(rs)
    left = core.get_facts(engine._HANDLES[rs.engine_name], "0")
    assert json.loads(left or "[]") == []


def test_identical_facts_under_different_ids_are_both_seen() -> None:
    rs = ruleset("""
        ruleset: twins
        rules:
          - {name: each, when: {a: {type: vote}}, then: [{propose: {action: count,
                                                                   params: {vote: $a.id}}}]}
    """)
    facts = [fact("v1", "vote", choice="yes"), fact("v2", "vote", choice="yes")]
    result = evaluate(rs, facts)
    assert sorted(a.params["vote"] for a in result.actions) == ["v1", "v2"]
    assert [a.params for a in evaluate(rs, facts).actions] == [a.params for a in result.actions]


def test_facts_no_rule_can_match_are_fine() -> None:
    result = evaluate(procurement(), [*purchase_case(), fact("x", "weather", sky="blue")])
    assert [a.type for a in result.actions] == ["issue_purchase_order"]


def test_the_same_proposal_from_two_matches_is_one_action() -> None:
    rs = ruleset("""
        ruleset: dedupe
        rules:
          - {name: r, when: {a: {type: t}}, then: [{propose: {action: alert, params: {k: $a.k}}}]}
    """)
    result = evaluate(rs, [fact("1", "t", k="same"), fact("2", "t", k="same")])
    assert len(result.fired) == 2
    assert len(result.actions) == 1


def test_action_ids_are_stable_across_evaluations() -> None:
    first = evaluate(procurement(), purchase_case())
    second = evaluate(procurement(), purchase_case())
    assert [a.id for a in first.actions] == [a.id for a in second.actions]


def test_a_rule_that_never_comes_to_rest_fails_and_the_engine_recovers() -> None:
    rs = ruleset("""
        ruleset: loop
        rules:
          - {name: grow, when: {a: {type: t}}, then: [{assert: {type: t, data: {s: "x$a.s"}}}]}
    """)
    with pytest.raises(EvaluationFailed, match="did not come to rest"):
        evaluate(rs, [fact("f", "t", s="")], limits=Limits(firings=50))
    assert len(evaluate(procurement(), purchase_case()).actions) == 1
    with pytest.raises(EvaluationFailed):
        evaluate(rs, [fact("f", "t", s="")], limits=Limits(firings=50))


@pytest.mark.parametrize(("facts", "field"), [
    ([{"id": "a", "type": "t", "department": "d", "data": [1, 2]}], "facts.0.data"),
    ([{"id": "a", "type": "t", "department": "d",
       "data": {f"k{i}": i for i in range(256)}}], "facts.0.data"),
    ([{"id": "a", "type": "t", "department": "d", "data": {"v": {1, 2}}}], "facts.0.data.v"),
    ([{"id": "a", "type": "t", "department": "d", "data": {"v": float("nan")}}],
     "facts.0.data.v"),
    ([{"id": "a", "type": "t", "department": "d", "data": {"v": 2**70}}], "facts.0.data.v"),
    ([{"id": "a", "type": "t", "department": "d", "data": {"sid": "1"}}], "facts.0.data.sid"),
    (["not a fact"], "facts.0"),
    ([{"id": "a", "type": "t", "department": "d", "data": {}}] * 2, "facts.1.id"),
    ([{"type": "t", "department": "d", "data": {}}], "facts.0.id"),
    ([{"id": "a", "type": 5, "department": "d", "data": {}}], "facts.0.type"),
])
def test_facts_that_would_crash_the_core_are_refused_before_it(facts: list[Any],
                                                               field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        evaluate(procurement(), facts)
    assert field in [p.name for p in caught.value.invalid_params]
    assert len(evaluate(procurement(), purchase_case()).actions) == 1


def test_evaluating_starts_no_background_threads() -> None:
    before = threading.active_count()
    evaluate(procurement(), purchase_case())
    assert threading.active_count() == before


def test_registering_a_version_twice_is_harmless() -> None:
    rs = procurement()
    engine.register(rs)
    engine.register(rs)
    assert len(evaluate(rs, purchase_case()).actions) == 1


def test_null_list_and_object_values_never_reach_a_join() -> None:
    # The core aborts a whole assert (error 312) when a join meets one of these.
    facts = purchase_case()
    facts[1]["data"]["request_id"] = None
    facts[2]["data"]["request_id"] = ["PR-1"]
    facts[3]["data"]["request_id"] = {"id": "PR-1"}
    result = evaluate(procurement(), facts)
    assert "budget_confirmed" not in [f.rule for f in result.fired]
    # the legal review names no request, so legal is still asked
    assert [a.type for a in result.actions] == ["request_legal_review"]


# --- a reference to a missing field is no match, never a null ------------------------------

FILLING_IN = """
ruleset: filling
rules:
  - name: propose
    when: {o: {type: order}}
    then: [{propose: {action: ship, params: {to: "$o.address", note: "for $o.customer"}}}]
  - name: derive
    when: {o: {type: order}}
    then: [{assert: {type: noted, data: {basis: "reviewed by $o.reviewer"}}}]
"""


@pytest.mark.parametrize("data, fired", [
    ({"address": "Main St 1", "customer": "Ada", "reviewer": "Bob"}, ["propose", "derive"]),
    ({"address": "Main St 1", "reviewer": "Bob"}, ["derive"]),  # no customer to write
    ({"address": None, "customer": "Ada", "reviewer": "Bob"}, ["derive"]),  # null is missing
    ({"customer": "Ada"}, []),
    ({"address": "", "customer": "", "reviewer": ""}, ["propose", "derive"]),  # empty is there
])
def test_a_rule_fires_only_when_every_field_it_fills_in_is_there(
        data: dict[str, Any], fired: list[str]) -> None:
    result = evaluate(ruleset(FILLING_IN), [fact("o-1", "order", **data)])
    assert [f.rule for f in result.fired] == fired
    text = json.dumps([a.as_dict() for a in result.actions] + result.derived_facts)
    assert "null" not in text and "None" not in text


def test_a_list_or_object_filled_into_text_reads_as_json() -> None:
    rules = ruleset("""
        ruleset: texts
        rules:
          - name: say
            when: {o: {type: order}}
            then: [{propose: {action: say, params: {text: "$o.items / $o.meta / $o.n / $o.ok"}}}]
        """)
    [action] = evaluate(rules, [fact("o-1", "order", items=["a", 1], meta={"k": None}, n=1.5,
                                     ok=True)]).actions
    assert action.params["text"] == '["a", 1] / {"k": null} / 1.5 / true'


def test_what_the_core_leaves_to_python_changes_no_answer(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """A large ruleset's constants are decided in Python and its alike rules grouped
    (app/rules/compiler.py): forced on for the sample, every case fires the same rules
    with the same facts and proposes the same actions as the core deciding them."""
    from app.rules import compiler

    text = SAMPLE_RULES.read_text()
    strict = ruleset(text.replace("ruleset: procurement", "ruleset: strict_sample", 1))
    monkeypatch.setattr(compiler, "CORE_EQUALITY_BUDGET", -1)
    monkeypatch.setattr(compiler, "_GROUP_SIZE", 1)  # each pattern its group, if it shares
    loose = ruleset(text.replace("ruleset: procurement", "ruleset: loose_sample", 1))
    cases = [purchase_case(), purchase_case(amount=90000), purchase_case(available=1000),
             purchase_case(score=0.6), purchase_case(score=0.9), purchase_case(legal=None),
             purchase_case(legal="blocked"), purchase_case(urgency="high"),
             purchase_case(urgency=None), purchase_case(amount="120000"),  # type: ignore[arg-type]
             [*purchase_case("PR-1"), *purchase_case("PR-2", urgency="high")]]
    for facts in cases:
        expected, got = evaluate(strict, facts), evaluate(loose, facts)
        assert [(f.rule, f.facts) for f in got.fired] == [(f.rule, f.facts) for f in expected.fired]
        assert got.actions == expected.actions and got.derived_facts == expected.derived_facts
