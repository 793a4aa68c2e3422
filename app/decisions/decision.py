"""What a decision is: the facts the rules saw, what fired, each action's verdict, the record.

`make_decision` is a whole decision except for reading the pool and writing the log:
the live endpoint and replay both call it, so a replay runs exactly the code a live
decision ran.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.dispatch.outbox import BLOCKED, QUEUED, WAITING
from app.policy.access import Caller
from app.policy.gate import ALLOW, HOLD, PolicyGate, Verdict
from app.rules import Evaluation, Ruleset
from app.rules.engine import Limits
from app.shared.errors import (
    DecisionServiceError,
    EvaluationFailed,
    EvaluationTimeout,
    Forbidden,
    PolicyUnavailable,
)
from app.shared.schemas import (
    DATA_KEY_PATTERN,
    MAX_DATA_FIELDS,
    POLICY_DEPARTMENT,
    RESERVED_DATA_KEYS,
    VERDICT_TYPE,
    data_problems,
)

# A verdict fact's id: the action's, after a prefix with a `/`, which no posted fact's id
# may hold (FACT_ID_PATTERN), so that none can take it.
VERDICT_ID_PREFIX = "verdict/"

DENIED, HELD, DRY_RUN, RECORDED, WITHDRAWN = ("denied", "held", "dry_run", "recorded",
                                              "withdrawn")
# queued -> dispatched | failed (see app.dispatch.outbox). `recorded`: allowed but not sent,
# and `delivery.not_sent` says why (no executor for its type, or already queued for the
# subject by an earlier decision).

_POOL_FIELDS = ("id", "type", "department", "data", "version", "recorded_at")
_DATA_KEY = re.compile(DATA_KEY_PATTERN)


def snapshot(pooled: Iterable[Mapping[str, Any]],
             inline: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The facts a decision runs on: the subject's pooled facts, then the inline facts of
    the request (not stored, marked `inline`). An inline fact with a pooled fact's id stands
    in for it, but only as a fact of the same department (the caller's right to speak for
    that department is the access policy's to check): Forbidden otherwise."""
    facts: dict[str, dict[str, Any]] = {}
    for fact in pooled:
        facts[fact["id"]] = {key: fact[key] for key in _POOL_FIELDS if key in fact}
    for number, fact in enumerate(inline, start=1):
        fact_id = fact.get("id") or _unused(f"inline-{number}", facts)
        shadowed = facts.pop(fact_id, None)
        if shadowed is not None and shadowed["department"] != fact["department"]:
            reason = (f"Inline fact {fact_id!r} has the id of a pooled fact of the "
                      f"{shadowed['department']} department; only {shadowed['department']} may "
                      "stand in for it.")
            raise Forbidden(reason, [reason])
        facts[fact_id] = {"id": fact_id, "type": fact["type"], "department": fact["department"],
                          "data": fact["data"], "inline": True}
    return list(facts.values())


def _unused(fact_id: str, taken: Mapping[str, Any]) -> str:
    """An id for an inline fact given without one, never a pooled fact's."""
    candidate, suffix = fact_id, 1
    while candidate in taken:
        suffix += 1
        candidate = f"{fact_id}.{suffix}"
    return candidate


