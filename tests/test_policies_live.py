"""What is live: the policy revision a service evaluates with, the last rejected change,
whether the files on disk are the live ones (API, /readyz, the metric, the CLI), in both
modes: embedded OPA, and the real OPA sidecar pulling the service's bundle."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from opa_sidecar import OpaServer, ServedApp, free_port

from app import create_app
from app.cli import main
from app.policy.access import hash_key
from app.policy.files import load_policy_set
from app.shared import keys
from app.shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
REGO = ROOT / "rego"
GOVERNANCE = "decision/governance/governance.rego"
LIMITS = "decision/limits/data.json"
BROKEN = "\nbroken_rule if {\n\tinput.x ==\n"  # a parse error at the end of the module


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rego"
    shutil.copytree(REGO, directory)
    return directory


def make_app(redis_url: str, tmp_path: Path, policy_dir: Path, **overrides: Any) -> Flask:
    return create_app(Settings.load(environ={}, overrides={
        "redis_url": redis_url, "data_dir": tmp_path, "rules_dir": ROOT / "rules",
        "policy_dir": policy_dir, "background_worker": False,
        "policy_reload_seconds": 0.05, **overrides}))


@pytest.fixture
def apps(redis_url: str, redis_client: redis.Redis,
         tmp_path: Path) -> Any:
    made: list[Flask] = []

    def make(policy_dir: Path, **overrides: Any) -> Flask:
        app = make_app(redis_url, tmp_path, policy_dir, **overrides)
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["decision_service"].close()


def break_governance(policy_dir: Path, text: str = BROKEN) -> int:
    """Append a syntax error to governance.rego; the line OPA will name."""
    path = policy_dir / GOVERNANCE
    source = path.read_text()
    path.write_text(source + text)
    time.sleep(0.06)  # past policy_reload_seconds
    return source.count("\n") + text.count("\n") + 1


def rejected_count(client: FlaskClient, *others: FlaskClient) -> int:
    """The counter as /metrics shows it, once every process published what it counted."""
    for other in others:
        other.application.extensions["decision_service"].metrics.flush(force=True)
    text = client.get("/metrics").get_data(as_text=True)
    assert "# TYPE decision_policy_files_rejected counter" in text
    found = re.search(r"^decision_policy_files_rejected (\d+)$", text, re.MULTILINE)
    return int(found.group(1)) if found else 0


# --- embedded ---------------------------------------------------------------------------


def test_the_live_policies_are_listed_with_their_files(apps: Callable[..., Flask],
                                                       policy_dir: Path) -> None:
    client = apps(policy_dir).test_client()
    answer = client.get("/v1/policies").get_json()
    revision = load_policy_set(policy_dir).revision
    assert answer["revision"] == answer["disk_revision"] == revision
    assert answer["live"] is True
    assert answer["problems"] == [] and answer["rejected_at"] is None
    files = {f["path"]: f for f in answer["files"]}
    assert files[GOVERNANCE]["kind"] == "module"
    assert files["decision/governance/governance_test.rego"]["kind"] == "test"
    assert files[LIMITS]["kind"] == "data"
    assert files[LIMITS]["sha256"] == hashlib.sha256(
        (policy_dir / LIMITS).read_text().encode()).hexdigest()
    assert set(files) == {str(p.relative_to(policy_dir)) for p in policy_dir.rglob("*")
                          if p.is_file() and (p.suffix == ".rego" or p.name == "data.json")}

    sources = client.get("/v1/policies/sources").get_json()
    assert sources["revision"] == revision
    assert sources["sources"][GOVERNANCE] == (policy_dir / GOVERNANCE).read_text()
    assert not any(path.endswith("_test.rego") for path in sources["sources"])


def test_a_rejected_change_is_shown_while_the_last_good_policies_stay_live(
        apps: Callable[..., Flask], policy_dir: Path) -> None:
    client = apps(policy_dir).test_client()
    good = load_policy_set(policy_dir).revision
    good_source = (policy_dir / GOVERNANCE).read_text()
    line = break_governance(policy_dir)

    ready = client.get("/readyz")
    assert ready.status_code == 200  # the last good version decides: still ready
    body = ready.get_json()
    assert body["checks"]["policy"] == "ok"
    assert body["policy"]["revision"] == good
    assert body["policy"]["rejected_problems"] == 1
    assert body["policy"]["rejected_at"]
    [warning] = body["warnings"]
    assert f"revision {good} stays live" in warning
    # /readyz needs no key: it counts the problems, and never shows a file or OPA's words
    assert GOVERNANCE not in ready.get_data(as_text=True)

    answer = client.get("/v1/policies").get_json()
    assert answer["revision"] == good
    assert answer["disk_revision"] == load_policy_set(policy_dir).revision != good
    assert answer["live"] is False
    [problem] = answer["problems"]
    assert problem["file"] == GOVERNANCE and problem["line"] == line
    assert answer["rejected_at"] == body["policy"]["rejected_at"]
    # what-ifs start from the live text, not the broken file
    assert client.get("/v1/policies/sources").get_json()["sources"][GOVERNANCE] == good_source

    (policy_dir / GOVERNANCE).write_text(good_source)  # fixed: live again, nothing rejected
    time.sleep(0.06)
    answer = client.get("/v1/policies").get_json()
    assert (answer["live"], answer["problems"], answer["rejected_at"]) == (True, [], None)
    assert "warnings" not in client.get("/readyz").get_json()


def test_each_rejected_change_is_counted_once_across_processes(apps: Callable[..., Flask],
                                                               policy_dir: Path) -> None:
    first, second = apps(policy_dir).test_client(), apps(policy_dir).test_client()
    assert rejected_count(first) == 0
    break_governance(policy_dir)
    for _ in range(3):  # every request after the change, in both "processes"
        assert first.get("/readyz").status_code == 200
        assert second.get("/v1/policies").get_json()["live"] is False
        assert first.post("/v1/decisions", json={"subject": "PR-1", "ruleset": "procurement"}
                          ).status_code in (201, 422)
    assert rejected_count(first, second) == 1
    assert rejected_count(second, first) == 1

    break_governance(policy_dir, "\nanother_broken if {\n")  # a second, different change
    assert second.get("/readyz").status_code == 200
    assert first.get("/readyz").status_code == 200
    assert rejected_count(first, second) == 2


def test_with_no_policy_ever_loaded_the_service_is_not_ready_and_says_so(
        apps: Callable[..., Flask], policy_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    line = break_governance(policy_dir)
    with caplog.at_level(logging.ERROR, logger="app.policy.embedded"):
        client = apps(policy_dir).test_client()
    messages = [r.getMessage() for r in caplog.records if r.name == "app.policy.embedded"]
    assert messages and all("no policies are loaded" in m for m in messages), messages
    assert not any("stay" in m for m in messages)  # there is nothing to stay active

    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert f"{GOVERNANCE}:{line}" in ready.get_json()["checks"]["policy"]
    answer = client.get("/v1/policies").get_json()
    assert (answer["revision"], answer["files"], answer["live"]) == ("none", [], False)
    assert answer["problems"][0]["file"] == GOVERNANCE
    sources = client.get("/v1/policies/sources")
    assert sources.status_code == 503
    assert sources.mimetype == "application/problem+json"
    assert "no policies are loaded" in sources.get_json()["detail"]


def test_a_change_while_the_old_policies_stay_active_logs_which_revision(
        apps: Callable[..., Flask], policy_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = apps(policy_dir).test_client()
    good = load_policy_set(policy_dir).revision
    break_governance(policy_dir)
    with caplog.at_level(logging.ERROR, logger="app.policy.embedded"):
        client.get("/readyz")
    [message] = [r.getMessage() for r in caplog.records if r.name == "app.policy.embedded"]
    assert f"revision {good} stays active" in message and GOVERNANCE in message


def test_a_whatif_starts_from_the_policies_on_disk_not_a_workers_stale_set(
        apps: Callable[..., Flask], policy_dir: Path) -> None:
    """A worker that has not decided since the files changed (reload far from due) still
    builds a candidate on the current files."""
    app = apps(policy_dir, policy_reload_seconds=3600)
    service = app.extensions["decision_service"]
    new_limits = json.dumps({"currency": "EUR", "legal_review_threshold": 1,
                             "max_risk_score": 0.5})
    (policy_dir / LIMITS).write_text(new_limits)
    candidates = service.replays.candidates(policy_sources={"decision/extra/data.json": "{}"})
    assert candidates.policies[LIMITS] == new_limits
    assert candidates.policies["decision/extra/data.json"] == "{}"
    assert service.policy.revision == load_policy_set(policy_dir).revision


def test_reading_the_policies_needs_the_analyst_or_operator_grant(
        apps: Callable[..., Flask], policy_dir: Path, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(yaml.safe_dump({"keys": [
        {"id": name, "sha256": hash_key(f"key-of-{name}-0123456789"), "departments": deps,
         "rulesets": [], "grants": grants}
        for name, deps, grants in [("analyst", [], ["analyst"]), ("ops", [], ["operator"]),
                                   ("finance", ["finance"], [])]]}))
    client = apps(policy_dir, api_keys_file=keys_file).test_client()

    def get(path: str, who: str | None) -> Any:
        return client.get(path, headers={"X-API-Key": f"key-of-{who}-0123456789"} if who
                          else {})

    for path in ("/v1/policies", "/v1/policies/sources"):
        assert get(path, "analyst").status_code == 200
        assert get(path, "ops").status_code == 200
        refused = get(path, "finance")
        assert refused.status_code == 403
        assert refused.get_json()["reasons"] == [
            "finance needs the analyst or the operator grant to read the policies."]
        assert get(path, None).status_code == 401


def test_the_policy_endpoints_are_documented(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    listed = document["paths"]["/v1/policies"]["get"]["responses"]["200"]
    assert listed["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PolicyList"}
    properties = document["components"]["schemas"]["PolicyList"]["properties"]
    assert set(properties) == {"revision", "files", "problems", "rejected_at",
                               "disk_revision", "live"}
    assert "/v1/policies/sources" in document["paths"]


# --- the command line -------------------------------------------------------------------


def status(redis_url: str, policy_dir: Path, tmp_path: Path) -> Any:
    return CliRunner().invoke(main, ["policy", "status"], env={
        "DECISION_REDIS_URL": redis_url, "DECISION_POLICY_DIR": str(policy_dir),
        "DECISION_DATA_DIR": str(tmp_path), "DECISION_REDIS_CLUSTER": "auto"})


def test_policy_status_compares_the_disk_with_every_running_process(
        policy_dir: Path, redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    result = status(redis_url, policy_dir, tmp_path)
    assert result.exit_code == 2, result.output  # nothing running has reported
    assert "no process of the service reported" in result.output

    running = [make_app(redis_url, tmp_path, policy_dir) for _ in range(2)]
    try:
        _compare_with_two_processes(running, policy_dir, redis_url, tmp_path)
    finally:
        for app in running:  # a closed process takes its record away
            app.extensions["decision_service"].close()
    assert redis_client.hlen(keys.policy_processes()) == 0


def _compare_with_two_processes(running: list[Flask], policy_dir: Path, redis_url: str,
                                tmp_path: Path) -> None:
    first, second = (app.test_client() for app in running)
    assert first.get("/readyz").status_code == second.get("/readyz").status_code == 200
    revision = load_policy_set(policy_dir).revision
    result = status(redis_url, policy_dir, tmp_path)
    assert result.exit_code == 0, result.output
    assert f"disk: {policy_dir}: revision {revision}, loads" in result.output
    assert result.output.count(f"(embedded): revision {revision} = disk") == 2
    assert "every process (2) runs the files on disk" in result.output

    line = break_governance(policy_dir)
    first.get("/readyz")  # reports at once after a rejected change
    second.get("/v1/policies")
    result = status(redis_url, policy_dir, tmp_path)
    assert result.exit_code == 1, result.output
    assert "does not load (1 problem(s))" in result.output
    assert f"{GOVERNANCE}:{line}: " in result.output
    assert result.output.count(f"revision {revision} != disk") == 2
    assert "2 of 2 process(es) run other policies than the files on disk" in result.output


def test_policy_status_ignores_a_process_that_stopped_reporting(
        policy_dir: Path, redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    revision = load_policy_set(policy_dir).revision
    redis_client.hset(keys.policy_processes(), "gone:1", json.dumps({
        "kind": "embedded", "revision": revision, "problems": [],
        "reported_at": "2020-01-01T00:00:00.000000Z"}))
    result = status(redis_url, policy_dir, tmp_path)
    assert result.exit_code == 2, result.output
    assert redis_client.hlen(keys.policy_processes()) == 0  # silent for years: forgotten


# --- the OPA sidecar --------------------------------------------------------------------


def _until(condition: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_with_a_sidecar_what_is_live_is_what_opa_runs(redis_url: str, redis_client: redis.Redis,
                                                       policy_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    app = make_app(redis_url, tmp_path / "s", policy_dir, opa_url=f"http://127.0.0.1:{port}")
    served = ServedApp(app)
    opa = OpaServer(tmp_path / "opa.log", port=port, bundle_url=f"{served.url}/v1")
    try:
        client = app.test_client()
        first = load_policy_set(policy_dir).revision
        _until(lambda: client.get("/readyz").status_code == 200)
        answer = client.get("/v1/policies").get_json()
        assert (answer["revision"], answer["disk_revision"], answer["live"]) == (
            first, first, True)
        assert GOVERNANCE in {f["path"] for f in answer["files"]}

        # A broken change: the service keeps serving the last good bundle, OPA keeps it.
        line = break_governance(policy_dir)
        answer = client.get("/v1/policies").get_json()
        assert answer["revision"] == first and answer["live"] is False
        assert answer["problems"][0]["file"] == GOVERNANCE
        assert answer["problems"][0]["line"] == line
        ready = client.get("/readyz").get_json()
        assert ready["policy_revisions"] == {"served": first, "sidecar": first}
        assert ready["warnings"]

        # A good change OPA has not pulled yet (it cannot reach the service): the sidecar
        # runs the old revision, whose text the archive has once a decision used it.
        decided = client.post("/v1/decisions", json={"subject": "PR-1",
                                                     "ruleset": "procurement"})
        assert decided.get_json()["policy"]["revision"] == first
        served.close()
        (policy_dir / GOVERNANCE).write_text((REGO / GOVERNANCE).read_text() + "\n# new\n")
        time.sleep(0.06)
        second = load_policy_set(policy_dir).revision
        answer = client.get("/v1/policies").get_json()
        assert (answer["revision"], answer["disk_revision"], answer["live"]) == (
            first, second, False)
        assert answer["problems"] == []
        sources = client.get("/v1/policies/sources").get_json()
        assert sources["revision"] == first
        assert sources["sources"][GOVERNANCE] == (REGO / GOVERNANCE).read_text()
        result = status(redis_url, policy_dir, tmp_path)
        assert result.exit_code == 1, result.output
        assert f"(sidecar): revision {first}, serving {second} != disk" in result.output
        assert "has not taken the bundle the service serves yet" in result.output

        served = ServedApp(app, port=int(served.url.rsplit(":", 1)[1]))
        _until(lambda: client.get("/v1/policies").get_json()["live"] is True)
        assert client.get("/v1/policies/sources").get_json()["revision"] == second
    finally:
        opa.close()
        served.close()
        app.extensions["decision_service"].close()


def test_a_sidecar_on_files_of_its_own_has_no_text_here(redis_url: str, redis_client: redis.Redis,
                                                         policy_dir: Path,
                                                         tmp_path: Path) -> None:
    opa = OpaServer(tmp_path / "opa.log", policies=REGO)
    app = make_app(redis_url, tmp_path, policy_dir, opa_url=opa.url)
    try:
        client = app.test_client()
        answer = client.get("/v1/policies").get_json()
        assert answer["revision"].startswith("opa-")
        assert answer["files"] == [] and answer["live"] is False
        assert answer["disk_revision"] == load_policy_set(policy_dir).revision
        sources = client.get("/v1/policies/sources")
        assert sources.status_code == 409
        assert "this service does not have their text" in sources.get_json()["detail"]
        whatif = client.post("/v1/replays", json={
            "fact_sets": [{"subject": "S", "ruleset": "procurement", "facts": []}],
            "policies": {LIMITS: "{}"}})
        assert whatif.status_code == 409  # never a what-if on a partial set
    finally:
        app.extensions["decision_service"].close()
        opa.close()


def test_a_whatif_on_policies_that_changed_since_they_were_loaded_is_refused(
        apps: Callable[..., Flask], policy_dir: Path) -> None:
    """The replay page sends the revision its editors were loaded at: if the live files
    changed since, the analyst's copy of one file would be laid over newer others."""
    client = apps(policy_dir).test_client()
    loaded = client.get("/v1/policies/sources").get_json()
    edited = loaded["sources"][LIMITS].replace("0.5", "0.4")
    whatif = {"fact_sets": [{"subject": "S", "ruleset": "procurement", "facts": []}],
              "policies": {LIMITS: edited}, "policies_revision": loaded["revision"]}
    assert client.post("/v1/replays", json=whatif).status_code == 200

    (policy_dir / GOVERNANCE).write_text((policy_dir / GOVERNANCE).read_text() + "\n# new\n")
    time.sleep(0.06)  # past policy_reload_seconds
    refused = client.post("/v1/replays", json=whatif)
    assert refused.status_code == 409, refused.get_json()
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert f"since you loaded revision {loaded['revision']}" in refused.get_json()["detail"]
    again = client.get("/v1/policies/sources").get_json()
    assert again["revision"] != loaded["revision"]
    assert client.post("/v1/replays", json={**whatif, "policies_revision": again["revision"]}
                       ).status_code == 200
