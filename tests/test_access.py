"""Who may call what: API keys (stored hashed) and the access policy in rego/."""

from __future__ import annotations

import hmac
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from conftest import key_count
from flask import Flask

from app import create_app
from app.policy.access import ApiKeys, hash_key
from app.shared.config import Settings
from app.shared.errors import ConfigurationError

REGO = Path(__file__).resolve().parent.parent / "rego"
KEYS = {
    "finance": ("finance-erp", ["finance"], [], []),
    "portal": ("procurement-portal", ["procurement"], ["procurement"], []),
    "analyst": ("analyst", [], ["*"], ["analyst"]),
}


def key_of(name: str) -> str:
    return f"test-key-{name}-0123456789"


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [
        {"id": cid, "sha256": hash_key(key_of(name)), "departments": deps, "rulesets": rs,
         "grants": grants} for name, (cid, deps, rs, grants) in KEYS.items()]}))
    return path


def settings_with(redis_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    return Settings.load(environ={}, overrides={"redis_url": redis_url, "data_dir": tmp_path,
                                                "policy_dir": REGO, **overrides})


@pytest.fixture
def secured(redis_url: str, redis_client: redis.Redis, tmp_path: Path,
            keys_file: Path) -> Iterator[Flask]:
    app = create_app(settings_with(redis_url, tmp_path, api_keys_file=keys_file))
    yield app
    app.extensions["decision_service"].close()


def as_(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key_of(name)}"}


def fact(department: str, fact_type: str = "budget_check", **extra: Any) -> dict[str, Any]:
    return {"subject": "PR-1", "type": fact_type, "department": department,
            "data": {"request_id": "PR-1"}, **extra}


def test_without_a_key_the_answer_is_401(secured: Flask) -> None:
    response = secured.test_client().post("/v1/facts", json=fact("finance"))
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert "API key" in response.get_json()["detail"]


def test_an_unknown_key_is_401(secured: Flask) -> None:
    client = secured.test_client()
    response = client.get("/v1/subjects/PR-1/facts", headers={"X-API-Key": "guess"})
    assert response.status_code == 401
    assert response.get_json()["detail"] == "the API key is not valid"


def test_a_department_posts_its_own_facts_with_either_header(secured: Flask) -> None:
    client = secured.test_client()
    assert client.post("/v1/facts", json=fact("finance"), headers=as_("finance")).status_code == 201
    assert client.post("/v1/facts", json=fact("finance"),
                       headers={"X-API-Key": key_of("finance")}).status_code == 201


def test_a_department_may_not_post_another_departments_facts(secured: Flask,
                                                             redis_client: redis.Redis) -> None:
    client = secured.test_client()
    response = client.post("/v1/facts", json={"facts": [fact("finance"), fact("legal")]},
                           headers=as_("finance"))
    assert response.status_code == 403
    problem = response.get_json()
    assert problem["reasons"] == ["finance-erp may not report facts for the legal department."]
    assert key_count(redis_client) == 0


def test_any_key_may_read_the_pool(secured: Flask) -> None:
    client = secured.test_client()
    client.post("/v1/facts", json=fact("finance"), headers=as_("finance"))
    response = client.get("/v1/subjects/PR-1/facts", headers=as_("portal"))
    assert response.status_code == 200
    assert len(response.get_json()["facts"]) == 1


def test_only_the_reporting_department_retracts_a_fact(secured: Flask) -> None:
    client = secured.test_client()
    client.post("/v1/facts", json=fact("finance", id="bud-1"), headers=as_("finance"))
    refused = client.delete("/v1/facts/bud-1", headers=as_("portal"))
    assert refused.status_code == 403
    assert "finance department" in refused.get_json()["detail"]
    assert client.delete("/v1/facts/bud-1", headers=as_("finance")).status_code == 204


def test_health_and_the_api_document_need_no_key(secured: Flask) -> None:
    client = secured.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert "bearer" in client.get("/openapi.json").get_json()["components"]["securitySchemes"]


def test_an_access_policy_that_cannot_decide_is_503_not_a_pass(
        redis_url: str, redis_client: redis.Redis, tmp_path: Path, keys_file: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # No background worker: its metrics flush would write a key of its own meanwhile, and
    # the app is closed whatever happens (a worker left running decides later tests' facts).
    app = create_app(settings_with(redis_url, tmp_path, api_keys_file=keys_file,
                                   opa_url=f"http://127.0.0.1:{port}", background_worker=False))
    try:
        response = app.test_client().post("/v1/facts", json=fact("finance"),
                                          headers=as_("finance"))
        assert response.status_code == 503
        assert "unreachable" in response.get_json()["detail"]
        assert key_count(redis_client) == 0
    finally:
        app.extensions["decision_service"].close()


def test_keys_never_appear_in_the_logs(secured: Flask, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = secured.test_client()
    client.post("/v1/facts", json=fact("legal"), headers=as_("finance"))
    client.get("/v1/subjects/PR-1/facts", headers={"X-API-Key": "wrong-key-xyz"})
    assert key_of("finance") not in caplog.text
    assert "wrong-key-xyz" not in caplog.text


def test_production_refuses_to_start_without_keys(redis_url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="DECISION_API_KEYS_FILE"):
        create_app(settings_with(redis_url, tmp_path, env="production"))


def test_without_keys_the_service_serves_only_on_loopback(redis_url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="only serves on loopback"):
        create_app(settings_with(redis_url, tmp_path, host="0.0.0.0"))


def test_without_keys_the_service_warns_loudly(redis_url: str, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(settings_with(redis_url, tmp_path))
    assert "NO API KEYS" in caplog.text
    app.extensions["decision_service"].close()


def test_a_keys_file_with_a_plain_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  - id: x\n    sha256: my-secret-key\n")
    with pytest.raises(ConfigurationError, match=r"keys\.0\.sha256: must be the SHA-256"):
        ApiKeys.load(path)


def test_a_key_is_matched_by_its_hash(keys_file: Path) -> None:
    keys = ApiKeys.load(keys_file)
    caller = keys.identify(key_of("analyst"))
    assert caller is not None
    assert (caller.id, caller.grants) == ("analyst", ("analyst",))
    assert keys.identify(hash_key(key_of("analyst"))) is None  # the hash is not the key


def test_decisions_only_on_granted_rulesets_and_own_inline_facts(secured: Flask) -> None:
    client = secured.test_client()
    allowed = client.post("/v1/decisions", json={"subject": "PR-1", "ruleset": "procurement"},
                          headers=as_("portal"))
    assert allowed.status_code == 201
    assert allowed.get_json()["caller"] == {"id": "procurement-portal",
                                            "departments": ["procurement"]}
    refused = client.post("/v1/decisions", json={"subject": "PR-1", "ruleset": "procurement"},
                          headers=as_("finance"))
    assert refused.status_code == 403
    assert refused.get_json()["reasons"] == [
        "finance-erp is not granted decisions on the procurement ruleset."]
    smuggled = client.post("/v1/decisions", headers=as_("portal"), json={
        "subject": "PR-1", "ruleset": "procurement",
        "facts": [{"type": "budget_check", "department": "finance",
                   "data": {"request_id": "PR-1", "available": 10**9}}]})
    assert smuggled.status_code == 403
    assert "may not give facts of the finance department" in smuggled.get_json()["detail"]


def test_key_comparison_takes_the_same_steps_whichever_key_or_none(
        keys_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ApiKeys.load(keys_file)
    compared: list[tuple[str, str]] = []
    compare_digest = hmac.compare_digest

    def counting(a: str, b: str) -> bool:
        compared.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr("app.policy.access.hmac.compare_digest", counting)
    for presented in (key_of("finance"), key_of("analyst"), "wrong", ""):
        compared.clear()
        keys.identify(presented)
        # every stored entry, in constant time, against the hash (fixed length) of the key
        assert len(compared) == len(KEYS)
        assert {len(digest) for _, digest in compared} == {64}


def test_operating_deliveries_needs_the_operator_grant(secured: Flask) -> None:
    client = secured.test_client()
    for response in (client.get("/v1/actions/failed", headers=as_("analyst")),
                     client.post("/v1/decisions/d-1/actions/a-1/redrive",
                                 headers=as_("portal"))):
        assert response.status_code == 403
        assert response.get_json()["reasons"][0].endswith(
            "needs the operator grant to re-drive actions.")
