"""Reading requests: the JSON body and the service behind the current app."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from flask import current_app, request

from app.errors import MalformedRequest, UnsupportedMediaType
from app.service import DecisionService


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
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise MalformedRequest("the body is nested too deeply") from exc
    except ValueError as exc:
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from exc
