"""The decision-service command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from rules_support import SAMPLE_RULES

from app.cli import main


def test_rules_validate_accepts_the_sample_rules() -> None:
    result = CliRunner().invoke(main, ["rules", "validate", str(SAMPLE_RULES.parent)])
    assert result.exit_code == 0, result.output
    assert "ok: " in result.output
    assert "ruleset procurement version" in result.output


def test_rules_validate_prints_every_problem_and_fails(tmp_path: Path) -> None:
    shutil.copy(SAMPLE_RULES, tmp_path / "good.yaml")
    (tmp_path / "bad_one.yaml").write_text(
        "ruleset: one\nrules:\n  - {name: r, when: {a: {x: {'~': 1}}}, then: [{run: x}]}\n")
    (tmp_path / "bad_two.json").write_text('{"ruleset": "two", "rules": []}')
    result = CliRunner().invoke(main, ["rules", "validate", str(tmp_path)])
    assert result.exit_code == 1
    assert "bad_one.yaml:3: rule r: when.a.x.~: unknown operator '~'" in result.output
    assert "bad_one.yaml:3: rule r: then.0: each step is" in result.output
    assert "bad_two.json: rules: needs a list of at least one rule" in result.output
    assert "ok: " in result.output and "good.yaml" in result.output
    assert "2 problem(s) in 3 rule file(s)" in result.output


def test_config_prints_every_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DECISION_REDIS_URL", "DECISION_MASK_FIELDS", "DECISION_BACKGROUND_WORKER",
                 "DECISION_REDIS_CLUSTER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DECISION_POLICY_ALLOWED_BUILTINS", "http.send,opa.runtime")
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    values = dict(line.split("=", 1) for line in lines if line.startswith("DECISION_"))
    assert values["DECISION_RULES_DIR"] == "rules"
    # Unset and empty in words, never Python's None or ()
    assert values["DECISION_REDIS_URL"] == "(not set)"
    assert values["DECISION_MASK_FIELDS"] == "none"
    assert values["DECISION_POLICY_ALLOWED_BUILTINS"] == "http.send,opa.runtime"
    assert values["DECISION_BACKGROUND_WORKER"] == "true"
    defaults = [line for line in lines if "(default: " in line]
    assert len(defaults) == len(values)
    assert not [line for line in defaults if line.endswith(("(default: )", "(default: ())"))]
    assert "(default: not set)" in "\n".join(defaults)
    assert "(default: none)" in "\n".join(defaults)
    assert values["DECISION_REDIS_CLUSTER"] == "auto"
    assert not [line for line in lines if line.endswith(("=", "=()", "=None"))]


def test_policy_test_runs_the_sample_policy_tests() -> None:
    rego = SAMPLE_RULES.parent.parent / "rego"
    result = CliRunner().invoke(main, ["policy", "test", str(rego), "-v"])
    assert result.exit_code == 0, result.output
    assert "data.decision.governance_test.test_order_above_the_available_budget_is_denied: PASS" \
        in result.output
    assert "FAIL" not in result.output


def test_policy_test_reports_failures_and_errors(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package p\nallow := input.ok\n")
    (tmp_path / "p_test.rego").write_text(
        "package p_test\nimport data.p\n"
        "test_passes if { p.allow with input as {\"ok\": true} }\n"
        "test_fails if { p.allow with input as {\"ok\": false} }\n"
        "test_errors if { 1 / 0 == 1 }\n")
    result = CliRunner().invoke(main, ["policy", "test", str(tmp_path)])
    assert result.exit_code == 1
    assert "data.p_test.test_fails: FAIL" in result.output
    assert "data.p_test.test_errors: ERROR" in result.output
    assert "divide by zero" in result.output
    assert "PASS: 1/3" in result.output and "FAIL: 1/3" in result.output


def test_policy_test_reports_a_policy_that_does_not_compile(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package p\nallow if {\n")
    result = CliRunner().invoke(main, ["policy", "test", str(tmp_path)])
    assert result.exit_code == 1
    assert "p.rego:" in result.output and "rego_parse_error" in result.output


def test_keys_new_prints_a_key_and_its_hashed_entry() -> None:
    import yaml

    from app.policy.access import hash_key

    result = CliRunner().invoke(main, ["keys", "new", "--id", "finance-erp",
                                       "--department", "finance"])
    assert result.exit_code == 0
    key = next(line[2:] for line in result.output.splitlines() if line.startswith("# dsk_"))
    [entry] = yaml.safe_load(result.output)["keys"]
    assert entry["sha256"] == hash_key(key)
    assert entry["departments"] == ["finance"]


def test_rules_validate_warns_about_unowned_types_and_refuses_owner_conflicts(
        tmp_path: Path) -> None:
    shutil.copy(SAMPLE_RULES, tmp_path / "procurement.yaml")
    (tmp_path / "open.yaml").write_text(
        "ruleset: open\nrules:\n  - {name: r, when: {a: {type: order}}, then: "
        "[{propose: {action: x}}]}\n")
    warned = CliRunner().invoke(main, ["rules", "validate", str(tmp_path)])
    assert warned.exit_code == 0, warned.output
    assert "warning: " in warned.output and "no department owns fact type 'order'" in warned.output
    (tmp_path / "claims.yaml").write_text(
        "ruleset: claims\nfacts:\n  approval: {owners: [finance]}\nrules:\n"
        "  - {name: r, when: {a: {type: approval}}, then: [{propose: {action: x}}]}\n")
    refused = CliRunner().invoke(main, ["rules", "validate", str(tmp_path)])
    assert refused.exit_code == 1
    assert ("facts.approval: ruleset claims lets finance post 'approval', but ruleset "
            "procurement derives it: it cannot be posted") in refused.output


def _levels(stderr: str) -> set[str]:
    return {json.loads(line)["level"] for line in stderr.splitlines() if line.startswith("{")}


def test_commands_log_warnings_and_errors_only_unless_asked(
        redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator's command prints its answer, not the service's INFO lines (what it
    loaded); --verbose or DECISION_LOG_LEVEL brings them back; the worker keeps them."""
    from app.policy.embedded import GO_RUNTIME

    for name, value in GO_RUNTIME.items():
        monkeypatch.setenv(name, value)  # else `worker` starts this process again with them
    monkeypatch.setenv("DECISION_REDIS_URL", redis_url)
    monkeypatch.setenv("DECISION_LOG_FORMAT", "json")
    monkeypatch.delenv("DECISION_LOG_LEVEL", raising=False)

    def levels(*args: str) -> set[str]:
        result = CliRunner().invoke(main, list(args))
        assert result.exit_code == 0, result.output
        return _levels(result.stderr)

    assert "INFO" in levels("--verbose", "actions", "failed")
    assert levels("actions", "failed") <= {"WARNING", "ERROR", "CRITICAL"}
    assert "INFO" in levels("worker", "--once")
    monkeypatch.setenv("DECISION_LOG_LEVEL", "info")
    assert "INFO" in levels("actions", "failed")
