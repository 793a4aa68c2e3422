"""Who the caller is, and which of the pages' operations the access policy allows it: the
explorer shows an operator's buttons only to a caller that may use them (the API checks
again when they are used)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from marshmallow import Schema, fields

from app.api.openapi import documented
from app.api.request_context import authorize, caller, service

bp = Blueprint("caller", __name__)

# What the pages offer that not every caller may do.
PAGE_OPERATIONS = ("decisions.read", "facts.read", "rulesets.read", "rulesets.source",
                   "policies.read",
                   "replays.create", "actions.operate")


class CallerSchema(Schema):
    id = fields.String(required=True)
    departments = fields.List(fields.String(), required=True)
    rulesets = fields.List(fields.String(), required=True)
    grants = fields.List(fields.String(), required=True)
    may = fields.Dict(keys=fields.String(), values=fields.Boolean(), required=True, metadata={
        "description": "operation -> whether the access policy allows it to this caller "
                       "(as a request without a resource)"})


@bp.get("/v1/caller")
@documented(summary="Who the API key belongs to, and what the pages may offer it",
            tag="access", responses={200: ("the caller", CallerSchema)})
def get_caller() -> dict[str, Any]:
    authorize("caller.read")
    who = caller()
    access = service().access
    return {**who.as_input(),
            "may": {operation: access.allows(who, operation) for operation in PAGE_OPERATIONS}}
