"""/openapi.json describes every route the service has."""

from __future__ import annotations

import re
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient


def test_every_route_is_in_the_openapi_document(app: Flask, client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    routes = {rule.rule.replace("<", "{").replace(">", "}").replace("{fact_id}", "{fact_id}")
              for rule in app.url_map.iter_rules() if rule.endpoint not in (
                  "static", "openapi.openapi_document") and not rule.endpoint.startswith("pages.")}
    assert routes <= set(document["paths"])


def readme_api_table() -> set[tuple[str, str]]:
    """(method, path) of each row of README's "HTTP API" table, path parameters as `<>`."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("\n## HTTP API")
    section = readme[start:readme.index("\n## ", start + 1)]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {(method, re.sub(r"<[^>]*>", "<>", path)) for row in rows
            for method, path in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`?\s]*)", row)}


def test_every_route_is_in_the_readmes_api_table(app: Flask) -> None:
    """README's table is where users look for the API: no route may be missing from it
    (`GET /metrics` once was)."""
    served = {(method, re.sub(r"<[^>]*>", "<>", rule.rule))
              for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})}
    table = readme_api_table()
    assert ("GET", "/metrics") in table and ("GET", "/v1/decisions/<>") in table
    assert sorted(served - table) == []


def test_the_fact_request_schema_carries_the_validation_rules(client: FlaskClient) -> None:
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    fact_in = schemas["FactIn"]
    assert set(fact_in["required"]) == {"subject", "type", "department", "data"}
    assert fact_in["properties"]["subject"]["pattern"].startswith("^")
    assert "Problem" in schemas


def test_the_idempotency_headers_are_documented(client: FlaskClient) -> None:
    """A client learns from the document that POST /v1/decisions takes an Idempotency-Key
    and may answer 200 with Idempotent-Replayed; what the document allows, the service takes."""
    operation = client.get("/openapi.json").get_json()["paths"]["/v1/decisions"]["post"]
    headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
    key = headers["Idempotency-Key"]
    assert key["required"] is False and "409" in key["description"]
    replayed = operation["responses"]["200"]["headers"]["Idempotent-Replayed"]
    assert replayed["schema"] == {"type": "string", "enum": ["true"]}

    pattern, longest = key["schema"]["pattern"], key["schema"]["maxLength"]
    body = {"subject": "PR-IDEM", "ruleset": "procurement"}
    taken = "k" * longest
    assert re.fullmatch(pattern, taken) and not re.fullmatch(pattern, taken + "k")
    first = client.post("/v1/decisions", json=body, headers={"Idempotency-Key": taken})
    again = client.post("/v1/decisions", json=body, headers={"Idempotency-Key": taken})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["Idempotent-Replayed"] in replayed["schema"]["enum"]
    refused = client.post("/v1/decisions", json=body, headers={"Idempotency-Key": taken + "k"})
    assert refused.status_code == 422
