"""The decision path of a running service: posted facts in, recorded decisions out.

`DecisionPath` checks who may post which facts, reads the pool, runs the rules and the
gate (app/decisions/decision.py), records the decision with its outbox entries, counts it,
and runs the decisions that posted facts trigger. It also asks the gate again about a
parked action (redrive): that verdict is recorded beside the decision's own.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from app.decisions.archive import Archive
from app.decisions.decision import (
    failed_decision,
    gate_input_of,
    make_decision,
    request_fingerprint,
    snapshot,
)
from app.decisions.log import DecisionLog, IdempotencyClaim, Recorded
from app.decisions.masking import Masking
from app.dispatch.executors import Executors
from app.dispatch.outbox import Outbox
from app.facts.pool import FactPool, FactRecord
from app.facts.triggers import TriggerQueue, idempotency_key, parse_member
from app.policy.access import ANONYMOUS, Caller
from app.policy.gate import PolicyGate
from app.rules import Evaluation, Ruleset, RulesetRegistry
from app.rules.engine import Limits, evaluate
from app.shared.clock import rfc3339, system_clock
from app.shared.errors import (
    DecisionServiceError,
    EvaluationFailed,
    Forbidden,
    InvalidInput,
    NotFound,
    RedriveRefused,
)
from app.shared.logs import log_context
from app.shared.metrics import Metrics, label_value

log = logging.getLogger(__name__)

TRIGGER_BATCH = 16
TRIGGER_LEASE_SECONDS = 30.0


class DecisionPath:
    """Facts to rules to verdicts to a record, with the parts a running service shares."""

    def __init__(self, *, facts: FactPool, rulesets: RulesetRegistry, limits: Limits,
                 policy: PolicyGate, executors: Executors, outbox: Outbox,
                 decisions: DecisionLog, triggers: TriggerQueue, archive: Archive,
                 masking: Masking, metrics: Metrics) -> None:
        self.facts = facts
        self.rulesets = rulesets
        self.limits = limits
        self.policy = policy
        self.executors = executors
        self.outbox = outbox
        self.decisions = decisions
        self.triggers = triggers
        self.archive = archive
        self.masking = masking
        self.metrics = metrics

    # --- facts -------------------------------------------------------------------------

    def post_facts(self, facts: Sequence[dict[str, Any]]) -> list[FactRecord]:
        """Store facts and, in the same step, ask for the decisions their types trigger.
        Forbidden when a fact is of a type its department does not own (or one the rules
        derive)."""
        self._check_owners(facts)
        triggers: dict[str, list[str]] = {}
        for ruleset in self.rulesets.active():
            for fact_type in ruleset.triggers:
                triggers.setdefault(fact_type, []).append(ruleset.name)
        return self.facts.put(facts, triggers=triggers)

    def evaluate(self, ruleset: Ruleset, facts: Sequence[Mapping[str, Any]], *,
                 seconds: float | None = None) -> Evaluation:
        """The rules over `facts`, within the configured limits (and `seconds`)."""
        return evaluate(ruleset, facts, limits=self.limits, seconds=seconds)

    def _check_owners(self, facts: Sequence[Mapping[str, Any]]) -> None:
        refusals = self.rulesets.ownership().refusals(facts)
        if refusals:
            raise Forbidden(refusals[0], refusals)

    def subject_facts(self, subject: str) -> dict[str, Any]:
        """What the pool holds about a subject, how much of each department's quota that is,
        and the rulesets whose last decision on it could not run."""
        return {"subject": subject, "facts": self.facts.facts_of(subject),
                "quota": {"max_facts_per_subject": self.facts.quotas.per_subject,
                          "max_facts_per_department": self.facts.quotas.per_department,
                          "max_facts_per_type": self.facts.quotas.per_type,
                          "used": self.facts.usage(subject)},
                "decision_failures": self.decisions.failures(subject)}

    # --- decisions ---------------------------------------------------------------------

    def decide(self, *, subject: str, ruleset_name: str,
               inline_facts: Sequence[Mapping[str, Any]] = (), dry_run: bool = False,
               caller: Caller = ANONYMOUS, idempotency_key: str | None = None,
               trigger: Mapping[str, Any] | None = None) -> Recorded:
        """Decide on a subject and record the decision (or, for an Idempotency-Key already
        used, return the earlier decision: `replayed`)."""
        claim = None
        if idempotency_key is not None:
            claim = IdempotencyClaim(caller.id, idempotency_key, request_fingerprint(
                subject, ruleset_name, inline_facts, dry_run))
            earlier = self.decisions.replayed(subject, claim)
            if earlier is not None:
                return earlier
        started = time.perf_counter()
        ruleset = self.rulesets.get(ruleset_name)
        self._check_owners(inline_facts)
        decision_id = str(uuid.uuid4())
        with log_context(decision_id=decision_id, subject=subject):
            pooled, ignored = self.rulesets.ownership().admissible(self.facts.facts_of(subject))
            facts = snapshot(pooled, inline_facts)
            created_at = rfc3339(system_clock())
            try:
                decision = make_decision(
                    decision_id=decision_id, subject=subject, ruleset=ruleset, facts=facts,
                    gate=self.policy, caller=caller, dry_run=dry_run, created_at=created_at,
                    executors=self.executors, evaluator=self.evaluate, trigger=trigger,
                    limits=self.limits)
            except EvaluationFailed as exc:
                self._record_failure(exc, decision_id=decision_id, subject=subject,
                                     ruleset=ruleset, facts=facts, ignored=ignored,
                                     caller=caller, dry_run=dry_run, created_at=created_at,
                                     trigger=trigger)
                raise
            if ignored:
                decision.record["ignored_facts"] = ignored
            policies = self.policy.engine.policy_set
            if policies is not None and (
                    policies.revision != decision.record["policy"]["revision"]):
                policies = None  # reloaded meanwhile: the next decision on it archives it
            archive = self.archive.entries_for(ruleset, policies)
            recorded = self.decisions.commit(self.masking.record(decision.record),
                                             enqueue=decision.to_enqueue,
                                             prerequisites=decision.prerequisites,
                                             idempotency=claim,
                                             archive=archive)
            self.archive.written(archive)
            self._count(recorded, time.perf_counter() - started)
            log.info("decided %s: %s", ruleset.engine_name, ", ".join(
                f"{a['type']} {a['status']}" for a in recorded.record["actions"]) or
                "no action")
        return recorded

    def _record_failure(self, error: EvaluationFailed, *, decision_id: str, subject: str,
                        ruleset: Ruleset, facts: list[dict[str, Any]],
                        ignored: list[dict[str, str]], caller: Caller, dry_run: bool,
                        created_at: str, trigger: Mapping[str, Any] | None) -> None:
        """A decision the rules could not make is recorded too, and marks the subject as
        not decidable by this ruleset until a decision runs again (unless it was a dry run
        or had inline facts: those say nothing of the pool): the caller, the subject's page
        and the log all say so. `error.decision_id` names the record."""
        record = failed_decision(error, decision_id=decision_id, subject=subject,
                                 ruleset=ruleset, facts=facts, revision=self.policy.revision,
                                 caller=caller, dry_run=dry_run, created_at=created_at,
                                 max_facts=self.limits.facts, trigger=trigger)
        if ignored:
            record["ignored_facts"] = ignored
        archive = self.archive.entries_for(ruleset, None)
        self.decisions.commit(self.masking.record(record), enqueue=[], archive=archive)
        self.archive.written(archive)
        error.decision_id = decision_id
        self.metrics.inc("decision_decisions_failed_total",
                         {"ruleset": label_value(ruleset.name)})
        log.warning("decision on %s by %s could not run: %s", subject, ruleset.engine_name,
                    error.detail)

    def _count(self, recorded: Recorded, seconds: float) -> None:
        labels = {"ruleset": label_value(recorded.record["ruleset"]["name"])}
        self.metrics.inc("decision_decisions_total", labels)
        self.metrics.observe("decision_duration_seconds", labels, seconds)
        for action in recorded.record["actions"]:
            self.metrics.inc("decision_actions_total", {
                **labels, "action": label_value(action["type"]), "status": action["status"]})

    def redrive(self, decision_id: str, action_id: str) -> dict[str, Any]:
        """Ask the current policies about a parked action again: queued again when they
        allow it, else it stays parked, the new verdict recorded beside the first
        (RedriveRefused). Either way the verdict is returned."""
        record = self.decisions.get(decision_id)
        subject = record["subject"]
        entry = self.outbox.parked(subject, decision_id, action_id)
        [verdict] = self.policy.check(gate_input_of(record), [entry["action"]])
        asked = {**verdict.as_dict(), "at": rfc3339(system_clock())}
        if not verdict.allow:
            self.outbox.refuse_redrive(subject, decision_id, action_id, asked)
            raise RedriveRefused(asked)
        self.outbox.redrive(subject, decision_id, action_id, verdict=asked)
        return {"status": "queued", "verdict": asked}

    # --- triggered decisions -----------------------------------------------------------

    def run_triggers_once(self) -> int:
        """Make the triggered decisions that are due; how many were claimed. One that cannot
        run as things are is parked with its reason; one that failed for a passing reason
        is tried again later (and parked after the last attempt)."""
        members = self.triggers.claim(limit=TRIGGER_BATCH, lease_seconds=TRIGGER_LEASE_SECONDS)
        for member in members:
            subject, ruleset = parse_member(member)
            triggering = self.triggers.pending(member)
            caller = Caller("trigger", tuple(sorted({f["department"] for f in triggering})))
            try:
                self.decide(subject=subject, ruleset_name=ruleset, caller=caller,
                            idempotency_key=idempotency_key(member, triggering),
                            trigger={"facts": triggering})
            except (EvaluationFailed, InvalidInput, NotFound) as exc:
                log.error("triggered decision on %s parked: %s", subject, exc.detail)
                self.triggers.park(member, exc.detail, decision_id=exc.decision_id)
                continue
            except DecisionServiceError as exc:
                parked = self.triggers.retry(member, exc.detail)
                log.warning("triggered decision on %s %s: %s", subject,
                            "parked" if parked else "deferred", exc.detail)
                continue
            self.triggers.done(member, len(triggering))
        return len(members)
