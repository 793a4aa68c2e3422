"""`decision-service replay`: re-run recorded decisions or fact sets against candidate
rules and policies, and report what changed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from app.shared.errors import DecisionServiceError, PolicyInvalid, RulesetInvalid, ScenarioInvalid

from .common import Moment, moment_ms, open_service


@click.command()
@click.option("--decision", "decision_ids", multiple=True, help="a decision id (repeatable)")
@click.option("--subject", help="every recorded decision of this subject")
@click.option("--since", type=Moment(),
              help="recorded at or after: YYYY-MM-DD (midnight UTC) or an ISO 8601 time with "
                   "its offset (2026-11-01T09:30:00+01:00)")
@click.option("--until", type=Moment(), help="recorded at or before (as --since)")
@click.option("--fact-sets", type=click.File("r"),
              help="JSON lines of {subject, ruleset, facts} to decide on")
@click.option("--rules", "rules_path", type=click.Path(exists=True, path_type=Path),
              help="candidate rule file, or a directory of them")
@click.option("--policies", "policy_dir", type=click.Path(exists=True, file_okay=False,
                                                          path_type=Path),
              help="candidate policy directory (the whole set)")
@click.option("--json", "json_out", type=click.File("w"), help="write the report as JSON")
@click.option("--html", "html_out", type=click.File("w"),
              help="write a self-contained HTML report")
@click.option("--fail-on-change", is_flag=True,
              help="exit 1 if any decision changed, or a candidate's scenario failed")
def replay(decision_ids: tuple[str, ...], subject: str | None, since: Any, until: Any,
           fact_sets: Any, rules_path: Path | None, policy_dir: Path | None, json_out: Any,
           html_out: Any, fail_on_change: bool) -> None:
    """Re-run recorded decisions or fact sets, against candidate rules and/or policies.

    Without candidates, each decision is pinned to the ruleset version and policy
    revision it was recorded with, and nothing may change. Never dispatches. Exits 2
    when a decision could not be replayed, 1 with --fail-on-change when one changed."""
    import json

    from app.policy.files import load_policy_set
    from app.replay.replayer import bulk, candidate_scenarios, summarize
    from app.shared.clock import rfc3339, system_clock
    from app.shared.schemas import FactSetSchema, load

    service = open_service()
    try:
        sets = [load(FactSetSchema, json.loads(line)) for line in fact_sets
                if line.strip()] if fact_sets else []
        rule_sources, scenario_sources = _candidate_rules(rules_path)
        policy_sources = dict(load_policy_set(policy_dir).sources) if policy_dir else None
        candidates = service.replays.candidates(rule_sources=rule_sources,
                                        policy_sources=policy_sources, policy_overlay=False,
                                        scenarios=scenario_sources)
        with bulk():
            cases, _ = service.replays.replay_cases(decision_ids=decision_ids, subject=subject,
                                            since_ms=moment_ms(since), until_ms=moment_ms(until),
                                            fact_sets=sets)
            if not cases:
                raise click.UsageError("nothing to replay: give --decision, --subject, "
                                       "--since/--until or --fact-sets")
            with service.replays.replayer(candidates, per_call_budget=True) as replayer, \
                    click.progressbar(cases, label="replaying", file=sys.stderr) as bar:
                results = list(replayer.run(bar))
                scenarios = candidate_scenarios(replayer, candidates.scenarios) if (
                    candidates.scenarios and replayer.sandbox is not None) else None
                failure = replayer.sandbox.failure if replayer.sandbox else None
                loaded = replayer.candidates
        summary = summarize(results, loaded)
        if failure:
            summary["candidate_error"] = failure
        report: dict[str, Any] = {"generated_at": rfc3339(system_clock()),
                                  "summary": summary, "results": results}
        if scenarios is not None:
            report["scenarios"] = scenarios
    except (RulesetInvalid, PolicyInvalid, ScenarioInvalid) as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    except DecisionServiceError as exc:
        raise click.ClickException(exc.detail) from exc
    finally:
        service.close()
    if scenarios is not None:
        _echo_candidate_scenarios(scenarios)
    _echo_replay_summary(summary, results)
    _write_replay_report(report, json_out, html_out)
    if summary["errors"]:
        sys.exit(2)
    if fail_on_change and (summary["changed"] or (scenarios or {}).get("failed")):
        sys.exit(1)


def _candidate_rules(rules_path: Path | None) -> tuple[dict[str, str], dict[str, str]]:
    """The sources of a candidate rule file (or of a directory's), and of the scenarios
    beside each, both by rule file."""
    from app.rules.loader import RULE_FILE_SUFFIXES, rule_files

    rule_sources: dict[str, str] = {}
    scenario_sources: dict[str, str] = {}
    if rules_path is None:
        return rule_sources, scenario_sources
    for path in [rules_path] if rules_path.is_file() else rule_files(rules_path):
        rule_sources[str(path)] = path.read_text(encoding="utf-8")
        for suffix in RULE_FILE_SUFFIXES:  # its scenarios, beside it
            tests = path.with_name(f"{path.stem}_test{suffix}")
            if tests.is_file():
                scenario_sources[str(path)] = tests.read_text(encoding="utf-8")
                break
    return rule_sources, scenario_sources


def _echo_candidate_scenarios(scenarios: dict[str, Any]) -> None:
    """How the candidate rules' scenarios did, and each that did not pass."""
    click.echo(f"scenarios of the candidate rules: {scenarios['passed']} passed, "
               f"{scenarios['failed']} failed")
    for result in scenarios["results"]:
        if result["outcome"] != "PASS":
            click.echo(f"  {result['file']}:{result['line']}: {result['name']}: "
                       f"{result['outcome']}", err=True)
            for failure in result["failures"]:
                click.echo("    " + failure.replace("\n", "\n    "), err=True)


def _echo_replay_summary(summary: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """What changed, the rules behind most of it, and each decision that could not be
    replayed."""
    click.echo(f"{summary['decisions']} replayed: {summary['changed']} changed, "
               f"{summary['unchanged']} unchanged, {summary['errors']} errors; actions "
               f"+{summary['actions']['added']} -{summary['actions']['removed']} "
               f"~{summary['actions']['changed']}, {summary['verdicts_flipped']} verdicts "
               f"flipped, {summary['blocked']['now']} now blocked, "
               f"{summary['blocked']['no_longer']} no longer blocked")
    for row in summary["most_changed_rules"][:5]:
        click.echo(f"  rule {row['rule']}: {row['decisions']} decision(s)")
    for result in results:
        if "error" in result:
            click.echo(f"error: {result['decision_id']}: {result['error']}", err=True)


def _write_replay_report(report: dict[str, Any], json_out: Any, html_out: Any) -> None:
    """The report to the --json and --html files, where given."""
    import json

    if json_out is not None:
        json.dump(report, json_out, indent=1, sort_keys=True)
    if html_out is not None:
        from app.web import replay_report_html

        html_out.write(replay_report_html(report))