def request_fingerprint(subject: str, ruleset: str, inline: Sequence[Mapping[str, Any]],
                        dry_run: bool) -> str:
    """What makes two decision requests the same request (for Idempotency-Key)."""
    canonical = json.dumps([subject, ruleset, list(inline), dry_run], sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Decision:
    record: dict[str, Any]
    to_enqueue: list[dict[str, Any]]  # the allowed actions that have an executor
    # action id -> the ids of the actions (of this decision) it waits for
    prerequisites: dict[str, list[str]] = field(default_factory=dict)


def _status(outcome: str, action_type: str, dry_run: bool,
            executors: Container[str]) -> tuple[str, dict[str, Any] | None]:
    if outcome != ALLOW:
        return (HELD if outcome == HOLD else DENIED), None
    if dry_run:
        return DRY_RUN, None
    if action_type in executors:
        return QUEUED, None
    return RECORDED, {"not_sent": f"no executor is configured for {action_type}"}


# How a decision runs its rules: `app.rules.evaluate` with the service's limits, or a
# sandbox's for a candidate ruleset.
# `seconds`: the time the decision has left for it (within the limits' own).
class Evaluator(Protocol):
    def __call__(self, ruleset: Ruleset, facts: Sequence[Mapping[str, Any]], *,
                 seconds: float | None = None) -> Evaluation: ...
DEFAULT_LIMITS = Limits()


def verdict_fact(action: Mapping[str, Any], verdict: Verdict, round_: int) -> dict[str, Any]:
    """The fact a verdict becomes for the next round's rules (fields: VERDICT_FIELDS, and
    the action's params again as fields of their own, to join on). Its id holds a `/`,
    which no posted fact's id may. Params nested too deep for a fact (a pooled value
    already at the depth limit, one level down) are left out rather than failing."""
    data: dict[str, Any] = {
        "action": action["type"], "action_id": action["id"], "rule": action["rule"],
        "params": action["params"], "allow": verdict.allow, "outcome": verdict.outcome,
        "reasons": list(verdict.reasons), "round": round_}
    copies = {key: value for key, value in action["params"].items()
              if key not in data and key not in RESERVED_DATA_KEYS and _DATA_KEY.fullmatch(key)}
    data.update(itertools.islice(copies.items(), MAX_DATA_FIELDS - len(data)))
    if data_problems(data, "data"):
        for key in ("params", *copies):
            if key in data and data_problems({key: data[key]}, "data"):
                del data[key]
    return {"id": f"{VERDICT_ID_PREFIX}{action['id']}", "type": VERDICT_TYPE,
            "department": POLICY_DEPARTMENT, "data": data}


@dataclass
class _Rounds:
    """What the rounds of one decision found, each thing with the round it first came in."""

    fired: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]] = field(
        default_factory=dict)
    derived: dict[str, dict[str, Any]] = field(default_factory=dict)
    gated: dict[str, tuple[dict[str, Any], Verdict]] = field(default_factory=dict)
    verdict_facts: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0

    def add(self, evaluation: Evaluation, round_: int) -> list[dict[str, Any]]:
        """Take in one round's evaluation; the actions it proposed that are new."""
        self.count = round_
        for firing in evaluation.fired:
            key = (firing.rule, tuple(sorted(firing.facts.items())))
            self.fired.setdefault(key, {**firing.as_dict(), "round": round_})
        for fact in evaluation.derived_facts:
            self.derived.setdefault(fact["id"], {**fact, "round": round_})
        return [action.as_dict() for action in evaluation.actions
                if action.id not in self.gated]

    def verdicts_of(self, proposed: Sequence[str]) -> list[dict[str, Any]]:
        """The verdict facts of these actions (each with the round it was given in)."""
        return [verdict_fact(action, verdict, action["round"])
                for action, verdict in (self.gated[action_id] for action_id in proposed)]


def make_decision(*, decision_id: str, subject: str, ruleset: Ruleset,
                  facts: list[dict[str, Any]], gate: PolicyGate, caller: Caller,
                  dry_run: bool, created_at: str, executors: Container[str],
                  evaluator: Evaluator, trigger: Mapping[str, Any] | None = None,
                  limits: Limits = DEFAULT_LIMITS) -> Decision:
    """Evaluate the rules over `facts`, ask the policy gate about every proposed action (one
    round trip), and build the decision record (`executors`: the action types that have
    one).

    When the rules read `verdict` facts, the verdicts on what a round proposed are facts of
    the next round, whose new proposals are gated in turn, until a round proposes what the
    one before it did: a fixpoint, whose facts hold the verdicts on exactly its actions (at
    most `limits.rounds` rounds, all within `limits.seconds`). One an earlier round
    proposed and the last did not is `withdrawn`. An action that requires another waits for
    it, or is `blocked` when it cannot be sent. EvaluationFailed when the gate would judge
    more than `limits.gate_pairs` (action, fact) pairs, or the rounds do not come to rest;
    PolicyUnavailable when the policies changed between rounds twice running."""
    common = _gate_input(decision_id=decision_id, subject=subject, ruleset=ruleset.name,
                         version=ruleset.version, facts=facts, caller=caller.as_input(),
                         dry_run=dry_run, created_at=created_at)
    for _ in range(2):  # one revision for all rounds: again if the policies changed midway
        rounds, evaluation = _rounds(ruleset, facts, common, gate=gate, evaluator=evaluator,
                                     limits=limits)
        revisions = {verdict.revision for _, verdict in rounds.gated.values()}
        if len(revisions) <= 1:
            break
    else:
        raise PolicyUnavailable("the policies changed while the decision ran, twice; ask again")
    final = [action.id for action in evaluation.actions]
    actions = _Statuses(rounds, final, dry_run=dry_run, executors=executors,
                        decision_id=decision_id).actions()
    revision = next(iter(revisions), gate.revision)
    record = {
        **_header(decision_id=decision_id, subject=subject, created_at=created_at,
                  ruleset=ruleset, revision=revision, dry_run=dry_run, caller=caller,
                  trigger=trigger),
        "facts": facts,
        "rounds": rounds.count,
        "fired": list(rounds.fired.values()),
        "derived_facts": list(rounds.derived.values()),
        "verdict_facts": rounds.verdict_facts,
        "actions": actions,
    }
    prerequisites = {a["id"]: [w["action_id"] for w in a["delivery"]["waiting_for"]]
                     for a in actions if a["status"] == WAITING}
    to_enqueue = [{key: a[key] for key in ("id", "type", "params", "rule")}
                  for a in _prerequisites_first(actions, prerequisites)
                  if a["status"] in (QUEUED, WAITING)]
    return Decision(record, to_enqueue, prerequisites)


