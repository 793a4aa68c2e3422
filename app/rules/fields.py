"""Which data fields each fact type's facts have, where a rule file says, and the warnings
for a rule that reads a field no fact of its alias's types has.
"""

from __future__ import annotations

from app.rules.checks import DATA_KEY, META_FIELDS
from app.rules.model import VERDICT_FIELDS, Derive, Pattern, Propose, Ref, Ruleset
from app.shared.errors import RuleProblem
from app.shared.schemas import RESERVED_DATA_KEYS, VERDICT_TYPE


def _copied(key: str) -> bool:
    """Whether a param is also a field of its verdict fact (app.decisions.decision.verdict_fact)."""
    return key not in VERDICT_FIELDS and key not in RESERVED_DATA_KEYS and bool(
        DATA_KEY.fullmatch(key))


def known_fields(ruleset: Ruleset) -> dict[str, frozenset[str]]:
    """Fact type -> the data fields its facts have, where the file says: listed under
    facts: (`fields`), what the rules derive, and a verdict's (for any action; see
    `_verdict_fields` for one)."""
    known: dict[str, set[str]] = {}
    for rule in ruleset.rules:
        for step in rule.then:
            if isinstance(step, Derive) and isinstance(step.data.value, dict):
                known.setdefault(step.type, set()).update(step.data.value)
    known[VERDICT_TYPE] = set(_verdict_fields(ruleset, None))
    for fact_type in ruleset.fact_types.values():
        if fact_type.fields is not None:
            known[fact_type.name] = set(fact_type.fields)
    return {fact_type: frozenset(fields) for fact_type, fields in known.items()}


def _verdict_fields(ruleset: Ruleset, action: str | None) -> frozenset[str]:
    """The fields of a verdict on `action` (None: on any action)."""
    params = {key for rule in ruleset.rules for step in rule.then
              if isinstance(step, Propose) and isinstance(step.params.value, dict)
              and action in (None, step.action)
              for key in step.params.value if _copied(key)}
    return frozenset({*VERDICT_FIELDS, *params})


def field_warnings(ruleset: Ruleset) -> list[RuleProblem]:
    """A rule that reads a field no fact of its alias's types has: its condition can never
    hold, or its `then` never fires (a reference to a missing field is no match). A field
    only tested with `exists` is not one: asking whether it is there is the point."""
    known = known_fields(ruleset)
    warnings = []
    for rule in ruleset.rules:
        patterns = {p.alias: p for p in (*rule.when, *rule.unless)}
        read: dict[str, list[str]] = {}
        for pattern in patterns.values():
            for test in pattern.tests:
                if test.op != "exists":
                    read.setdefault(pattern.alias, []).append(test.field)
                if isinstance(test.value, Ref):
                    read.setdefault(test.value.alias, []).append(test.value.field)
        for ref in rule.needs:
            read.setdefault(ref.alias, []).append(ref.field)
        for alias, fields in read.items():
            matched = patterns.get(alias)
            types = matched.fact_types if matched is not None else None
            if matched is None or not types or any(t not in known for t in types):
                continue
            having = frozenset().union(*(
                _verdict_fields(ruleset, _pinned_action(matched)) if t == VERDICT_TYPE
                else known[t] for t in types))
            for name in dict.fromkeys(fields):
                if name in META_FIELDS or name in having:
                    continue
                warnings.append(RuleProblem(
                    ruleset.file, f"${alias}.{name}: no {' or '.join(types)} fact has a field "
                    f"{name!r} (its fields: {', '.join(sorted(having)) or 'none'}): a condition "
                    "on it never holds, and a rule that fills it in never fires", rule.name,
                    rule.line))
    return warnings


def _pinned_action(pattern: Pattern) -> str | None:
    """The action a verdict pattern is about (`action: x`), if it names one."""
    for test in pattern.tests:
        if test.field == "action" and test.op == "==" and isinstance(test.value, str):
            return test.value
    return None

