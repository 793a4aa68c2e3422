"""A ruleset as the service understands it: validated, immutable, and the one definition of
what a condition means.

`Test.holds` is the semantics of the rule language. durable_rules finds candidate
matches fast but coerces types (its `true` also matches `1` and `"true"`) and its
negation cannot withdraw an activation once queued, so every firing it proposes
is checked here before it counts, and `unless` is decided here alone.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from app.shared.errors import EvaluationFailed, RuleProblem
from app.shared.schemas import VERDICT_TYPE

# A fact as the engine holds it: data fields beside type, department and the fact id.
EngineFact = dict[str, Any]
Bindings = dict[str, EngineFact]

# The rule language's `id` field is held under this name inside durable_rules, whose
# own `id` property is the identity of a fact in working memory.
ENGINE_FIELD = {"id": "_id"}


def engine_field(name: str) -> str:
    return ENGINE_FIELD.get(name, name)


@dataclass(frozen=True)
class Ref:
    """`$alias.field`: the value of a field of a fact matched in the same rule."""

    alias: str
    field: str
    key: str = dataclass_field(default="", compare=False, repr=False)  # engine name of field

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", engine_field(self.field))

    def resolve(self, bindings: Bindings) -> Any:
        return bindings[self.alias].get(self.key)

    def __str__(self) -> str:
        return f"${self.alias}.{self.field}"


def _present(value: Any) -> bool:
    return value is not None


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float)  # bool is an int


def _json_equal(left: Any, right: Any) -> bool:
    """JSON equality: booleans are not numbers, 1 equals 1.0, strings compare exactly."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    return type(left) is type(right) and left == right


def _ordered(left: Any, right: Any) -> bool:
    """Both numbers (not booleans) or both strings: the only pairs `<` and friends compare."""
    if isinstance(left, bool) or isinstance(right, bool):
        return False
    if isinstance(left, int | float) and isinstance(right, int | float):
        return True
    return isinstance(left, str) and isinstance(right, str)


@dataclass(frozen=True)
class Test:
    """One field condition: `field op value`.

    Comparisons hold only between strings, numbers and booleans: a field that is
    missing, null, a list or an object fails every test but `exists` (true when the
    field is there and not null).
    """

    field: str
    op: str  # one of OPERATORS
    value: Any  # a JSON scalar, a Ref, a list (in), a compiled RE2 pattern (matches) or a bool
    pattern: str | None = None  # the source of a `matches` regex
    key: str = ""  # where the engine holds the field (set from `field`)
    # The commonest tests, equality with a string or with another fact's field, take a
    # short path (a decision checks dozens of tests); the results are the same.
    _text: str | None = dataclass_field(default=None, compare=False, repr=False)
    _joined: Ref | None = dataclass_field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", engine_field(self.field))
        if self.op == "==" and type(self.value) is str:
            object.__setattr__(self, "_text", self.value)
        elif self.op == "==" and isinstance(self.value, Ref):
            object.__setattr__(self, "_joined", self.value)

    def holds(self, fact: EngineFact, bindings: Bindings) -> bool:
        actual = fact.get(self.key)
        if self._text is not None:
            return type(actual) is str and actual == self._text
        if self._joined is not None and type(actual) is str:
            other = bindings[self._joined.alias].get(self._joined.key)
            if type(other) is str:
                return actual == other
        if self.op == "exists":
            return _present(actual) is self.value
        if not _scalar(actual):
            return False
        expected = self.value.resolve(bindings) if isinstance(self.value, Ref) else self.value
        if self.op == "in":
            return any(_json_equal(actual, option) for option in expected)
        if self.op == "matches":
            return isinstance(actual, str) and expected.fullmatch(actual) is not None
        if not _scalar(expected):
            return False
        if self.op == "==":
            return _json_equal(actual, expected)
        if self.op == "!=":
            return not _json_equal(actual, expected)
        if not _ordered(actual, expected):
            return False
        return bool(_COMPARE[self.op](actual, expected))


