"""Replay and what-if: re-run decisions, compare, summarise. Never dispatches anything.

A recorded decision replays on the facts it saw, with its id, caller and time, through
`make_decision` (the code a live decision runs). Without candidates it is pinned to the
ruleset version and policy revision it was recorded with, from the archive, so a replay
that changes anything is a bug. With candidate rules (by ruleset name) and/or candidate
policies, the diff says what those candidates would have done differently: actions
added, removed or changed, verdicts flipped with their reasons, rules that now fire or
no longer fire. A fact set (`{subject, ruleset, facts}`) has no record: it is decided
with the active versions as the baseline and with the candidates.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections import Counter
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from app.decisions.archive import Archive
from app.decisions.decision import DEFAULT_LIMITS, RECORDED, Evaluator, make_decision, snapshot
from app.dispatch.executors import Executors
from app.dispatch.outbox import BLOCKED, QUEUED, WAITING
from app.policy.access import Caller
from app.policy.embedded import EmbeddedPolicyEngine
from app.policy.files import PolicySet
from app.policy.gate import PolicyGate
from app.replay.sandbox import Candidates, Sandbox, SandboxedPolicyEngine
from app.rules import Ruleset, RulesetRegistry, evaluate
from app.rules.engine import Limits
from app.shared.errors import DecisionServiceError

_NO_EXECUTORS = Executors({})
_FREEZE_EVERY = 1000
TOP = 10


@dataclass(frozen=True)
class ReplayCase:
    decision_id: str
    subject: str
    ruleset: str
    facts: list[dict[str, Any]]
    caller: Caller
    dry_run: bool
    created_at: str
    recorded: dict[str, Any] | None = None  # None: a fact set, decided twice
    error: str | None = None  # a case that cannot be replayed, and why

    @classmethod
    def missing(cls, decision_id: str) -> ReplayCase:
        return cls(decision_id, "", "", [], Caller("replay", ()), False, "",
                   error=f"no decision with id {decision_id!r} (never recorded, or expired)")

    @classmethod
    def of_record(cls, record: Mapping[str, Any]) -> ReplayCase:
        caller = record["caller"]
        return cls(record["decision_id"], record["subject"], record["ruleset"]["name"],
                   record["facts"], Caller(caller["id"], tuple(caller.get("departments", ()))),
                   record["dry_run"], record["created_at"], dict(record))

    @classmethod
    def of_fact_set(cls, fact_set: Mapping[str, Any], number: int,
                    created_at: str) -> ReplayCase:
        facts = snapshot([], fact_set.get("facts", []))
        departments = tuple(sorted({fact["department"] for fact in facts}))
        return cls(f"fact-set-{number}", fact_set["subject"], fact_set["ruleset"], facts,
                   Caller("replay", departments), False, created_at)


def _compact(action: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": action["id"], "type": action["type"], "params": action["params"],
            "rule": action["rule"], "verdict": {"outcome": action["verdict"]["outcome"],
                                                "reasons": action["verdict"]["reasons"]},
            "status": action["status"],
            **({"blocked": action["delivery"]["blocked"]}
               if action["status"] == BLOCKED else {})}


def diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """What changed from one decision record to another, in the terms an analyst uses:
    rules that fire more or less, actions added, removed or changed, verdicts flipped, and
    actions now blocked by a prerequisite that will not be sent (or no longer)."""
    fired_before = Counter(f["rule"] for f in before["fired"])
    fired_after = Counter(f["rule"] for f in after["fired"])
    old = {a["id"]: a for a in before["actions"]}
    new = {a["id"]: a for a in after["actions"]}
    added = [new[i] for i in new if i not in old]
    removed = [old[i] for i in old if i not in new]
    changed = []
    same = [(i, i) for i in old.keys() & new.keys()]
    for action in list(added):  # same type from the same rule
        twins = [r for r in removed if (r["type"], r["rule"]) == (action["type"], action["rule"])]
        if len(twins) != 1:
            continue
        added.remove(action)
        removed.remove(twins[0])
        if twins[0]["params"] == action["params"]:  # other id only: a masked record's values
            same.append((twins[0]["id"], action["id"]))
        else:
            changed.append({"type": action["type"], "rule": action["rule"],
                            "before": _compact(twins[0]), "after": _compact(action)})
    flipped = []
    for old_id, action_id in same:
        was, now = old[old_id]["verdict"], new[action_id]["verdict"]
        if (was["outcome"], was["reasons"]) != (now["outcome"], now["reasons"]):
            flipped.append({"action_id": action_id, "type": new[action_id]["type"],
                            "before": {"outcome": was["outcome"], "reasons": was["reasons"]},
                            "after": {"outcome": now["outcome"], "reasons": now["reasons"]}})
    blocked: dict[str, list[dict[str, Any]]] = {"now": [], "no_longer": []}
    for old_id, action_id in same:
        was, now = old[old_id], new[action_id]
        if (was["status"] == BLOCKED) != (now["status"] == BLOCKED):
            blocking = now if now["status"] == BLOCKED else was
            blocked["now" if now["status"] == BLOCKED else "no_longer"].append({
                "action_id": action_id, "type": now["type"],
                "reason": blocking["delivery"]["blocked"]})
    return {
        "rules": {"now_fire": sorted(r for r in fired_after if fired_after[r] > fired_before[r]),
                  "no_longer_fire": sorted(r for r in fired_before
                                           if fired_before[r] > fired_after[r])},
        "actions": {"added": [_compact(a) for a in added],
                    "removed": [_compact(a) for a in removed], "changed": changed},
        "verdicts": sorted(flipped, key=lambda f: f["action_id"]),
        "blocked": blocked,
    }


def is_change(delta: Mapping[str, Any]) -> bool:
    return bool(delta["rules"]["now_fire"] or delta["rules"]["no_longer_fire"]
                or any(delta["actions"].values()) or delta["verdicts"]
                or any(delta["blocked"].values()))


class _ExecutorsOf:
    """The action types a recorded decision had an executor for (whatever the executors
    file says now: a replay changes rules or policies, not the deployment); for a type it
    never proposed, and for a fact set, the current executors."""

    def __init__(self, record: Mapping[str, Any] | None, current: Container[str]) -> None:
        self.current = current
        self.had: dict[str, bool] = {}
        for action in (record or {}).get("actions", ()):
            not_sent = (action.get("delivery") or {}).get("not_sent", "")
            if action["status"] == RECORDED and not_sent.startswith("no executor"):
                self.had[action["type"]] = False
            elif action["status"] in (QUEUED, WAITING):
                self.had[action["type"]] = True

    def __contains__(self, action_type: object) -> bool:
        if isinstance(action_type, str) and action_type in self.had:
            return self.had[action_type]
        return action_type in self.current


class Replayer:
    """Replays cases against their recorded versions or against `candidates`, which run in
    `sandbox` (see `app.replay.sandbox`): only the versions the service itself ran run here."""

    def __init__(self, *, archive: Archive, registry: RulesetRegistry, gate: PolicyGate,
                 evaluator: Evaluator, candidates: Candidates | None = None,
                 sandbox: Sandbox | None = None,
                 allowed_builtins: frozenset[str] = frozenset(),
                 limits: Limits = DEFAULT_LIMITS,
                 executors: Container[str] = _NO_EXECUTORS) -> None:
        self.archive = archive
        self.limits = limits
        self.executors = executors  # what a live decision would have sent: statuses agree
        self.allowed_builtins = allowed_builtins  # of the service's own (archived) policies
        self.evaluator = evaluator
        self.registry = registry
        self.gate = gate  # the live gate: the baseline of fact sets, and pinned when it matches
        self.candidates = candidates or Candidates()
        self.sandbox = sandbox
        if (self.candidates.rulesets or self.candidates.policy_revision) and sandbox is None:
            raise ValueError("candidates run in a sandbox")
        self._candidate_gate = None
        if self.candidates.policy_revision is not None and sandbox is not None:
            self._candidate_gate = PolicyGate(
                SandboxedPolicyEngine(sandbox, self.candidates.policy_revision),
                governance_path=gate.governance_path, access_path=gate.access_path)
        self._pinned_gates: dict[str, PolicyGate] = {}
        self._pinned_rulesets: dict[tuple[str, str], Ruleset] = {}

    def _gate_of(self, policies: PolicySet) -> PolicyGate:
        return PolicyGate(EmbeddedPolicyEngine(None, policies=policies,
                                               allowed_builtins=self.allowed_builtins),
                          governance_path=self.gate.governance_path,
                          access_path=self.gate.access_path)

    def _pinned_gate(self, revision: str) -> PolicyGate:
        if revision == self.gate.revision:
            return self.gate
        if revision not in self._pinned_gates:
            self._pinned_gates[revision] = self._gate_of(self.archive.policies(revision))
        return self._pinned_gates[revision]

    def _pinned_ruleset(self, name: str, version: str) -> Ruleset:
        key = (name, version)
        if key not in self._pinned_rulesets:
            try:
                self._pinned_rulesets[key] = self.registry.get(name, version)
            except DecisionServiceError:
                self._pinned_rulesets[key] = self.archive.ruleset(name, version)
        return self._pinned_rulesets[key]

    def _decide(self, case: ReplayCase, ruleset: Ruleset, gate: PolicyGate) -> dict[str, Any]:
        candidate = self.candidates.rulesets.get(ruleset.name) is ruleset
        evaluator = self.sandbox.evaluate if candidate and self.sandbox else self.evaluator
        return make_decision(decision_id=case.decision_id, subject=case.subject,
                             ruleset=ruleset, facts=case.facts, gate=gate, caller=case.caller,
                             dry_run=case.dry_run, created_at=case.created_at,
                             executors=_ExecutorsOf(case.recorded, self.executors),
                             evaluator=evaluator,
                             limits=self.limits).record

    def replay(self, case: ReplayCase) -> dict[str, Any]:
        """{decision_id, subject, changed, diff, versions} or {decision_id, error}."""
        if case.error is not None:
            return {"decision_id": case.decision_id, "subject": case.subject,
                    "ruleset": case.ruleset, "changed": False, "error": case.error}
        try:
            if case.recorded is not None:
                before = case.recorded
                version = before["ruleset"]["version"]
                ruleset = self.candidates.rulesets.get(case.ruleset) or self._pinned_ruleset(
                    case.ruleset, version)
                gate = self._candidate_gate or self._pinned_gate(before["policy"]["revision"])
            else:
                current = self.registry.get(case.ruleset)
                before = self._decide(case, current, self.gate)
                ruleset = self.candidates.rulesets.get(case.ruleset) or current
                gate = self._candidate_gate or self.gate
            after = self._decide(case, ruleset, gate)
        except DecisionServiceError as exc:
            return {"decision_id": case.decision_id, "subject": case.subject,
                    "ruleset": case.ruleset, "changed": False, "error": exc.detail}
        delta = diff(before, after)
        masked = {"masked": before["masked"]} if before.get("masked") else {}
        return {"decision_id": case.decision_id, "subject": case.subject,
                "ruleset": case.ruleset, "changed": is_change(delta), "diff": delta, **masked,
                "versions": {"before": {"ruleset": before["ruleset"]["version"],
                                        "policy": before["policy"]["revision"]},
                             "after": {"ruleset": after["ruleset"]["version"],
                                       "policy": after["policy"]["revision"]}}}

    def run(self, cases: Iterable[ReplayCase]) -> Iterator[dict[str, Any]]:
        """Replay one case after another (inside `bulk()` for a large job)."""
        for number, case in enumerate(cases, start=1):
            yield self.replay(case)
            if number % _FREEZE_EVERY == 0 and gc.get_freeze_count():
                gc.freeze()


@contextlib.contextmanager
def bulk() -> Iterator[None]:
    """For a large replay: it keeps every loaded case and every result alive, and the
    cyclic collector's full passes over them would come to dominate the run. What exists
    is frozen out of the collector's sight (and again every few thousand results); none
    of it holds a cycle to collect."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def outcome_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a decision came to, without ids and times: for golden files and eyes."""
    return {"fired": [firing["rule"] for firing in record["fired"]],
            "derived": [fact["type"] for fact in record["derived_facts"]],
            "actions": [{"type": a["type"], "params": a["params"],
                         "verdict": a["verdict"]["outcome"], "reasons": a["verdict"]["reasons"],
                         "status": a["status"],
                         **({"blocked": a["delivery"]["blocked"]}
                            if a["status"] == "blocked" else {})}
                        for a in record["actions"]]}


