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
- `!=`, `<`, `<=`, `>`, `>=` and `matches` become "the field is present", and `exists`
  no test at all; `Test.holds` decides them. The core must never miss a match that
  `Test.holds` would accept, and it would: it coerces types (it finds `"2" != 2` false),
  orders "2026-01-01" after "2026-01-01 00:00", its regex engine misses matches (`[]a]`,
  `.` against a tab), and a fact that passes more than 64 of its comparison nodes at
  once aborts the assert (error 303: 65 rules `x > n` on one fact type never decide,
  as a decision table of ranges would be). Equality it hashes, and keeps, up to a
  point: a node holds at most 512 equality alternatives below it (each `==` constant, each
  value of an `in` list), and past that registering the ruleset never returns (33 table
  rows of 16 listed values on one field) or every assert fails (32 rows: error 303). A
  ruleset with more than `CORE_EQUALITY_BUDGET` of them in all has its constant tests
  decided by `Test.holds` instead (but for the fact type: the join bound counts facts by
  it), the core checking only that the field is there.
- Below one node the core keeps at most 255 rules: 256 rules with the same conditions
  (a decision table of 256 ranges on one field) never finish registering, and more are
  refused (error 108). Patterns that share conditions go in groups of `_GROUP_SIZE`, each
  group with its own conditions every fact meets (that some of `_GROUP_MARKS` are there).
- The definition is sent in UTF-8, as the facts are: escaped (`\u00e9`), a constant
  never equals the fact's text.
- A field another alias joins on must be present in the fact an alias matches:
  the core aborts a whole assert (error 311) when a join reads a missing field.
  A comparison with a missing field is false anyway (`Test.holds`).
- Priorities become `pri` as the rank of (priority, position in the file): equal
  priorities fire in file order, and the rank fits the core's `unsigned short`
  (a larger or negative `pri` silently wraps around and reorders the rules).
- Every number the core sees, in a rule and in a fact, goes through `core_number`. The
  core's number reader takes an exponent only after a decimal point (json.c
  `getNumber`): `1e+16` or `1e-07` aborts the parse, and a batch whose first fact fails
  leaves an uninitialised state number that segfaults the next call (later facts are
  dropped silently). It hashes equal int and float join keys apart. `core_number` maps
  every number, by value and in order, to one the core reads and hashes alike.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from app.rules.model import Pattern, Ref, Ruleset, Test, engine_field

TAG = "_e"  # the evaluation a fact belongs to
SINK_RULE = "_sink"
_NEVER = "_z"

# The core only checks that the field is there; `Test.holds` decides (see above).
_DECIDED_IN_PYTHON = ("!=", "<", "<=", ">", ">=", "matches")
CORE_EQUALITY_BUDGET = 256  # of the 512 the core has room for below one node (see above)
_GROUP_SIZE = 200  # rules below one node of the core, which holds at most 255
# Fields every fact the core sees has: a group is marked by a set of them, 31 sets for the
# 4,001 patterns a file may hold (500 rules of 8 aliases, app.rules.loader; and the sink).
_GROUP_MARKS = ("_id", "department", "sid", "id", "type")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _readable(number: float) -> bool:
    """Whether durable_rules reads this float as the service writes it (orjson for facts,
    the json module for rules): it misreads an exponent without a decimal point."""
    if 1e-4 <= abs(number) < 1e16:  # both print plain decimals here
        return True
    for text in (orjson.dumps(number).decode(), json.dumps(number)):
        mantissa, exponent, _ = text.lower().partition("e")
        if exponent and "." not in mantissa:
            return False
    return True


def core_number(number: int | float) -> int | float:
    """What the core is shown of a number (not a bool): an int64, or a float it reads and
    compares exactly. Monotone in the value, and equal values map alike (2 and 2.0): whole
    floats become ints, numbers past int64 are clamped, and the few tiny floats the core
    cannot read move to the next lower float it can."""
    if isinstance(number, int):
        return min(max(number, INT64_MIN), INT64_MAX)
    if number.is_integer():
        if INT64_MIN <= number <= INT64_MAX:
            return int(number)
        return INT64_MAX if number > 0 else INT64_MIN
    while not _readable(number):
        number = math.nextafter(number, -math.inf)
    return int(number) if number.is_integer() else number


def rule_key(index: int) -> str:
    return f"r{index}"


