"""`decision-service policy test`: run the Rego tests of a policy directory with the embedded
engine, as `opa test` runs them, so that both pass or fail on the same files.

As `opa test` does: every rule named `test_*` in any module of the directory is a test
(test files are `*_test.rego`, but a test in a policy module runs too); each definition of
a test is a test of its own, the second and later ones of a name reported as
`name#01`, `name#02`, ...; a test passes when it is `true`, and fails when it is false,
undefined or any other value; a rule named `todo_test_*` is skipped, and a skipped test
fails the run (`opa test` exits 2 then, unless `--exit-zero-on-skipped`); no test at all
passes, unless `fail_on_empty` (`opa test --fail-on-empty`).

One difference remains, in what a failing built-in function (a division by zero,
`to_number("x")`) does inside a test: `opa test` makes that expression undefined, and the
embedded engine, which evaluates with strict built-in errors, reports the test as an ERROR.
Either way the test does not pass, unless it expects that undefinedness (`not` of such an
expression passes in `opa test` and is an error here). `tests/test_policy_testing.py`
holds both runners to the same outcomes on rego/ and on a directory of every other case.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opa_bindings import OpaEngine, OpaError

from app.policy.embedded import compile_policy_set
from app.policy.files import load_policy_set

PASS, FAIL, ERROR, SKIP = "PASS", "FAIL", "ERROR", "SKIPPED"
TEST_PREFIX, SKIP_PREFIX = "test_", "todo_test_"
# Where a test rule's head starts (what `opa fmt` writes: a rule at the start of a line).
_TEST_HEAD = re.compile(r"^[ \t]*((?:todo_)?test_[A-Za-z0-9_]*)\b", re.MULTILINE)


@dataclass(frozen=True)
class TestResult:
    file: str
    name: str  # data.<package>.<rule>, with #01... for the later definitions of a name
    outcome: str
    duration_ms: float
    message: str = ""


@dataclass
class TestReport:
    results: list[TestResult] = field(default_factory=list)
    fail_on_empty: bool = False

    @property
    def passed(self) -> bool:
        if not self.results:
            return not self.fail_on_empty
        return all(r.outcome == PASS for r in self.results)


@dataclass(frozen=True)
class _Test:
    name: str  # as reported: data.p.test_x, data.p.test_x#01
    query: str  # the rule evaluated: data.p.test_x, data.p.test_x__01 (renamed in the source)
    skip: bool


def _rule_names(parser: OpaEngine, file: str, source: str) -> tuple[str, list[str]]:
    """The module's package (dotted) and the name of each of its rules, in order."""
    [row] = parser.eval_query("m := rego.parse_module(input.file, input.source)",
                              {"file": file, "source": source})
    module = row["m"]
    package = ".".join(str(term["value"]) for term in module["package"]["path"][1:])
    names = []
    for rule in module.get("rules", []):
        head = rule["head"]
        ref = head.get("ref") or [{}]
        names.append(str(head.get("name") or ref[0].get("value", "")))
    return package, names


def _plan(parser: OpaEngine, file: str, source: str) -> tuple[str, list[_Test]]:
    """The module's tests, and its source with each later definition of a test renamed so
    that every definition can be evaluated alone (`name__01`, reported `name#01`)."""
    package, names = _rule_names(parser, file, source)
    tests: list[_Test] = []
    seen: dict[str, int] = {}
    renamed: list[str] = []  # the rule names after renaming, in order
    for name in names:
        if not name.startswith((TEST_PREFIX, SKIP_PREFIX)):
            renamed.append(name)
            continue
        count = seen.get(name, 0)
        seen[name] = count + 1
        alias = name if count == 0 else _unused(f"{name}__{count:02d}", names)
        renamed.append(alias)
        tests.append(_Test(f"data.{package}.{name}" + (f"#{count:02d}" if count else ""),
                           f"data.{package}.{alias}", name.startswith(SKIP_PREFIX)))
    if renamed == names:
        return source, tests
    heads = list(_TEST_HEAD.finditer(source))
    test_names = [n for n in names if n.startswith((TEST_PREFIX, SKIP_PREFIX))]
    if [m.group(1) for m in heads] != test_names:  # a head not at a line's start
        return source, _combined(package, tests)
    aliases = iter(n for n in renamed if n.startswith((TEST_PREFIX, SKIP_PREFIX)))
    pieces, last = [], 0
    for match in heads:
        pieces += [source[last:match.start(1)], next(aliases)]
        last = match.end(1)
    rewritten = "".join(pieces) + source[last:]
    if _rule_names(parser, file, rewritten) != (package, renamed):
        return source, _combined(package, tests)
    return rewritten, tests


def _unused(name: str, taken: list[str]) -> str:
    while name in taken:
        name += "_"
    return name


def _combined(package: str, tests: list[_Test]) -> list[_Test]:
    """When the definitions of a name cannot be told apart in the source: one test each."""
    names = dict.fromkeys(t.name.split("#")[0] for t in tests)
    return [_Test(name, name, name.rsplit(".", 1)[1].startswith(SKIP_PREFIX))
            for name in names]


def _outcome(engine: OpaEngine, test: _Test) -> tuple[str, str]:
    if test.skip:
        return SKIP, ""
    try:
        rows: list[dict[str, Any]] = engine.eval_query(f"x := {test.query}")
    except OpaError as exc:
        return ERROR, exc.message
    return (PASS, "") if rows and rows[0].get("x") is True else (FAIL, "")


def run_policy_tests(directory: Path, *, fail_on_empty: bool = False) -> TestReport:
    """Every test of the directory; raises PolicyInvalid when the policies do not compile."""
    policies = load_policy_set(directory)
    compile_policy_set(policies, with_tests=True).close()  # PolicyInvalid, file and line
    parser = OpaEngine()
    try:
        plans = {file: _plan(parser, file, source) for file, source in
                 sorted({**policies.modules, **policies.tests}.items())}
    finally:
        parser.close()
    rewritten = dataclasses.replace(
        policies, modules={f: plans[f][0] for f in policies.modules},
        tests={f: plans[f][0] for f in policies.tests})
    engine = compile_policy_set(rewritten, with_tests=True)
    report = TestReport(fail_on_empty=fail_on_empty)
    try:
        for file, (_, tests) in plans.items():
            for test in tests:
                started = time.perf_counter()
                outcome, message = _outcome(engine, test)
                report.results.append(TestResult(
                    file, test.name, outcome, (time.perf_counter() - started) * 1000, message))
    finally:
        engine.close()
    return report
