"""Every validation rule of POST /v1/facts: a problem that names the field, nothing stored."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from conftest import key_count
from flask.testing import FlaskClient

from app.shared.schemas import MAX_DATA_FIELDS

PROBLEM = "application/problem+json"


def valid() -> dict[str, Any]:
    return {"subject": "PR-1", "type": "budget_check", "department": "finance",
            "data": {"available": 100}}


def with_(**changes: Any) -> dict[str, Any]:
    body = valid()
    for key, value in changes.items():
        if value is _DROP:
            del body[key]
        else:
            body[key] = value
    return body


_DROP = object()

CASES = [
    ("missing subject", with_(subject=_DROP), "subject", "Missing data for required field."),
    ("missing data", with_(data=_DROP), "data", "Missing data for required field."),
    ("empty subject", with_(subject=""), "subject", "must not be empty"),
    ("empty type", with_(type=""), "type", "must not be empty"),
    ("empty department", with_(department=""), "department", "must not be empty"),
    ("empty id", with_(id=""), "id", "must not be empty"),
    ("subject with a slash", with_(subject="a/b"), "subject", "starts with a letter or digit"),
    ("type with a space", with_(type="budget check"), "type", "starts with a letter"),
    ("subject of 129 chars", with_(subject="s" * 129), "subject", "at most 128"),
    ("number as subject", with_(subject=12), "subject", "Not a valid string."),
    ("list as department", with_(department=["finance"]), "department", "Not a valid string."),
    ("unknown field", with_(colour="red"), "colour", "Unknown field."),
    ("list as data", with_(data=[1, 2]), "data", "Not a valid mapping type."),
    ("string as data", with_(data="x"), "data", "Not a valid mapping type."),
    ("null data", with_(data=None), "data", "Field may not be null."),
    ("too many data fields",
     with_(data={f"f{i}": i for i in range(MAX_DATA_FIELDS + 1)}), "data", "at most 200"),
    ("reserved data field", with_(data={"type": "x"}), "data.type", "reserved"),
    ("bad data field name", with_(data={"1st": 1}), "data.1st", "field names start"),
    ("integer beyond 64 bits", with_(data={"n": 2**64}), "data.n", "64-bit"),
    ("too deeply nested data", with_(data={"n": json.loads("[" * 40 + "]" * 40)}),
     "data.n" + ".0" * 32, "nested deeper than 32"),
    ("ttl as string", with_(ttl_seconds="60"), "ttl_seconds", "Not a valid integer."),
    ("ttl as boolean", with_(ttl_seconds=True), "ttl_seconds", "Not a valid integer."),
    ("ttl as float", with_(ttl_seconds=1.5), "ttl_seconds", "Not a valid integer."),
    ("ttl of zero", with_(ttl_seconds=0), "ttl_seconds", "greater than or equal to 1"),
    ("empty batch", {"facts": []}, "facts", "at least one fact"),
    ("batch as an object", {"facts": {"a": valid()}}, "facts", "Not a valid list."),
    ("batch with an extra key", {"facts": [valid()], "more": 1}, "more", "Unknown field."),
    ("same id twice in a batch", {"facts": [with_(id="x"), with_(id="x")]}, "facts.1.id",
     "appears twice"),
    ("a list as the body", [valid()], "body", "must be a fact"),
]


@pytest.mark.parametrize(("body", "field", "reason"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_invalid_fact_is_rejected_naming_the_field(client: FlaskClient, redis_client: redis.Redis,
                                                   body: Any, field: str, reason: str) -> None:
    response = client.post("/v1/facts", json=body)
    assert response.status_code == 422
    assert response.mimetype == PROBLEM
    problem = response.get_json()
    assert problem["status"] == 422
    assert any(p["name"] == field and reason in p["reason"] for p in problem["invalid-params"]), \
        problem
    assert key_count(redis_client) == 0


def test_every_problem_is_reported_at_once(client: FlaskClient) -> None:
    response = client.post("/v1/facts", json={"subject": "", "type": "", "department": "d",
                                              "data": {}, "x": 1})
    names = {p["name"] for p in response.get_json()["invalid-params"]}
    assert names == {"subject", "type", "x"}


def test_a_batch_over_the_configured_size_is_rejected(client: FlaskClient, app: Any) -> None:
    limit = app.extensions["decision_service"].settings.max_batch
    response = client.post("/v1/facts", json={"facts": [valid()] * (limit + 1)})
    assert response.status_code == 422
    assert f"at most {limit}" in response.get_json()["detail"]


def test_an_oversized_body_is_413(client: FlaskClient, app: Any, redis_client: redis.Redis) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]
    body = with_(data={"blob": "x" * limit})
    response = client.post("/v1/facts", json=body)
    assert response.status_code == 413
    assert response.mimetype == PROBLEM
    assert str(limit) in response.get_json()["detail"]
    assert key_count(redis_client) == 0


@pytest.mark.parametrize(("payload", "detail"), [
    (b'{"subject": "PR-1", ', "not valid JSON"),
    (b'{"subject": "PR-1", "type": "t", "department": "d", "data": {"x": NaN}}', "NaN"),
    (b'{"data": {"x": Infinity}}', "Infinity"),
    (b"", "empty"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"subject": "PR-1", "type": "t", "department": "d", "data": {"x": "a\\ud800"}}',
     "half a surrogate pair"),
])
def test_a_body_that_is_not_json_is_400(client: FlaskClient, payload: bytes, detail: str) -> None:
    response = client.post("/v1/facts", data=payload, content_type="application/json")
    assert response.status_code == 400
    assert response.mimetype == PROBLEM
    assert detail in response.get_json()["detail"]


def test_a_body_not_declared_as_json_is_415(client: FlaskClient) -> None:
    response = client.post("/v1/facts", data=json.dumps(valid()), content_type="text/plain")
    assert response.status_code == 415
    assert response.mimetype == PROBLEM
