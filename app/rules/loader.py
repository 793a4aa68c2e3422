"""Rule files in, validated `Ruleset`s out, or every problem with its file, line and rule.

Rule files are data, read as `app.shared.documents` reads what others write (no YAML aliases,
duplicate keys or implicit dates). Nothing in a rule file can name Python code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from app.rules import regex, tables
from app.rules.model import (
    OPERATORS,
    VERDICT_FIELDS,
    Derive,
    FactType,
    Interpolation,
    Pattern,
    Propose,
    Ref,
    Rule,
    Ruleset,
    Step,
    Template,
    Test,
)
from app.shared.documents import compose_yaml, construct_yaml, load_json
from app.shared.errors import RuleProblem, RulesetInvalid
from app.shared.schemas import (
    DATA_KEY_PATTERN,
    DERIVED_DEPARTMENT,
    MAX_DATA_FIELDS,
    MAX_JSON_DEPTH,
    NAME_PATTERN,
    RESERVED_DATA_KEYS,
    RESERVED_DEPARTMENTS,
    RULE_NAME_PATTERN,
    VERDICT_TYPE,
    json_value_problems,
)

RULE_FILE_SUFFIXES = (".yaml", ".yml", ".json")
MAX_RULE_FILE_BYTES = 1_000_000
MAX_RULES = 500
MAX_WHEN_ALIASES = 8  # durable_rules joins at most 16 frames per rule
MAX_UNLESS_ALIASES = 8
MAX_FIELD_TESTS = 16
MAX_IN_VALUES = 16
MAX_THEN_STEPS = 32
MAX_PRIORITY = 1000
MAX_REQUIRES = 8

ALIAS_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,31}$"
META_FIELDS = ("type", "department", "id")
_RULE_NAME = re.compile(RULE_NAME_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)
_NAME = re.compile(NAME_PATTERN)
_DATA_KEY = re.compile(DATA_KEY_PATTERN)
_REF = r"\$(?:\{(?P<a1>[A-Za-z][A-Za-z0-9_]*)\.(?P<f1>[A-Za-z][A-Za-z0-9_-]*)\}" \
       r"|(?P<a2>[A-Za-z][A-Za-z0-9_]*)\.(?P<f2>[A-Za-z][A-Za-z0-9_-]*)|(?P<dollar>\$))"
_REF_TOKEN = re.compile(_REF)


def version_of(source: str) -> str:
    """A ruleset's version: the content hash of its source."""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


# --- reading ---------------------------------------------------------------------------


@dataclass
class _Lines:
    """Where things start in a YAML rule file (JSON files have no such map)."""

    rules: list[int] = field(default_factory=list)  # per rule, in order
    facts: dict[str, int] = field(default_factory=dict)  # fact type -> line
    rows: dict[int, list[int]] = field(default_factory=dict)  # a table's position -> its rows


def _lines_yaml(node: Any) -> _Lines:
    lines = _Lines()
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == "rules" and isinstance(value, yaml.SequenceNode):
                lines.rules = [item.start_mark.line + 1 for item in value.value]
                lines.rows = {position: [row.start_mark.line + 1 for row in rows.value]
                              for position, item in enumerate(value.value)
                              if isinstance(item, yaml.MappingNode)
                              for name, rows in item.value
                              if name.value == "rows" and isinstance(rows, yaml.SequenceNode)}
            elif key.value == "facts" and isinstance(value, yaml.MappingNode):
                lines.facts = {str(k.value): k.start_mark.line + 1 for k, _ in value.value}
    return lines



