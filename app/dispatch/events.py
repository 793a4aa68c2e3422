"""CloudEvents: the envelope in which an allowed action reaches its executor (the event `id`
is also the delivery's Idempotency-Key)."""

from __future__ import annotations

from typing import Any

from app.shared.clock import rfc3339


def cloud_event(entry: dict[str, Any], now: float) -> dict[str, Any]:
    """The body an executor receives: a CloudEvents 1.0 event in structured mode."""
    action = entry["action"]
    return {
        "specversion": "1.0",
        "id": f"{entry['decision_id']}:{action['id']}",
        "source": f"/decision-service/rulesets/{entry['ruleset']['name']}",
        "type": f"decision.action.{action['type']}",
        "subject": entry["subject"],
        "time": rfc3339(now),
        "datacontenttype": "application/json",
        "data": {"decision_id": entry["decision_id"], "subject": entry["subject"],
                 "action": action, "ruleset": entry["ruleset"],
                 "policy_revision": entry["policy_revision"]},
    }
