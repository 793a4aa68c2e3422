"""Evaluating facts against a ruleset in durable_rules' C core, safely.

The shape of it, and the durable_rules 2.0.28 edge each part answers (docs/ARCHITECTURE.md):
- One long-lived engine ruleset per ruleset version (`name@version`), registered
  once per process: names cannot be registered twice and never unregistered.
- One session id for everything: each sid preallocates ~97 KB and a ruleset
  holds at most 1024. Evaluations are kept apart by the tag every fact carries
  and every join compares (see compiler), and by running one at a time.
- One process-wide lock around every call into the core: it has no locks of its
  own and never releases the GIL, so nothing is lost by serialising.
- No `Host`, no background threads: actions are taken from the core's agenda
  here, in priority order, and every action started is completed, or the session
  would stay blocked for every later evaluation.
- Every fact passes `fact_problems` first (the core crashes on some inputs), and
  the core sees only the scalar fields its conditions read (`core_view`): a join
  that meets a null, a list or an object aborts the whole assert (error 312), and
  less to encode and decode is faster. Matches are read back by id from the full
  facts kept here. Every fact asserted is retracted at the
  end, error or not. `delete_state` is
  never called (it crashes on a session holding partial joins).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import durable_rules_engine as core

from app.rules.compiler import TAG, compile_ruleset, core_fields, core_number, rule_key
from app.rules.model import Bindings, Derive, EngineFact, Propose, Rule, Ruleset
from app.shared import jsontext
from app.shared.errors import (
    EvaluationFailed,
    EvaluationTimeout,
    InvalidInput,
    InvalidParam,
    RuleProblem,
    RulesetInvalid,
)
from app.shared.schemas import DERIVED_DEPARTMENT, data_problems


@dataclass(frozen=True)
class Limits:
    """How much one evaluation may take (settings DECISION_MAX_EVALUATION_FACTS,
    DECISION_MAX_FIRINGS, DECISION_MAX_JOIN_CANDIDATES, DECISION_MAX_EVALUATION_SECONDS,
    DECISION_MAX_ACTIONS, DECISION_MAX_GATE_PAIRS, DECISION_MAX_ROUNDS).

    `join_candidates` bounds the partial matches the core may build, estimated before
    each assert as the product of how many facts each alias could match: a join of 3,500
    by 3,500 facts once grew a worker to 3.6 GB in the core, where nothing can stop it.
    `seconds` is checked between calls into the core, which the join bound keeps short.
    `gate_pairs` bounds what the policy gate is then asked: it judges every action against
    every fact, in OPA, where nothing can stop it either (about 25 µs a pair here).
    `rounds` bounds how often a decision whose rules react to verdicts evaluates them
    again (app.decisions.decision), and `seconds` is also the time all its rounds may take."""

    facts: int = 10_000
    firings: int = 5_000
    join_candidates: int = 200_000
    seconds: float = 2.0
    actions: int = 100
    gate_pairs: int = 50_000
    rounds: int = 4


DEFAULT_LIMITS = Limits()

_SID = "0"
_NOT_HANDLED, _OBSERVED = 1, 2
_LOCK = threading.RLock()
_HANDLES: dict[str, int] = {}  # engine name -> handle, for the life of the process
_FIELDS: dict[str, frozenset[str]] = {}  # engine name -> the fields its conditions read
_RULES: dict[str, dict[str, Rule]] = {}  # engine name -> rule key -> rule
# engine name -> per rule with a join: its name and, per alias, the types it could match
# (None: any), for the join bound
_JOINS: dict[str, list[tuple[str, tuple[tuple[str, ...] | None, ...]]]] = {}
# engine name -> (fact type -> the joins a fact of it adds to, the joins any fact adds to)
_JOINING: dict[str, tuple[dict[str, list[int]], list[int]]] = {}
_TAGS = itertools.count(1)


@dataclass(frozen=True)
class Firing:
    rule: str
    facts: dict[str, str]  # alias -> id of the fact it matched
    table: str | None = None  # a decision table's row: the table, and the row (1-based)
    row: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "facts": dict(self.facts),
                **({"table": self.table, "row": self.row} if self.table is not None else {})}


@dataclass(frozen=True)
class ProposedAction:
    id: str  # a content hash: the same proposal has the same id in every replay
    type: str
    params: dict[str, Any]
    rule: str
    requires: tuple[str, ...] = ()  # action types to be dispatched first

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "params": self.params, "rule": self.rule,
                **({"requires": list(self.requires)} if self.requires else {})}


@dataclass(frozen=True)
class Evaluation:
    """What a ruleset made of a set of facts."""

    ruleset: str
    version: str
    fired: list[Firing] = field(default_factory=list)
    derived_facts: list[dict[str, Any]] = field(default_factory=list)
    actions: list[ProposedAction] = field(default_factory=list)
    reads_verdicts: bool = False  # the ruleset's rules react to the policy's verdicts

    def as_dict(self) -> dict[str, Any]:
        return {
            "ruleset": {"name": self.ruleset, "version": self.version},
            "fired": [f.as_dict() for f in self.fired],
            "derived_facts": list(self.derived_facts),
            "actions": [a.as_dict() for a in self.actions],
            "reads_verdicts": self.reads_verdicts,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        """The evaluation `as_dict` describes (as a sandbox sends it back)."""
        return cls(data["ruleset"]["name"], data["ruleset"]["version"],
                   reads_verdicts=bool(data.get("reads_verdicts")),
                   fired=[Firing(f["rule"], dict(f["facts"]), f.get("table"), f.get("row"))
                          for f in data["fired"]],
                   derived_facts=list(data["derived_facts"]),
                   actions=[ProposedAction(a["id"], a["type"], a["params"], a["rule"],
                                           tuple(a.get("requires", ())))
                            for a in data["actions"]])


def _content_id(prefix: str, kind: str, body: Any) -> str:
    canonical = json.dumps([kind, body], sort_keys=True, separators=(",", ":"))
    return f"{prefix}-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"


def fact_problems(facts: Sequence[Any]) -> list[InvalidParam]:
    """Why these facts may not enter the engine: the guard in front of the C core.

    It checks what the core depends on (objects, string ids, types and departments,
    unique ids, data the core can hold: see `data_problems`); the API validated the
    business formats when the facts came in."""
    problems: list[InvalidParam] = []
    seen: set[str] = set()
    for index, fact in enumerate(facts):
        if not isinstance(fact, Mapping):
            problems.append(InvalidParam(f"facts.{index}", "a fact must be an object"))
            continue
        fact_id = fact.get("id")
        if type(fact_id) is not str or not fact_id:
            problems.append(InvalidParam(f"facts.{index}.id", "missing or not a string"))
        elif fact_id in seen:
            problems.append(InvalidParam(f"facts.{index}.id", f"id {fact_id!r} appears twice"))
        else:
            seen.add(fact_id)
        for key in ("type", "department"):
            value = fact.get(key)
            if type(value) is not str or not value:
                problems.append(InvalidParam(f"facts.{index}.{key}", "missing or not a string"))
        problems.extend(data_problems(fact.get("data"), f"facts.{index}.data"))
    return problems


def core_view(fields: Mapping[str, Any]) -> EngineFact:
    """What the C core may see of these fields: the strings, booleans and numbers, each
    number as `core_number` shows it (the core misreads or miscompares some)."""
    view: EngineFact = {}
    for key, value in fields.items():
        kind = type(value)
        if kind is str or kind is bool:
            view[key] = value
        elif kind is int or kind is float:
            view[key] = core_number(value)
    return view


def register(ruleset: Ruleset) -> None:
    """Compile `ruleset` into the C core once per process; RulesetInvalid if it refuses."""
    with _LOCK:
        if ruleset.engine_name in _HANDLES:
            return
        definition = compile_ruleset(ruleset)
        try:
            _HANDLES[ruleset.engine_name] = core.create_ruleset(
                ruleset.engine_name, json.dumps(definition, ensure_ascii=False))
            _FIELDS[ruleset.engine_name] = core_fields(ruleset)
            _RULES[ruleset.engine_name] = {rule_key(r.index): r for r in ruleset.rules}
            joins = [(rule.name, tuple(pattern.fact_types for pattern in rule.when))
                     for rule in ruleset.rules]
            _JOINS[ruleset.engine_name] = joins
            anything = [i for i, (_, aliases) in enumerate(joins) if None in aliases]
            joining: dict[str, list[int]] = {}
            for index, (_, aliases) in enumerate(joins):
                for fact_type in {t for fact_types in aliases for t in fact_types or ()}:
                    joining.setdefault(fact_type, []).append(index)
            _JOINING[ruleset.engine_name] = (
                {t: sorted({*found, *anything}) for t, found in joining.items()}, anything)
        except core.error as exc:
            raise RulesetInvalid(_locate_refusal(ruleset, definition, exc)) from exc


def _locate_refusal(ruleset: Ruleset, definition: dict[str, Any],
                    error: Exception) -> list[RuleProblem]:
    """Which rules the core refuses: each is tried alone (only ever on this error path)."""
    problems = []
    for rule in ruleset.rules:
        probe = {rule_key(rule.index): definition[rule_key(rule.index)]}
        try:
            handle = core.create_ruleset(f"{ruleset.engine_name}#probe{rule.index}",
                                         json.dumps(probe, ensure_ascii=False))
        except core.error as exc:
            problems.append(RuleProblem(ruleset.file, f"the rule engine refused it: {exc}",
                                        rule=rule.name, line=rule.line))
        else:
            core.delete_ruleset(handle)
    return problems or [RuleProblem(ruleset.file, f"the rule engine refused it: {error}")]


def evaluate(ruleset: Ruleset, facts: Sequence[Mapping[str, Any]], *,
             limits: Limits = DEFAULT_LIMITS, seconds: float | None = None) -> Evaluation:
    """Run `ruleset` over `facts` (each with id, type, department, data) to quiescence.

    Facts are asserted in the order given; the rules fire in priority order (lower
    first, then file order). Raises InvalidInput for facts the engine may not see,
    EvaluationFailed past a limit that the same facts would meet again (facts, firings,
    join candidates) and EvaluationTimeout past `limits.seconds` (or `seconds`, what a
    decision has left, when shorter).
    """
    if seconds is not None and seconds < limits.seconds:
        limits = dataclasses.replace(limits, seconds=seconds)
    if len(facts) > limits.facts:
        raise EvaluationFailed(f"{len(facts)} facts about the subject; at most {limits.facts}"
                               " can be decided on at once (DECISION_MAX_EVALUATION_FACTS)")
    problems = fact_problems(facts)
    if problems:
        raise InvalidInput.from_params(problems)
    register(ruleset)
    with _LOCK:
        return _Run(ruleset, _HANDLES[ruleset.engine_name], limits).run(facts)


class _Run:
    """One evaluation inside the lock: assert, fire to quiescence, retract everything."""

    def __init__(self, ruleset: Ruleset, handle: int, limits: Limits) -> None:
        self.ruleset = ruleset
        self.handle = handle
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        self.rules = _RULES[ruleset.engine_name]
        self.joins = _JOINS[ruleset.engine_name]
        self._join_work = [0] * len(self.joins)  # per join: its bound as the facts stand
        self._join_total = 0
        self._joining, self._joining_any = _JOINING[ruleset.engine_name]
        self._counts: dict[str, int] = {}  # fact type -> facts of it so far
        self.core_fields = _FIELDS[ruleset.engine_name]
        self.tag = str(next(_TAGS))
        self.facts: list[EngineFact] = []
        self._by_type: dict[str, list[EngineFact]] = {}
        self._by_engine_id: dict[str, EngineFact] = {}
        self.result = Evaluation(ruleset.name, ruleset.version,
                                 reads_verdicts=ruleset.reads_verdicts)
        self._derived_ids: set[str] = set()
        self._action_ids: set[str] = set()

    def _engine_fact(self, fact_id: str, fact_type: str, department: str,
                     data: Mapping[str, Any]) -> EngineFact:
        """Keep the full fact for the checks here; return what the core may see of it."""
        engine_id = f"{self.tag}.{len(self.facts)}"
        meta = {"sid": _SID, "id": engine_id, TAG: self.tag, "_id": fact_id,
                "type": fact_type, "department": department}
        engine_fact: EngineFact = {**data, **meta}
        self.facts.append(engine_fact)
        self._by_type.setdefault(fact_type, []).append(engine_fact)
        self._counts[fact_type] = self._counts.get(fact_type, 0) + 1
        self._by_engine_id[engine_id] = engine_fact
        view = core_view({key: data[key] for key in self.core_fields & data.keys()})
        view.update(meta)
        return view

    def run(self, facts: Sequence[Mapping[str, Any]]) -> Evaluation:
        batch = [self._engine_fact(f["id"], f["type"], f["department"], f["data"])
                 for f in facts]
        self._check_joins()
        try:
            if batch:
                code, state = core.assert_facts(self.handle, jsontext.dumps(batch))
                if code == _NOT_HANDLED:
                    raise EvaluationFailed("the rule engine did not take the facts")
                self._fire_all(state)
        except core.error as exc:
            raise EvaluationFailed(f"the rule engine refused the facts: {exc}") from exc
        finally:
            self._retract_all()  # retracting a fact the core never took is harmless
        return self.result

    def _check_joins(self, fact_type: str | None = None) -> None:
        """EvaluationFailed if the rules' joins could build more candidate matches than the
        limit, as the facts stand now: all of them before the first assert, then before
        each derived fact those of the rules it joins (`fact_type`)."""
        counts, everything = self._counts, len(self.facts)
        indexes = range(len(self.joins)) if fact_type is None else self._joining.get(
            fact_type, self._joining_any)
        for index in indexes:
            name, aliases = self.joins[index]
            product, work = 1, 0
            for fact_types in aliases:  # the facts each alias could match, joined so far
                product *= everything if fact_types is None else sum(
                    counts.get(t, 0) for t in fact_types)
                work += product
            self._join_total += work - self._join_work[index]
            self._join_work[index] = work
            if self._join_total > self.limits.join_candidates:
                types = sorted({t for fact_types in aliases for t in fact_types or ()})
                raise EvaluationFailed(
                    f"rule {name} could join these facts into {work:,} candidate matches "
                    f"({', '.join(f'{t}: {counts.get(t, 0)}' for t in types) or 'any type'});"
                    f" at most {self.limits.join_candidates:,} are allowed in one evaluation "
                    "(DECISION_MAX_JOIN_CANDIDATES)")

    def _check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise EvaluationTimeout(
                f"ruleset {self.ruleset.name} did not finish within "
                f"{self.limits.seconds:g} s (DECISION_MAX_EVALUATION_SECONDS)")

    def _fire_all(self, state: int) -> None:
        started = core.start_action_for_state(self.handle, state)
        message = started[1] if started else None
        try:
            while message:
                self._check_time()
                [(key, matched)] = jsontext.loads(message).items()
                bindings = {alias: self._by_engine_id[f["id"]] for alias, f in matched.items()}
                self._fire(self.rules[key], bindings)
                message = core.complete_and_start_action(self.handle, state)
        except BaseException:
            # Complete every started action, or the session stays blocked: with the facts
            # retracted first, the core has next to nothing left to start.
            self._retract_all()
            while message:
                message = core.complete_and_start_action(self.handle, state)
            raise

    def _fire(self, rule: Rule, bindings: Bindings) -> None:
        if not rule.holds(bindings, self.facts, self._by_type):
            return  # the core's loose match, or an `unless` that a later fact made true
        if len(self.result.fired) >= self.limits.firings:
            raise EvaluationFailed(
                f"ruleset {self.ruleset.name} did not come to rest within "
                f"{self.limits.firings} firings (DECISION_MAX_FIRINGS; last: rule {rule.name})")
        self.result.fired.append(
            Firing(rule.name, {p.alias: bindings[p.alias]["_id"] for p in rule.when},
                   rule.table, rule.row))
        for step in rule.then:
            if isinstance(step, Propose):
                self._propose(rule, step, bindings)
            elif isinstance(step, Derive):
                self._derive(rule, step, bindings)

    def _propose(self, rule: Rule, step: Propose, bindings: Bindings) -> None:
        params = step.params.render(bindings)
        action_id = _content_id("act", step.action, params)
        if action_id in self._action_ids:
            return  # the same proposal from another match: one action
        if len(self._action_ids) >= self.limits.actions:
            raise EvaluationFailed(
                f"ruleset {self.ruleset.name} proposed more than {self.limits.actions} "
                f"actions (DECISION_MAX_ACTIONS; last: rule {rule.name})")
        self._action_ids.add(action_id)
        self.result.actions.append(ProposedAction(
            action_id, step.action, params, rule.name,
            self.ruleset.requirements.get(step.action, ())))

    def _derive(self, rule: Rule, step: Derive, bindings: Bindings) -> None:
        data = step.data.render(bindings)
        fact_id = _content_id("drv", step.type, data)
        if fact_id in self._derived_ids:
            return  # already known: deriving a fact twice does not make it twice as true
        problems = [] if step.data.flat else data_problems(data, "data")
        if problems:
            raise EvaluationFailed(f"rule {rule.name} derived an invalid fact: "
                                   f"{problems[0].name}: {problems[0].reason}")
        self._derived_ids.add(fact_id)
        self.result.derived_facts.append({"id": fact_id, "type": step.type,
                                          "department": DERIVED_DEPARTMENT, "data": data,
                                          "rule": rule.name})
        view = self._engine_fact(fact_id, step.type, DERIVED_DEPARTMENT, data)
        self._check_joins(step.type)
        self._check_time()
        core.assert_fact(self.handle, jsontext.dumps(view))

    def _retract_all(self) -> None:
        """Retract every fact asserted (once: an error path retracts early)."""
        facts, self.facts = self.facts, []
        if facts:  # engine ids are "<tag>.<n>": no JSON escaping needed
            identities = ",".join(f'{{"sid":"{_SID}","id":"{f["id"]}"}}' for f in facts)
            core.retract_facts(self.handle, f"[{identities}]")