def _operand(value: Any) -> Any:
    if isinstance(value, Ref):
        return {value.alias: engine_field(value.field)}
    if type(value) is int or type(value) is float:
        return core_number(value)
    return value


def _constant_alternatives(test: Test) -> int:
    """How many equality alternatives on constants `test` puts in the core."""
    if test.field == "type":  # always in the core: it keeps joins to the types they name
        return 0
    if test.op == "==" and not isinstance(test.value, Ref):
        return 1
    return len(test.value) if test.op == "in" else 0


def _expression(test: Test, *, constants_in_core: bool = True) -> dict[str, Any]:
    field = engine_field(test.field)
    if not constants_in_core and _constant_alternatives(test):
        return {"$ex": {field: 1}}
    if test.op == "==":
        return {field: _operand(test.value)}
    if test.op in _DECIDED_IN_PYTHON:
        return {"$ex": {field: 1}}
    if test.op == "in":
        options = [{field: _operand(option)} for option in test.value]
        return options[0] if len(options) == 1 else {"$or": options}
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
            if isinstance(test.value, Ref) and test.op == "==":
                joined.setdefault(test.value.alias, set()).add(engine_field(test.value.field))
    return joined


def _alpha(pattern: Pattern, *, first: bool, joined: set[str],
           constants_in_core: bool = True) -> list[dict[str, Any]]:
    """The tests of one fact alone: a path through the core's nodes, which identical
    paths of other rules share."""
    expressions = [_expression(test, constants_in_core=constants_in_core)
                   for test in pattern.tests]
    expressions += [{"$ex": {name: 1}} for name in sorted(joined)]
    return [{"$ex": {TAG: 1}}, *expressions] if first else expressions


def _condition(pattern: Pattern, first_alias: str | None, joined: set[str], *,
               constants_in_core: bool = True, marks: tuple[str, ...] = ()) -> dict[str, Any]:
    expressions = _alpha(pattern, first=first_alias is None, joined=joined,
                         constants_in_core=constants_in_core)
    expressions += [{"$ex": {mark: 1}} for mark in marks]
    if first_alias is not None:
        expressions.append({TAG: {first_alias: TAG}})
    body = expressions[0] if len(expressions) == 1 else {"$and": expressions}
    return {pattern.alias: body}


def _marks(ruleset: Ruleset, constants_in_core: bool) -> dict[tuple[int, str], tuple[str, ...]]:
    """(rule index, alias) -> the group marks of each pattern whose path more than
    `_GROUP_SIZE` patterns share (the sink's first among them, which stays unmarked)."""
    paths: dict[str, list[tuple[int, str]]] = {json.dumps([{"$ex": {TAG: 1}}]): [(-1, "a")]}
    for rule in ruleset.rules:
        joined = _joined_fields(rule.when)
        for i, pattern in enumerate(rule.when):
            path = _alpha(pattern, first=i == 0, joined=joined.get(pattern.alias, set()),
                          constants_in_core=constants_in_core)
            paths.setdefault(json.dumps(path, sort_keys=True), []).append(
                (rule.index, pattern.alias))
    marks = {}
    for sharing in paths.values():
        if len(sharing) > _GROUP_SIZE:
            for n, place in enumerate(sharing):
                group = n // _GROUP_SIZE + 1  # its bits: which marks
                if group >= 2 ** len(_GROUP_MARKS):
                    raise ValueError(f"{len(sharing)} patterns alike: more than the core holds")
                marks[place] = tuple(mark for bit, mark in enumerate(_GROUP_MARKS)
                                     if group >> bit & 1)
    return marks


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
    constants_in_core = sum(_constant_alternatives(test) for rule in ruleset.rules
                            for pattern in rule.when
                            for test in pattern.tests) <= CORE_EQUALITY_BUDGET
    marks = _marks(ruleset, constants_in_core)
    for rule in ruleset.rules:
        first = rule.when[0].alias
        joined = _joined_fields(rule.when)
        definition[rule_key(rule.index)] = {
            "all": [_condition(p, None if i == 0 else first, joined.get(p.alias, set()),
                               constants_in_core=constants_in_core,
                               marks=marks.get((rule.index, p.alias), ()))
                    for i, p in enumerate(rule.when)],
            "pri": rank[rule.index],
        }
    return definition
