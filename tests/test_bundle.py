"""The policy directory as an OPA bundle, and one policy revision for modules and data in
both modes: the service serves rego/ to the real OPA (`opa run --server`, pulling
`GET /v1/bundles/decision-service` as docker-compose.yml does), and a decision records the
same revision whichever OPA decided it, a change to a data file alone changes it, and
/readyz is not ready while the two sides differ."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from flask import Flask
from opa_sidecar import OpaServer, ServedApp, free_port
from test_decisions import case

from app import create_app
from app.policy.access import hash_key
from app.policy.files import load_policy_set
from app.shared.config import Settings

REGO = Path(__file__).resolve().parent.parent / "rego"
BUNDLE = "/v1/bundles/decision-service"


def settings(redis_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    return Settings.load(environ={}, overrides={
        "redis_url": redis_url, "data_dir": tmp_path, "policy_dir": REGO,
        "background_worker": False, "opa_timeout_seconds": 5.0, **overrides})


@pytest.fixture
def app(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[Flask]:
    flask_app = create_app(settings(redis_url, tmp_path))
    yield flask_app
    flask_app.extensions["decision_service"].close()


def members(body: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()  # type: ignore[union-attr]
                if m.isfile()}


def test_the_policy_directory_is_served_as_an_opa_bundle(app: Flask) -> None:
    client = app.test_client()
    response = client.get(BUNDLE)
    assert response.status_code == 200
    assert response.mimetype == "application/gzip"
    etag = response.headers["ETag"]
    files = members(response.data)
    policies = load_policy_set(REGO)
    assert json.loads(files[".manifest"])["revision"] == policies.revision
    assert {name: content.decode() for name, content in files.items()
            if not name.startswith((".", "decision_service/"))} == dict(policies.sources)
    assert not any(name.endswith("_test.rego") for name in files)
    assert sorted(name for name in files if name.startswith("decision_service/")) == [
        "decision_service/batch/decision/access/batch.rego",
        "decision_service/batch/decision/governance/batch.rego"]
    again = client.get(BUNDLE, headers={"If-None-Match": etag})
    assert (again.status_code, again.data, again.headers["ETag"]) == (304, b"", etag)
    assert client.get(BUNDLE, headers={"If-None-Match": '"other"'}).status_code == 200
    assert client.get("/v1/bundles/other").status_code == 404


def test_reading_the_bundle_needs_the_policy_bundle_grant(redis_url: str,
                                                          redis_client: redis.Redis,
                                                          tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [
        {"id": "opa-sidecar", "sha256": hash_key("opa-key-0123456789"),
         "grants": ["policy-bundle"]},
        {"id": "analyst", "sha256": hash_key("analyst-key-0123456789"), "rulesets": ["*"],
         "grants": ["analyst", "operator"]}]}))
    flask_app = create_app(settings(redis_url, tmp_path, api_keys_file=keys))
    try:
        client = flask_app.test_client()
        assert client.get(BUNDLE).status_code == 401
        refused = client.get(BUNDLE, headers={"Authorization": "Bearer analyst-key-0123456789"})
        assert refused.status_code == 403
        assert "only a key with the policy-bundle grant" in refused.get_json()["detail"]
        assert client.get(BUNDLE, headers={
            "Authorization": "Bearer opa-key-0123456789"}).status_code == 200
    finally:
        flask_app.extensions["decision_service"].close()


def _until(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds}s"
        time.sleep(0.1)


def _decide(client: Any, subject: str, vendor: str = "Globex") -> dict[str, Any]:
    assert client.post("/v1/facts", json={"facts": case(subject, vendor=vendor)}).status_code \
        == 201
    response = client.post("/v1/decisions", json={"subject": subject, "ruleset": "procurement"})
    assert response.status_code == 201, response.get_json()
    record: dict[str, Any] = response.get_json()
    return record


def test_one_revision_for_modules_and_data_in_both_modes(redis_url: str,
                                                         redis_client: redis.Redis,
                                                         tmp_path: Path) -> None:
    policies = tmp_path / "rego"
    shutil.copytree(REGO, policies)
    port = free_port()
    sidecar_app = create_app(settings(redis_url, tmp_path / "s", policy_dir=policies,
                                      opa_url=f"http://127.0.0.1:{port}",
                                      policy_reload_seconds=0.2))
    embedded_app = create_app(settings(redis_url, tmp_path / "e", policy_dir=policies,
                                       policy_reload_seconds=0.2))
    served = ServedApp(sidecar_app)
    opa = OpaServer(tmp_path / "opa.log", port=port, bundle_url=f"{served.url}/v1")
    try:
        sidecar, embedded = sidecar_app.test_client(), embedded_app.test_client()
        first = load_policy_set(policies).revision
        _until(lambda: sidecar.get("/readyz").status_code == 200)
        assert sidecar.get("/readyz").get_json()["policy_revisions"] == {
            "served": first, "sidecar": first}
        assert embedded.get("/readyz").get_json()["policy_revisions"] == {"embedded": first}
        by_sidecar, by_embedded = _decide(sidecar, "PR-1"), _decide(embedded, "PR-2")
        assert by_sidecar["policy"]["revision"] == by_embedded["policy"]["revision"] == first
        assert [a["verdict"]["outcome"] for a in by_sidecar["actions"]] == ["allow", "allow"]
        ids = {a["verdict"]["opa_decision_id"] for a in by_sidecar["actions"]}
        assert len(ids) == 1 and None not in ids  # both actions in one OPA decision
        assert all("opa_decision_id" not in a["verdict"] for a in by_embedded["actions"])
        [opa_decision] = ids
        assert opa.logged_decision(opa_decision)["input"]["common"]["decision"]["id"] == \
            by_sidecar["decision_id"]  # OPA's log and the service's record name each other

        # Only a data file changes (Globex is sanctioned now), while OPA cannot reach the
        # service for its next poll: it keeps the bundle it has.
        served.close()
        sanctions = policies / "decision" / "sanctions" / "data.json"
        document = json.loads(sanctions.read_text())
        document["vendors"].append({"name": "Globex", "list": "test", "reference": "T-1"})
        sanctions.write_text(json.dumps(document))
        second = load_policy_set(policies).revision
        assert second != first
        time.sleep(0.3)  # past policy_reload_seconds: the next use reloads
        not_ready = sidecar.get("/readyz")
        assert not_ready.status_code == 503
        problem = not_ready.get_json()
        assert problem["detail"] == (f"policy: OPA runs revision {first} of bundle "
                                     f"decision-service, the service serves {second} (OPA "
                                     "takes it at its next poll)")
        assert problem["policy_revisions"] == {"served": second, "sidecar": first}
        served = ServedApp(sidecar_app, port=int(served.url.rsplit(":", 1)[1]))
        _until(lambda: sidecar.get("/readyz").status_code == 200)
        assert sidecar.get("/readyz").get_json()["policy_revisions"] == {
            "served": second, "sidecar": second}
        by_sidecar, by_embedded = _decide(sidecar, "PR-3"), _decide(embedded, "PR-4")
        assert by_sidecar["policy"]["revision"] == by_embedded["policy"]["revision"] == second
        for record in (by_sidecar, by_embedded):
            outcomes = {a["type"]: a["verdict"]["outcome"] for a in record["actions"]}
            assert (outcomes["issue_purchase_order"], outcomes["expedite_delivery"]) == (
                "deny", "deny")
            assert "sanctions list" in record["actions"][0]["verdict"]["reasons"][0]

        # The sidecar's policies were the service's own: archived, so they replay.
        service = sidecar_app.extensions["decision_service"]
        cases, _ = service.replays.replay_cases(decision_ids=[by_sidecar["decision_id"]])
        replayed = service.replays.replay(cases)
        assert replayed["results"][0]["changed"] is False
        assert replayed["results"][0]["versions"]["before"]["policy"] == second
    finally:
        opa.close()
        served.close()
        sidecar_app.extensions["decision_service"].close()
        embedded_app.extensions["decision_service"].close()


def test_a_plain_opa_without_a_bundle_still_decides(redis_url: str, redis_client: redis.Redis,
                                                     tmp_path: Path) -> None:
    """`opa run --server <dir>`: no bundle, so the revision is what OPA serves (modules and
    data), and there is no served revision to wait for."""
    opa = OpaServer(tmp_path / "opa.log", policies=REGO)
    flask_app = create_app(settings(redis_url, tmp_path, opa_url=opa.url))
    try:
        client = flask_app.test_client()
        record = _decide(client, "PR-1")
        assert [a["verdict"]["outcome"] for a in record["actions"]] == ["allow", "allow"]
        assert record["policy"]["revision"].startswith("opa-")
        assert len({a["verdict"]["opa_decision_id"] for a in record["actions"]}) == 2
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.get_json()["policy_revisions"]["sidecar"] == record["policy"]["revision"]
    finally:
        flask_app.extensions["decision_service"].close()
        opa.close()