def yaml_problem(file: str, exc: Exception) -> RuleProblem:
    """What is wrong with a YAML text, and on which line when the parser knows."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        reason = " ".join(part for part in (exc.context, exc.problem) if part)
        return RuleProblem(file, f"not valid YAML: {reason}",
                           line=mark.line + 1 if mark else None)
    return RuleProblem(file, f"not valid YAML: {exc}")


def _parse(source: str, file: str) -> tuple[Any, _Lines]:
    """The document and where its parts start (for YAML), or RulesetInvalid."""
    if file.endswith(".json"):
        try:
            document = load_json(source)
        except json.JSONDecodeError as exc:
            raise RulesetInvalid([RuleProblem(file, f"not valid JSON: {exc.msg}",
                                              line=exc.lineno)]) from exc
        except (ValueError, RecursionError) as exc:
            raise RulesetInvalid([RuleProblem(file, f"not valid JSON: {exc}")]) from exc
        return document, _Lines()
    try:
        node = compose_yaml(source)
        document = construct_yaml(node)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise RulesetInvalid([yaml_problem(file, exc)]) from exc
    return document, _lines_yaml(node)


# --- validating ------------------------------------------------------------------------


class _Checker:
    """Collects problems while it turns a parsed document into the model."""

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
        if not isinstance(field, str) or not _DATA_KEY.fullmatch(field):
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
        alias_ok = self.name(alias, where, _ALIAS, "an alias")
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
            action = self.name(body.get("action"), f"{where}.action", _NAME, "the action")
            params = body.get("params", {})
            if not isinstance(params, dict):
                self.problem(f"{where}.params", "needs a mapping")
            rendered = self.template(params, f"{where}.params", aliases)
            requires = self.requires(body.get("requires", []), f"{where}.requires", action)
            if len(self.problems) > before or action is None:
                return None
            return Propose(action, Template(rendered), requires)
        self.keys(body, where, ("type", "data"), ("type",))
        fact_type = self.name(body.get("type"), f"{where}.type", _NAME, "the fact type")
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
            if (not isinstance(key, str) or not _DATA_KEY.fullmatch(key)
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
                isinstance(t, str) and _NAME.fullmatch(t) for t in raw):
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
        self.name(name, "name", _RULE_NAME, "the rule name")
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

    # decision tables (app.rules.tables): each row one rule, checked as rules are

    def table(self, raw: dict[str, Any], index: int, line: int | None, row_lines: list[int],
              seen: set[str]) -> list[Rule]:
        """The rules of a decision table's rows (those with an output), or none when it has
        a problem: every one is recorded, with the table's or the row's line."""
        self.at_rule, self.at_line = None, line
        before = len(self.problems)
        name = self.name(raw.get("table"), "table", _RULE_NAME, "the table name")
        self.at_rule = f"table {name}" if name else None
        if name is not None and f"table {name}" in seen:
            self.problem("table", "another table has this name")
        seen.add(f"table {name}")  # (no rule name holds a space)
        self.keys(raw, "", ("table", "description", "hit_policy", "priority", "when", "unless",
                            "inputs", "outputs", "rows"), ("table", "when", "inputs", "rows"))
        hit_policy = raw.get("hit_policy", "unique")
        if hit_policy not in tables.HIT_POLICIES:
            self.problem("hit_policy", f"one of {', '.join(tables.HIT_POLICIES)} (got "
                         f"{hit_policy!r})")
        self.description(raw)  # (each row's rule gets it)
        when = raw.get("when")
        aliases = tuple(when) if isinstance(when, dict) else ()
        columns = self.columns(raw.get("inputs"), aliases)
        outputs = self.outputs(raw.get("outputs", {}), columns)
        rows = raw.get("rows")
        if not isinstance(rows, list) or not rows or len(rows) > tables.MAX_TABLE_ROWS:
            self.problem("rows", f"a list of 1 to {tables.MAX_TABLE_ROWS} rows (got "
                         f"{len(rows) if isinstance(rows, list) else type(rows).__name__})")
            return []
        if len(self.problems) > before or name is None:
            return []
        columns = _numeric_columns(columns, rows)
        cells = self.table_cells(rows, columns, outputs, row_lines, line)
        if len(self.problems) > before:
            return []
        self.findings(name, hit_policy, columns, cells, row_lines, line)
        if len(self.problems) > before:
            return []
        return self.row_rules(raw, name, hit_policy, columns, cells, rows, index, row_lines,
                              seen)

    def outputs(self, outputs: Any, columns: list[tables.Column]) -> dict[str, Any]:
        """A table's output columns, by name (none after a problem with their shape)."""
        if (not isinstance(outputs, dict) or not outputs
                or len(outputs) > tables.MAX_OUTPUT_COLUMNS
                or not all(isinstance(k, str) and _ALIAS.fullmatch(k) for k in outputs)):
            self.problem("outputs", f"a mapping of 1 to {tables.MAX_OUTPUT_COLUMNS} output "
                         "columns (names like aliases), each {propose: {...}} or {assert: {...}}")
            return {}
        for column in outputs:
            if column in (c.name for c in columns) or column == "rule":
                self.problem(f"outputs.{column}", "names an input column too (or 'rule')")
        return outputs

    def table_cells(self, rows: list[Any], columns: list[tables.Column], outputs: dict[str, Any],
                    row_lines: list[int], line: int | None) -> list[list[tables.Cell]]:
        """Every row's input cells, each row's problems at its line."""
        cells = []
        for number, row in enumerate(rows, start=1):
            self.at_line = _row_line(row_lines, number, line)
            cells.append(self.row_cells(row, f"rows.{number}", columns, outputs))
        return cells

    def findings(self, name: str, hit_policy: str, columns: list[tables.Column],
                 cells: list[list[tables.Cell]], row_lines: list[int], line: int | None) -> None:
        """What `tables.check_table` finds: its errors as problems, its warnings as warnings,
        each at the line of the first row it is about (or the table's)."""
        self.at_rule, self.at_line = None, line  # each finding names its table
        try:
            findings = tables.check_table(name, hit_policy, columns, cells, row_lines)
        except tables.CellError as exc:
            self.problem("", str(exc))
            return
        for finding in findings:
            at = _row_line(row_lines, finding.rows[0], line) if finding.rows else line
            if finding.error:
                self.at_line = at
                self.problem("", finding.message)
            else:
                self.warnings.append(RuleProblem(self.file, finding.message, None, at))

    def columns(self, raw: Any, aliases: tuple[str, ...]) -> list[tables.Column]:
        """The input columns: `name: alias.field`, or `name: {field: alias.field, values:
        [...]}` (enumerated) or `{field: ..., min: n, max: n}` (numeric, bounded)."""
        if not isinstance(raw, dict) or not raw or len(raw) > tables.MAX_INPUT_COLUMNS:
            self.problem("inputs", f"a mapping of 1 to {tables.MAX_INPUT_COLUMNS} input columns,"
                         " each name: alias.field")
            return []
        columns = []
        for name, spec in raw.items():
            where = f"inputs.{name}"
            if not isinstance(name, str) or not _ALIAS.fullmatch(name) or name == "rule":
                self.problem(where, "a column name is like an alias (a letter, then letters, "
                             "digits or '_'), not 'rule'")
                continue
            spec = {"field": spec} if isinstance(spec, str) else spec
            if not isinstance(spec, dict):
                self.problem(where, "alias.field, or {field: alias.field, values: [...]} or "
                             "{field: alias.field, min: n, max: n}")
                continue
            self.keys(spec, where, ("field", "values", "min", "max"), ("field",))
            path = spec.get("field")
            alias, _, field_name = path.partition(".") if isinstance(path, str) else ("", "", "")
            if alias not in aliases:
                self.problem(f"{where}.field", f"{path!r} must be alias.field with an alias of "
                             f"the table's when ({', '.join(aliases) or 'none'})")
                continue
            if not self.field_name(field_name, f"{where}.field"):
                continue
            column = self.column(name, alias, field_name, spec, where)
            if column is not None:
                columns.append(column)
        return columns

    def column(self, name: str, alias: str, field_name: str, spec: dict[str, Any],
               where: str) -> tables.Column | None:
        values = spec.get("values")
        if values is not None:
            if ("min" in spec or "max" in spec or not isinstance(values, list) or not values
                    or len(values) > tables.MAX_COLUMN_VALUES):
                self.problem(f"{where}.values", f"a list of 1 to {tables.MAX_COLUMN_VALUES} "
                             "values (and no min or max)")
                return None
            try:
                scalars = tuple(dict.fromkeys(tables.scalar(v) for v in values))
            except tables.CellError as exc:
                self.problem(f"{where}.values", str(exc))
                return None
            return tables.Column(name, alias, field_name, "enum", values=scalars)
        if "min" in spec or "max" in spec:
            bounds = []
            for key, default in (("min", -math.inf), ("max", math.inf)):
                bound = spec.get(key, default)
                if isinstance(bound, bool) or not isinstance(bound, int | float) or (
                        key in spec and not math.isfinite(bound)):
                    self.problem(f"{where}.{key}", "must be a finite number")
                    return None
                bounds.append(bound)
            if bounds[0] > bounds[1]:
                self.problem(where, "min is more than max")
                return None
            return tables.Column(name, alias, field_name, "number", bounds=tables.Interval(
                bounds[0], math.isfinite(bounds[0]), bounds[1], math.isfinite(bounds[1])))
        return tables.Column(name, alias, field_name, "value")

    def row_cells(self, row: Any, where: str, columns: list[tables.Column],
                  outputs: dict[str, Any]) -> list[tables.Cell]:
        """One row's input cells (a column none declares is numeric when a cell of it is a
        comparison or a range)."""
        if not isinstance(row, dict):
            self.problem(where, "a row is a mapping of column name to cell")
            return []
        self.keys(row, where, (*(c.name for c in columns), *outputs, "rule"))
        cells = []
        for column in columns:
            raw = row.get(column.name, tables.ANY)
            try:
                cells.append(tables.parse_cell(raw, column, MAX_IN_VALUES))
            except tables.CellError as exc:
                self.problem(f"{where}.{column.name}", str(exc))
                cells.append(tables.Cell(tables.ANY, (), column.anything()))
        return cells

    def row_rules(self, raw: dict[str, Any], name: str, hit_policy: str,
                  columns: list[tables.Column], cells: list[list[tables.Cell]],
                  rows: list[dict[str, Any]], index: int, row_lines: list[int],
                  seen: set[str]) -> list[Rule]:
        """Each row with an output as a rule: the table's `when` (and `unless`) with the
        row's cells as tests, and its outputs as `then`, through `rule` like any other."""
        compiled: list[Rule] = []
        earlier: list[tuple[Pattern, ...]] = []
        for number, (row, row_cells) in enumerate(zip(rows, cells, strict=True), start=1):
            line = _row_line(row_lines, number, None)
            self.at_line = line
            guard = self.cell_patterns(columns, row_cells)
            then = self.row_outputs(row, raw.get("outputs", {}), f"rows.{number}")
            if then is None or not then:
                if hit_policy == "first":
                    earlier.append(guard)
                continue
            rule_name = row.get("rule", f"{name}_row{number}")
            body = {"name": rule_name, "priority": raw.get("priority", 0),
                    "when": raw["when"], "then": then,
                    **({"unless": raw["unless"]} if "unless" in raw else {}),
                    **({"description": raw["description"]} if "description" in raw else {})}
            rule = self.rule(body, index + len(compiled), line, seen)
            if rule is None:
                continue
            by_alias = {p.alias: p for p in guard}
            when = []
            for pattern in rule.when:
                extra = by_alias[pattern.alias].tests if pattern.alias in by_alias else ()
                if len(pattern.tests) + len(extra) > MAX_FIELD_TESTS:
                    self.problem(f"when.{pattern.alias}", f"with the row's cells, more than "
                                 f"{MAX_FIELD_TESTS} tests on one alias")
                when.append(Pattern(pattern.alias, (*pattern.tests, *extra)))
            compiled.append(dataclasses.replace(
                rule, when=tuple(when), table=name, row=number,
                excludes=tuple(earlier) if hit_policy == "first" else ()))
            if hit_policy == "first":
                earlier.append(guard)
        self.at_rule, self.at_line = None, None
        return compiled

    def cell_patterns(self, columns: list[tables.Column],
                      cells: list[tables.Cell]) -> tuple[Pattern, ...]:
        """A row's cells as tests, grouped by the alias whose field each column reads."""
        tests: dict[str, list[Test]] = {}
        for column, cell in zip(columns, cells, strict=True):
            for op, value in cell.tests:
                tests.setdefault(column.alias, []).append(Test(column.field, op, value))
        return tuple(Pattern(alias, tuple(found)) for alias, found in tests.items())

    def row_outputs(self, row: dict[str, Any], outputs: dict[str, Any],
                    where: str) -> list[dict[str, Any]] | None:
        """The row's steps: each output column it takes (true, or a mapping of params or
        data to add) as written under outputs. None after a problem."""
        steps = []
        for column, spec in outputs.items():
            cell = row.get(column, tables.ANY)
            if cell in (tables.ANY, None, False):
                continue
            if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in (
                    "propose", "assert") or not isinstance(next(iter(spec.values())), dict):
                self.problem(f"outputs.{column}", "each output column is {propose: {...}} or "
                             "{assert: {...}}")
                return None
            [(kind, body)] = spec.items()
            if cell is True:
                steps.append(spec)
                continue
            if not isinstance(cell, dict):
                self.problem(f"{where}.{column}", "an output cell is '-' (not taken), true, or "
                             "a mapping of params (propose) or data (assert) to add")
                return None
            key = "params" if kind == "propose" else "data"
            base = body.get(key, {})
            if not isinstance(base, dict):
                self.problem(f"outputs.{column}.{kind}.{key}", "needs a mapping")
                return None
            steps.append({kind: {**body, key: {**base, **cell}}})
        return steps

    def ruleset(self, document: Any, source: str, lines: _Lines) -> Ruleset | None:
        if not isinstance(document, dict):
            self.problem("", "a rule file is a mapping with ruleset, description and rules")
            return None
        self.keys(document, "", ("ruleset", "description", "triggers", "facts", "rules"),
                  ("ruleset", "rules"))
        name = self.name(document.get("ruleset"), "ruleset", _NAME, "the ruleset name")
        description = self.description(document)
        triggers = document.get("triggers", [])
        if not isinstance(triggers, list) or not all(
                isinstance(t, str) and _NAME.fullmatch(t) for t in triggers):
            self.problem("triggers", "must be a list of fact types")
            triggers = []
        rules = self.rules(document, lines)
        fact_types = self.fact_types(document.get("facts"), lines.facts)
        if self.problems or name is None:
            return None
        ruleset = Ruleset(name=name, version=version_of(source), source=source, file=self.file,
                          rules=tuple(rules), description=description, triggers=tuple(triggers),
                          fact_types=fact_types or {})
        warnings = self.warnings + self.ownership(ruleset, declared=fact_types is not None,
                                                  lines=lines)
        self.dependencies(ruleset)
        warnings += field_warnings(ruleset)
        if self.problems:
            return None
        return dataclasses.replace(ruleset, warnings=tuple(warnings))

    def rules(self, document: Mapping[str, Any], lines: _Lines) -> list[Rule]:
        """The rules of the file's `rules:`, a decision table's rows each one."""
        raw_rules = document.get("rules")
        if not isinstance(raw_rules, list) or not raw_rules:
            if "rules" in document:
                self.problem("rules", "needs a list of at least one rule")
            return []
        if len(raw_rules) > MAX_RULES:
            self.problem("rules", f"at most {MAX_RULES} rules per file")
            return []
        rules: list[Rule] = []
        seen: set[str] = set()
        for position, raw in enumerate(raw_rules):
            line = lines.rules[position] if position < len(lines.rules) else None
            if isinstance(raw, dict) and "table" in raw:
                rules.extend(self.table(raw, len(rules), line,
                                        lines.rows.get(position, []), seen))
                continue
            rule = self.rule(raw, len(rules), line, seen)
            if rule is not None:
                rules.append(rule)
        self.at_rule, self.at_line = None, None
        if len(rules) > MAX_RULES:
            self.problem("rules", f"at most {MAX_RULES} rules per file (a table's rows "
                         f"count as rules; this file has {len(rules)})")
        return rules

    # facts: who may post each fact type

    def fact_types(self, raw: Any, lines: Mapping[str, int]) -> dict[str, FactType] | None:
        """The `facts:` section (None when the file has none)."""
        if raw is None:
            return None
        if not isinstance(raw, dict) or not raw:
            self.problem("facts", "a mapping of fact type to {owners: [departments]}")
            return {}
        declared: dict[str, FactType] = {}
        for fact_type, spec in raw.items():
            self.at_line = lines.get(str(fact_type))
            where = f"facts.{fact_type}"
            if self.name(fact_type, "facts", _NAME, "a fact type") is None:
                continue
            if not isinstance(spec, dict):
                self.problem(where, "needs a mapping with owners")
                continue
            if fact_type == VERDICT_TYPE:
                self.problem(where, f"{VERDICT_TYPE} facts are the policy gate's verdicts; "
                             "no department owns them")
                continue
            self.keys(spec, where, ("owners", "description", "fields"), ("owners",))
            owners = spec.get("owners")
            if not isinstance(owners, list) or not owners or not all(
                    isinstance(o, str) and _NAME.fullmatch(o) for o in owners):
                self.problem(f"{where}.owners", "needs a list of one or more departments")
                continue
            reserved = [o for o in owners if o in RESERVED_DEPARTMENTS]
            if reserved:
                whose = "derived facts" if reserved[0] == DERIVED_DEPARTMENT else "verdicts"
                self.problem(f"{where}.owners", f"{reserved[0]!r} is the department of "
                             f"{whose}; no one posts under it")
                continue
            description = spec.get("description", "")
            if not isinstance(description, str):
                self.problem(f"{where}.description", "must be a string")
                continue
            fields = spec.get("fields")
            if fields is not None and (not isinstance(fields, list) or not all(
                    isinstance(f, str) and _DATA_KEY.fullmatch(f)
                    and f not in RESERVED_DATA_KEYS for f in fields)
                    or len(fields) > MAX_DATA_FIELDS):
                self.problem(f"{where}.fields", f"a list of at most {MAX_DATA_FIELDS} data field "
                             "names (a letter, then letters, digits, '_' or '-'; not id, type, "
                             "department or subject)")
                continue
            declared[fact_type] = FactType(fact_type, tuple(dict.fromkeys(owners)), description,
                                           None if fields is None else tuple(fields))
        self.at_line = None
        return declared

    def ownership(self, ruleset: Ruleset, *, declared: bool,
                  lines: _Lines) -> list[RuleProblem]:
        """Every fact type the rules read must be derived by them or owned by departments:
        a problem for a file with a `facts:` section, a warning (anyone may post it) for one
        without."""
        derived = ruleset.derived_types
        for fact_type in sorted(derived & ruleset.fact_types.keys()):
            deriving = next(rule.name for rule in ruleset.rules if any(
                isinstance(step, Derive) and step.type == fact_type for step in rule.then))
            self.at_line = lines.facts.get(fact_type)
            self.problem(f"facts.{fact_type}", f"rule {deriving} derives this type, and derived "
                         "facts cannot be posted: remove it from facts")
        self.at_line = None
        warnings = []
        unowned = ((ruleset.read_types | set(ruleset.triggers)) - derived
                   - ruleset.fact_types.keys() - {VERDICT_TYPE})
        for rule in ruleset.rules:
            for pattern in (*rule.when, *rule.unless):
                if pattern.fact_types is not None:
                    continue
                message = (f"alias {pattern.alias} does not name its fact type (type: x, or "
                           "type: {in: [x, y]}), so it could match a type no department "
                           "owns: ownership is declared per type")
                if declared:
                    self.at_rule, self.at_line = rule.name, rule.line
                    self.problem("", message)
                else:
                    warnings.append(RuleProblem(self.file, message, rule.name, rule.line))
        for fact_type in sorted(unowned):
            reader = next((rule for rule in ruleset.rules if any(
                fact_type in (pattern.fact_types or ())
                for pattern in (*rule.when, *rule.unless))), None)
            where = (RuleProblem(self.file, "", reader.name, reader.line) if reader is not None
                     else RuleProblem(self.file, "", None, None))
            if declared:
                self.at_rule, self.at_line = where.rule, where.line
                self.problem("", f"reads fact type {fact_type!r}, which no department owns: "
                             "declare it under facts: with its owners")
            else:
                warnings.append(dataclasses.replace(where, message=(
                    f"no department owns fact type {fact_type!r}: any department may post it "
                    "(declare its owners under facts:)")))
        self.at_rule, self.at_line = None, None
        return warnings


    def dependencies(self, ruleset: Ruleset) -> None:
        """Every action type an action requires is one the file proposes, and no action
        type requires itself through others."""
        requirements = ruleset.requirements
        proposed = {step.action for rule in ruleset.rules for step in rule.then
                    if isinstance(step, Propose)}
        for rule in ruleset.rules:
            self.at_rule, self.at_line = rule.name, rule.line
            for step in rule.then:
                if not isinstance(step, Propose):
                    continue
                for required in step.requires:
                    if required not in proposed:
                        self.problem("requires", f"{step.action} requires {required}, which no "
                                     "rule in this file proposes: it could never be dispatched")
        self.at_rule, self.at_line = None, None
        cycle = _cycle(requirements)
        if cycle:
            self.problem("requires", "action types require each other in a circle, so none "
                         f"could be dispatched: {' -> '.join(cycle)}")


