"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response
from marshmallow import Schema, fields

from app.api.openapi import documented
from app.api.request_context import service
from app.errors import ServiceUnavailable

bp = Blueprint("health", __name__)


class HealthSchema(Schema):
    status = fields.String(required=True)
    checks = fields.Dict(keys=fields.String(), values=fields.String())
    policy_revisions = fields.Dict(keys=fields.String(), values=fields.String(), metadata={
        "description": "the policy revision each side has: embedded, or served (the bundle "
                       "this service serves) and sidecar (what OPA runs)"})


class DependenciesUnavailable(ServiceUnavailable):
    slug = "not-ready"
    title = "Not ready"

    def __init__(self, checks: dict[str, str], revisions: dict[str, str]) -> None:
        failing = ", ".join(f"{name}: {reason}" for name, reason in checks.items()
                            if reason != "ok")
        super().__init__(failing)
        self.checks = checks
        self.revisions = revisions

    def problem_extensions(self) -> dict[str, Any]:
        return {"checks": self.checks, "policy_revisions": self.revisions}


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
@documented(summary="Readiness: Redis and the policy engine answer, on one policy revision",
            tag="operations",
            responses={200: ("ready", HealthSchema), 503: ("a dependency is down", None)})
def readyz() -> dict[str, Any]:
    svc = service()
    checks = svc.readiness()
    revisions = svc.policy_revisions()
    if any(reason != "ok" for reason in checks.values()):
        raise DependenciesUnavailable(checks, revisions)
    return {"status": "ready", "checks": checks, "policy_revisions": revisions}
