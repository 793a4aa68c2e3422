"""`decision-service policy test`: run the Rego tests beside the policies, like `opa test`.

Each `test_*` rule of each `*_test.rego` module is evaluated with the embedded
engine over the policies, their data and the tests: true passes, false or
undefined fails, an evaluation error is an error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from opa_bindings import OpaEngine, OpaError

from app.policy.engines import compile_policy_set
from app.policy.files import load_policy_set

PASS, FAIL, ERROR = "PASS", "FAIL", "ERROR"


@dataclass(frozen=True)
class TestResult:
    file: str
    name: str  # data.<package>.<rule>
    outcome: str
    duration_ms: float
    message: str = ""


@dataclass
class TestReport:
    results: list[TestResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.outcome == PASS for r in self.results)


def _test_rules(parser: OpaEngine, file: str, source: str) -> list[str]:
    """`data.<package>.test_x` for every test rule of a module, in order of appearance."""
    [row] = parser.eval_query("m := rego.parse_module(input.file, input.source)",
                              {"file": file, "source": source})
    module = row["m"]
    package = ".".join(str(term["value"]) for term in module["package"]["path"][1:])
    names: list[str] = []
    for rule in module.get("rules", []):
        name = rule["head"].get("name", "")
        if name.startswith("test_") and name not in names:
            names.append(name)
    return [f"data.{package}.{name}" for name in names]


def run_policy_tests(directory: Path) -> TestReport:
    """Every test of the directory; raises PolicyInvalid when the policies do not compile."""
    policies = load_policy_set(directory)
    engine = compile_policy_set(policies, with_tests=True)
    report = TestReport()
    try:
        for file, source in sorted(policies.tests.items()):
            for test in _test_rules(engine, file, source):
                started = time.perf_counter()
                try:
                    rows = engine.eval_query(f"x := {test}")
                    outcome, message = (PASS, "") if rows and rows[0].get("x") is True else (
                        FAIL, "")
                except OpaError as exc:
                    outcome, message = ERROR, exc.message
                report.results.append(TestResult(
                    file, test, outcome, (time.perf_counter() - started) * 1000, message))
    finally:
        engine.close()
    return report
