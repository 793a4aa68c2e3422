"""Replay and what-if over HTTP, for small jobs (`decision-service replay` for large ones)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from app.api.openapi import documented
from app.api.request_context import authorize, json_body, service
from app.shared.schemas import ReplayInSchema, ReplayReportSchema, epoch_ms, load

bp = Blueprint("replays", __name__)


def _ms(moment: Any) -> int | None:
    return None if moment is None else epoch_ms(moment)


@bp.post("/v1/replays")
@documented(summary="Re-run recorded decisions or fact sets, optionally against candidate "
                    "rules and policies; never dispatches", tag="replay", body=ReplayInSchema,
            responses={200: ("what changed, per decision and in sum", ReplayReportSchema)})
def create_replay() -> dict[str, Any]:
    body = load(ReplayInSchema, json_body())
    authorize("replays.create")
    replays = service().replays
    rule_sources, declared, scenarios = {}, {}, {}
    if "ruleset" in body:
        candidate = body["ruleset"]
        file = f"{candidate['name']}.yaml"
        rule_sources[file], declared[file] = candidate["source"], candidate["name"]
        if "scenarios" in candidate:
            scenarios[file] = candidate["scenarios"]
    candidates = replays.candidates(rule_sources=rule_sources, policy_sources=body.get("policies"),
                                    declared=declared, scenarios=scenarios,
                                    policy_base=body.get("policies_revision"))
    cases, next_cursor = replays.replay_cases(
        decision_ids=body.get("decision_ids", []), subject=body.get("subject"),
        since_ms=_ms(body.get("since")), until_ms=_ms(body.get("until")),
        fact_sets=body.get("fact_sets", []), limit=body["limit"], cursor=body.get("cursor"))
    report = replays.replay(cases, candidates)
    report["summary"]["next_cursor"] = next_cursor
    return report
