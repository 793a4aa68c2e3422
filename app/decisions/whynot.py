"""Why a rule did not fire in a recorded decision: its nearest partial match, from the record.

An analyst's commonest question ("why did rule X not fire?") is answered from what the
decision recorded, over the ruleset version it ran with: the facts it saw, the facts its
rules derived and the verdicts its rules saw (`facts`, `derived_facts`, `verdict_facts`).
The matcher is the rule language's own meaning (`Pattern.matches`, `Test.holds`, the
fields `then` fills in, `unless`), tried here in Python, never in the engine: the engine
is for deciding, and an explanation must not share its session, its lock or its limits.

The search walks the rule's aliases in order, as the file joins them, and keeps the
match that got furthest: the aliases that matched, the first that did not, and of the
facts that alias could have been, the one that passed the most of its tests, with the
first test it failed and both values compared. A join over several aliases could try
every combination of a decision's facts, so the work is capped (`MAX_CHECKS`) and the
answer says when it was.

Flask-free: the service and the command line call `why_not`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.decisions.masking import MASK
from app.rules.model import (
    Bindings,
    Derive,
    EngineFact,
    Pattern,
    Propose,
    Ref,
    Rule,
    Ruleset,
    Test,
    engine_field,
)
from app.shared.errors import InvalidParam, UnknownRule
from app.shared.schemas import VERDICT_TYPE

# Pattern checks one question may make, its chained rules included: a join of several
# aliases over a decision's facts (up to DECISION_MAX_EVALUATION_FACTS) could otherwise try
# every combination. A few hundred milliseconds of work at most.
MAX_CHECKS = 100_000
MAX_CHAIN = 3  # how many deriving rules deep "and that one did not fire either" goes
MAX_SHOWN = 80  # characters of a value shown in a detail (values may be long texts)
MAX_LISTED = 20  # rule names listed in the answer to an unknown rule
MATCHED, FAILED, NOT_REACHED = "matched", "failed", "not reached"


# --- the record's facts, as the rules saw them -----------------------------------------


def _engine_fact(fact: Mapping[str, Any]) -> EngineFact:
    """A recorded fact as `Test.holds` reads it: data fields beside type, department, id."""
    data = fact.get("data")
    fields = dict(data) if isinstance(data, Mapping) else {}
    fields.update({engine_field("id"): fact.get("id"), "type": fact.get("type"),
                   "department": fact.get("department")})
    return fields


@dataclass
class _Facts:
    """Everything the rules of a decision could match, in the order they met it."""

    all: list[EngineFact]
    by_type: dict[str, list[EngineFact]] = field(default_factory=dict)
    by_id: dict[str, EngineFact] = field(default_factory=dict)

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> _Facts:
        recorded = [*record.get("facts", ()), *record.get("derived_facts", ()),
                    *record.get("verdict_facts", ())]
        facts = cls([_engine_fact(f) for f in recorded if isinstance(f, Mapping)])
        for fact in facts.all:
            facts.by_type.setdefault(str(fact["type"]), []).append(fact)
            facts.by_id.setdefault(str(fact["_id"]), fact)
        return facts

    def of_types(self, types: Sequence[str] | None) -> list[EngineFact]:
        if types is None:
            return self.all
        if len(types) == 1:
            return self.by_type.get(types[0], [])
        wanted = set(types)
        return [fact for fact in self.all if fact["type"] in wanted]


# --- the work budget ---------------------------------------------------------------------


@dataclass
class _Budget:
    left: int
    capped: bool = False

    def spend(self, checks: int = 1) -> bool:
        """Whether there is work left for `checks` more pattern checks."""
        if self.left < checks:
            self.capped = True
            return False
        self.left -= checks
        return True


# --- the search ---------------------------------------------------------------------------


@dataclass
class _Reach:
    """How far one attempt at matching the rule got, and where it stopped.

    `stage`: the number of `when` aliases matched; len(when) + 1 when every alias matched
    but `then` fills in a field one lacks; + 2 when an `unless` fact blocks it; + 3 when
    nothing does (the rule holds on these facts)."""

    stage: int
    bindings: dict[str, EngineFact]
    fact: EngineFact | None = None  # the nearest candidate, or the negating fact
    test: Test | None = None  # the first test the nearest candidate failed
    score: tuple[int, int, int] = (-1, -1, -1)  # see `_assess`
    pattern: Pattern | None = None  # the alias that failed (when or unless)
    missing: Ref | None = None  # the field `then` fills in that the match lacks
    taken_by: int | None = None  # a `first` table's earlier row (index in excludes) took it


def _value_key(value: Any) -> tuple[str, Any] | None:
    """Equal keys for exactly the values `==` finds equal (strict JSON: 1 is 1.0, true is
    no number); None for what `==` never matches (null, lists, objects)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    return None


