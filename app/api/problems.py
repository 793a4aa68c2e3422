"""RFC 9457 problem documents: the only shape an error leaves the service in."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app.shared.errors import DecisionServiceError, PayloadTooLarge, ServiceUnavailable

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem_response(status: int, title: str, detail: str, type_: str = "about:blank",
                     **extensions: Any) -> Response:
    from flask import json

    body = {"type": type_, "title": title, "status": status, "detail": detail,
            "instance": request.path, **extensions}
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)


def _service_error(exc: DecisionServiceError) -> Response:
    problem = exc.as_problem()
    response = problem_response(problem.pop("status"), problem.pop("title"),
                                problem.pop("detail"), problem.pop("type"), **problem)
    if exc.decision_id is not None:
        response.headers["Location"] = f"/v1/decisions/{exc.decision_id}"
    if isinstance(exc, ServiceUnavailable):
        log.warning("%s %s: %s", request.method, request.path, exc.detail)
    if exc.retry_after_seconds is not None:
        response.headers["Retry-After"] = str(exc.retry_after_seconds)
    return response


def _http_error(exc: HTTPException) -> Response:
    if isinstance(exc, RequestEntityTooLarge):
        from flask import current_app

        limit = current_app.config["MAX_CONTENT_LENGTH"]
        return _service_error(PayloadTooLarge(f"the body is larger than {limit} bytes"))
    response = problem_response(exc.code or 500, exc.name, exc.description or exc.name)
    if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
    return response


def _unexpected_error(exc: Exception) -> Response:
    log.exception("unhandled error in %s %s", request.method, request.path)
    return problem_response(500, "Internal error", "an unexpected error occurred; it was logged")


def init_app(app: Flask) -> None:
    app.register_error_handler(DecisionServiceError, _service_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
