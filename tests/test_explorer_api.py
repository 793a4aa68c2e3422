"""What the pages read beside decisions: who the caller is and what it may do, a ruleset's
live source (a what-if starts from it), and the ruleset version and policy files a
decision ran with, from the archive, long after the files have changed."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from flask import Flask
from flask.testing import FlaskClient
from test_replay import case, limits_data

from app import create_app
from app.policy.access import hash_key
from app.shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
LIMITS = "decision/limits/data.json"
KEYS = {  # name: (departments, rulesets, grants)
    "loader": (["*"], ["*"], []),
    "portal": (["procurement"], ["procurement"], []),
    "analyst": ([], ["*"], ["analyst"]),
    "operator": ([], [], ["operator"]),
}


def key_of(name: str) -> str:
    return f"explorer-key-{name}-0123456789"


def as_(name: str) -> dict[str, str]:
    return {"X-API-Key": key_of(name)}


@pytest.fixture
def live(tmp_path: Path) -> Path:
    """Rules and policies of this test's own, which it changes."""
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    shutil.copytree(ROOT / "rego", tmp_path / "rego")
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [
        {"id": name, "sha256": hash_key(key_of(name)), "departments": departments,
         "rulesets": rulesets, "grants": grants}
        for name, (departments, rulesets, grants) in KEYS.items()]}))
    return tmp_path


def make_app(redis_url: str, live: Path, **overrides: Any) -> Flask:
    return create_app(Settings.load(environ={}, overrides={
        "redis_url": redis_url, "data_dir": live, "rules_dir": live / "rules",
        "policy_dir": live / "rego", "background_worker": False, "rules_reload_seconds": 0,
        "policy_reload_seconds": 0, **overrides}))


@pytest.fixture
def secured(redis_url: str, redis_client: redis.Redis, live: Path) -> Iterator[Flask]:
    app = make_app(redis_url, live, api_keys_file=live / "keys.yaml")
    yield app
    app.extensions["decision_service"].close()


@pytest.fixture
def open_app(redis_url: str, redis_client: redis.Redis, live: Path) -> Iterator[Flask]:
    app = make_app(redis_url, live)
    yield app
    app.extensions["decision_service"].close()


def decide(client: FlaskClient, subject: str) -> dict[str, Any]:
    loader = as_("loader")
    assert client.post("/v1/facts", headers=loader,
                       json={"facts": case(subject)}).status_code == 201
    response = client.post("/v1/decisions", headers=loader,
                           json={"subject": subject, "ruleset": "procurement"})
    assert response.status_code == 201
    return dict(response.get_json())


def test_the_caller_learns_what_the_access_policy_lets_it_do(secured: Flask) -> None:
    client = secured.test_client()
    assert client.get("/v1/caller").status_code == 401
    operator = client.get("/v1/caller", headers=as_("operator")).get_json()
    assert (operator["id"], operator["grants"]) == ("operator", ["operator"])
    assert operator["may"]["actions.operate"] is True
    assert operator["may"]["replays.create"] is False
    analyst = client.get("/v1/caller", headers=as_("analyst")).get_json()
    assert analyst["may"]["actions.operate"] is False
    assert analyst["may"]["replays.create"] is True
    portal = client.get("/v1/caller", headers=as_("portal")).get_json()
    assert portal["may"] == {"decisions.read": True, "facts.read": True,
                             "rulesets.read": True, "rulesets.source": False,
                             "policies.read": False, "replays.create": False,
                             "actions.operate": False}


def test_without_keys_the_caller_is_anonymous_and_may_do_everything(open_app: Flask) -> None:
    caller = open_app.test_client().get("/v1/caller").get_json()
    assert caller["id"] == "anonymous"
    assert set(caller["may"].values()) == {True}


def test_a_ruleset_comes_with_its_live_source(secured: Flask, live: Path) -> None:
    client = secured.test_client()
    # a department may not read the rules its facts are judged by: it could tune them to pass
    refused = client.get("/v1/rulesets/procurement", headers=as_("portal"))
    assert refused.status_code == 403 and "analyst or the operator" in refused.get_json()["detail"]
    answer = client.get("/v1/rulesets/procurement", headers=as_("analyst"))
    assert answer.status_code == 200
    ruleset = answer.get_json()
    assert ruleset["source"] == (live / "rules" / "procurement.yaml").read_text()
    assert ruleset["name"] == "procurement" and ruleset["live"] is True
    assert ruleset["file"] == "procurement.yaml"  # in the rules directory, not where it is
    assert {"budget_confirmed", "issue_purchase_order"} <= set(ruleset["rules"])
    missing = client.get("/v1/rulesets/payroll", headers=as_("analyst"))
    assert missing.status_code == 404
    assert missing.mimetype == "application/problem+json"
    assert client.get("/v1/rulesets/procurement").status_code == 401


def test_a_decision_links_to_the_versions_it_ran_with_after_they_changed(
        secured: Flask, live: Path) -> None:
    client = secured.test_client()
    rules_file, limits_file = live / "rules" / "procurement.yaml", live / "rego" / LIMITS
    old_rules, old_limits = rules_file.read_text(), limits_file.read_text()
    decision = decide(client, "PR-1")
    rules_file.write_text(old_rules.replace('{">": 100000}', '{">": 5000}'))
    limits_file.write_text(limits_data(1))
    service = secured.extensions["decision_service"]
    service.rulesets.reload()
    service.policy.engine.reload()

    name, version = decision["ruleset"]["name"], decision["ruleset"]["version"]
    ran = client.get(f"/v1/rulesets/{name}/versions/{version}", headers=as_("analyst"))
    assert ran.status_code == 200
    assert ran.get_json()["source"] == old_rules and ran.get_json()["live"] is False
    now = client.get(f"/v1/rulesets/{name}", headers=as_("analyst")).get_json()
    assert now["version"] != version and now["source"] != old_rules

    revision = decision["policy"]["revision"]
    policies = client.get(f"/v1/policies/revisions/{revision}", headers=as_("analyst"))
    assert policies.status_code == 200
    body = policies.get_json()
    assert body["revision"] == revision and body["live"] is False
    assert body["sources"][LIMITS] == old_limits
    assert "decision/governance/governance.rego" in body["sources"]
    assert not [path for path in body["sources"] if path.endswith("_test.rego")]
    assert client.get(f"/v1/policies/revisions/{revision}",
                      headers=as_("operator")).status_code == 200


def test_versions_nobody_ran_are_not_found(secured: Flask) -> None:
    client = secured.test_client()
    for path in ("/v1/rulesets/procurement/versions/0123456789abcdef",
                 "/v1/rulesets/payroll/versions/0123456789abcdef",
                 "/v1/policies/revisions/0123456789abcdef"):
        answer = client.get(path, headers=as_("analyst"))
        assert answer.status_code == 404, path
        assert "not archived" in answer.get_json()["detail"]


def test_the_policy_files_are_for_analysts_and_operators(secured: Flask) -> None:
    client = secured.test_client()
    revision = decide(client, "PR-2")["policy"]["revision"]
    refused = client.get(f"/v1/policies/revisions/{revision}", headers=as_("portal"))
    assert refused.status_code == 403
    assert refused.get_json()["reasons"] == [
        "portal needs the analyst or the operator grant to read the policies."]