def _assess(pattern: Pattern, fact: EngineFact, bindings: Bindings,
            ) -> tuple[tuple[int, int, int], Test | None]:
    """How near `fact` comes to `pattern`: (tests passed before the first failure, tests
    passed in all, fields tested that it has at all), and the first test it fails."""
    first: Test | None = None
    before = passed = present = 0
    for test in pattern.tests:
        present += fact.get(test.key) is not None
        if test.holds(fact, bindings):
            passed += 1
            if first is None:
                before += 1
        elif first is None:
            first = test
    return (before, passed, present), first


class _Search:
    """The nearest match of one rule over the facts, within the budget."""

    def __init__(self, rule: Rule, facts: _Facts, budget: _Budget) -> None:
        self.rule = rule
        self.facts = facts
        self.budget = budget
        self.size = len(rule.when)
        self.best = _Reach(-1, {})
        self._indexes: dict[tuple[int, str], dict[tuple[str, Any], list[EngineFact]]] = {}

    @property
    def holds(self) -> bool:
        return self.best.stage == self.size + 3

    def run(self) -> _Reach:
        self._extend(0, {})
        return self.best

    def _candidates(self, index: int, pattern: Pattern, bindings: Bindings) -> list[EngineFact]:
        """The facts that could be this alias: of its types, and where it joins by equality
        on an alias matched before, only those with that value."""
        facts = self.facts.of_types(pattern.fact_types)
        for test in pattern.tests:
            if test.op != "==" or not isinstance(test.value, Ref):
                continue
            wanted = _value_key(test.value.resolve(bindings))
            if wanted is None:
                return []
            return self._index(index, test, facts).get(wanted, [])
        return facts

    def _index(self, index: int, test: Test, facts: list[EngineFact],
               ) -> dict[tuple[str, Any], list[EngineFact]]:
        key = (index, test.key)
        if key not in self._indexes:
            self.budget.spend(len(facts) // 10)  # cheaper than a check per fact
            built: dict[tuple[str, Any], list[EngineFact]] = {}
            for fact in facts:
                value_key = _value_key(fact.get(test.key))
                if value_key is not None:
                    built.setdefault(value_key, []).append(fact)
            self._indexes[key] = built
        return self._indexes[key]

    def _extend(self, index: int, bindings: dict[str, EngineFact]) -> None:
        if index == self.size:
            self._complete(bindings)
            return
        pattern = self.rule.when[index]
        matched = False
        for fact in self._candidates(index, pattern, bindings):
            if self.holds or not self.budget.spend():
                return
            if pattern.matches(fact, bindings):
                matched = True
                bindings[pattern.alias] = fact
                self._extend(index + 1, bindings)
                del bindings[pattern.alias]
        if not matched and not self.holds and not self.budget.capped:
            self._stopped_at(index, pattern, bindings)

    def _stopped_at(self, index: int, pattern: Pattern, bindings: dict[str, EngineFact]) -> None:
        """No fact matches alias `index` after these bindings: keep this attempt if it got
        further than the best so far, or as far with a nearer candidate."""
        if index < self.best.stage:
            return
        nearest: tuple[tuple[int, int, int], EngineFact | None, Test | None] = (
            (-1, -1, -1), None, None)
        for candidate in self.facts.of_types(pattern.fact_types):
            if not self.budget.spend():
                break
            score, failing = _assess(pattern, candidate, bindings)
            if score > nearest[0]:
                nearest = (score, candidate, failing)
        score, fact, test = nearest
        if index > self.best.stage or score > self.best.score:
            self.best = _Reach(index, dict(bindings), fact, test, score, pattern)

    def _complete(self, bindings: dict[str, EngineFact]) -> None:
        """Every alias matched: does the match hold what `then` fills in, and does no
        `unless` fact block it?"""
        for ref in self.rule.needs:
            if ref.resolve(bindings) is None:
                if self.best.stage < self.size + 1:
                    self.best = _Reach(self.size + 1, dict(bindings), bindings[ref.alias],
                                       missing=ref)
                return
        for pattern in self.rule.unless:
            for fact in self.facts.of_types(pattern.fact_types):
                if not self.budget.spend():
                    return
                if pattern.matches(fact, bindings):
                    if self.best.stage < self.size + 2:
                        self.best = _Reach(self.size + 2, dict(bindings), fact,
                                           pattern=pattern)
                    return
        taken = next((i for i, earlier in enumerate(self.rule.excludes)
                      if all(p.matches(bindings[p.alias], bindings) for p in earlier)), None)
        self.best = _Reach(self.size + 3, dict(bindings), taken_by=taken)


# --- words ------------------------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_YAML_WORDS = frozenset({"true", "false", "null", "yes", "no", "on", "off", "y", "n"})


def _literal(value: Any) -> str:
    """A value as a rule file writes it (plain when YAML would read it back the same)."""
    if isinstance(value, Ref):
        return f'"{value}"'
    if isinstance(value, str):
        if value.startswith("$"):
            return json.dumps("$" + value, ensure_ascii=False)  # written $$ in the file
        if _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS:
            return value
    return json.dumps(value, ensure_ascii=False)


def _test_text(test: Test) -> str:
    """One field condition as the rule file writes it."""
    if test.op == "==":
        return f"{test.field}: {_literal(test.value)}"
    if test.op == "in":
        return f"{test.field}: {{in: [{', '.join(_literal(v) for v in test.value)}]}}"
    if test.op == "matches":
        return f"{test.field}: {{matches: {json.dumps(test.pattern, ensure_ascii=False)}}}"
    if test.op == "exists":
        return f"{test.field}: {{exists: {'true' if test.value else 'false'}}}"
    return f'{test.field}: {{"{test.op}": {_literal(test.value)}}}'


def _test_words(test: Test) -> str:
    """One field condition in words: `available >= $req.amount`."""
    if test.op == "in":
        return f"{test.field} in [{', '.join(_literal(v) for v in test.value)}]"
    if test.op == "matches":
        return f"{test.field} matches {json.dumps(test.pattern, ensure_ascii=False)}"
    if test.op == "exists":
        return f"{test.field} {'exists' if test.value else 'does not exist'}"
    return f"{test.field} {test.op} {_literal(test.value).strip(chr(34))}"


def condition_text(pattern: Pattern, *, negated: bool = False) -> str:
    """An alias's condition as the rule file writes it (`unless` ones say so)."""
    text = f"{pattern.alias}: {{{', '.join(_test_text(t) for t in pattern.tests)}}}"
    return f"unless {text}" if negated else text


def _shown(value: Any) -> str:
    """A value in a sentence: as JSON, cut short when long."""
    if value is MISSING:
        return "missing"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 1] + "…"


