"""The policies as an OPA bundle, for the OPA sidecar to pull (OPA's bundle protocol)."""

from __future__ import annotations

from flask import Blueprint, Response, request

from app.api.openapi import documented
from app.api.request_context import caller, service

bp = Blueprint("bundles", __name__)


@bp.get("/v1/bundles/<name>")
@documented(summary="The policy directory as an OPA bundle (.tar.gz); ETag, 304 when unchanged",
            tag="policies",
            responses={200: ("application/gzip: the bundle, its manifest revision the policy "
                             "revision", None),
                       304: ("the bundle OPA has (If-None-Match) is current", None)})
def bundle(name: str) -> Response:
    svc = service()
    svc.access.authorize_bundle(caller())
    current = svc.policies.bundle(name)
    response = Response(current.body, mimetype="application/gzip")
    response.set_etag(current.etag)
    response.make_conditional(request)  # 304 without a body when If-None-Match matches
    return response