def _rounds(ruleset: Ruleset, facts: list[dict[str, Any]], common: dict[str, Any], *,
            gate: PolicyGate, evaluator: Evaluator,
            limits: Limits) -> tuple[_Rounds, Evaluation]:
    """The rounds of a decision (see `make_decision`), and the last round's evaluation."""
    deadline = time.monotonic() + limits.seconds
    rounds = _Rounds()
    before: list[str] = []  # what the round before proposed: its verdicts are facts now
    for round_ in range(1, limits.rounds + 1):
        evaluation = evaluator(ruleset, [*facts, *rounds.verdict_facts],
                               seconds=max(0.0, deadline - time.monotonic()))
        if time.monotonic() > deadline:
            raise EvaluationTimeout(
                f"ruleset {ruleset.name} and the verdicts on its actions did not come to rest "
                f"within {limits.seconds:g} s (DECISION_MAX_EVALUATION_SECONDS; {round_} "
                "rounds)")
        new = rounds.add(evaluation, round_)
        pairs = (len(rounds.gated) + len(new)) * len(facts)
        if pairs > limits.gate_pairs:
            raise EvaluationFailed(
                f"the policy gate would judge {len(rounds.gated) + len(new)} actions against "
                f"{len(facts)} facts ({pairs:,} pairs); at most {limits.gate_pairs:,} are "
                "allowed (DECISION_MAX_GATE_PAIRS)")
        for action, verdict in zip(new, gate.check(common, new), strict=True):
            rounds.gated[action["id"]] = ({**action, "round": round_}, verdict)
        proposed = [action.id for action in evaluation.actions]
        if not evaluation.reads_verdicts or proposed == before:
            return rounds, evaluation
        rounds.verdict_facts = rounds.verdicts_of(proposed)
        before = proposed
    raise EvaluationFailed(
        f"ruleset {ruleset.name} still changed what it proposed after {limits.rounds} rounds "
        "of reacting to the policy's verdicts (DECISION_MAX_ROUNDS; last: "
        f"{', '.join(sorted({action.type for action in evaluation.actions}))})")


