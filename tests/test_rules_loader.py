"""Rule files: what validates, and every way a file is rejected with file, line and rule."""

from __future__ import annotations

import pytest
from rules_support import SAMPLE_RULES, procurement, ruleset

from app.rules.loader import version_of
from app.rules.model import Interpolation, Ref
from app.shared.errors import RulesetInvalid


def test_the_sample_ruleset_validates() -> None:
    sample = procurement()
    assert sample.name == "procurement"
    assert len(sample.rules) >= 10
    assert sample.version == version_of(SAMPLE_RULES.read_text())
    assert "purchase_request" in sample.triggers
    assert any(len(rule.when) >= 3 for rule in sample.rules)
    assert any(rule.unless for rule in sample.rules)


def test_the_version_is_a_content_hash() -> None:
    text = "ruleset: a\nrules:\n  - {name: r, when: {x: {type: t}}, then: [{assert: {type: u}}]}\n"
    assert ruleset(text).version == ruleset(text).version
    assert ruleset(text).version != ruleset(text + "# changed\n").version


def test_references_keep_their_type_or_interpolate_into_text() -> None:
    rs = ruleset("""
        ruleset: refs
        rules:
          - name: r
            when: {a: {type: t}}
            then:
              - propose: {action: act, params: {n: "$a.amount", text: "id ${a.id}: $a.amount",
                                                literal: "costs $$5", plain: "no refs"}}
    """)
    params = rs.rules[0].then[0].params.value  # type: ignore[union-attr]
    assert params["n"] == Ref("a", "amount")
    assert params["text"] == Interpolation(("id ", Ref("a", "id"), ": ", Ref("a", "amount")))
    assert params["literal"] == "costs $5"
    assert params["plain"] == "no refs"


def test_yaml_dates_stay_strings() -> None:
    rs = ruleset("""
        ruleset: dates
        rules:
          - {name: r, when: {a: {due: {"<": 2026-12-01}}}, then: [{assert: {type: late}}]}
    """)
    assert rs.rules[0].when[0].tests[0].value == "2026-12-01"


GOOD_RULE = "{name: ok, when: {a: {type: t}}, then: [{assert: {type: u}}]}"

