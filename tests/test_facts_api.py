"""The fact pool over HTTP: POST /v1/facts, GET /v1/subjects/<s>/facts, DELETE /v1/facts/<id>."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from conftest import CLUSTER
from flask.testing import FlaskClient

from app.shared import keys

PROBLEM = "application/problem+json"


def fact(subject: str = "PR-1001", type_: str = "purchase_request",
         department: str = "procurement", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"subject": subject, "type": type_, "department": department,
                            "data": {"request_id": subject, "amount": 120000}}
    body.update(extra)
    return body


def facts_of(client: FlaskClient, subject: str = "PR-1001") -> list[dict[str, Any]]:
    response = client.get(f"/v1/subjects/{subject}/facts")
    assert response.status_code == 200
    return response.get_json()["facts"]


def test_posting_one_fact_stores_it_with_id_version_and_time(client: FlaskClient) -> None:
    response = client.post("/v1/facts", json=fact())
    assert response.status_code == 201
    [stored] = response.get_json()["facts"]
    assert stored["version"] == 1
    assert stored["id"]
    assert stored["recorded_at"].endswith("Z")
    assert stored["expires_at"] is None
    assert facts_of(client) == [stored]


def test_facts_from_three_departments_read_back_together(client: FlaskClient) -> None:
    batch = [
        fact(),
        fact(type_="budget_check", department="finance",
             data={"request_id": "PR-1001", "available": 300000}),
        fact(type_="risk_assessment", department="risk",
             data={"request_id": "PR-1001", "score": 0.2}),
    ]
    response = client.post("/v1/facts", json={"facts": batch})
    assert response.status_code == 201
    pooled = facts_of(client)
    assert sorted(f["department"] for f in pooled) == ["finance", "procurement", "risk"]
    assert {f["type"]: f["data"] for f in pooled}["budget_check"] == {
        "request_id": "PR-1001", "available": 300000}


def test_subjects_do_not_see_each_others_facts(client: FlaskClient) -> None:
    client.post("/v1/facts", json={"facts": [fact("PR-1"), fact("PR-2")]})
    assert [f["subject"] for f in facts_of(client, "PR-1")] == ["PR-1"]
    assert facts_of(client, "PR-unknown") == []


def test_reposting_an_id_replaces_the_fact_and_bumps_its_version(client: FlaskClient) -> None:
    client.post("/v1/facts", json=fact(id="budget-1"))
    response = client.post("/v1/facts", json=fact(id="budget-1", data={"amount": 5}))
    assert response.get_json()["facts"][0]["version"] == 2
    [stored] = facts_of(client)
    assert (stored["id"], stored["version"], stored["data"]) == ("budget-1", 2, {"amount": 5})


def test_an_id_of_another_subject_is_a_conflict_and_stores_nothing(client: FlaskClient) -> None:
    client.post("/v1/facts", json=fact("PR-1", id="shared-id"))
    batch = [fact("PR-2"), fact("PR-2", id="shared-id")]
    response = client.post("/v1/facts", json={"facts": batch})
    assert response.status_code == 409
    assert response.mimetype == PROBLEM
    assert "PR-1" in response.get_json()["detail"]
    assert facts_of(client, "PR-2") == []


def test_a_batch_with_one_invalid_fact_stores_nothing(client: FlaskClient) -> None:
    response = client.post("/v1/facts", json={"facts": [fact(), fact(department="")]})
    assert response.status_code == 422
    assert response.get_json()["invalid-params"] == [
        {"name": "facts.1.department", "reason": "must not be empty"}]
    assert facts_of(client) == []


def test_retracting_a_fact_removes_it(client: FlaskClient) -> None:
    [stored] = client.post("/v1/facts", json=fact()).get_json()["facts"]
    assert client.delete(f"/v1/facts/{stored['id']}").status_code == 204
    assert facts_of(client) == []
    again = client.delete(f"/v1/facts/{stored['id']}")
    assert again.status_code == 404
    assert again.mimetype == PROBLEM


def test_a_retracted_id_can_be_posted_again_as_version_one(client: FlaskClient) -> None:
    client.post("/v1/facts", json=fact(id="f-1"))
    client.post("/v1/facts", json=fact(id="f-1"))
    client.delete("/v1/facts/f-1")
    response = client.post("/v1/facts", json=fact("PR-9", id="f-1"))
    assert response.status_code == 201
    assert response.get_json()["facts"][0]["version"] == 1


@pytest.mark.skipif(not CLUSTER, reason="a single server writes owner keys with their facts, "
                    "so none outlives its fact; a cluster writes them in a step before")
def test_on_a_cluster_an_owner_key_that_outlived_its_fact_is_ignored(
        client: FlaskClient, redis_client: redis.Redis) -> None:
    redis_client.set(keys.fact_owner("f-1"), "PR-5")  # a post that died after claiming the id
    assert client.delete("/v1/facts/f-1").status_code == 404
    response = client.post("/v1/facts", json=fact("PR-1", id="f-1"))
    assert response.status_code == 201
    assert [f["id"] for f in facts_of(client, "PR-1")] == ["f-1"]
    assert client.delete("/v1/facts/f-1").status_code == 204


def test_a_fact_with_ttl_expires(client: FlaskClient) -> None:
    client.post("/v1/facts", json={"facts": [fact(id="short", ttl_seconds=1), fact(id="long")]})
    assert {f["id"] for f in facts_of(client)} == {"short", "long"}
    time.sleep(1.1)
    assert [f["id"] for f in facts_of(client)] == ["long"]
    assert client.delete("/v1/facts/short").status_code == 404


def test_unknown_routes_and_methods_answer_problems(client: FlaskClient) -> None:
    missing = client.get("/v1/nothing-here")
    assert (missing.status_code, missing.mimetype) == (404, PROBLEM)
    wrong = client.put("/v1/facts", json=fact())
    assert (wrong.status_code, wrong.mimetype) == (405, PROBLEM)
    assert "POST" in wrong.headers["Allow"]


@pytest.mark.parametrize(("subject", "status"), [("bad subject", 422), ("PR-1", 200)])
def test_the_subject_in_the_path_is_validated(client: FlaskClient, subject: str,
                                              status: int) -> None:
    assert client.get(f"/v1/subjects/{subject}/facts").status_code == status