class _Missing:
    def __repr__(self) -> str:
        return "missing"


MISSING: Any = _Missing()


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _field_of(fact: EngineFact, name: str) -> Any:
    key = engine_field(name)
    return fact.get(key, MISSING)


def _operand(test: Test, bindings: Bindings) -> tuple[str, Any]:
    """What a test compares with, in words, and its value."""
    if isinstance(test.value, Ref):
        bound = bindings.get(test.value.alias)
        value = MISSING if bound is None else _field_of(bound, test.value.field)
        return f"{test.value} ({_shown(value)})", value
    if test.op == "matches":
        return f"the pattern {json.dumps(test.pattern, ensure_ascii=False)}", test.value
    if test.op == "in":
        return f"[{', '.join(_shown(v) for v in test.value)}]", test.value
    return _shown(test.value), test.value


def _masked_note(*values: Any) -> str:
    if any(value == MASK for value in values if isinstance(value, str)):
        return (" (a value here is masked in the record, DECISION_MASK_FIELDS: this is the "
                "mask compared, not the value the rules saw)")
    return ""


def _comparison(test: Test, fact: EngineFact, bindings: Bindings) -> str:
    """`field actual op operand (value)`: a test with both its values, for a match."""
    actual = _field_of(fact, test.field)
    wanted, _ = _operand(test, bindings)
    if test.op == "exists":
        return f"{test.field} is {'present' if test.value else 'absent'} ({_shown(actual)})"
    return f"{test.field} {_shown(actual)} {test.op} {wanted}"