def _row_line(row_lines: list[int], number: int, default: int | None) -> int | None:
    """The line of a table's row `number` (1-based), or `default` where the file gives none
    (JSON has no line map)."""
    return row_lines[number - 1] if number - 1 < len(row_lines) else default


def _numeric_columns(columns: list[tables.Column], rows: list[Any]) -> list[tables.Column]:
    """The columns, each one declared with neither values nor bounds made numeric when a
    cell of it is text that reads as a comparison with a number or a range (`> 5`, `[1..10)`)."""
    return [dataclasses.replace(c, kind="number") if c.kind == "value" and any(
        isinstance(row, dict) and isinstance(row.get(c.name), str)
        and tables.is_numeric_cell(row[c.name]) for row in rows) else c for c in columns]


def _cycle(requirements: Mapping[str, tuple[str, ...]]) -> list[str]:
    """A circle of action types each requiring the next, if there is one."""
    done: set[str] = set()

    def visit(action: str, path: list[str]) -> list[str]:
        if action in path:
            return [*path[path.index(action):], action]
        if action in done:
            return []
        for required in requirements.get(action, ()):
            found = visit(required, [*path, action])
            if found:
                return found
        done.add(action)
        return []

    for action in sorted(requirements):
        found = visit(action, [])
        if found:
            return found
    return []