# (case, file name, text, expected line or None, expected rule or None, message fragment)
MALFORMED = [
    ("yaml syntax", "bad.yaml", "ruleset: x\nrules: [\n  {name: a\n", 4, None,
     "not valid YAML"),
    ("control character", "bad.yaml", "\x92ruleset: x\n", None, None,
     "control characters are not allowed"),
    ("json syntax", "bad.json", '{"ruleset": "x",\n "rules": [}', 2, None, "not valid JSON"),
    ("not a mapping", "bad.yaml", "- ruleset: x\n", None, None, "a rule file is a mapping"),
    ("missing ruleset name", "bad.yaml", f"rules: [{GOOD_RULE}]\n", None, None,
     "missing 'ruleset'"),
    ("unknown top-level key", "bad.yaml", f"ruleset: x\nrulez: 1\nrules: [{GOOD_RULE}]\n",
     None, None, "unknown key 'rulez'"),
    ("no rules", "bad.yaml", "ruleset: x\nrules: []\n", None, None,
     "needs a list of at least one rule"),
    ("rule without name", "bad.yaml",
     "ruleset: x\nrules:\n  - when: {a: {type: t}}\n    then: [{assert: {type: u}}]\n", 3, None,
     "missing 'name'"),
    ("rule name a mapping", "bad.yaml",
     "ruleset: x\nrules:\n  - name: {a: 1}\n    when: {a: {type: t}}\n"
     "    then: [{assert: {type: u}}]\n", 3, None, "the rule name must be a string"),
    ("duplicate rule names", "bad.yaml", f"ruleset: x\nrules:\n  - {GOOD_RULE}\n  - {GOOD_RULE}\n",
     4, "ok", "another rule has this name"),
    ("unknown operator", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {amount: {'~=': 5}}}\n"
     "    then: [{assert: {type: u}}]\n", 3, "r", "unknown operator '~='"),
    ("reference to an unknown alias", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {type: t}, b: {id: $zz.id}}\n"
     "    then: [{assert: {type: u}}]\n", 3, "r", "refers to 'zz'"),
    ("reference to a later alias", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {id: $b.id}, b: {type: t}}\n"
     "    then: [{assert: {type: u}}]\n", 3, "r", "not matched before it"),
    ("in without a list", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {level: {in: high}}}\n"
     "    then: [{assert: {type: u}}]\n", 3, "r", "needs a list"),
    ("invalid regex", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {vendor: {matches: 'AC(ME'}}}\n"
     "    then: [{assert: {type: u}}]\n", 3, "r", "invalid regular expression"),
    ("unsupported regex escape", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {vendor: {matches: '\\w+'}}}\n"
     "    then: [{assert: {type: u}}]\n", 3, "r", "\\w is not supported"),
    ("code in then", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {type: t}}\n"
     "    then: [{python: 'import os'}]\n", 3, "r", "each step is {propose"),
    ("propose without action", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {type: t}}\n"
     "    then: [{propose: {params: {}}}]\n", 3, "r", "missing 'action'"),
    ("derived fact with a reserved field", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {type: t}}\n"
     "    then: [{assert: {type: u, data: {id: 1}}}]\n", 3, "r", "not a valid data field name"),
    ("priority not an integer", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    priority: high\n    when: {a: {type: t}}\n"
     "    then: [{assert: {type: u}}]\n", 3, "r", "priority: must be an integer"),
    ("python object tag", "bad.yaml",
     "ruleset: !!python/object/apply:os.system ['true']\nrules: []\n", 1, None,
     "could not determine a constructor"),
    ("anchors and aliases", "bad.yaml",
     "ruleset: x\nbase: &b {type: t}\nrules:\n  - {name: r, when: {a: *b}, then: []}\n", 4, None,
     "anchors and aliases"),
    ("duplicate keys", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {type: t}, a: {type: u}}\n"
     "    then: [{assert: {type: u}}]\n", 4, None, "duplicate key 'a'"),
    ("subject as a field", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {subject: PR-1}}\n"
     "    then: [{assert: {type: u}}]\n", 3, "r", "'subject' is not a field"),
    ("comparison with null", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {vendor: null}}\n"
     "    then: [{assert: {type: u}}]\n", 3, "r", "use {exists: false}"),
    ("two operators in one condition", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {amount: {'>': 1, '<': 5}}}\n"
     "    then: [{assert: {type: u}}]\n", 3, "r", "one operator"),
    ("too many joined aliases", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {" + ", ".join(f"a{i}: {{}}" for i in range(9))
     + "}\n    then: [{assert: {type: u}}]\n", 3, "r", "at most 8 aliases"),
    ("unless reuses a when alias", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {type: t}}\n    unless: {a: {type: u}}\n"
     "    then: [{assert: {type: u}}]\n", 3, "r", "already used in when"),
    ("dollar that is not a reference", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {type: t}}\n"
     "    then: [{propose: {action: pay, params: {note: 'costs $5'}}}]\n", 3, "r",
     "'$' starts a reference"),
    ("exists with a string", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {vendor: {exists: 'yes'}}}\n"
     "    then: [{assert: {type: u}}]\n", 3, "r", "needs true or false"),
    ("comparison with a list", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {amount: [1, 2]}}\n"
     "    then: [{assert: {type: u}}]\n", 3, "r", "use 'in' for a list"),
    ("empty when", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {}\n    then: [{assert: {type: u}}]\n", 3, "r",
     "needs at least one alias"),
    ("then refers to an unless alias", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {type: t}}\n    unless: {b: {type: u}}\n"
     "    then: [{propose: {action: go, params: {x: $b.id}}}]\n", 3, "r", "refers to 'b'"),
    ("invalid field name", "bad.yaml",
     "ruleset: x\nrules:\n  - name: r\n    when: {a: {'bad field': 1}}\n"
     "    then: [{assert: {type: u}}]\n", 3, "r", "field 'bad field' must be"),
]


