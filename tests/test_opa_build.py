"""The pinned OPA: `make opa` builds the version tools/opa/go.mod pins (the embedded
engine's, OPA v1.20.2 in opa-golib-python-bindings 0.4.4), docker-compose.yml runs the
same version, a second `make opa` has nothing to do, and the sidecar configuration of
docker-compose.yml (config/opa.yaml, with the demo key) pulls the service's bundle."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import redis
import yaml
from opa_sidecar import OpaServer, ServedApp, require_opa

from app import create_app
from app.policy.files import load_policy_set
from app.policy.sidecar import SidecarPolicyEngine
from app.shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
PINNED = re.search(r"^require github.com/open-policy-agent/opa v(\S+)$",
                   (ROOT / "tools" / "opa" / "go.mod").read_text(), re.MULTILINE)


def test_the_binary_compose_and_go_mod_name_one_opa_version() -> None:
    assert PINNED is not None
    version = PINNED.group(1)
    assert version == "1.20.2"  # the embedded engine's (setup.cfg pins its bindings)
    printed = subprocess.run([str(require_opa()), "version"], capture_output=True, text=True,
                             check=True).stdout
    assert f"Version: {version}\n" in printed
    assert "Build Commit: \n" in printed  # no VCS stamp of this repository (-buildvcs=false)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["opa"]["image"] == f"openpolicyagent/opa:{version}"
    assert "opa-golib-python-bindings==0.4.4" in (ROOT / "setup.cfg").read_text()


def test_a_second_make_opa_has_nothing_to_do() -> None:
    require_opa()
    question = subprocess.run(["make", "-q", "opa"], cwd=ROOT, capture_output=True, text=True)
    assert question.returncode == 0, "the OPA binary is older than tools/opa: run make opa"


def test_the_compose_sidecar_configuration_pulls_the_bundle_with_the_demo_key(
        redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    flask_app = create_app(Settings.load(environ={}, overrides={
        "redis_url": redis_url, "data_dir": tmp_path, "policy_dir": ROOT / "rego",
        "rules_dir": ROOT / "rules", "background_worker": False,
        "api_keys_file": ROOT / "config" / "api-keys.example.yaml"}))
    served = ServedApp(flask_app)
    opa = OpaServer(tmp_path / "opa.log", config_file=ROOT / "config" / "opa.yaml",
                    extra_args=("--set", f"services.decision-service.url={served.url}/v1"))
    try:
        engine = SidecarPolicyEngine(opa.url, timeout_seconds=5, served=flask_app.extensions[
            "decision_service"].policy.engine.directory)
        assert engine.readiness() == "ok"
        assert engine.revisions()["sidecar"] == load_policy_set(ROOT / "rego").revision
        assert flask_app.test_client().get("/v1/bundles/decision-service").status_code == 401
    finally:
        opa.close()
        served.close()
        flask_app.extensions["decision_service"].close()
