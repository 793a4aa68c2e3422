"""Rule files in, validated `Ruleset`s out, or every problem with its file, line and rule.

Rule files are data, read as `app.shared.documents` reads what others write (no YAML aliases,
duplicate keys or implicit dates). Nothing in a rule file can name Python code.

This module reads a file (YAML or JSON, within its size), locates its rules, tables' rows and
fact types by line, and checks the file as a whole: its top level, the `facts:` section,
who owns each fact type the rules read, and which action types require which. A rule's parts
are checked in `app.rules.checks`, decision tables in `app.rules.table_checks`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from app.rules.checks import DATA_KEY, NAME
from app.rules.fields import field_warnings
from app.rules.model import Derive, FactType, Propose, Rule, Ruleset
from app.rules.table_checks import TableChecker
from app.shared.documents import compose_yaml, construct_yaml, load_json
from app.shared.errors import RuleProblem, RulesetInvalid
from app.shared.schemas import (
    DERIVED_DEPARTMENT,
    MAX_DATA_FIELDS,
    RESERVED_DATA_KEYS,
    RESERVED_DEPARTMENTS,
    VERDICT_TYPE,
)

RULE_FILE_SUFFIXES = (".yaml", ".yml", ".json")
MAX_RULE_FILE_BYTES = 1_000_000
MAX_RULES = 500


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


class _Checker(TableChecker):
    """Collects problems while it turns a parsed document into the model: the file as a
    whole here (top level, rules, facts, ownership, requires), its rules and tables in the
    classes it extends (`checks.Checker`, `table_checks.TableChecker`)."""

    def ruleset(self, document: Any, source: str, lines: _Lines) -> Ruleset | None:
        if not isinstance(document, dict):
            self.problem("", "a rule file is a mapping with ruleset, description and rules")
            return None
        self.keys(document, "", ("ruleset", "description", "triggers", "facts", "rules"),
                  ("ruleset", "rules"))
        name = self.name(document.get("ruleset"), "ruleset", NAME, "the ruleset name")
        description = self.description(document)
        triggers = document.get("triggers", [])
        if not isinstance(triggers, list) or not all(
                isinstance(t, str) and NAME.fullmatch(t) for t in triggers):
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
            if self.name(fact_type, "facts", NAME, "a fact type") is None:
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
                    isinstance(o, str) and NAME.fullmatch(o) for o in owners):
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
                    isinstance(f, str) and DATA_KEY.fullmatch(f)
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
    except OSError as exc:  # its reason, not its absolute path (as policy files say)
        raise RulesetInvalid([RuleProblem(str(path), f"cannot be read: {exc.strerror or exc}")]
                             ) from exc
    except UnicodeDecodeError as exc:
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
