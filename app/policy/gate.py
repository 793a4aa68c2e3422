"""The policy gate: one verdict per proposed action, and fail closed.

An action is allowed only when the policy document's `allow` is true and its
`deny` set is empty. An undefined document, a malformed result, an evaluation
error, a timeout or an unreachable OPA holds the action, with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from app.policy.engines import UNDEFINED, PolicyEngine, check_policy_path
from app.shared.errors import PolicyUnavailable
from app.shared.metrics import Metrics

log = logging.getLogger(__name__)

ALLOW, DENY, HOLD = "allow", "deny", "hold"

ACCESS_VERDICTS_KEPT = 4096  # access verdicts kept per process (a few hundred bytes each)


@dataclass(frozen=True)
class Verdict:
    outcome: str  # ALLOW, DENY or HOLD
    reasons: tuple[str, ...]
    revision: str
    opa_decision_id: str | None = None  # the id of OPA's decision log entry (a sidecar's)

    @property
    def allow(self) -> bool:
        return self.outcome == ALLOW

    def as_dict(self) -> dict[str, Any]:
        verdict = {"allow": self.allow, "outcome": self.outcome, "reasons": list(self.reasons),
                   "policy_revision": self.revision}
        if self.opa_decision_id is not None:
            verdict["opa_decision_id"] = self.opa_decision_id
        return verdict


def verdict_from(result: Any, document: str, revision: str,
                 opa_decision_id: str | None = None) -> Verdict:
    """What one policy result means for one action."""
    return dataclasses.replace(_verdict(result, document, revision),
                               opa_decision_id=opa_decision_id)


def _verdict(result: Any, document: str, revision: str) -> Verdict:
    if result is UNDEFINED:
        return Verdict(HOLD, (f"the policy document {document} is undefined for this action",),
                       revision)
    if not isinstance(result, dict):
        return Verdict(HOLD, (f"the policy document {document} is not an object with allow"
                              " and deny",), revision)
    allow, deny = result.get("allow", UNDEFINED), result.get("deny", [])
    if allow is UNDEFINED:
        return Verdict(HOLD, (f"{document}.allow is undefined",), revision)
    if not isinstance(allow, bool):
        return Verdict(HOLD, (f"{document}.allow is not a boolean",), revision)
    if not isinstance(deny, list) or not all(isinstance(reason, str) for reason in deny):
        return Verdict(HOLD, (f"{document}.deny is not a set of strings",), revision)
    if allow and not deny:
        return Verdict(ALLOW, (), revision)
    return Verdict(DENY, tuple(deny) or (f"not allowed by {document}",), revision)


class PolicyGate:
    def __init__(self, engine: PolicyEngine, *, governance_path: str, access_path: str,
                 metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self.governance_path = check_policy_path(governance_path)
        self.access_path = check_policy_path(access_path)
        self._kept: OrderedDict[tuple[str, bytes], Verdict] = OrderedDict()  # access verdicts
        self._kept_lock = threading.Lock()

    @property
    def revision(self) -> str:
        return self.engine.revision

    def check(self, common: dict[str, Any], actions: list[dict[str, Any]]) -> list[Verdict]:
        """A verdict for each action (input: `common` plus the action), never an exception."""
        if not actions:
            return []
        document = "data." + self.governance_path.replace("/", ".")
        started = time.perf_counter()
        try:
            answer = self.engine.decide(self.governance_path, common, actions)
        except PolicyUnavailable as exc:
            log.warning("policy gate could not decide, %d action(s) held: %s", len(actions),
                        exc.detail)
            if self.metrics is not None:
                self.metrics.inc("decision_policy_failures_total", {})
            return [Verdict(HOLD, (exc.detail,), self.engine.revision) for _ in actions]
        finally:
            if self.metrics is not None:
                self.metrics.observe("decision_policy_duration_seconds",
                                     {"backend": self.engine.kind},
                                     time.perf_counter() - started)
        ids = answer.decision_ids or (None,) * len(answer.results)
        return [verdict_from(result, document, answer.revision, decision_id)
                for result, decision_id in zip(answer.results, ids, strict=True)]

    def authorize(self, caller: dict[str, Any], request: dict[str, Any]) -> Verdict:
        """The access policy's verdict on `input = {caller, request}`; PolicyUnavailable when
        it cannot decide (the caller then gets a 503, never a pass). A verdict of a policy
        revision whose verdicts depend on the input alone is kept, for that revision and
        exactly that input (the last ACCESS_VERDICTS_KEPT of them)."""
        stable, key = self.engine.stable_revision(), None
        if stable is not None:
            try:
                key = (stable, orjson.dumps([caller, request], option=orjson.OPT_SORT_KEYS))
            except TypeError:  # beyond JSON orjson writes (an integer past 64 bits): ask
                key = None
        if key is not None:
            with self._kept_lock:
                kept = self._kept.get(key)
                if kept is not None:
                    self._kept.move_to_end(key)
                    return kept
        document = "data." + self.access_path.replace("/", ".")
        answer = self.engine.decide(self.access_path, {"caller": caller}, [request],
                                    item_key="request")
        verdict = verdict_from(answer.results[0], document, answer.revision,
                               answer.decision_ids[0] if answer.decision_ids else None)
        if key is not None and answer.revision == stable:
            with self._kept_lock:
                self._kept[key] = verdict
                if len(self._kept) > ACCESS_VERDICTS_KEPT:
                    self._kept.popitem(last=False)
        return verdict

    def readiness(self) -> str:
        return self.engine.readiness()

    def revisions(self) -> dict[str, str]:
        return self.engine.revisions()