def _failure(test: Test, fact: EngineFact, bindings: Bindings) -> str:
    """Why `fact` fails `test`, in plain words, with both values (the test itself is said
    before it)."""
    actual = _field_of(fact, test.field)
    wanted, expected = _operand(test, bindings)
    if test.op == "exists":
        reason = _presence_failure(test, actual)
    else:
        reason = (_incomparable(test, actual, expected, bindings)
                  or _mismatch(test, actual, wanted, expected))
    return reason + _masked_note(actual, expected)


def _presence_failure(test: Test, actual: Any) -> str:
    """Why an `exists` test fails: the field is there when it must not be, or is not."""
    if not test.value:
        return f"its {test.field} is {_shown(actual)}"
    return f"it has no field {test.field}" if actual is MISSING else f"its {test.field} is null"


def _incomparable(test: Test, actual: Any, expected: Any, bindings: Bindings) -> str | None:
    """Why the test compares nothing at all, if it does not: a side is missing, null, a
    list or an object."""
    name = test.field
    if actual is MISSING:
        return f"it has no field {name}"
    if actual is None or isinstance(actual, list | dict):
        return f"its {name} is {_kind(actual)}, and only strings, numbers and booleans compare"
    if isinstance(test.value, Ref) and (expected is MISSING or expected is None
                                        or isinstance(expected, list | dict)):
        what = "missing" if expected is MISSING else _kind(expected)
        return (f"{test.value} is {what} on fact {bindings[test.value.alias].get('_id')}, so "
                "nothing compares with it")
    return None


def _mismatch(test: Test, actual: Any, wanted: str, expected: Any) -> str:
    """Why two values that compare fail the test's operator."""
    name = test.field
    if test.op == "in":
        return f"its {name} is {_shown(actual)}, not one of {wanted}"
    if test.op == "matches":
        if not isinstance(actual, str):
            return f"its {name} is {_kind(actual)}, {_shown(actual)}, not a string"
        return f"its {name} {_shown(actual)} does not match {wanted} (as a whole)"
    if test.op == "==" and _kind(actual) != _kind(expected):
        return (f"its {name} is {_kind(actual)}, {_shown(actual)}, and {wanted} is "
                f"{_kind(expected)}: a value equals only a value of its own kind (strict JSON)")
    if test.op == "==":
        return f"its {name} is {_shown(actual)}, not {wanted}"
    if test.op == "!=":
        return f"its {name} is {_shown(actual)}, the value it must not be ({wanted})"
    if _kind(actual) != _kind(expected) or isinstance(actual, bool):
        return (f"its {name} is {_kind(actual)}, {_shown(actual)}, and {wanted} is "
                f"{_kind(expected)}: {test.op} compares only numbers with numbers and strings "
                "with strings")
    return f"its {name} is {_shown(actual)}, and {_shown(actual)} {test.op} {wanted} is false"


def _comparisons(pattern: Pattern, fact: EngineFact, bindings: Bindings) -> str:
    return "; ".join(_comparison(t, fact, bindings) for t in pattern.tests if t.field != "type")


def _describe_match(pattern: Pattern, fact: EngineFact, bindings: Bindings) -> str:
    """A matched alias: its fact and each of its comparisons with the values compared."""
    compared = _comparisons(pattern, fact, bindings)
    return f"{fact.get('type')} {fact.get('_id')}" + (f": {compared}" if compared else "")


def _bound_ids(bindings: Mapping[str, EngineFact], aliases: Iterable[str]) -> str:
    return ", ".join(f"{alias}={bindings[alias].get('_id')}" for alias in aliases
                     if alias in bindings)


# --- explaining one rule ---------------------------------------------------------------