def _prerequisites_first(actions: list[dict[str, Any]],
                         prerequisites: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    """The actions, each after the ones it waits for (the outbox commits them so)."""
    depth: dict[str, int] = {}

    def depth_of(action_id: str) -> int:
        if action_id not in depth:
            depth[action_id] = 0  # (the action types' requirements have no circle)
            depth[action_id] = 1 + max(
                (depth_of(p) for p in prerequisites.get(action_id, ())), default=-1)
        return depth[action_id]

    return sorted(actions, key=lambda a: depth_of(a["id"]))


_SENT = (QUEUED, WAITING, DRY_RUN)  # what a prerequisite may be for its dependents to go
_IN_WORDS = {DENIED: "the policy denied", HELD: "the policy held", BLOCKED: "is blocked",
             RECORDED: "is not sent", WITHDRAWN: "was withdrawn"}


class _Statuses:
    """Each gated action's status: its verdict's, then what its prerequisites allow."""

    def __init__(self, rounds: _Rounds, final: list[str], *, dry_run: bool,
                 executors: Container[str], decision_id: str) -> None:
        self.rounds = rounds
        self.final = set(final)
        self.dry_run = dry_run
        self.executors = executors
        self.decision_id = decision_id
        self.by_type: dict[str, list[dict[str, Any]]] = {}
        for action_id in final:
            action = rounds.gated[action_id][0]
            self.by_type.setdefault(action["type"], []).append(action)
        self.done: dict[str, tuple[str, dict[str, Any] | None]] = {}

    def actions(self) -> list[dict[str, Any]]:
        actions = []
        for action_id, (action, verdict) in self.rounds.gated.items():
            status, delivery = self.status(action_id)
            actions.append({**action, "verdict": verdict.as_dict(), "status": status,
                            **({"delivery": delivery} if delivery else {})})
        return actions

    def status(self, action_id: str) -> tuple[str, dict[str, Any] | None]:
        if action_id not in self.done:
            self.done[action_id] = (BLOCKED, {"blocked": "its prerequisites require it"})
            self.done[action_id] = self._status(action_id)  # the guard above ends a circle
        return self.done[action_id]

    def _status(self, action_id: str) -> tuple[str, dict[str, Any] | None]:
        action, verdict = self.rounds.gated[action_id]
        if action_id not in self.final:
            return WITHDRAWN, {"withdrawn": "the rules no longer proposed it once they saw "
                                            "the policy's verdicts"}
        status, delivery = _status(verdict.outcome, action["type"], self.dry_run,
                                   self.executors)
        if status not in (QUEUED, DRY_RUN, RECORDED) or not action.get("requires"):
            return status, delivery
        waiting_for = []
        for required in action["requires"]:
            prerequisites = self.by_type.get(required, [])
            if not prerequisites:
                return BLOCKED, {"blocked": f"it requires {required}, which this decision "
                                            "does not propose"}
            for prerequisite in prerequisites:
                before, said = self.status(prerequisite["id"])
                if status == RECORDED and before == RECORDED:
                    continue  # neither is sent for want of an executor: it says so itself
                if before not in _SENT:
                    return BLOCKED, _blocked(prerequisite, before, said,
                                             self.rounds.gated[prerequisite["id"]][1])
                waiting_for.append({"decision_id": self.decision_id,
                                    "action_id": prerequisite["id"], "type": required})
        if status == QUEUED:
            return WAITING, {"waiting_for": waiting_for}
        return status, delivery


def _blocked(prerequisite: Mapping[str, Any], status: str, said: Mapping[str, Any] | None,
             verdict: Verdict) -> dict[str, Any]:
    """Why an action is blocked by a prerequisite that will not be sent."""
    why = _IN_WORDS.get(status, status)
    if status in (DENIED, HELD):
        why += f": {'; '.join(verdict.reasons)}"
    elif said:
        why += f": {next(iter(said.values()))}"
    return {"blocked": f"it requires {prerequisite['type']} ({prerequisite['id']}), which "
                       f"{why}",
            "prerequisite": {"action_id": prerequisite["id"], "type": prerequisite["type"],
                             "status": status}}


def _gate_input(*, decision_id: str, subject: str, ruleset: str, version: str,
                facts: Iterable[Mapping[str, Any]], caller: Mapping[str, Any], dry_run: bool,
                created_at: str) -> dict[str, Any]:
    """What the policy gate is given beside each action. It judges on the departments' own
    facts, not on what the rules derived from them; `created_at` is the decision's time:
    policies that need "now" read it, so that replays agree."""
    return {"subject": subject,
            "facts": [{key: fact[key] for key in ("id", "type", "department", "data")}
                      for fact in facts],
            "decision": {"id": decision_id, "ruleset": ruleset, "ruleset_version": version,
                         "dry_run": dry_run, "created_at": created_at},
            "caller": {"id": caller["id"], "departments": list(caller["departments"])}}


def gate_input_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """The gate's input of a recorded decision, to ask the policies again (a re-drive).
    Fields masked in the record are masked here too."""
    return _gate_input(decision_id=record["decision_id"], subject=record["subject"],
                       ruleset=record["ruleset"]["name"], version=record["ruleset"]["version"],
                       facts=record["facts"], caller=record["caller"],
                       dry_run=record["dry_run"], created_at=record["created_at"])


def _header(*, decision_id: str, subject: str, created_at: str, ruleset: Ruleset,
            revision: str, dry_run: bool, caller: Caller,
            trigger: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "decision_id": decision_id,
        "subject": subject,
        "created_at": created_at,
        "ruleset": {"name": ruleset.name, "version": ruleset.version},
        "policy": {"revision": revision},
        "dry_run": dry_run,
        "caller": {"id": caller.id, "departments": list(caller.departments)},
        "trigger": dict(trigger) if trigger else None,
    }


def failed_decision(error: DecisionServiceError, *, decision_id: str, subject: str,
                    ruleset: Ruleset, facts: list[dict[str, Any]], revision: str,
                    caller: Caller, dry_run: bool, created_at: str, max_facts: int,
                    trigger: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record of a decision the rules could not make: nothing fired, nothing proposed,
    and `error` says why. The facts are kept (up to what one evaluation may hold) so the
    failure can be explained and replayed (past that, only the inline ones)."""
    kept = facts if len(facts) <= max_facts else [f for f in facts if f.get("inline")]
    return {
        **_header(decision_id=decision_id, subject=subject, created_at=created_at,
                  ruleset=ruleset, revision=revision, dry_run=dry_run, caller=caller,
                  trigger=trigger),
        "facts": kept,
        **({"facts_omitted": len(facts) - len(kept)} if len(kept) < len(facts) else {}),
        "fired": [],
        "derived_facts": [],
        "actions": [],
        "error": {key: value for key, value in error.as_problem().items()
                  if key in ("type", "title", "detail")},
    }
