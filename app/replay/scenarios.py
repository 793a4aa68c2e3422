"""Scenario tests for rulesets: given these facts, these rules fire, propose these actions,
derive these facts, and (optionally, with the policies) get these verdicts.

Rule authors keep them beside the rule files, as compliance keeps `_test.rego` beside the
policies: `rules/procurement_test.yaml` holds the scenarios of `rules/procurement.yaml`
(or of the ruleset its `ruleset:` names). `decision-service rules test` runs them as
`opa test` runs Rego tests; a what-if with a candidate ruleset runs the candidate's.

A scenario runs the code a decision runs: the rules alone (`app.rules.evaluate`), or, when
it expects verdicts or says `policies: true`, the whole decision (`make_decision`: the
rules in rounds, every proposed action through the policy gate, as a dry run), so a rule
that reacts to a verdict can be tested too.

    ruleset: procurement           # optional: else the rule file named like this one
    scenarios:
      - name: a small order is approved
        facts:
          - {type: purchase_request, data: {request_id: PR-1, amount: 500}}   # department:
        expect:                       # the type's first owner under facts:, unless given
          fired: [approve_purchase]
          not_fired: [budget_shortfall]
          actions: [{type: issue_purchase_order, params: {request_id: PR-1}}]  # params: a subset
          not_proposed: [notify_finance]
          derived: [{type: approval, data: {request_id: PR-1}}]
          verdicts: [{action: issue_purchase_order, outcome: allow}]

Files are validated (marshmallow) and bounded; a malformed one is reported with its file
and line (ScenarioInvalid).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from app.decisions.decision import WITHDRAWN, Evaluator, make_decision
from app.policy.access import Caller
from app.policy.gate import PolicyGate
from app.rules import Ruleset
from app.rules.loader import yaml_problem
from app.shared.clock import rfc3339, system_clock
from app.shared.documents import compose_yaml, construct_yaml, load_json
from app.shared.errors import DecisionServiceError, RuleProblem, ScenarioInvalid
from app.shared.schemas import (
    _NAME_RULE,
    _SUBJECT_RULE,
    DEFAULT_MAX_BATCH,
    FACT_ID_PATTERN,
    NAME_PATTERN,
    RULE_NAME_PATTERN,
    SUBJECT_PATTERN,
    Department,
    FactData,
    Identifier,
    invalid_params,
)

MAX_SCENARIO_FILE_BYTES = 1_000_000
MAX_SCENARIOS = 500  # per file
MAX_EXPECTATIONS = 100  # per list of expectations
PASS, FAIL, ERROR = "PASS", "FAIL", "ERROR"
OUTCOMES = ("allow", "deny", "hold")
_RULE_RULE = "a rule name: a letter, then letters, digits or _ (at most 64)"


# --- the file format ---------------------------------------------------------------------


def _rules() -> fields.List:
    return fields.List(Identifier(RULE_NAME_PATTERN, rule=_RULE_RULE),
                       validate=validate.Length(max=MAX_EXPECTATIONS), load_default=list)


def _types() -> fields.List:
    return fields.List(Identifier(NAME_PATTERN, rule=_NAME_RULE),
                       validate=validate.Length(max=MAX_EXPECTATIONS), load_default=list)


class ScenarioFactSchema(Schema):
    type = Identifier(NAME_PATTERN, rule=_NAME_RULE, required=True)
    department = Department()  # default: the first owner of its type under facts:
    id = Identifier(FACT_ID_PATTERN, rule=_SUBJECT_RULE)
    data = FactData(load_default=dict)


class ExpectedActionSchema(Schema):
    type = Identifier(NAME_PATTERN, rule=_NAME_RULE, required=True)
    params = fields.Dict(keys=fields.String(), load_default=dict,
                         metadata={"description": "a subset of its params"})


class ExpectedFactSchema(Schema):
    type = Identifier(NAME_PATTERN, rule=_NAME_RULE, required=True)
    data = fields.Dict(keys=fields.String(), load_default=dict,
                       metadata={"description": "a subset of its data"})


class ExpectedVerdictSchema(Schema):
    action = Identifier(NAME_PATTERN, rule=_NAME_RULE, required=True)
    params = fields.Dict(keys=fields.String(), load_default=dict)
    outcome = fields.String(validate=validate.OneOf(OUTCOMES))
    allow = fields.Boolean(truthy={True}, falsy={False})
    reasons = fields.List(fields.String(validate=validate.Length(min=1, max=1000)),
                          validate=validate.Length(max=MAX_EXPECTATIONS), metadata={
                              "description": "each text appears in one of its reasons"})


class ExpectSchema(Schema):
    fired = _rules()
    not_fired = _rules()
    actions = fields.List(fields.Nested(ExpectedActionSchema), load_default=list,
                          validate=validate.Length(max=MAX_EXPECTATIONS))
    not_proposed = _types()
    derived = fields.List(fields.Nested(ExpectedFactSchema), load_default=list,
                          validate=validate.Length(max=MAX_EXPECTATIONS))
    not_derived = _types()
    verdicts = fields.List(fields.Nested(ExpectedVerdictSchema),
                           validate=validate.Length(max=MAX_EXPECTATIONS))

    @validates_schema
    def _something(self, data: Mapping[str, Any], **_: Any) -> None:
        if not any(data.get(key) for key in self.fields):
            raise ValidationError("expects nothing: name rules fired or not fired, actions, "
                                  "derived facts or verdicts")


class ScenarioSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    description = fields.String(validate=validate.Length(max=2000))
    subject = Identifier(SUBJECT_PATTERN, rule=_SUBJECT_RULE, load_default="scenario")
    created_at = fields.AwareDateTime(format="iso", metadata={
        "description": "the decision's time, which policies read (default: now)"})
    policies = fields.Boolean(truthy={True}, falsy={False}, metadata={
        "description": "run as a whole decision, through the policy gate (default: when "
                       "verdicts are expected)"})
    facts = fields.List(fields.Nested(ScenarioFactSchema), required=True,
                        validate=validate.Length(max=int(DEFAULT_MAX_BATCH)))
    expect = fields.Nested(ExpectSchema, required=True)


class ScenarioFileSchema(Schema):
    ruleset = Identifier(NAME_PATTERN, rule=_NAME_RULE)
    scenarios = fields.List(fields.Nested(ScenarioSchema), required=True,
                            validate=validate.Length(min=1, max=MAX_SCENARIOS))


@dataclass(frozen=True)
class Scenario:
    name: str
    line: int | None
    subject: str
    facts: list[dict[str, Any]]  # complete: id, type, department, data
    expect: dict[str, Any]
    policies: bool
    created_at: str | None = None
    error: str | None = None  # why it cannot run (a rule it names that the ruleset lacks)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScenarioFile:
    file: str
    ruleset: str | None
    scenarios: list[Scenario] = field(default_factory=list)


# --- reading -----------------------------------------------------------------------------


def _node_lines(node: Any, path: tuple[Any, ...] = (),
                found: dict[tuple[Any, ...], int] | None = None) -> dict[tuple[Any, ...], int]:
    """Path (keys and list positions) -> line, for every node of a YAML document."""
    found = {} if found is None else found
    if node is None:
        return found
    found[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            found[(*path, key.value)] = key.start_mark.line + 1
            _node_lines(value, (*path, key.value), found)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _node_lines(item, (*path, index), found)
    return found


def _line_of(path: Sequence[Any], lines: Mapping[tuple[Any, ...], int]) -> int | None:
    for end in range(len(path), -1, -1):
        line = lines.get(tuple(path[:end]))
        if line is not None:
            return line
    return None


def _parse(text: str, file: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    if len(text.encode()) > MAX_SCENARIO_FILE_BYTES:
        raise ScenarioInvalid([RuleProblem(file, f"larger than {MAX_SCENARIO_FILE_BYTES} "
                                                 "bytes")])
    if file.endswith(".json"):
        try:
            return load_json(text), {}
        except json.JSONDecodeError as exc:
            raise ScenarioInvalid([RuleProblem(file, f"not valid JSON: {exc.msg}",
                                               line=exc.lineno)]) from exc
        except (ValueError, RecursionError) as exc:
            raise ScenarioInvalid([RuleProblem(file, f"not valid JSON: {exc}")]) from exc
    try:
        node = compose_yaml(text)
        return construct_yaml(node), _node_lines(node)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise ScenarioInvalid([yaml_problem(file, exc)]) from exc


def _problems(messages: Any, lines: Mapping[tuple[Any, ...], int],
              file: str) -> list[RuleProblem]:
    problems = []
    for param in invalid_params(messages):
        path = [int(part) if part.isdigit() else part for part in param.name.split(".")]
        problems.append(RuleProblem(file, f"{param.name}: {param.reason}",
                                    line=_line_of(path, lines)))
    return problems


def parse_scenarios(text: str, file: str) -> tuple[dict[str, Any], dict[tuple[Any, ...], int]]:
    """The validated content of a scenario file and where each part is; ScenarioInvalid."""
    document, lines = _parse(text, file)
    try:
        data = ScenarioFileSchema().load(document if document is not None else {})
    except ValidationError as exc:
        raise ScenarioInvalid(_problems(exc.messages, lines, file)) from exc
    return data, lines


def bind(data: Mapping[str, Any], lines: Mapping[tuple[Any, ...], int], file: str,
         ruleset: Ruleset) -> ScenarioFile:
    """The scenarios of a validated file for `ruleset`: each fact completed (an id, and the
    department that owns its type, unless given); a scenario naming a rule the ruleset does
    not have, or a fact type nobody owns without a department, cannot run (`error`)."""
    rule_names = {rule.name for rule in ruleset.rules}
    scenarios = []
    for index, raw in enumerate(data["scenarios"]):
        error = None
        facts = []
        for number, fact in enumerate(raw["facts"], start=1):
            department = fact.get("department")
            if department is None:
                owner = ruleset.fact_types.get(fact["type"])
                if owner is None:
                    error = error or (f"fact {number} ({fact['type']}) names no department, and "
                                      f"ruleset {ruleset.name} declares no owner of its type")
                    continue
                department = owner.owners[0]
            facts.append({"id": fact.get("id") or f"{fact['type']}-{number}",
                          "type": fact["type"], "department": department,
                          "data": fact["data"]})
        expect = raw["expect"]
        unknown = [name for key in ("fired", "not_fired") for name in expect[key]
                   if name not in rule_names]
        if unknown:
            error = error or (f"ruleset {ruleset.name} has no rule {', '.join(unknown)} "
                              f"(its rules: {', '.join(sorted(rule_names))})")
        created, created_at = raw.get("created_at"), None
        if created is not None:
            try:
                created_at = rfc3339(created.timestamp())
            except (ValueError, OverflowError, OSError) as exc:  # a year the clock cannot write
                error = error or f"created_at {created.isoformat()} cannot be used: {exc}"
        scenarios.append(Scenario(
            name=raw["name"], line=_line_of(("scenarios", index), lines),
            subject=raw["subject"], facts=facts, expect=dict(expect),
            policies=raw.get("policies", "verdicts" in expect), error=error,
            created_at=created_at))
    return ScenarioFile(file, ruleset.name, scenarios)


def scenario_from_dict(data: Mapping[str, Any]) -> Scenario:
    return Scenario(**data)


# --- running -----------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    file: str
    name: str
    line: int | None
    outcome: str  # PASS, FAIL or ERROR
    failures: list[str] = field(default_factory=list)  # each a small diff, or the error
    fired: list[str] = field(default_factory=list)  # the rules that fired
    duration_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "name": self.name, "line": self.line,
                "outcome": self.outcome, "failures": list(self.failures),
                "fired": list(self.fired)}


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _same(expected: Any, actual: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, dict):
        return isinstance(actual, dict) and expected.keys() == actual.keys() and all(
            _same(value, actual[key]) for key, value in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(
            _same(a, b) for a, b in zip(expected, actual, strict=True))
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return expected == actual
    return type(expected) is type(actual) and expected == actual


def _subset(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    return all(key in actual and _same(value, actual[key]) for key, value in expected.items())


def _diff(summary: str, expected: Any, actual: Sequence[Any]) -> str:
    lines = [summary, f"  - expected: {_dump(expected)}"]
    lines += [f"  + actual:   {_dump(item)}" for item in actual[:5]] or ["  + actual:   none"]
    if len(actual) > 5:
        lines.append(f"  + ... and {len(actual) - 5} more")
    return "\n".join(lines)


@dataclass(frozen=True)
class _Outcome:
    fired: list[dict[str, Any]]
    actions: list[dict[str, Any]]  # type, params and, from a whole decision, verdict
    derived: list[dict[str, Any]]


def _check(expect: Mapping[str, Any], got: _Outcome) -> list[str]:
    """Each way `got` is not what the scenario expects, as a small diff."""
    failures = _check_fired(expect, got.fired)
    failures += _check_actions(expect, got.actions)
    failures += _check_derived(expect, got.derived)
    for verdict in expect.get("verdicts") or ():
        failures.extend(_check_verdict(verdict, got.actions))
    return failures


def _check_fired(expect: Mapping[str, Any], firings: Sequence[Mapping[str, Any]]) -> list[str]:
    failures = []
    fired = [firing["rule"] for firing in firings]
    shown = [(f"{f['rule']} (table {f['table']}, row {f['row']})" if "table" in f
              else f["rule"]) for f in firings]
    for name in expect["fired"]:
        if name not in fired:
            failures.append(_diff(f"rule {name} did not fire", name, shown))
    for name in expect["not_fired"]:
        if name in fired:
            failures.append(_diff(f"rule {name} fired, and should not have",
                                  f"not {name}", [s for s in shown if s.split()[0] == name]))
    return failures


def _check_actions(expect: Mapping[str, Any], actions: Sequence[Mapping[str, Any]]) -> list[str]:
    failures = []
    for action in expect["actions"]:
        if not any(a["type"] == action["type"] and _subset(action["params"], a["params"])
                   for a in actions):
            failures.append(_diff(f"no {action['type']} proposed with these params", action,
                                  [{"type": a["type"], "params": a["params"]}
                                   for a in actions if a["type"] == action["type"]]
                                  or [{"type": a["type"]} for a in actions]))
    for action_type in expect["not_proposed"]:
        proposed = [a for a in actions if a["type"] == action_type]
        if proposed:
            failures.append(_diff(f"{action_type} proposed, and should not have been",
                                  f"no {action_type}", [{"type": a["type"],
                                                         "params": a["params"]}
                                                        for a in proposed]))
    return failures


def _check_derived(expect: Mapping[str, Any], derived: Sequence[Mapping[str, Any]]) -> list[str]:
    failures = []
    for fact in expect["derived"]:
        if not any(d["type"] == fact["type"] and _subset(fact["data"], d["data"])
                   for d in derived):
            failures.append(_diff(f"no {fact['type']} derived with this data", fact,
                                  [{"type": d["type"], "data": d["data"]} for d in derived
                                   if d["type"] == fact["type"]]
                                  or [{"type": d["type"]} for d in derived]))
    for fact_type in expect["not_derived"]:
        found = [d for d in derived if d["type"] == fact_type]
        if found:
            failures.append(_diff(f"{fact_type} derived, and should not have been",
                                  f"no {fact_type}", [{"type": d["type"], "data": d["data"]}
                                                      for d in found]))
    return failures


def _verdict_holds(expected: Mapping[str, Any], action: Mapping[str, Any]) -> bool:
    verdict = action["verdict"]
    return (action["type"] == expected["action"] and _subset(expected["params"], action["params"])
            and expected.get("outcome", verdict["outcome"]) == verdict["outcome"]
            and expected.get("allow", verdict["allow"]) == verdict["allow"]
            and all(any(text in reason for reason in verdict["reasons"])
                    for text in expected.get("reasons", ())))


def _check_verdict(expected: Mapping[str, Any], actions: Sequence[Mapping[str, Any]]) -> list[str]:
    if any(_verdict_holds(expected, action) for action in actions):
        return []
    candidates = [{"action": a["type"], "params": a["params"],
                   "outcome": a["verdict"]["outcome"], "reasons": a["verdict"]["reasons"]}
                  for a in actions if a["type"] == expected["action"]]
    return [_diff(f"no {expected['action']} with this verdict", dict(expected), candidates)]


def run_scenario(scenario: Scenario, ruleset: Ruleset, *, file: str, evaluator: Evaluator,
                 gate: PolicyGate | Callable[[], PolicyGate] | None) -> ScenarioResult:
    """Run one scenario: its rules alone, or a whole dry-run decision through `gate` (or
    what calling `gate` gives: the policies are loaded only when a scenario needs them)."""
    started = time.perf_counter()
    result = ScenarioResult(file, scenario.name, scenario.line, ERROR)
    try:
        if scenario.error is not None:
            raise _CannotRun(scenario.error)
        got = _decide(scenario, ruleset, evaluator, gate) if scenario.policies else _evaluate(
            scenario, ruleset, evaluator)
        result.fired = [firing["rule"] for firing in got.fired]
        result.failures = _check(scenario.expect, got)
        result.outcome = FAIL if result.failures else PASS
    except (DecisionServiceError, _CannotRun) as exc:
        result.failures = [getattr(exc, "detail", None) or str(exc)]
    result.duration_ms = (time.perf_counter() - started) * 1000
    return result


class _CannotRun(Exception):
    pass


def _evaluate(scenario: Scenario, ruleset: Ruleset, evaluator: Evaluator) -> _Outcome:
    evaluation = evaluator(ruleset, scenario.facts)
    return _Outcome([f.as_dict() for f in evaluation.fired],
                    [a.as_dict() for a in evaluation.actions], list(evaluation.derived_facts))


def _decide(scenario: Scenario, ruleset: Ruleset, evaluator: Evaluator,
            gate: PolicyGate | Callable[[], PolicyGate] | None) -> _Outcome:
    if gate is None:
        raise _CannotRun("it runs with the policies (it expects verdicts, or says policies: "
                         "true), and there are none here")
    if not isinstance(gate, PolicyGate):
        gate = gate()
    departments = tuple(sorted({fact["department"] for fact in scenario.facts}))
    record = make_decision(
        decision_id=f"scenario-{scenario.line or 0}", subject=scenario.subject,
        ruleset=ruleset, facts=[dict(fact) for fact in scenario.facts], gate=gate,
        caller=Caller("scenario", departments), dry_run=True,
        created_at=scenario.created_at or rfc3339(system_clock()), executors=(),
        evaluator=evaluator).record
    return _Outcome(record["fired"], [a for a in record["actions"] if a["status"] != WITHDRAWN],
                    record["derived_facts"])


def coverage(ruleset: Ruleset, results: Sequence[ScenarioResult]) -> list[str]:
    """The rules of `ruleset` no scenario fired, each as the file shows it."""
    fired = {name for result in results for name in result.fired}
    return [f"{rule.name} (table {rule.table}, row {rule.row}, line {rule.line})" if rule.table
            else f"{rule.name} (line {rule.line})"
            for rule in ruleset.rules if rule.name not in fired]


def scenario_files(directory: Path) -> list[Path]:
    from app.rules.loader import RULE_FILE_SUFFIXES, is_scenario_file

    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.suffix in RULE_FILE_SUFFIXES and is_scenario_file(p)
                  and not p.name.startswith("."))


def summary(results: Sequence[ScenarioResult]) -> dict[str, Any]:
    """What a replay report holds of a candidate's scenarios (contracts: passed, failed and
    each result; an ERROR counts as failed)."""
    passed = sum(1 for result in results if result.outcome == PASS)
    return {"passed": passed, "failed": len(results) - passed,
            "results": [result.as_dict() for result in results]}