@dataclass
class _Explainer:
    """The answer for one rule of a recorded decision, and for the rules it chains from."""

    record: Mapping[str, Any]
    ruleset: Ruleset
    facts: _Facts
    budget: _Budget
    fired: dict[str, list[dict[str, str]]]  # rule -> the facts of each of its firings
    rounds: dict[str, int]  # rule -> the round of its first firing, where recorded

    @classmethod
    def of(cls, record: Mapping[str, Any], ruleset: Ruleset, max_checks: int) -> _Explainer:
        fired: dict[str, list[dict[str, str]]] = {}
        rounds: dict[str, int] = {}
        for firing in record.get("fired", ()):
            rule = str(firing.get("rule"))
            fired.setdefault(rule, []).append(
                {str(k): str(v) for k, v in dict(firing.get("facts") or {}).items()})
            if isinstance(firing.get("round"), int):
                rounds.setdefault(rule, firing["round"])
        return cls(record, ruleset, _Facts.of(record), _Budget(max_checks), fired, rounds)

    def rule(self, name: str) -> Rule:
        for rule in self.ruleset.rules:
            if rule.name == name:
                return rule
        names = [rule.name for rule in self.ruleset.rules]
        listed = ", ".join(names[:MAX_LISTED]) + (
            f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")
        raise UnknownRule(
            f"ruleset {self.ruleset.name} version {self.ruleset.version}, which the decision "
            f"ran with, has no rule {name!r}",
            [InvalidParam("rule", f"no such rule in ruleset {self.ruleset.name} version "
                                  f"{self.ruleset.version} (its rules: {listed})")])

    # a rule that fired

    def fired_answer(self, rule: Rule) -> tuple[str, list[dict[str, Any]]]:
        firings = self.fired[rule.name]
        first = firings[0]
        bindings = {alias: self.facts.by_id[fact_id] for alias, fact_id in first.items()
                    if fact_id in self.facts.by_id}
        steps = []
        for pattern in rule.when:
            ids = list(dict.fromkeys(f[pattern.alias] for f in firings if pattern.alias in f))
            fact = bindings.get(pattern.alias)
            detail = (_describe_match(pattern, fact, bindings) if fact is not None else
                      f"fact {first.get(pattern.alias)} (not among the recorded facts)")
            if len(firings) > 1:
                detail += f" (first of {len(firings)} firings)"
            steps.append(_step(condition_text(pattern), pattern.alias, MATCHED, ids, detail))
        if rule.needs:
            steps.append(_step(_needs_text(rule), None, MATCHED, [],
                               "every field then fills in was there"))
        for pattern in rule.unless:
            steps.append(_step(condition_text(pattern, negated=True), pattern.alias, MATCHED,
                               [], "no such fact when it fired"))
        times = "" if len(firings) == 1 else f" {len(firings)} times"
        rounds = self.record.get("rounds")
        first_round = self.rounds.get(rule.name)
        when = (f" (round {first_round} of {rounds})" if isinstance(rounds, int) and rounds > 1
                and first_round is not None else "")
        explanation = (f"Rule {rule.name} fired{times} in this decision, first on "
                       f"{', '.join(f'{a}={i}' for a, i in first.items())}{when}.")
        return explanation, steps

    # a rule that did not

    def not_fired_answer(self, rule: Rule, depth: int = 0, seen: frozenset[str] = frozenset(),
                         ) -> tuple[str, str, list[dict[str, Any]]]:
        """The explanation in short and in full (with why the rules that make the facts it
        lacks did not), and the steps."""
        reach = _Search(rule, self.facts, self.budget).run()
        seen = seen | {rule.name}
        size = len(rule.when)
        steps: list[dict[str, Any]] = []
        failed = full = ""
        for index, pattern in enumerate(rule.when):
            text = condition_text(pattern)
            if index < reach.stage:
                fact = reach.bindings[pattern.alias]
                steps.append(_step(text, pattern.alias, MATCHED, [str(fact["_id"])],
                                   _describe_match(pattern, fact, reach.bindings)))
            elif index == reach.stage:
                failed, full = self._when_failure(pattern, reach, depth, seen)
                ids = [] if reach.fact is None else [str(reach.fact["_id"])]
                steps.append(_step(text, pattern.alias, FAILED, ids, full))
            else:
                steps.append(_step(text, pattern.alias, NOT_REACHED, [],
                                   "not checked: an alias before it found no fact"))
        if rule.needs:
            status, ids, detail = NOT_REACHED, [], "not checked: an alias found no fact"
            if reach.stage == size + 1 and reach.missing is not None and reach.fact is not None:
                status, ids = FAILED, [str(reach.fact["_id"])]
                detail = failed = full = (
                    f"{reach.missing} is {_shown(_field_of(reach.fact, reach.missing.field))} "
                    f"on {reach.fact.get('type')} {reach.fact.get('_id')}: a rule does not "
                    "fire on a match that lacks a field its then fills in")
            elif reach.stage > size + 1:
                status, detail = MATCHED, "every field then fills in is there: " + "; ".join(
                    f"{ref} {_shown(ref.resolve(reach.bindings))}" for ref in rule.needs)
            steps.append(_step(_needs_text(rule), None, status, ids, detail))
        blocking = (rule.unless.index(reach.pattern) if reach.stage == size + 2
                    and reach.pattern in rule.unless else len(rule.unless))
        for index, pattern in enumerate(rule.unless):
            text = condition_text(pattern, negated=True)
            if reach.stage < size + 2:
                steps.append(_step(text, pattern.alias, NOT_REACHED, [],
                                   "not checked: the conditions before it did not all hold"))
            elif index < blocking:
                steps.append(_step(text, pattern.alias, MATCHED, [], "no such fact"))
            elif index == blocking and reach.fact is not None:
                steps.append(_step(text, pattern.alias, FAILED, [str(reach.fact["_id"])],
                                   f"{reach.fact.get('type')} {reach.fact.get('_id')} is such a "
                                   f"fact ({_comparisons(pattern, reach.fact, reach.bindings)})"
                                   ", and its presence blocks the rule"))
            else:
                steps.append(_step(text, pattern.alias, NOT_REACHED, [],
                                   "not checked: an unless before it blocked the rule"))
        return (self._sentence(rule, reach, failed), self._sentence(rule, reach, full),
                steps)

    def _sentence(self, rule: Rule, reach: _Reach, failed: str) -> str:
        size = len(rule.when)
        matched = _bound_ids(reach.bindings, [p.alias for p in rule.when])
        if reach.stage == size + 3 and reach.taken_by is not None:
            earlier = [r for r in self.ruleset.rules
                       if r.table == rule.table and r.row is not None and rule.row is not None
                       and r.row < rule.row]
            first = earlier[reach.taken_by] if reach.taken_by < len(earlier) else None
            which = (f"row {first.row} (rule {first.name})" if first is not None
                     else "an earlier row")
            text = (f"Rule {rule.name} did not fire: it is row {rule.row} of table "
                    f"{rule.table}, whose hit policy is first, and {which} matches these facts "
                    f"({matched}) first.")
        elif reach.stage == size + 3:
            text = (f"Every condition of rule {rule.name} holds on the recorded facts "
                    f"({matched}), yet the decision records no firing of it: "
                    + self._unrecorded_reason())
        elif reach.stage < 0:
            text = f"Rule {rule.name} did not fire: nothing was checked."
        elif reach.stage < size:
            alias = rule.when[reach.stage].alias
            so_far = f"{matched} matched, but " if matched else ""
            text = f"Rule {rule.name} did not fire: {so_far}{alias} did not: {failed}."
        elif reach.stage == size + 1:
            text = f"Rule {rule.name} did not fire: its conditions matched ({matched}), but " \
                   f"{failed}."
        else:
            text = (f"Rule {rule.name} did not fire: its conditions matched ({matched}), but "
                    f"unless {reach.pattern.alias if reach.pattern else ''} found "
                    f"{reach.fact.get('type') if reach.fact else ''} "
                    f"{reach.fact.get('_id') if reach.fact else ''}, which blocks it.")
        error = self.record.get("error")
        if isinstance(error, Mapping) and reach.stage != size + 3:
            text += (f" The decision itself failed ({error.get('detail')}), so nothing it "
                     "derived is recorded.")
        return text

    def _unrecorded_reason(self) -> str:
        error = self.record.get("error")
        if isinstance(error, Mapping):
            return f"the decision failed before its rules came to rest ({error.get('detail')})."
        if self.record.get("masked"):
            return ("the record masks some values (DECISION_MASK_FIELDS), and the rules saw "
                    "the real ones.")
        return ("it may have matched only facts of different rounds (the record holds the "
                "derived facts of every round and the verdicts of the last).")

    def _when_failure(self, pattern: Pattern, reach: _Reach, depth: int,
                      seen: frozenset[str]) -> tuple[str, str]:
        """Why no fact matched this alias, in short and in full: the nearest fact and the
        test it failed, or where facts of its type come from and why none came (for a type
        the rules derive, why its deriving rules did not fire, a few rules deep)."""
        if reach.fact is not None and reach.test is not None:
            passed = [t.field for t in pattern.tests[:reach.score[0]] if t.field != "type"]
            then = f" ({', '.join(passed)} matched)" if passed else ""
            text = (f"the nearest {reach.fact.get('type')} fact, {reach.fact.get('_id')}"
                    f"{then}, fails {_test_words(reach.test)}: "
                    f"{_failure(reach.test, reach.fact, reach.bindings)}")
            return text, text
        types = pattern.fact_types or ()
        short = f"there is no {' or '.join(types) if types else 'matching'} fact"
        origins = [self._origin(fact_type, pattern, depth, seen) for fact_type in types]
        return (short + "".join(f"; {said}" for said, _ in origins),
                short + "".join(f"; {said}{chain}" for said, chain in origins))

    def _origin(self, fact_type: str, pattern: Pattern, depth: int,
                seen: frozenset[str]) -> tuple[str, str]:
        """Where facts of `fact_type` would have come from (and, for what rules make, why
        those rules made none)."""
        if fact_type == VERDICT_TYPE:
            action = _pinned_action(pattern)
            proposed = sorted({str(a.get("type")) for a in self.record.get("actions", ())})
            if action is not None and action not in proposed:
                proposing = [r for r in self.ruleset.rules if any(
                    isinstance(s, Propose) and s.action == action for s in r.then)]
                said = (f"a verdict is a fact only of an action a round proposed, and this "
                        f"decision proposed no {action} (rule "
                        f"{' or '.join(r.name for r in proposing) or 'none'} proposes it)")
                return said, "".join(self._chained(r, depth, seen) for r in proposing[:3])
            return (f"a verdict is a fact only of an action the round before proposed (this "
                    f"decision proposed {', '.join(proposed) or 'nothing'})", "")
        deriving = [r for r in self.ruleset.rules if any(
            isinstance(s, Derive) and s.type == fact_type for s in r.then)]
        if deriving:
            names = " or ".join(r.name for r in deriving)
            return (f"{fact_type} facts are derived by rule {names}, and none was derived",
                    "".join(self._chained(r, depth, seen) for r in deriving[:3]))
        owners = self.ruleset.fact_types.get(fact_type)
        said = ("none was on file for the subject when it was decided"
                + (f" (they are posted by {', '.join(owners.owners)})" if owners else ""))
        for left_out in self.record.get("ignored_facts", ()):
            if isinstance(left_out, Mapping) and left_out.get("type") == fact_type:
                said += f", and {left_out.get('id')} was left out: {left_out.get('reason')}"
                break
        return said, ""

    def _chained(self, rule: Rule, depth: int, seen: frozenset[str]) -> str:
        """Why a rule that makes the missing facts made none, in brackets."""
        if rule.name in self.fired:
            return f" [{rule.name} fired, on other facts]"
        if depth >= MAX_CHAIN or rule.name in seen or self.budget.capped:
            return f" [{rule.name} did not fire either]"
        _, sentence, _ = self.not_fired_answer(rule, depth + 1, seen)
        return f" [{sentence.rstrip('.')}]"


def _pinned_action(pattern: Pattern) -> str | None:
    """The action a verdict condition is about (`action: x`), if it names one."""
    for test in pattern.tests:
        if test.field == "action" and test.op == "==" and isinstance(test.value, str):
            return test.value
    return None


def _needs_text(rule: Rule) -> str:
    return "then: " + ", ".join(str(ref) for ref in rule.needs)


def _step(condition: str, alias: str | None, status: str, facts: list[str],
          detail: str) -> dict[str, Any]:
    return {"condition": condition, "alias": alias, "status": status, "facts": facts,
            "detail": detail}


def why_not(record: Mapping[str, Any], ruleset: Ruleset, rule_name: str, *,
            max_checks: int = MAX_CHECKS) -> dict[str, Any]:
    """Whether `rule_name` fired in the recorded decision and, if it did not, its nearest
    partial match: which condition failed first, on which facts, with the values compared.
    `ruleset` must be the version the decision ran with. UnknownRule if it has no such
    rule."""
    explainer = _Explainer.of(record, ruleset, max_checks)
    rule = explainer.rule(rule_name)
    fired = rule.name in explainer.fired
    if fired:
        explanation, steps = explainer.fired_answer(rule)
    else:
        explanation, _, steps = explainer.not_fired_answer(rule)
    capped = explainer.budget.capped
    if capped:
        explanation += (f" The search stopped after {max_checks:,} checks (the facts join into "
                        "more combinations than that): this is the nearest match it found.")
    return {"decision_id": record.get("decision_id"), "rule": rule.name,
            "ruleset": ruleset.name, "ruleset_version": ruleset.version, "fired": fired,
            "explanation": explanation, "steps": steps, "capped": capped}
