"""What a decision is: the facts the rules saw, what fired, each action's verdict, the record.

`make_decision` is a whole decision except for reading the pool and writing the log:
the live endpoint and replay both call it, so a replay runs exactly the code a live
decision ran.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.access import Caller
from app.dispatch import QUEUED, Executors
from app.errors import DecisionServiceError, EvaluationFailed, Forbidden
from app.policy.gate import ALLOW, HOLD, PolicyGate
from app.rules import Evaluation, Ruleset
from app.rules.engine import Limits

DENIED, HELD, DRY_RUN, RECORDED = "denied", "held", "dry_run", "recorded"
# queued -> dispatched | failed (see app.dispatch). `recorded`: allowed but not sent,
# and `delivery.not_sent` says why (no executor for its type, or already queued for the
# subject by an earlier decision).

_POOL_FIELDS = ("id", "type", "department", "data", "version", "recorded_at")


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


def _status(outcome: str, action_type: str, dry_run: bool,
            executors: Executors) -> tuple[str, dict[str, Any] | None]:
    if outcome != ALLOW:
        return (HELD if outcome == HOLD else DENIED), None
    if dry_run:
        return DRY_RUN, None
    if action_type in executors:
        return QUEUED, None
    return RECORDED, {"not_sent": f"no executor is configured for {action_type}"}


# How a decision runs its rules: `app.rules.evaluate` with the service's limits, or a
# sandbox's for a candidate ruleset.
Evaluator = Callable[[Ruleset, Sequence[Mapping[str, Any]]], Evaluation]
DEFAULT_GATE_PAIRS = Limits().gate_pairs


def make_decision(*, decision_id: str, subject: str, ruleset: Ruleset,
                  facts: list[dict[str, Any]], gate: PolicyGate, caller: Caller,
                  dry_run: bool, created_at: str, executors: Executors,
                  evaluator: Evaluator, trigger: Mapping[str, Any] | None = None,
                  gate_pairs: int = DEFAULT_GATE_PAIRS) -> Decision:
    """Evaluate the rules over `facts`, ask the policy gate about every proposed action (one
    round trip), and build the decision record. EvaluationFailed when the gate would judge
    more than `gate_pairs` (action, fact) pairs."""
    evaluation = evaluator(ruleset, facts)
    if len(evaluation.actions) * len(facts) > gate_pairs:
        raise EvaluationFailed(
            f"the policy gate would judge {len(evaluation.actions)} actions against "
            f"{len(facts)} facts ({len(evaluation.actions) * len(facts):,} pairs); at most "
            f"{gate_pairs:,} are allowed (DECISION_MAX_GATE_PAIRS)")
    common = _gate_input(decision_id=decision_id, subject=subject, ruleset=ruleset.name,
                         version=ruleset.version, facts=facts, caller=caller.as_input(),
                         dry_run=dry_run, created_at=created_at)
    proposed = [action.as_dict() for action in evaluation.actions]
    verdicts = gate.check(common, proposed)
    actions = []
    for action, verdict in zip(proposed, verdicts, strict=True):
        status, delivery = _status(verdict.outcome, action["type"], dry_run, executors)
        actions.append({**action, "verdict": verdict.as_dict(), "status": status,
                        **({"delivery": delivery} if delivery else {})})
    revision = verdicts[0].revision if verdicts else gate.revision
    record = {
        **_header(decision_id=decision_id, subject=subject, created_at=created_at,
                  ruleset=ruleset, revision=revision, dry_run=dry_run, caller=caller,
                  trigger=trigger),
        "facts": facts,
        "fired": [firing.as_dict() for firing in evaluation.fired],
        "derived_facts": evaluation.derived_facts,
        "actions": actions,
    }
    to_enqueue = [{key: a[key] for key in ("id", "type", "params", "rule")}
                  for a in actions if a["status"] == QUEUED]
    return Decision(record, to_enqueue)


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
