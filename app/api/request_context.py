"""Per request: the service behind the app, the JSON body, and the caller."""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

from flask import Response, current_app, g, request

from app.policy.access import Caller
from app.service import DecisionService
from app.shared.errors import MalformedRequest, UnsupportedMediaType
from app.shared.logs import log_context, valid_traceparent
from app.shared.metrics import label_value


def service() -> DecisionService:
    svc: DecisionService = current_app.extensions["decision_service"]
    return svc


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def json_body() -> Any:
    """The parsed body; NaN and Infinity are refused (they are not JSON)."""
    if not request.is_json:
        raise UnsupportedMediaType(
            f"Content-Type is {request.mimetype or 'missing'!r}; send application/json"
        )
    raw = request.get_data(cache=False)  # over MAX_CONTENT_LENGTH raises 413 here
    if not raw:
        raise MalformedRequest("the body is empty")
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise MalformedRequest("the body is nested too deeply") from exc
    except ValueError as exc:
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from exc
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(body):
        raise MalformedRequest("the body has a \\u escape of half a surrogate pair: text "
                               "that is not Unicode, which OPA, Redis and executors refuse")
    return body


# A lone surrogate can only come from an escape (raw UTF-8 cannot encode one), so only a
# body that has one is searched.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _has_lone_surrogate(value: Any) -> bool:
    pending = [value]
    while pending:  # no recursion: the body may be nested as deep as the parser allows
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("X-API-Key")


def begin_request() -> None:
    """Before every request: its trace context for the logs and the OPA sidecar, and for
    /v1 who is calling (401 without a valid key)."""
    trace = valid_traceparent(request.headers.get("traceparent"))
    g.log_context = log_context(**({"traceparent": trace} if trace else {}))
    g.log_context.__enter__()
    if request.path.startswith("/v1/"):
        g.caller = service().access.authenticate(_presented_key())


def end_request(response: Response) -> Response:
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    service().metrics.inc("decision_http_requests_total", {
        "method": request.method, "route": label_value(rule),
        "status": str(response.status_code)})
    return response


def leave_request(_: BaseException | None) -> None:
    context = g.pop("log_context", None)
    if context is not None:
        context.__exit__(None, None, None)


def caller() -> Caller:
    authenticated: Caller = g.caller
    return authenticated


def authorize(operation: str, **resource: Any) -> None:
    """The access policy's word on this request: 403 with its reasons, or nothing."""
    service().access.authorize(caller(), operation, **resource)