@pytest.mark.parametrize(("file", "text", "line", "rule", "message"),
                         [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_a_malformed_file_is_rejected_with_where_and_why(file: str, text: str, line: int | None,
                                                         rule: str | None, message: str) -> None:
    with pytest.raises(RulesetInvalid) as caught:
        ruleset(text, file)
    problems = caught.value.problems
    assert any(message in p.message for p in problems), [str(p) for p in problems]
    problem = next(p for p in problems if message in p.message)
    assert problem.file == file
    assert problem.line == line
    assert problem.rule == rule
    assert str(problem).startswith(file)


def test_every_problem_in_a_file_is_reported() -> None:
    with pytest.raises(RulesetInvalid) as caught:
        ruleset("""
            ruleset: x
            rules:
              - {name: one, when: {a: {amount: {'~': 1}}}, then: [{assert: {type: u}}]}
              - {name: two, when: {a: {type: t}}, then: [{run: x}]}
        """)
    assert {p.rule for p in caught.value.problems} == {"one", "two"}


def test_an_oversized_file_is_rejected_before_parsing() -> None:
    with pytest.raises(RulesetInvalid, match="larger than"):
        ruleset("ruleset: x\n" + "#" * 1_000_001)


# --- facts: who may post each fact type ----------------------------------------------------


def test_the_sample_ruleset_declares_an_owner_for_every_type_it_reads() -> None:
    sample = procurement()
    assert sample.fact_types["budget_check"].owners == ("finance",)
    assert sample.read_types - sample.derived_types - {"verdict"} <= sample.fact_types.keys()
    assert not sample.warnings
    assert "approval" in sample.derived_types and "approval" not in sample.fact_types


def test_with_a_facts_section_every_type_read_must_be_owned() -> None:
    with pytest.raises(RulesetInvalid) as caught:
        ruleset("""
            ruleset: owned
            facts:
              order: {owners: [sales]}
            rules:
              - name: paid
                when:
                  o: {type: order}
                  p: {type: payment, order: "$o.id"}
                then: [{propose: {action: ship}}]
        """)
    [problem] = caught.value.problems
    assert (problem.rule, problem.line) == ("paid", 6)
    assert problem.message == ("reads fact type 'payment', which no department owns: declare "
                               "it under facts: with its owners")


def test_without_a_facts_section_unowned_types_are_a_warning() -> None:
    rs = ruleset("""
        ruleset: open
        triggers: [order]
        rules:
          - name: r
            when: {o: {type: order}}
            then: [{assert: {type: seen}}]
    """)
    [warning] = rs.warnings
    assert warning.rule == "r"
    assert warning.message == ("no department owns fact type 'order': any department may post "
                               "it (declare its owners under facts:)")


@pytest.mark.parametrize(("facts", "message"), [
    ("facts: [order]", "facts: a mapping of fact type to {owners: [departments]}"),
    ("facts: {order: {owners: []}}", "facts.order.owners: needs a list of one or more"),
    ("facts: {order: {owners: [rules]}}", "'rules' is the department of derived facts"),
    ("facts: {order: {owners: [a], who: b}}", "facts.order: unknown key 'who'"),
    ("facts: {seen: {owners: [a]}, order: {owners: [a]}}",
     "facts.seen: rule r derives this type, and derived facts cannot be posted"),
])
def test_a_bad_facts_section_is_refused(facts: str, message: str) -> None:
    with pytest.raises(RulesetInvalid) as caught:
        ruleset(f"ruleset: x\n{facts}\nrules:\n"
                "  - {name: r, when: {o: {type: order}}, then: [{assert: {type: seen}}]}\n")
    assert any(message in str(problem) for problem in caught.value.problems), \
        caught.value.problems


# --- requires, verdict facts, field lists ------------------------------------------------

PROPOSALS = """
ruleset: plan
rules:
  - name: first
    when: {a: {type: order}}
    then:
      - propose: {action: ship, params: {id: "$a.order_id"}}
      - propose: {action: invoice, requires: REQUIRES, params: {id: "$a.order_id"}}
"""


@pytest.mark.parametrize("requires, message", [
    ("[refund]", "invoice requires refund, which no rule in this file proposes"),
    ("[invoice]", "invoice cannot require itself"),
    ("[ship, ship]", "names an action type twice"),
    ("ship", "a list of at most 8 action types"),
    ("[1]", "a list of at most 8 action types"),
])
def test_requires_names_action_types_the_file_proposes(requires: str, message: str) -> None:
    with pytest.raises(RulesetInvalid) as caught:
        ruleset(PROPOSALS.replace("REQUIRES", requires))
    assert any(message in str(p) and p.rule == "first" for p in caught.value.problems), \
        caught.value.problems


def test_action_types_that_require_each_other_in_a_circle_are_refused() -> None:
    circle = PROPOSALS.replace("REQUIRES", "[ship]").replace(
        '{action: ship, params', '{action: ship, requires: [invoice], params')
    with pytest.raises(RulesetInvalid) as caught:
        ruleset(circle)
    assert "require each other in a circle, so none could be dispatched: invoice -> ship -> " \
        "invoice" in str(caught.value.problems[0])


def test_requirements_are_per_action_type() -> None:
    plan = ruleset(PROPOSALS.replace("REQUIRES", "[ship]"))
    assert plan.requirements == {"invoice": ("ship",)}


@pytest.mark.parametrize("text, message", [
    ("""
     ruleset: forge
     rules:
       - name: forge
         when: {a: {type: order}}
         then: [{assert: {type: verdict, data: {allow: true}}}]
     """, "verdict facts are the policy gate's verdicts; rules read them but cannot make them"),
    ("""
     ruleset: forge
     facts:
       verdict: {owners: [sales]}
     rules:
       - name: read
         when: {v: {type: verdict}}
         then: [{propose: {action: x}}]
     """, "verdict facts are the policy gate's verdicts; no department owns them"),
    ("""
     ruleset: forge
     facts:
       order: {owners: [policy]}
     rules:
       - name: read
         when: {o: {type: order}}
         then: [{propose: {action: x}}]
     """, "'policy' is the department of verdicts"),
])
def test_verdict_facts_are_the_gates_alone(text: str, message: str) -> None:
    with pytest.raises(RulesetInvalid) as caught:
        ruleset(text)
    assert any(message in str(p) for p in caught.value.problems), caught.value.problems


def test_a_ruleset_reading_verdicts_needs_no_owner_for_them() -> None:
    reacting = ruleset("""
        ruleset: reacting
        facts:
          order: {owners: [sales]}
        rules:
          - name: refused
            when:
              v: {type: verdict, action: ship, allow: false}
              o: {type: order, order_id: "$v.order_id"}
            then: [{propose: {action: tell_sales, params: {why: "$v.reasons"}}}]
          - name: ship
            when: {o: {type: order}}
            then: [{propose: {action: ship, params: {order_id: "$o.order_id"}}}]
        """)
    assert reacting.reads_verdicts and not reacting.warnings


def test_a_field_no_fact_of_the_type_has_is_a_warning_with_the_rule() -> None:
    typo = ruleset("""
        ruleset: typo
        facts:
          order: {owners: [sales], fields: [order_id, amount]}
          invoice: {owners: [finance]}
        rules:
          - name: big
            when:
              o: {type: order, amonut: {">": 10}, cancelled: {exists: false}}
              i: {type: invoice, order_id: "$o.order_id", anything: 1}
            then:
              - assert: {type: flagged, data: {order_id: "$o.order_id"}}
              - propose: {action: ship, params: {who: "$o.customer"}}
          - name: flagged
            when:
              f: {type: flagged, reason: x}
              v: {type: verdict, action: ship, who: "$f.order_id", outcome: deny, nope: 1}
            then: [{propose: {action: review}}]
          - name: reviewed
            when: {w: {type: verdict, action: review, who: x}}
            then: [{propose: {action: archive}}]
        """)
    messages = sorted(f"{w.rule}: {w.message}" for w in typo.warnings)
    assert messages == [
        "big: $o.amonut: no order fact has a field 'amonut' (its fields: amount, order_id): a "
        "condition on it never holds, and a rule that fills it in never fires",
        "big: $o.customer: no order fact has a field 'customer' (its fields: amount, order_id): "
        "a condition on it never holds, and a rule that fills it in never fires",
        "flagged: $f.reason: no flagged fact has a field 'reason' (its fields: order_id): a "
        "condition on it never holds, and a rule that fills it in never fires",
        "flagged: $v.nope: no verdict fact has a field 'nope' (its fields: action, action_id, "
        "allow, outcome, params, reasons, round, rule, who): a condition on it never holds, "
        "and a rule that fills it in never fires",
        "reviewed: $w.who: no verdict fact has a field 'who' (its fields: action, action_id, "
        "allow, outcome, params, reasons, round, rule): a condition on it never holds, and a "
        "rule that fills it in never fires",
    ]
    assert all(w.line for w in typo.warnings)


def test_the_sample_rules_read_only_fields_their_facts_have() -> None:
    assert procurement().warnings == ()
