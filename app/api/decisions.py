"""Decisions over HTTP: take one, read them back, and operate failed deliveries."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, request
from flask.typing import ResponseReturnValue
from marshmallow import Schema, fields

from app.api.openapi import Header, documented
from app.api.request_context import authorize, caller, json_body, service
from app.shared.errors import InvalidInput, InvalidParam
from app.shared.schemas import (
    DecisionInSchema,
    DecisionListSchema,
    DecisionQuerySchema,
    DecisionRecordSchema,
    FailedActionsQuerySchema,
    VerdictSchema,
    WhyNotQuerySchema,
    WhyNotSchema,
    epoch_ms,
    load,
)

bp = Blueprint("decisions", __name__)

_IDEMPOTENCY_KEY_PATTERN = r"^[!-~]{1,200}$"  # visible ASCII
_IDEMPOTENCY_KEY = re.compile(_IDEMPOTENCY_KEY_PATTERN)
IDEMPOTENCY_KEY = Header("Idempotency-Key", (
    "a retried request with the same key gets the first decision back (200, "
    "Idempotent-Replayed: true) instead of a second decision; the same key with a different "
    "request is 409. Remembered for DECISION_IDEMPOTENCY_TTL_SECONDS"),
    {"type": "string", "pattern": _IDEMPOTENCY_KEY_PATTERN, "maxLength": 200})
IDEMPOTENT_REPLAYED = Header(
    "Idempotent-Replayed", "true: this is the earlier decision for the Idempotency-Key",
    {"type": "string", "enum": ["true"]})


class FailedActionListSchema(Schema):
    failed = fields.List(fields.Dict(), required=True, metadata={
        "description": "outbox entries parked after their last attempt"})


class RedriveSchema(Schema):
    status = fields.String(required=True)
    verdict = fields.Nested(VerdictSchema, required=True, metadata={
        "description": "the current policies' verdict, asked again before re-driving"})


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidInput.from_params([InvalidParam(
            "Idempotency-Key", "1 to 200 visible ASCII characters")])
    return key


@bp.post("/v1/decisions")
@documented(summary="Decide on a subject: rules, then the policy gate, then the outbox",
            tag="decisions", body=DecisionInSchema,
            responses={201: ("the decision record", DecisionRecordSchema),
                       200: ("the earlier decision for this Idempotency-Key",
                             DecisionRecordSchema)},
            headers=(IDEMPOTENCY_KEY,), response_headers={200: (IDEMPOTENT_REPLAYED,)})
def create_decision() -> ResponseReturnValue:
    svc = service()
    body = load(DecisionInSchema, json_body(), max_facts=svc.settings.max_batch)
    key = _idempotency_key()
    authorize("decisions.create", ruleset=body["ruleset"], subject=body["subject"],
              departments=sorted({fact["department"] for fact in body["facts"]}))
    decided = svc.decider.decide(subject=body["subject"], ruleset_name=body["ruleset"],
                         inline_facts=body["facts"], dry_run=body["dry_run"], caller=caller(),
                         idempotency_key=key)
    # The record's JSON as written to the log is the answer: no second encoding.
    response = Response(decided.json, status=200 if decided.replayed else 201,
                        mimetype="application/json")
    response.headers["Location"] = f"/v1/decisions/{decided.record['decision_id']}"
    if decided.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/v1/decisions/<decision_id>")
@documented(summary="A decision record, with the delivery status of its actions",
            tag="decisions", responses={200: ("the decision record", DecisionRecordSchema)})
def get_decision(decision_id: str) -> dict[str, Any]:
    authorize("decisions.read")
    return service().decisions.get(decision_id)


@bp.get("/v1/decisions/<decision_id>/why-not")
@documented(summary="Why a rule did or did not fire in a recorded decision: its nearest "
                    "partial match, computed from the record on the ruleset version the "
                    "decision ran with", tag="decisions", query=WhyNotQuerySchema,
            responses={200: ("whether it fired and, if not, which condition failed first, "
                             "on which facts", WhyNotSchema)})
def why_not(decision_id: str) -> dict[str, Any]:
    query = load(WhyNotQuerySchema, request.args.to_dict())
    authorize("decisions.read")
    return service().replays.why_not(decision_id, query["rule"])


@bp.get("/v1/decisions")
@documented(summary="Recent decisions of a subject, newest first (optionally those recorded "
                    "between since and until)", tag="decisions",
            query=DecisionQuerySchema,
            responses={200: ("the subject's decisions", DecisionListSchema)})
def list_decisions() -> dict[str, Any]:
    query = load(DecisionQuerySchema, request.args.to_dict())
    authorize("decisions.read", subject=query["subject"])
    since, until = query.get("since"), query.get("until")
    return {"subject": query["subject"], "decisions": service().decisions.recent(
        query["subject"], query["limit"], since_ms=None if since is None else epoch_ms(since),
        until_ms=None if until is None else epoch_ms(until))}


@bp.get("/v1/actions/failed")
@documented(summary="Actions parked after their last delivery attempt", tag="operations",
            query=FailedActionsQuerySchema,
            responses={200: ("the parked actions", FailedActionListSchema)})
def failed_actions() -> dict[str, Any]:
    query = load(FailedActionsQuerySchema, request.args.to_dict())
    authorize("actions.operate")
    return {"failed": service().outbox.failed(query["limit"])}


@bp.post("/v1/decisions/<decision_id>/actions/<action_id>/redrive")
@documented(summary="Put a parked action back into delivery", tag="operations",
            responses={202: ("queued again", RedriveSchema)})
def redrive_action(decision_id: str, action_id: str) -> tuple[dict[str, Any], int]:
    authorize("actions.operate")
    return service().decider.redrive(decision_id, action_id), 202


class ParkedTriggerListSchema(Schema):
    parked = fields.List(fields.Dict(), required=True, metadata={
        "description": "triggered decisions that cannot run as things are: subject, ruleset, "
                       "reason, parked_at, attempts, pending_facts, decision_id (if one ran)"})


class TriggerRedriveSchema(Schema):
    status = fields.String(required=True)


@bp.get("/v1/triggers/parked")
@documented(summary="Triggered decisions parked because they cannot run as things are",
            tag="operations", query=FailedActionsQuerySchema,
            responses={200: ("the parked triggered decisions", ParkedTriggerListSchema)})
def parked_triggers() -> dict[str, Any]:
    query = load(FailedActionsQuerySchema, request.args.to_dict())
    authorize("triggers.operate")
    return {"parked": service().triggers.parked(query["limit"])}


@bp.post("/v1/subjects/<subject>/triggers/<ruleset>/redrive")
@documented(summary="Try a parked triggered decision again", tag="operations",
            responses={202: ("due again", TriggerRedriveSchema)})
def redrive_trigger(subject: str, ruleset: str) -> tuple[dict[str, Any], int]:
    authorize("triggers.operate")
    service().triggers.redrive(subject, ruleset)
    return {"status": "due"}, 202
