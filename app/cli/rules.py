"""`decision-service rules`: check rule files (`validate`) and run their scenarios (`test`)
before they go live."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from app.shared.errors import RulesetInvalid

from .common import load_settings


@click.group()
def rules() -> None:
    """Rule files: check them before they go live."""


@rules.command("validate")
@click.argument("directory", required=False, type=click.Path(exists=True, file_okay=True,
                                                              path_type=Path))
def rules_validate(directory: Path | None) -> None:
    """Check every rule file in DIRECTORY (default: DECISION_RULES_DIR), or one file.

    Each file is validated and compiled into the rule engine, exactly as a reload
    would. Prints every problem in every file; exits 1 if there is any.
    """
    from app.rules import engine
    from app.rules.loader import load_ruleset_file, rule_files
    from app.rules.ownership import FactOwnership

    target = directory or load_settings().rules_dir
    files = [target] if target.is_file() else rule_files(target)
    if not files:
        raise click.ClickException(f"no rule files (*.yaml, *.yml, *.json) in {target}")
    failed = 0
    loaded = []
    for path in files:
        try:
            ruleset = load_ruleset_file(path)
            engine.register(ruleset)
        except RulesetInvalid as exc:
            failed += 1
            for problem in exc.problems:
                click.echo(f"error: {problem}", err=True)
            continue
        loaded.append(ruleset)
        click.echo(f"ok: {path}: ruleset {ruleset.name} version {ruleset.version}, "
                   f"{len(ruleset.rules)} rules")
        if ruleset.reads_verdicts:
            click.echo("  its rules read the policy's verdicts (type verdict): a decision "
                       "runs in rounds, the verdicts on what each proposed facts of the "
                       "next, until a round proposes what the one before did (at most "
                       "DECISION_MAX_ROUNDS)")
        for action, required in sorted(ruleset.requirements.items()):
            click.echo(f"  {action} is sent only after {' and '.join(required)} "
                       "is dispatched; never if it is denied, held, parked or not sent")
        for warning in ruleset.warnings:
            click.echo(f"warning: {warning}", err=True)
    for conflict in FactOwnership.of(loaded).conflicts:
        failed += 1
        click.echo(f"error: {conflict}", err=True)
    if failed:
        click.echo(f"{failed} problem(s) in {len(files)} rule file(s)", err=True)
        sys.exit(1)


@rules.command("test")
@click.argument("directory", required=False, type=click.Path(exists=True, file_okay=True,
                                                              path_type=Path))
@click.option("--policies", "policy_dir", type=click.Path(exists=True, file_okay=False,
                                                          path_type=Path),
              help="the policies of scenarios that expect verdicts (default: "
                   "DECISION_POLICY_DIR)")
@click.option("--coverage", "show_coverage", is_flag=True,
              help="list the rules no scenario fires")
def rules_test(directory: Path | None, policy_dir: Path | None, show_coverage: bool) -> None:
    """Run the scenarios (*_test.yaml beside the rule files) in DIRECTORY (default:
    DECISION_RULES_DIR), or one scenario file, as `opa test` runs Rego tests: one line per
    scenario (PASS, FAIL or ERROR) and a diff for each failure. Exits 1 if a scenario
    fails or errs, 2 if a scenario or rule file cannot be read (with file and line)."""
    from app.replay.scenarios import PASS, scenario_files

    target = directory or load_settings().rules_dir
    folder = target.parent if target.is_file() else target
    files = [target] if target.is_file() else scenario_files(target)
    if not files:
        click.echo(f"no scenario files (*_test.yaml, *_test.yml, *_test.json) in {target}",
                   err=True)
        return
    rulesets, malformed = _scenario_rulesets(folder)
    gate = _scenario_gate(policy_dir)
    results: dict[str, list[Any]] = {}  # ruleset name -> the results of its scenarios
    tested = {}
    for path in files:
        loaded = _scenario_file(path, rulesets)
        if loaded is None:
            malformed += 1
            continue
        ruleset, scenarios = loaded
        tested[ruleset.name] = ruleset
        results.setdefault(ruleset.name, []).extend(
            _run_scenarios(path, ruleset, scenarios.scenarios, gate))
    everything = [result for found in results.values() for result in found]
    click.echo("-" * 80)
    for outcome in ("PASS", "FAIL", "ERROR"):
        count = sum(1 for r in everything if r.outcome == outcome)
        if count or outcome == "PASS":
            click.echo(f"{outcome}: {count}/{len(everything)}")
    if show_coverage:
        _echo_coverage(tested, results)
    if malformed:
        sys.exit(2)
    if any(r.outcome != PASS for r in everything):
        sys.exit(1)


def _scenario_rulesets(folder: Path) -> tuple[dict[str, Any], int]:
    """The valid rule files of `folder`, by ruleset name and by `file:<stem>`, and how many
    are not valid (each problem printed)."""
    from app.rules.loader import load_ruleset_file, rule_files

    rulesets: dict[str, Any] = {}
    malformed = 0
    for path in rule_files(folder):
        try:
            ruleset = load_ruleset_file(path)
        except RulesetInvalid as exc:
            for problem in exc.problems:
                click.echo(f"error: {problem}", err=True)
            malformed += 1
            continue
        rulesets[ruleset.name] = rulesets[f"file:{path.stem}"] = ruleset
    return rulesets, malformed


def _run_scenarios(path: Path, ruleset: Any, scenarios: list[Any], gate: Any) -> list[Any]:
    """Run a file's scenarios, printing each one's outcome (and its failures) as it ends."""
    from app.replay.scenarios import run_scenario
    from app.rules import evaluate

    results = []
    for scenario in scenarios:
        result = run_scenario(scenario, ruleset, file=str(path), evaluator=evaluate, gate=gate)
        where = f"{path}:{result.line}" if result.line else str(path)
        click.echo(f"{where}: {result.name}: {result.outcome} ({result.duration_ms:.1f}ms)")
        for failure in result.failures:
            click.echo("    " + failure.replace("\n", "\n    "))
        results.append(result)
    return results


def _echo_coverage(tested: dict[str, Any], results: dict[str, list[Any]]) -> None:
    """Per tested ruleset, how many of its rules a scenario fired, and which not."""
    from app.replay.scenarios import coverage

    for name, ruleset in sorted(tested.items()):
        missing = coverage(ruleset, results.get(name, []))
        fired = len(ruleset.rules) - len(missing)
        click.echo(f"coverage: ruleset {name}: {fired}/{len(ruleset.rules)} rules fired "
                   "by a scenario")
        for rule in missing:
            click.echo(f"  not fired: {rule}")


def _scenario_file(path: Path, rulesets: dict[str, Any]) -> tuple[Any, Any] | None:
    """A scenario file's ruleset and scenarios, or None after printing why it cannot be
    read (with file and line)."""
    from app.replay.scenarios import bind, parse_scenarios
    from app.shared.errors import ScenarioInvalid

    try:
        data, lines = parse_scenarios(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        click.echo(f"error: {path}: cannot be read: {exc}", err=True)
        return None
    except ScenarioInvalid as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        return None
    name = data.get("ruleset")
    stem = path.stem[:-len("_test")]
    ruleset = rulesets.get(name) if name else rulesets.get(f"file:{stem}")
    if ruleset is None:
        wanted = f"ruleset {name!r}" if name else f"the ruleset of {stem}.yaml (it names no " \
                                                   "ruleset:)"
        click.echo(f"error: {path}: tests {wanted}, which none of the valid rule files "
                   "beside it is", err=True)
        return None
    return ruleset, bind(data, lines, str(path), ruleset)


def _scenario_gate(policy_dir: Path | None) -> Any:
    """The policy gate of scenarios that expect verdicts, made when the first needs it."""
    made: list[Any] = []

    def gate() -> Any:
        if not made:
            from app.policy.embedded import EmbeddedPolicyEngine
            from app.policy.files import load_policy_set
            from app.policy.gate import PolicyGate

            settings = load_settings()
            policies = load_policy_set(policy_dir or settings.policy_dir)
            made.append(PolicyGate(EmbeddedPolicyEngine(None, policies=policies),
                                   governance_path=settings.policy_path,
                                   access_path=settings.access_policy_path))
        return made[0]

    return gate