def outcomes_of_fact_sets(lines: Iterable[str], *, registry: RulesetRegistry, gate: PolicyGate,
                          created_at: str) -> dict[str, Any]:
    """subject -> `outcome_view` of each fact set (JSON lines) under the active versions: what
    golden files hold, so a change that alters a decision shows up as a diff."""
    result = {}
    for number, line in enumerate((line for line in lines if line.strip()), start=1):
        case = ReplayCase.of_fact_set(json.loads(line), number, created_at)
        record = make_decision(decision_id=case.decision_id, subject=case.subject,
                               ruleset=registry.get(case.ruleset), facts=case.facts, gate=gate,
                               caller=case.caller, dry_run=False, created_at=created_at,
                               executors=_NO_EXECUTORS, evaluator=evaluate).record
        result[case.subject] = outcome_view(record)
    return result


def summarize(results: list[dict[str, Any]], candidates: Candidates) -> dict[str, Any]:
    """Counts, the rules that changed the most decisions (how many now fire, how many no
    longer fire), and the policy reasons of the verdicts that flipped in the most decisions
    (given now, or no longer). A reason counts only where a verdict on the same action
    flipped: the reasons of an added or removed action are the rules' change, not the
    policies'. A decision counts once per rule and per reason (a reason it both gives
    and no longer gives, on two actions, counts as given)."""
    errors = [r for r in results if "error" in r]
    changed = [r for r in results if r["changed"]]
    now_fire: Counter[str] = Counter()
    no_longer_fire: Counter[str] = Counter()
    given: Counter[str] = Counter()
    no_longer_given: Counter[str] = Counter()
    totals = Counter(added=0, removed=0, changed=0, verdicts_flipped=0, now_blocked=0,
                     no_longer_blocked=0)
    for result in changed:
        delta = result["diff"]
        totals["now_blocked"] += len(delta["blocked"]["now"])
        totals["no_longer_blocked"] += len(delta["blocked"]["no_longer"])
        now_fire.update(set(delta["rules"]["now_fire"]))
        no_longer_fire.update(set(delta["rules"]["no_longer_fire"]))
        for kind in ("added", "removed", "changed"):
            totals[kind] += len(delta["actions"][kind])
        totals["verdicts_flipped"] += len(delta["verdicts"])
        now: set[str] = set()
        gone: set[str] = set()
        for flip in delta["verdicts"]:
            before, after = set(flip["before"]["reasons"]), set(flip["after"]["reasons"])
            now.update(after - before)
            gone.update(before - after)
        given.update(now)
        no_longer_given.update(gone - now)
    rules = now_fire + no_longer_fire
    reasons = given + no_longer_given
    return {
        "decisions": len(results),
        "changed": len(changed),
        "unchanged": len(results) - len(changed) - len(errors),
        "errors": len(errors),
        "actions": {kind: totals[kind] for kind in ("added", "removed", "changed")},
        "verdicts_flipped": totals["verdicts_flipped"],
        "blocked": {"now": totals["now_blocked"], "no_longer": totals["no_longer_blocked"]},
        "most_changed_rules": [{"rule": rule, "decisions": count,
                                "now_fires": now_fire[rule],
                                "no_longer_fires": no_longer_fire[rule]}
                               for rule, count in rules.most_common(TOP)],
        "most_changed_policies": [{"reason": reason, "decisions": count,
                                   "now_given": given[reason],
                                   "no_longer_given": no_longer_given[reason]}
                                  for reason, count in reasons.most_common(TOP)],
        "candidates": candidates.describe(),
    }


