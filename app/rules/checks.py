"""What one rule must be: the checks a `Checker` makes on a rule's parts as it turns them into
the model, each problem recorded with where in the rule it is.

A `Checker` collects problems (and warnings) for one file, located at the rule and line it is
checking: a rule's name, priority and description, its `when` and `unless` patterns and the
tests in them, the `$alias.field` references they and its `then` make, and its `then` steps
(propose an action, which may require others; assert a derived fact). Decision tables
(`app.rules.table_checks`) and the file as a whole (`app.rules.loader`) are checked by its
subclasses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from app.rules import regex
from app.rules.model import (
    OPERATORS,
    Derive,
    Interpolation,
    Pattern,
    Propose,
    Ref,
    Rule,
    Step,
    Template,
    Test,
)
from app.shared.errors import RuleProblem
from app.shared.schemas import (
    DATA_KEY_PATTERN,
    MAX_DATA_FIELDS,
    MAX_JSON_DEPTH,
    NAME_PATTERN,
    RESERVED_DATA_KEYS,
    RULE_NAME_PATTERN,
    VERDICT_TYPE,
    json_value_problems,
)

MAX_WHEN_ALIASES = 8  # durable_rules joins at most 16 frames per rule
MAX_UNLESS_ALIASES = 8
MAX_FIELD_TESTS = 16
MAX_IN_VALUES = 16
MAX_THEN_STEPS = 32
MAX_PRIORITY = 1000
MAX_REQUIRES = 8

ALIAS_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,31}$"
META_FIELDS = ("type", "department", "id")
RULE_NAME = re.compile(RULE_NAME_PATTERN)
ALIAS = re.compile(ALIAS_PATTERN)
NAME = re.compile(NAME_PATTERN)
DATA_KEY = re.compile(DATA_KEY_PATTERN)
_REF = r"\$(?:\{(?P<a1>[A-Za-z][A-Za-z0-9_]*)\.(?P<f1>[A-Za-z][A-Za-z0-9_-]*)\}" \
       r"|(?P<a2>[A-Za-z][A-Za-z0-9_]*)\.(?P<f2>[A-Za-z][A-Za-z0-9_-]*)|(?P<dollar>\$))"
_REF_TOKEN = re.compile(_REF)


class Checker:
    """Collects one file's problems, each at the rule and line being checked, while it turns
    a rule's parts into the model."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[RuleProblem] = []
        self.at_rule: str | None = None  # the rule being checked, for messages
        self.at_line: int | None = None
        self.warnings: list[RuleProblem] = []  # what decision tables leave open

    def problem(self, where: str, message: str) -> None:
        text = f"{where}: {message}" if where else message
        self.problems.append(RuleProblem(self.file, text, self.at_rule, self.at_line))

    def keys(self, value: Mapping[str, Any], where: str, allowed: tuple[str, ...],
             required: tuple[str, ...] = ()) -> None:
        for key in value:
            if key not in allowed:
                self.problem(where, f"unknown key {key!r} (expected one of: {', '.join(allowed)})")
        for key in required:
            if key not in value:
                self.problem(where, f"missing {key!r}")

    def name(self, value: Any, where: str, pattern: re.Pattern[str], what: str) -> str | None:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            self.problem(where, f"{what} must be a string matching {pattern.pattern}"
                         f" (got {value!r})")
            return None
        return value

    # conditions

    def ref(self, text: str, where: str, aliases: tuple[str, ...]) -> Ref | None:
        token = _REF_TOKEN.fullmatch(text)
        if token is None or token.group("dollar"):
            self.problem(where, f"{text!r} is not a reference; write $alias.field"
                         " (or $$ for a literal '$')")
            return None
        alias = token.group("a1") or token.group("a2")
        field = token.group("f1") or token.group("f2")
        if alias not in aliases:
            known = ", ".join(aliases) or "none"
            self.problem(where, f"{text} refers to {alias!r}, which is not matched before it"
                         f" (available: {known})")
            return None
        self.field_name(field, where)
        return Ref(alias, field)

    def field_name(self, field: Any, where: str) -> bool:
        if field == "subject":
            self.problem(where, "'subject' is not a field: all facts of a decision share it")
            return False
        if field in META_FIELDS:
            return True
        if not isinstance(field, str) or not DATA_KEY.fullmatch(field):
            self.problem(where, f"field {field!r} must be type, department, id or a data field"
                         " name (a letter, then letters, digits, '_' or '-')")
            return False
        return True

    def operand(self, value: Any, where: str, aliases: tuple[str, ...]) -> Any:
        """A scalar to compare with, or a reference. None when invalid."""
        if isinstance(value, str) and value.startswith("$"):
            if value.startswith("$$"):
                return value[1:]
            return self.ref(value, where, aliases)
        if value is None:
            self.problem(where, "null cannot be compared; use {exists: false}")
            return None
        if isinstance(value, list | dict):
            self.problem(where, "compare with a string, number or boolean (use 'in' for a list)")
            return None
        problems = list(json_value_problems(value, where))
        for problem in problems:
            self.problem(problem.name, problem.reason)
        return None if problems else value

    def test(self, field: str, spec: Any, where: str, aliases: tuple[str, ...]) -> Test | None:
        """`field: value` (equality) or `field: {operator: operand}`."""
        if not self.field_name(field, where):
            return None
        if not isinstance(spec, dict):
            value = self.operand(spec, where, aliases)
            return None if value is None else Test(field, "==", value)
        if len(spec) != 1:
            self.problem(where, f"a condition is a value or one operator ({', '.join(OPERATORS)})")
            return None
        [(op, raw)] = spec.items()
        where = f"{where}.{op}"
        if op not in OPERATORS:
            self.problem(where, f"unknown operator {op!r} (one of: {', '.join(OPERATORS)})")
            return None
        if op == "in":
            return self.in_test(field, raw, where)
        if op == "matches":
            return self.matches_test(field, raw, where)
        if op == "exists":
            return self.exists_test(field, raw, where)
        return self.comparison(field, op, raw, where, aliases)

    def in_test(self, field: str, raw: Any, where: str) -> Test | None:
        """`in: [values]`: literal values only (a reference is not one)."""
        if not isinstance(raw, list) or not raw or len(raw) > MAX_IN_VALUES:
            self.problem(where, f"needs a list of 1 to {MAX_IN_VALUES} values")
            return None
        values = [self.operand(item, f"{where}.{i}", ()) for i, item in enumerate(raw)]
        if any(v is None or isinstance(v, Ref) for v in values):
            return None
        return Test(field, "in", tuple(values))

    def matches_test(self, field: str, raw: Any, where: str) -> Test | None:
        try:
            compiled = regex.compile_pattern(raw)
        except ValueError as exc:
            self.problem(where, str(exc))
            return None
        return Test(field, "matches", compiled, pattern=raw)

    def exists_test(self, field: str, raw: Any, where: str) -> Test | None:
        if not isinstance(raw, bool):
            self.problem(where, "needs true or false")
            return None
        return Test(field, "exists", raw)

    def comparison(self, field: str, op: str, raw: Any, where: str,
                   aliases: tuple[str, ...]) -> Test | None:
        """`==`, `!=` and the orderings, which compare only numbers and strings."""
        value = self.operand(raw, where, aliases)
        if value is None:
            return None
        if op in ("<", "<=", ">", ">=") and (
                isinstance(value, bool) or not isinstance(value, int | float | str | Ref)):
            self.problem(where, "needs a number, a string or a reference")
            return None
        return Test(field, op, value)

    def pattern(self, alias: Any, condition: Any, where: str,
                aliases: tuple[str, ...]) -> Pattern | None:
        alias_ok = self.name(alias, where, ALIAS, "an alias")
        where = f"{where}.{alias}"
        if not isinstance(condition, dict):
            self.problem(where, "a condition is a mapping of field to value or operator")
            return None
        if len(condition) > MAX_FIELD_TESTS:
            self.problem(where, f"at most {MAX_FIELD_TESTS} fields per condition")
            return None
        tests = [self.test(field, spec, f"{where}.{field}", aliases)
                 for field, spec in condition.items()]
        if not alias_ok or any(t is None for t in tests):
            return None
        return Pattern(alias, tuple(t for t in tests if t is not None))

    # then

    def template(self, value: Any, where: str, aliases: tuple[str, ...],
                 depth: int = 0) -> Any:
        if depth > MAX_JSON_DEPTH:
            self.problem(where, f"nested deeper than {MAX_JSON_DEPTH} levels")
            return None
        if isinstance(value, str):
            return self.text(value, where, aliases)
        if isinstance(value, list):
            return [self.template(item, f"{where}.{i}", aliases, depth + 1)
                    for i, item in enumerate(value)]
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    self.problem(where, f"keys must be strings (got {key!r})")
            return {key: self.template(item, f"{where}.{key}", aliases, depth + 1)
                    for key, item in value.items()}
        for problem in json_value_problems(value, where):
            self.problem(problem.name, problem.reason)
        return value

    def text(self, text: str, where: str, aliases: tuple[str, ...]) -> Any:
        if "$" not in text:
            return text
        parts: list[str | Ref] = []
        position = 0
        for token in _REF_TOKEN.finditer(text):
            if "$" in text[position:token.start()]:
                break
            parts.append(text[position:token.start()])
            if token.group("dollar"):
                parts.append("$")
            else:
                ref = self.ref(token.group(0), where, aliases)
                if ref is None:
                    return None
                parts.append(ref)
            position = token.end()
        if "$" in text[position:]:
            self.problem(where, f"{text!r}: '$' starts a reference ($alias.field or"
                         " ${alias.field}); write $$ for a literal '$'")
            return None
        parts.append(text[position:])
        parts = [p for p in parts if p != ""]
        if len(parts) == 1 and isinstance(parts[0], Ref):
            return parts[0]
        if all(isinstance(p, str) for p in parts):
            return "".join(p for p in parts if isinstance(p, str))
        return Interpolation(tuple(parts))

    def step(self, item: Any, where: str, aliases: tuple[str, ...]) -> Step | None:
        if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in (
                "propose", "assert"):
            self.problem(where, "each step is {propose: {...}} or {assert: {...}}")
            return None
        [(kind, body)] = item.items()
        where = f"{where}.{kind}"
        if not isinstance(body, dict):
            self.problem(where, "needs a mapping")
            return None
        before = len(self.problems)
        if kind == "propose":
            self.keys(body, where, ("action", "params", "requires"), ("action",))
            action = self.name(body.get("action"), f"{where}.action", NAME, "the action")
            params = body.get("params", {})
            if not isinstance(params, dict):
                self.problem(f"{where}.params", "needs a mapping")
            rendered = self.template(params, f"{where}.params", aliases)
            requires = self.requires(body.get("requires", []), f"{where}.requires", action)
            if len(self.problems) > before or action is None:
                return None
            return Propose(action, Template(rendered), requires)
        self.keys(body, where, ("type", "data"), ("type",))
        fact_type = self.name(body.get("type"), f"{where}.type", NAME, "the fact type")
        if fact_type == VERDICT_TYPE:
            self.problem(f"{where}.type", f"{VERDICT_TYPE} facts are the policy gate's "
                         "verdicts; rules read them but cannot make them")
        data = body.get("data", {})
        if not isinstance(data, dict):
            self.problem(f"{where}.data", "needs a mapping")
            data = {}
        if len(data) > MAX_DATA_FIELDS:
            self.problem(f"{where}.data", f"at most {MAX_DATA_FIELDS} fields")
        for key in data:
            if (not isinstance(key, str) or not DATA_KEY.fullmatch(key)
                    or key in RESERVED_DATA_KEYS):
                self.problem(f"{where}.data.{key}", "not a valid data field name"
                             " (a letter, then letters, digits, '_' or '-'; not id, type,"
                             " department or subject)")
        rendered = self.template(data, f"{where}.data", aliases)
        if len(self.problems) > before or fact_type is None:
            return None
        return Derive(fact_type, Template(rendered))

    def requires(self, raw: Any, where: str, action: str | None) -> tuple[str, ...]:
        """`requires: [action types]`: what must be dispatched before the action may be."""
        if not isinstance(raw, list) or len(raw) > MAX_REQUIRES or not all(
                isinstance(t, str) and NAME.fullmatch(t) for t in raw):
            self.problem(where, f"a list of at most {MAX_REQUIRES} action types")
            return ()
        if len(set(raw)) < len(raw):
            self.problem(where, "names an action type twice")
        if action in raw:
            self.problem(where, f"{action} cannot require itself")
        return tuple(raw)

    # rules

    def rule(self, raw: Any, index: int, line: int | None, seen: set[str]) -> Rule | None:
        self.at_rule, self.at_line = None, line
        if not isinstance(raw, dict):
            self.problem(f"rules.{index}", "a rule is a mapping with name, when and then")
            return None
        name = raw.get("name")
        if isinstance(name, str):
            self.at_rule = name
        before = len(self.problems)
        self.name(name, "name", RULE_NAME, "the rule name")
        if isinstance(name, str):  # a mapping or a list is not a name, and is unhashable
            if name in seen:
                self.problem("name", "another rule has this name")
            seen.add(name)
        self.keys(raw, "", ("name", "description", "priority", "when", "unless", "then"),
                  ("name", "when", "then"))
        priority = raw.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int) or not (
                -MAX_PRIORITY <= priority <= MAX_PRIORITY):
            self.problem("priority", f"must be an integer from {-MAX_PRIORITY} to {MAX_PRIORITY}")
        description = self.description(raw)
        patterns, aliases = self.when(raw)
        negations = self.unless(raw, aliases)
        steps = self.then(raw, aliases)
        if len(self.problems) > before:
            return None
        return Rule(
            name=str(name), index=index, priority=priority, line=line, description=description,
            when=tuple(p for p in patterns if p is not None),
            unless=tuple(p for p in negations if p is not None),
            then=tuple(s for s in steps if s is not None),
        )

    def description(self, raw: Mapping[str, Any]) -> str:
        description = raw.get("description", "")
        if not isinstance(description, str):
            self.problem("description", "must be a string")
            return ""
        return description

    def when(self, raw: Mapping[str, Any]) -> tuple[list[Pattern | None], tuple[str, ...]]:
        """A rule's `when` patterns, and its aliases: each pattern may refer to the aliases
        matched before it."""
        when = raw.get("when")
        patterns: list[Pattern | None] = []
        aliases: tuple[str, ...] = ()
        if not isinstance(when, dict) or not when:
            if "when" in raw:
                self.problem("when", "needs at least one alias: condition")
        elif len(when) > MAX_WHEN_ALIASES:
            self.problem("when", f"at most {MAX_WHEN_ALIASES} aliases (each is a join)")
        else:
            for alias, condition in when.items():
                patterns.append(self.pattern(alias, condition, "when", aliases))
                aliases += (str(alias),)
        return patterns, aliases

    def unless(self, raw: Mapping[str, Any], aliases: tuple[str, ...]) -> list[Pattern | None]:
        """A rule's `unless` patterns: new aliases, each referring to those of `when`."""
        unless = raw.get("unless", {})
        negations: list[Pattern | None] = []
        if not isinstance(unless, dict):
            self.problem("unless", "needs a mapping of alias: condition")
        elif len(unless) > MAX_UNLESS_ALIASES:
            self.problem("unless", f"at most {MAX_UNLESS_ALIASES} aliases")
        else:
            for alias, condition in unless.items():
                if alias in aliases:
                    self.problem(f"unless.{alias}", "this alias is already used in when")
                negations.append(self.pattern(alias, condition, "unless", aliases))
        return negations

    def then(self, raw: Mapping[str, Any], aliases: tuple[str, ...]) -> list[Step | None]:
        then = raw.get("then")
        if not isinstance(then, list) or not then or len(then) > MAX_THEN_STEPS:
            if "then" in raw:
                self.problem("then", f"needs a list of 1 to {MAX_THEN_STEPS} steps")
            return []
        return [self.step(item, f"then.{i}", aliases) for i, item in enumerate(then)]
