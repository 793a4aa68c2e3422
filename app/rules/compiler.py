"""A validated `Ruleset` as a durable_rules definition (the engine's JSON rule syntax).

What the compiler adds, and why:
- Every alias after the first joins on the evaluation tag `_e`, so facts of two
  evaluations never meet in one match, whatever they have in common.
- A sink rule whose second half can never be satisfied (no fact may carry `_z`)
  holds every fact, so durable_rules never answers "message not handled" and
  never stores half of a batch (it does, otherwise).
- `unless` is not compiled: durable_rules cannot withdraw an activation that a later
  fact negates, so negation is decided by `Rule.holds` when the rule fires.
- The first alias of every rule requires the tag: durable_rules also runs the
  session's own state object through the conditions, and a condition like
  `exists: false` would otherwise match it.
- `!=` becomes "the field is present", and `exists` no test at all: durable_rules
  coerces types (it finds `"2" != 2` false) and sees only scalar fields, and the
  core must never miss a match that `Test.holds` would accept. `Test.holds` decides.
- A field another alias joins on must be present in the fact an alias matches:
  the core aborts a whole assert (error 311) when a join reads a missing field.
  A comparison with a missing field is false anyway (`Test.holds`).
- Priorities become `pri` as the rank of (priority, position in the file): equal
  priorities fire in file order, and the rank fits the core's `unsigned short`
  (a larger or negative `pri` silently wraps around and reorders the rules).
"""

from __future__ import annotations

from typing import Any

from app.rules import regex
from app.rules.model import Pattern, Ref, Ruleset, Test, engine_field

TAG = "_e"  # the evaluation a fact belongs to
SINK_RULE = "_sink"
_NEVER = "_z"

_DECIDED_IN_PYTHON = ("!=",)
_COMPARISON = {"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}


def rule_key(index: int) -> str:
    return f"r{index}"


def _operand(value: Any) -> Any:
    if isinstance(value, Ref):
        return {value.alias: engine_field(value.field)}
    return value


def _expression(test: Test) -> dict[str, Any]:
    field = engine_field(test.field)
    if test.op == "==":
        return {field: _operand(test.value)}
    if test.op == "!=":
        return {"$ex": {field: 1}}
    if test.op in _COMPARISON:
        return {_COMPARISON[test.op]: {field: _operand(test.value)}}
    if test.op == "in":
        options = [{field: option} for option in test.value]
        return options[0] if len(options) == 1 else {"$or": options}
    if test.op == "matches":
        assert test.pattern is not None
        translated, _ = regex.translate(test.pattern)
        return {"$mt": {field: translated}}
    if test.op == "exists":
        # The core never sees null, list or object fields (engine.core_view), which
        # `exists: true` counts as there unless null: Test.holds decides both ways.
        return {"$ex": {TAG: 1}}
    raise ValueError(f"unknown operator {test.op!r}")


def _joined_fields(patterns: tuple[Pattern, ...]) -> dict[str, set[str]]:
    """alias -> the fields of it that later aliases compare with in the core."""
    joined: dict[str, set[str]] = {}
    for pattern in patterns:
        for test in pattern.tests:
            if isinstance(test.value, Ref) and test.op not in _DECIDED_IN_PYTHON:
                joined.setdefault(test.value.alias, set()).add(engine_field(test.value.field))
    return joined


def _condition(pattern: Pattern, first_alias: str | None, joined: set[str]) -> dict[str, Any]:
    expressions = [_expression(test) for test in pattern.tests]
    expressions += [{"$ex": {name: 1}} for name in sorted(joined)]
    if first_alias is None:
        expressions.insert(0, {"$ex": {TAG: 1}})
    else:
        expressions.append({TAG: {first_alias: TAG}})
    body = expressions[0] if len(expressions) == 1 else {"$and": expressions}
    return {pattern.alias: body}


def core_fields(ruleset: Ruleset) -> frozenset[str]:
    """The fields the compiled conditions read: all the core needs to see of a fact."""
    fields = {TAG, "sid", "id"}
    for rule in ruleset.rules:
        for pattern in rule.when:
            for test in pattern.tests:
                fields.add(engine_field(test.field))
                if isinstance(test.value, Ref):
                    fields.add(engine_field(test.value.field))
    return frozenset(fields)


def compile_ruleset(ruleset: Ruleset) -> dict[str, Any]:
    """The durable_rules definition of `ruleset` (rule keys are `rule_key(index)`)."""
    definition: dict[str, Any] = {
        SINK_RULE: {"all": [
            {"a": {"$ex": {TAG: 1}}},
            {"b": {"$and": [{"$ex": {_NEVER: 1}}, {TAG: {"a": TAG}}]}},
        ]},
    }
    by_priority = sorted(ruleset.rules, key=lambda r: (r.priority, r.index))
    rank = {rule.index: position for position, rule in enumerate(by_priority)}
    for rule in ruleset.rules:
        first = rule.when[0].alias
        joined = _joined_fields(rule.when)
        definition[rule_key(rule.index)] = {
            "all": [_condition(p, None if i == 0 else first, joined.get(p.alias, set()))
                    for i, p in enumerate(rule.when)],
            "pri": rank[rule.index],
        }
    return definition
