"""What a decision is: the facts the rules saw, what fired, each action's verdict, the record.

`make_decision` is a whole decision except for reading the pool and writing the log:
the live endpoint and replay both call it, so a replay runs exactly the code a live
decision ran.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.access import Caller
from app.dispatch import QUEUED, Executors
from app.policy.gate import ALLOW, HOLD, PolicyGate
from app.rules import Ruleset, evaluate

DENIED, HELD, DRY_RUN, RECORDED = "denied", "held", "dry_run", "recorded"
# queued -> dispatched | failed (see app.dispatch). `recorded`: allowed but not sent,
# and `delivery.not_sent` says why (no executor for its type, or already queued for the
# subject by an earlier decision).

_POOL_FIELDS = ("id", "type", "department", "data", "version", "recorded_at")


def snapshot(pooled: Iterable[Mapping[str, Any]],
             inline: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The facts a decision runs on: the subject's pooled facts, then the inline facts of
    the request (not stored). An inline fact with a pooled fact's id stands in for it."""
    facts: dict[str, dict[str, Any]] = {}
    for fact in pooled:
        facts[fact["id"]] = {key: fact[key] for key in _POOL_FIELDS if key in fact}
    for number, fact in enumerate(inline, start=1):
        fact_id = fact.get("id") or f"inline-{number}"
        facts.pop(fact_id, None)
        facts[fact_id] = {"id": fact_id, "type": fact["type"], "department": fact["department"],
                          "data": fact["data"], "inline": True}
    return list(facts.values())


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


def make_decision(*, decision_id: str, subject: str, ruleset: Ruleset,
                  facts: list[dict[str, Any]], gate: PolicyGate, caller: Caller,
                  dry_run: bool, created_at: str, executors: Executors,
                  trigger: Mapping[str, Any] | None = None) -> Decision:
    """Evaluate the rules over `facts`, ask the policy gate about every proposed action (one
    round trip), and build the decision record."""
    evaluation = evaluate(ruleset, facts)
    decision_meta = {"id": decision_id, "ruleset": ruleset.name,
                     "ruleset_version": ruleset.version, "dry_run": dry_run,
                     "created_at": created_at}  # policies that need "now" read this: replayable
    # The gate judges on the departments' own facts, not on what the rules derived from them.
    seen = [{key: fact[key] for key in ("id", "type", "department", "data")} for fact in facts]
    common = {"subject": subject, "facts": seen, "decision": decision_meta,
              "caller": {"id": caller.id, "departments": list(caller.departments)}}
    proposed = [action.as_dict() for action in evaluation.actions]
    verdicts = gate.check(common, proposed)
    actions = []
    for action, verdict in zip(proposed, verdicts, strict=True):
        status, delivery = _status(verdict.outcome, action["type"], dry_run, executors)
        actions.append({**action, "verdict": verdict.as_dict(), "status": status,
                        **({"delivery": delivery} if delivery else {})})
    revision = verdicts[0].revision if verdicts else gate.revision
    record = {
        "decision_id": decision_id,
        "subject": subject,
        "created_at": created_at,
        "ruleset": {"name": ruleset.name, "version": ruleset.version},
        "policy": {"revision": revision},
        "dry_run": dry_run,
        "caller": {"id": caller.id, "departments": list(caller.departments)},
        "trigger": dict(trigger) if trigger else None,
        "facts": facts,
        "fired": [firing.as_dict() for firing in evaluation.fired],
        "derived_facts": evaluation.derived_facts,
        "actions": actions,
    }
    to_enqueue = [{key: a[key] for key in ("id", "type", "params", "rule")}
                  for a in actions if a["status"] == QUEUED]
    return Decision(record, to_enqueue)
