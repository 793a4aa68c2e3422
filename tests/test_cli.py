"""The decision-service command line."""

from __future__ import annotations

import shutil
from pathlib import Path

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
    assert "2 of 3 rule files rejected" in result.output


def test_config_prints_every_variable() -> None:
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0
    assert "DECISION_REDIS_URL=" in result.output
    assert "DECISION_RULES_DIR=" in result.output
