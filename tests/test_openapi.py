"""/openapi.json describes every route the service has."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient


def test_every_route_is_in_the_openapi_document(app: Flask, client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    routes = {rule.rule.replace("<", "{").replace(">", "}").replace("{fact_id}", "{fact_id}")
              for rule in app.url_map.iter_rules() if rule.endpoint not in (
                  "static", "openapi.openapi_document") and not rule.endpoint.startswith("pages.")}
    assert routes <= set(document["paths"])


def test_the_fact_request_schema_carries_the_validation_rules(client: FlaskClient) -> None:
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    fact_in = schemas["FactIn"]
    assert set(fact_in["required"]) == {"subject", "type", "department", "data"}
    assert fact_in["properties"]["subject"]["pattern"].startswith("^")
    assert "Problem" in schemas
