"""Liveness and readiness probes, and the metrics a scraper reads."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response
from marshmallow import Schema, fields

from app.api.openapi import documented
from app.api.policies import PolicyProblemSchema
from app.api.request_context import service
from app.shared.errors import ServiceUnavailable

bp = Blueprint("health", __name__)


class LivePolicySchema(Schema):
    revision = fields.String(required=True, metadata={
        "description": "the live policy revision (what OPA runs, with a sidecar)"})
    problems = fields.List(fields.Nested(PolicyProblemSchema), required=True, metadata={
        "description": "the last rejected change to the policy directory: the last good "
                       "revision stays live, and the service stays ready"})
    rejected_at = fields.String(required=True, allow_none=True,
                                metadata={"format": "date-time"})


class ReadyPolicySchema(Schema):
    revision = fields.String(required=True, metadata={
        "description": "the live policy revision (what OPA runs, with a sidecar)"})
    rejected_problems = fields.Integer(required=True, metadata={
        "description": "how many problems the last rejected change to the policy directory "
                       "had (0: none); which, with file and line, only GET /v1/policies "
                       "says, to a key that may read the policies"})
    rejected_at = fields.String(required=True, allow_none=True,
                                metadata={"format": "date-time"})


class HealthSchema(Schema):
    status = fields.String(required=True)
    checks = fields.Dict(keys=fields.String(), values=fields.String())
    policy_revisions = fields.Dict(keys=fields.String(), values=fields.String(), metadata={
        "description": "the policy revision each side has: embedded, or served (the bundle "
                       "this service serves) and sidecar (what OPA runs)"})
    policy = fields.Nested(ReadyPolicySchema)
    warnings = fields.List(fields.String(), metadata={
        "description": "what an operator should know though the service is ready, such as "
                       "a rejected policy change"})


class DependenciesUnavailable(ServiceUnavailable):
    slug = "not-ready"
    title = "Not ready"

    def __init__(self, checks: dict[str, str], revisions: dict[str, str],
                 policy: dict[str, Any]) -> None:
        failing = ", ".join(f"{name}: {reason}" for name, reason in checks.items()
                            if reason != "ok")
        super().__init__(failing)
        self.checks = checks
        self.revisions = revisions
        self.policy = policy

    def problem_extensions(self) -> dict[str, Any]:
        return {"checks": self.checks, "policy_revisions": self.revisions,
                "policy": self.policy}


@bp.get("/healthz")
@documented(summary="Liveness: the process answers", tag="operations",
            responses={200: ("alive", HealthSchema)})
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@bp.get("/metrics")
@documented(summary="Prometheus metrics, summed over every process of the service",
            tag="operations", responses={200: ("text/plain; version=0.0.4", None)})
def metrics() -> Response:
    svc = service()
    text = svc.metrics.render(svc.gauges())
    return Response(text, mimetype="text/plain", content_type="text/plain; version=0.0.4")


@bp.get("/readyz")
@documented(summary="Readiness: Redis and the policy engine answer, on one policy revision; "
                    "the live revision and the last rejected policy change",
            tag="operations",
            responses={200: ("ready", HealthSchema), 503: ("a dependency is down", None)})
def readyz() -> dict[str, Any]:
    svc = service()
    checks = svc.readiness()
    revisions = svc.policies.revisions()
    problems, rejected_at = svc.policies.rejection()
    # No key is needed here: the count and the time, not the files and OPA's messages.
    policy = {"revision": svc.policy.revision, "rejected_problems": len(problems),
              "rejected_at": rejected_at}
    if any(reason != "ok" for reason in checks.values()):
        raise DependenciesUnavailable(checks, revisions, policy)
    answer = {"status": "ready", "checks": checks, "policy_revisions": revisions,
              "policy": policy}
    if problems:
        answer["warnings"] = [
            f"a policy change was rejected at {rejected_at} ({len(problems)} problem(s): "
            "GET /v1/policies or `decision-service policy status` says which); revision "
            f"{policy['revision']} stays live"]
    return answer