_COMPARE = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "matches", "exists")


@dataclass(frozen=True)
class Pattern:
    """`alias: {field: condition, ...}`: which fact the alias stands for."""

    alias: str
    tests: tuple[Test, ...]
    fact_type: str | None = None  # the type every match has, when a test pins it to one
    # The types a match may have when tests pin it (`type: x` or `type: {in: [x, y]}`);
    # None when any type could match.
    fact_types: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for test in self.tests:
            if test.field == "type" and test.op == "==" and isinstance(test.value, str):
                object.__setattr__(self, "fact_type", test.value)
                object.__setattr__(self, "fact_types", (test.value,))
            elif test.field == "type" and test.op == "in" and self.fact_types is None and all(
                    isinstance(option, str) for option in test.value):
                object.__setattr__(self, "fact_types", tuple(test.value))

    def matches(self, fact: EngineFact, bindings: Bindings) -> bool:
        return all(test.holds(fact, bindings) for test in self.tests)


@dataclass(frozen=True)
class Template:
    """A JSON value from a rule's `then`, with `$alias.field` references to fill in.

    Inside `value`, a `Ref` stands for a string that is exactly one reference (it keeps
    the referenced JSON type) and an `Interpolation` for text with references in it.
    """

    value: Any

    @property
    def flat(self) -> bool:
        """An object of scalars and references only: whatever it renders to, its values
        are the matched facts' own (already valid) values or literals checked at load."""
        return isinstance(self.value, dict) and not any(
            isinstance(v, list | dict) for v in self.value.values())

    def render(self, bindings: Bindings) -> Any:
        return _render(self.value, bindings)


@dataclass(frozen=True)
class Interpolation:
    parts: tuple[str | Ref, ...]


# A text a rule fills in from matched facts ("reviewed by $rev.reviewer"): a fact's own
# values may be long, but a text made of several of them, in every action and derived
# fact, must not be what fills the memory.
MAX_RENDERED_TEXT = 64 * 1024


def _render(value: Any, bindings: Bindings) -> Any:
    if isinstance(value, Ref):
        return value.resolve(bindings)
    if isinstance(value, Interpolation):
        text = "".join(part if isinstance(part, str) else _text(part.resolve(bindings))
                       for part in value.parts)
        if len(text) > MAX_RENDERED_TEXT:
            raise EvaluationFailed(f"a rule filled in a text of {len(text):,} characters; at "
                                   f"most {MAX_RENDERED_TEXT:,} are allowed")
        return text
    if isinstance(value, list):
        return [_render(item, bindings) for item in value]
    if isinstance(value, dict):
        return {key: _render(item, bindings) for key, item in value.items()}
    return value


def _text(value: Any) -> str:
    """A value filled into text: as JSON writes it (a list or an object too, never as
    Python would print it); text as it is."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def template_refs(value: Any) -> list[Ref]:
    """The references in a template's value, in order."""
    if isinstance(value, Ref):
        return [value]
    if isinstance(value, Interpolation):
        return [part for part in value.parts if isinstance(part, Ref)]
    if isinstance(value, list):
        return [ref for item in value for ref in template_refs(item)]
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in template_refs(item)]
    return []


@dataclass(frozen=True)
class Propose:
    """`propose`: an action for the policy gate, and the action types that must be
    dispatched before it may be (`requires`)."""

    action: str
    params: Template
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class Derive:
    """`assert`: a new fact of `department: rules` that can fire further rules."""

    type: str
    data: Template


Step = Propose | Derive


