"""What a recorded decision ran with, read back from the archive: the explorer links a
decision's policy revision to its files (its ruleset version: `app.api.rulesets`)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from marshmallow import Schema, fields

from app.api.openapi import documented
from app.api.request_context import authorize, service

bp = Blueprint("archive", __name__)


class PolicyRevisionSchema(Schema):
    revision = fields.String(required=True)
    sources = fields.Dict(keys=fields.String(), values=fields.String(), required=True,
                          metadata={"description": "path (relative to the policy directory) "
                                                   "-> text: the modules and data of the "
                                                   "revision, not its tests"})
    live = fields.Boolean(required=True, metadata={
        "description": "whether the gate judges with this revision now"})


@bp.get("/v1/policies/revisions/<revision>")
@documented(summary="The policy files of a revision a decision ran with, from the archive",
            tag="policies", responses={200: ("the revision's files", PolicyRevisionSchema)})
def get_policy_revision(revision: str) -> dict[str, Any]:
    authorize("policies.read")
    sources, live = service().replays.policy_revision(revision)
    return {"revision": revision, "sources": sources, "live": live}