def _copied(key: str) -> bool:
    """Whether a param is also a field of its verdict fact (app.decisions.decision.verdict_fact)."""
    return key not in VERDICT_FIELDS and key not in RESERVED_DATA_KEYS and bool(
        _DATA_KEY.fullmatch(key))


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


def parse_ruleset(source: str, file: str) -> Ruleset:
    """Validate rule file text (`file` names it in messages and picks YAML or JSON)."""
    if len(source.encode()) > MAX_RULE_FILE_BYTES:
        raise RulesetInvalid([RuleProblem(file, f"larger than {MAX_RULE_FILE_BYTES} bytes")])
    document, lines = _parse(source, file)
    checker = _Checker(file)
    ruleset = checker.ruleset(document, source, lines)
    if ruleset is None:
        raise RulesetInvalid(checker.problems)
    return ruleset


def load_ruleset_file(path: Path) -> Ruleset:
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesetInvalid([RuleProblem(str(path), f"cannot be read: {exc}")]) from exc
    return parse_ruleset(source, str(path))


def rule_files(directory: Path) -> list[Path]:
    """The rule files of a directory, in name order (not recursive)."""
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.suffix in RULE_FILE_SUFFIXES and not p.name.startswith(".")
                  and not is_scenario_file(p))


def is_scenario_file(path: Path) -> bool:
    """`<name>_test.yaml` (or .yml, .json) beside the rule files holds scenarios
    (`decision-service rules test`), not rules."""
    return path.suffix in RULE_FILE_SUFFIXES and path.stem.endswith("_test")
