"""The scripts in scripts/ run as README writes them (`scripts/update-golden`,
`scripts/reliability soak`), whatever `python3` comes first on PATH: a Python without the
service's packages switches to the project's virtualenv before it needs them."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

pytestmark = pytest.mark.skipif(not VENV_PYTHON.exists(),
                                reason="the project's virtualenv (.venv) is not there")


@pytest.fixture
def bare_python_first(tmp_path: Path) -> dict[str, str]:
    """An environment whose `python3` (the scripts' shebang) is a Python without any
    site-packages, as the system Python of a README reader is."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python3 = bin_dir / "python3"
    base = Path(sys.base_prefix) / "bin" / "python3"
    python3.write_text(f'#!/bin/sh\nexec {shlex.quote(str(base))} -S "$@"\n')
    python3.chmod(0o755)
    probe = subprocess.run([str(python3), "-c", "import yaml"], capture_output=True, check=False)
    assert probe.returncode != 0, "the bare Python must lack the service's packages"
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_update_golden_runs_as_readme_writes_it(bare_python_first: dict[str, str]) -> None:
    result = run(["scripts/update-golden", "--check"], bare_python_first)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "procurement.expected.json: 0 subject(s) decide differently" in result.stdout


def test_name_folding_runs_as_readme_writes_it(bare_python_first: dict[str, str]) -> None:
    result = run(["scripts/name-folding", "--check"], bare_python_first)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


@pytest.mark.parametrize("script", ["scripts/bench", "scripts/reliability"])
def test_bench_and_reliability_start_as_readme_writes_them(
        script: str, bare_python_first: dict[str, str]) -> None:
    result = run([script, "--help"], bare_python_first)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "usage:" in result.stdout


def test_compliance_finds_the_projects_opa(bare_python_first: dict[str, str],
                                           tmp_path: Path) -> None:
    """Run on another Python, it looked for OPA beside that Python, found none and skipped
    every check, exiting 0."""
    if not (ROOT / ".venv" / "bin" / "opa").exists():
        pytest.skip("no OPA at .venv/bin/opa (make opa)")
    policies = tmp_path / "policies" / "tiny"
    policies.mkdir(parents=True)
    (policies / "tiny.rego").write_text("package tiny\n\nallow if input.ok\n")
    (policies / "tiny_test.rego").write_text(
        "package tiny_test\n\nimport data.tiny\n\ntest_allow if tiny.allow with input as "
        "{\"ok\": true}\n")
    result = run(["scripts/compliance", str(tmp_path / "policies")], bare_python_first)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compliance toolchain: formatted, strict check clean, tests pass" in result.stdout
