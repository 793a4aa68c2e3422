"""Which policies are live, and whether they are the files on disk.

A policy change that does not compile is rejected and the last good set stays live: a
compliance team needs to see that (the files it sees are not what decides), and the
replay page needs the live text to start a what-if from.
"""

from __future__ import annotations

import hashlib
from typing import Any

from flask import Blueprint
from marshmallow import Schema, fields

from app.api.openapi import documented
from app.api.request_context import authorize, service
from app.policy.files import file_kind

bp = Blueprint("policies", __name__)


class PolicyFileSchema(Schema):
    path = fields.String(required=True, metadata={
        "description": "relative to the policy directory"})
    kind = fields.String(required=True, metadata={"enum": ["module", "data", "test"]})
    sha256 = fields.String(required=True, metadata={"description": "of the file's text"})


class PolicyProblemSchema(Schema):
    file = fields.String(required=True)
    line = fields.Integer(required=True, allow_none=True)
    message = fields.String(required=True)


class PolicyListSchema(Schema):
    revision = fields.String(required=True, metadata={
        "description": "the live revision: what decisions are evaluated with (embedded), or "
                       "what the OPA sidecar runs; none when no policy ever loaded"})
    files = fields.List(fields.Nested(PolicyFileSchema), required=True, metadata={
        "description": "the live revision's files (empty when the service has not their "
                       "text: a sidecar on files of its own)"})
    problems = fields.List(fields.Nested(PolicyProblemSchema), required=True, metadata={
        "description": "the last rejected change to the directory, while no later change "
                       "loaded (empty when none)"})
    rejected_at = fields.String(required=True, allow_none=True,
                                metadata={"format": "date-time"})
    disk_revision = fields.String(required=True, metadata={
        "description": "the policy directory as it is on disk now"})
    live = fields.Boolean(required=True, metadata={
        "description": "the files on disk are the live policies"})


class PolicySourcesSchema(Schema):
    revision = fields.String(required=True)
    sources = fields.Dict(keys=fields.String(), values=fields.String(), required=True,
                          metadata={"description": "path -> text of each module and data "
                                                   "file of the live policies (not tests)"})


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@bp.get("/v1/policies")
@documented(summary="The live policy revision, its files, and the last rejected change",
            tag="policies", responses={200: ("what is live", PolicyListSchema)})
def list_policies() -> dict[str, Any]:
    authorize("policies.read")
    status, policies = service().policies.overview()
    texts = {} if policies is None else {**policies.sources, **policies.tests}
    return {
        "revision": status.revision,
        "files": [{"path": path, "kind": file_kind(path), "sha256": _sha256(text)}
                  for path, text in sorted(texts.items())],
        "problems": [{"file": p.file, "line": p.line, "message": p.message}
                     for p in status.problems],
        "rejected_at": status.rejected_at,
        "disk_revision": status.disk_revision or status.revision,
        "live": status.live,
    }


@bp.get("/v1/policies/sources")
@documented(summary="The text of the live policies (modules and data), to start a what-if "
                    "from", tag="policies",
            responses={200: ("the live policies", PolicySourcesSchema)})
def policy_sources() -> dict[str, Any]:
    authorize("policies.read")
    status, policies = service().policies.live()
    return {"revision": status.revision, "sources": dict(sorted(policies.sources.items()))}