def candidate_scenarios(replayer: Replayer, sources: Mapping[str, str]) -> dict[str, Any]:
    """The scenarios sent with candidate rule files (rule file -> scenario text), each run
    against its candidate in the replayer's sandbox, through the gate the what-if uses (the
    candidate policies, else the live ones): `report["scenarios"]`, {passed, failed,
    results}. ScenarioInvalid (file and line) for a malformed scenario text."""
    from app.replay.scenarios import (
        ERROR,
        ScenarioResult,
        run_scenario,
        scenario_from_dict,
        summary,
    )
    from app.shared.errors import CandidateFailed

    assert replayer.sandbox is not None  # candidates always run in one
    by_file = {ruleset.file: ruleset for ruleset in replayer.candidates.rulesets.values()}
    gate = replayer._candidate_gate or replayer.gate
    results = []
    for rule_file, text in sources.items():
        ruleset = by_file.get(rule_file)
        if ruleset is None:
            continue  # (every candidate rule file is loaded, or the what-if failed)
        file = f"{ruleset.name}_test.yaml"
        try:
            scenarios = replayer.sandbox.scenarios(ruleset, text, file)
        except CandidateFailed as exc:  # its budget ran out: that is the candidate's error
            results.append(ScenarioResult(file, "(reading the scenarios)", None, ERROR,
                                          [exc.detail]))
            continue
        for scenario in scenarios:
            results.append(run_scenario(scenario_from_dict(scenario), ruleset, file=file,
                                        evaluator=replayer.sandbox.evaluate, gate=gate))
    return summary(results)