@dataclass(frozen=True)
class Rule:
    name: str
    index: int  # position in the file: breaks priority ties
    priority: int
    when: tuple[Pattern, ...]
    unless: tuple[Pattern, ...]
    then: tuple[Step, ...]
    line: int | None = None
    description: str = ""
    # A rule compiled from a row of a decision table (app.rules.tables): the table's name
    # and the row's number (1-based), recorded with each firing; and under hit policy
    # `first`, the earlier rows' cell tests, none of which may hold for this row to fire.
    table: str | None = None
    row: int | None = None
    excludes: tuple[tuple[Pattern, ...], ...] = ()
    # The fields `then` fills in: a match whose facts lack one (or hold null there) is no
    # match, so no action or derived fact ever carries a null the rule did not write.
    needs: tuple[Ref, ...] = dataclass_field(default=(), init=False, compare=False)

    def __post_init__(self) -> None:
        refs = [ref for step in self.then
                for ref in template_refs(step.params.value if isinstance(step, Propose)
                                         else step.data.value)]
        object.__setattr__(self, "needs", tuple(dict.fromkeys(refs)))

    def holds(self, bindings: Bindings, facts: list[EngineFact],
              by_type: Mapping[str, list[EngineFact]] | None = None) -> bool:
        """Do the matched facts satisfy `when` (and no earlier row of a `first` table), hold
        every field `then` refers to, and does no fact satisfy any `unless`? (`by_type`, the
        same facts grouped by type, spares scanning them all.)"""
        for pattern in self.when:
            if not pattern.matches(bindings[pattern.alias], bindings):
                return False
        for earlier in self.excludes:  # a `first` table's earlier row that matches takes it
            if all(p.matches(bindings[p.alias], bindings) for p in earlier):
                return False
        for ref in self.needs:
            if ref.resolve(bindings) is None:
                return False
        for pattern in self.unless:
            candidates = facts if by_type is None or pattern.fact_type is None else by_type.get(
                pattern.fact_type, ())
            for fact in candidates:
                if pattern.matches(fact, bindings):
                    return False
        return True


# A verdict fact's data (see app.decisions.decision.verdict_fact): the action's type, id, params
# and proposing rule, the verdict, and the round it was given in; and the action's
# params again as fields of their own, unless named like one of these.
VERDICT_FIELDS = ("action", "action_id", "rule", "params", "allow", "outcome", "reasons",
                  "round")


@dataclass(frozen=True)
class FactType:
    """A fact type the ruleset reads, and the departments that alone may post it."""

    name: str
    owners: tuple[str, ...]
    description: str = ""
    fields: tuple[str, ...] | None = None  # its data fields, when the file lists them


@dataclass(frozen=True)
class Ruleset:
    name: str
    version: str  # content hash of the source
    source: str
    file: str
    rules: tuple[Rule, ...]
    description: str = ""
    triggers: tuple[str, ...] = ()
    fact_types: Mapping[str, FactType] = dataclass_field(default_factory=dict)
    # What the file leaves open without being wrong (a fact type nobody owns), for
    # `rules validate` and GET /v1/rulesets; the ruleset is active all the same.
    warnings: tuple[RuleProblem, ...] = ()

    @property
    def engine_name(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def derived_types(self) -> frozenset[str]:
        """The fact types the rules derive (`assert`): no department may post them."""
        return frozenset(step.type for rule in self.rules for step in rule.then
                         if isinstance(step, Derive))

    @property
    def reads_verdicts(self) -> bool:
        """Whether a rule reacts to the policy gate's verdicts (a decision then runs in
        rounds, see app.decisions.decision)."""
        return VERDICT_TYPE in self.read_types

    @functools.cached_property
    def requirements(self) -> dict[str, tuple[str, ...]]:
        """Action type -> the action types that must be dispatched before it."""
        required: dict[str, tuple[str, ...]] = {}
        for rule in self.rules:
            for step in rule.then:
                if isinstance(step, Propose) and step.requires:
                    required[step.action] = tuple(dict.fromkeys(
                        (*required.get(step.action, ()), *step.requires)))
        return required

    @functools.cached_property
    def read_types(self) -> frozenset[str]:
        """The fact types the rules' conditions name."""
        return frozenset(fact_type for rule in self.rules
                         for pattern in (*rule.when, *rule.unless)
                         for fact_type in pattern.fact_types or ())

