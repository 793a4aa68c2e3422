"""`/openapi.json`, built from the views' own `@documented` notes and marshmallow schemas.

A view states its request schema and responses next to its code; this module
walks the URL map, so a route cannot exist without showing up in the document.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, current_app
from marshmallow import Schema, fields

from app.shared import VERSION
from app.shared.schemas import DATA_VALUE_SCHEMA, FACT_ID_PATTERN, SUBJECT_PATTERN, FactData

bp = Blueprint("openapi", __name__)

F = TypeVar("F", bound=Callable[..., Any])

_PATH_PARAM = re.compile(r"<(?:[a-z]+:)?([A-Za-z_]+)>")
_PATH_PATTERNS = {"subject": {"pattern": SUBJECT_PATTERN},
                  "fact_id": {"pattern": FACT_ID_PATTERN}}


class InvalidParamSchema(Schema):
    name = fields.String(required=True, metadata={"description": "dotted path of the field"})
    reason = fields.String(required=True)


class ProblemSchema(Schema):
    """RFC 9457 problem details."""

    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    instance = fields.String()
    invalid_params = fields.List(fields.Nested(InvalidParamSchema), data_key="invalid-params")
    reasons = fields.List(fields.String(), metadata={"description": "why it is not allowed"})
    limit = fields.Dict(metadata={"description": "the quota exceeded: its setting, value, "
                                                 "subject, department (and type)"})
    decision_id = fields.String(metadata={"description": "the recorded decision that failed"})
    checks = fields.Dict(keys=fields.String(), values=fields.String(), metadata={
        "description": "readiness: each dependency, 'ok' or why not"})


@dataclass(frozen=True)
class Header:
    """An HTTP header an operation reads (optional) or answers with, as the document says it."""

    name: str
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})

    def described(self) -> dict[str, Any]:
        return {"description": self.description, "schema": dict(self.schema)}


def documented(*, summary: str, tag: str, responses: dict[int, tuple[str, type[Schema] | None]],
               body: type[Schema] | list[type[Schema]] | None = None,
               query: type[Schema] | None = None, headers: tuple[Header, ...] = (),
               response_headers: Mapping[int, tuple[Header, ...]] | None = None,
               ) -> Callable[[F], F]:
    """Attach the OpenAPI description of one operation to its view: `headers` are the
    request headers it reads, `response_headers` those it may answer with, by status."""

    def attach(view: F) -> F:
        view._openapi = {  # type: ignore[attr-defined]
            "summary": summary, "tag": tag, "responses": responses, "body": body, "query": query,
            "headers": headers, "response_headers": dict(response_headers or {}),
        }
        return view

    return attach


def _schema_ref(spec: APISpec, schema: type[Schema]) -> dict[str, str]:
    name = schema.__name__.removesuffix("Schema")
    if name not in spec.components.schemas:
        spec.components.schema(name, component=getattr(schema, "OPENAPI_EXTRA", None),
                               schema=schema)
    return {"$ref": f"#/components/schemas/{name}"}


def _content(spec: APISpec, schema: type[Schema] | list[type[Schema]]) -> dict[str, Any]:
    if isinstance(schema, list):
        return {"application/json": {"schema": {"oneOf": [_schema_ref(spec, s) for s in schema]}}}
    return {"application/json": {"schema": _schema_ref(spec, schema)}}


def _operation(spec: APISpec, rule: Any, method: str, notes: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": notes["summary"],
        "tags": [notes["tag"]],
        "operationId": f"{rule.endpoint.replace('.', '_')}_{method}",
        "parameters": [
            {"in": "path", "name": name, "required": True,
             "schema": {"type": "string", **_PATH_PATTERNS.get(name, {})}}
            for name in sorted(rule.arguments)
        ],
        "responses": {"default": {"$ref": "#/components/responses/Problem"}},
    }
    if rule.rule.startswith("/v1/"):
        operation["security"] = [{"bearer": []}, {"apiKey": []}]
    if notes["query"] is not None:
        operation["parameters"].append({"in": "query", "schema": notes["query"]})
    operation["parameters"] += [{"in": "header", "name": header.name, "required": False,
                                 **header.described()} for header in notes["headers"]]
    if notes["body"] is not None:
        operation["requestBody"] = {"required": True, "content": _content(spec, notes["body"])}
    for status, (description, schema) in notes["responses"].items():
        response: dict[str, Any] = {"description": description}
        if schema is not None:
            response["content"] = _content(spec, schema)
        if notes["response_headers"].get(status):
            response["headers"] = {header.name: header.described()
                                   for header in notes["response_headers"][status]}
        operation["responses"][str(status)] = response
    return operation


def _fact_data(_converter: Any, field: fields.Field, **_: Any) -> dict[str, Any]:
    """Fact data as JSON Schema says it, where marshmallow's Dict says only 'object'."""
    return dict(FactData.JSON_SCHEMA) if isinstance(field, FactData) else {}


def build_spec(flask_app: Flask) -> dict[str, Any]:
    marshmallow = MarshmallowPlugin()
    spec = APISpec(
        title="Decision service", version=VERSION, openapi_version="3.1.0",
        plugins=[marshmallow],
        info={"description": "Facts in, governed decisions out: rules, then OPA, then dispatch."},
    )
    assert marshmallow.converter is not None
    marshmallow.converter.add_attribute_function(_fact_data)
    spec.components.schema("DataValue", DATA_VALUE_SCHEMA)
    spec.components.schema("Problem", schema=ProblemSchema)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer",
                                               "description": "an API key"})
    spec.components.security_scheme("apiKey", {"type": "apiKey", "in": "header",
                                               "name": "X-API-Key"})
    spec.components.response("Problem", {
        "description": "an RFC 9457 problem",
        "content": {"application/problem+json": {"schema": "Problem"}},
    })
    for rule in sorted(flask_app.url_map.iter_rules(), key=lambda r: r.rule):
        notes = getattr(flask_app.view_functions[rule.endpoint], "_openapi", None)
        if notes is None:
            continue
        methods = sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
        spec.path(
            path=_PATH_PARAM.sub(r"{\1}", rule.rule),
            operations={m.lower(): _operation(spec, rule, m.lower(), notes) for m in methods},
        )
    document = spec.to_dict()
    limit = flask_app.extensions["decision_service"].settings.max_batch  # configured, so here
    for name in ("FactBatchIn", "DecisionIn"):
        document["components"]["schemas"][name]["properties"]["facts"]["maxItems"] = limit
    return document


@bp.get("/openapi.json")
def openapi_document() -> dict[str, Any]:
    return build_spec(current_app)
