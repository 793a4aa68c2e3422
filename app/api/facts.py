"""The fact pool over HTTP: departments post, anyone reads, facts are retracted by id."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from marshmallow import Schema

from app.api.openapi import documented
from app.api.request_context import authorize, json_body, service
from app.shared.schemas import (
    FACT_ID_PATTERN,
    SUBJECT_PATTERN,
    FactBatchInSchema,
    FactInSchema,
    FactListSchema,
    Identifier,
    SubjectFactsSchema,
    load,
    load_facts,
)

bp = Blueprint("facts", __name__)


class SubjectPathSchema(Schema):
    subject = Identifier(SUBJECT_PATTERN, rule="not a valid subject", required=True)


class FactIdPathSchema(Schema):
    id = Identifier(FACT_ID_PATTERN, rule="not a valid fact id", required=True)


@bp.post("/v1/facts")
@documented(summary="Post one fact or a batch (stored all or none)", tag="facts",
            body=[FactInSchema, FactBatchInSchema],
            responses={201: ("the stored facts", FactListSchema)})
def post_facts() -> tuple[dict[str, Any], int]:
    svc = service()
    facts = load_facts(json_body(), max_batch=svc.settings.max_batch)
    authorize("facts.write", departments=sorted({fact["department"] for fact in facts}))
    return {"facts": svc.decider.post_facts(facts)}, 201


@bp.get("/v1/subjects/<subject>/facts")
@documented(summary="The pooled facts of a subject, all departments", tag="facts",
            responses={200: ("the subject's live facts, oldest first", SubjectFactsSchema)})
def subject_facts(subject: str) -> dict[str, Any]:
    load(SubjectPathSchema, {"subject": subject})
    authorize("facts.read", subject=subject)
    return service().decider.subject_facts(subject)


@bp.delete("/v1/facts/<fact_id>")
@documented(summary="Retract a fact", tag="facts", responses={204: ("retracted", None)})
def retract_fact(fact_id: str) -> tuple[str, int]:
    load(FactIdPathSchema, {"id": fact_id})
    pool = service().facts
    department = pool.get(fact_id)["department"]
    authorize("facts.retract", departments=[department])
    pool.retract(fact_id, department=department)
    return "", 204
