"""`decision-service policy`: run the Rego policies' tests (`test`), and tell whether the
policies on disk are the ones the running service has live (`status`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from app.shared.errors import DecisionServiceError, PolicyInvalid
from app.shared.store import EmbeddedRedis

from .common import load_settings


@click.group()
def policy() -> None:
    """Rego policies: test them before they go live, and see which are live."""


@policy.command("test")
@click.argument("directory", required=False,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-v", "--verbose", is_flag=True, help="print passing tests too")
@click.option("--fail-on-empty", is_flag=True, help="fail when there is no test at all")
def policy_test(directory: Path | None, verbose: bool, fail_on_empty: bool) -> None:
    """Run every test_ rule in DIRECTORY (default: DECISION_POLICY_DIR) with the embedded
    OPA engine, as `opa test` does (app/policy/testing.py): the same tests pass and fail.
    Exits 1 on a failure, an error, a skipped (todo_test_) test or a policy that does not
    compile, and, with --fail-on-empty, when there is no test."""
    from app.policy.testing import PASS, run_policy_tests

    target = directory or load_settings().policy_dir
    try:
        report = run_policy_tests(target, fail_on_empty=fail_on_empty)
    except PolicyInvalid as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(1)
    for result in report.results:
        if verbose or result.outcome != PASS:
            line = f"{result.file}: {result.name}: {result.outcome} ({result.duration_ms:.2f}ms)"
            click.echo(line + (f"\n    {result.message}" if result.message else ""))
    total = len(report.results)
    click.echo("-" * 80)
    for outcome in ("PASS", "FAIL", "ERROR", "SKIPPED"):
        count = sum(1 for r in report.results if r.outcome == outcome)
        if count or outcome == "PASS":
            click.echo(f"{outcome}: {count}/{total}")
    if not total:
        click.echo(f"no tests found in {target} (rules named test_*)", err=True)
    if not report.passed:
        sys.exit(1)


@policy.command("status")
@click.argument("directory", required=False,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
def policy_status(directory: Path | None) -> None:
    """Whether the policy files on disk (DIRECTORY, default DECISION_POLICY_DIR) are the
    ones the running service has live.

    The files are loaded and compiled as a reload would. Every process of the service
    (each web worker and `decision-service worker`, on every host) records in Redis what
    it has live about every 5 s and at once after a rejected change; this compares each
    record of the last minute with the disk. Exits 0 when all of them run the files on
    disk, 1 when one does not (a rejected change, a sidecar that has not taken the new
    bundle yet) or the files do not load, 2 when no running process has reported."""
    import redis

    from app.policy.embedded import compile_policy_set
    from app.policy.files import disk_revision, load_policy_set
    from app.policy.live import (
        POLICY_REPORT_STALE_SECONDS,
        forget_policy_reports,
        policy_reports,
    )
    from app.shared.clock import rfc3339, system_clock
    from app.shared.store import connect

    settings = load_settings()
    target = directory or settings.policy_dir
    disk, problems = disk_revision(target), []
    try:
        compile_policy_set(load_policy_set(target), allowed_builtins=frozenset(
            settings.policy_allowed_builtins)).close()
    except PolicyInvalid as exc:
        problems = exc.problems
    click.echo(f"disk: {target}: revision {disk}, " +
               ("loads" if not problems else f"does not load ({len(problems)} problem(s))"))
    for problem in problems:
        click.echo(f"  {problem}")

    url = settings.redis_url or EmbeddedRedis(settings.data_dir).url
    try:
        client = connect(url, timeout_seconds=settings.redis_timeout_seconds,
                         cluster=settings.redis_cluster)
        try:
            reports = policy_reports(client)
            now = system_clock()
            stale = [p for p, r in reports.items()
                     if _age_seconds(r.get("reported_at"), now) > POLICY_REPORT_STALE_SECONDS]
            # A process silent for an hour is gone (killed before it could say so).
            forget_policy_reports(client, [p for p in stale if _age_seconds(
                reports[p].get("reported_at"), now) > 60 * POLICY_REPORT_STALE_SECONDS])
        finally:
            client.close()
    except (DecisionServiceError, redis.RedisError) as exc:
        click.echo(f"live: cannot tell: {getattr(exc, 'detail', exc)}", err=True)
        sys.exit(2)
    current = {p: r for p, r in reports.items() if p not in stale}
    if not current:
        click.echo(f"live: no process of the service reported in the last "
                   f"{POLICY_REPORT_STALE_SECONDS:.0f} s (at {rfc3339(system_clock())}): is it "
                   "running, on this Redis?", err=True)
        sys.exit(2)
    behind = 0
    for process, report in current.items():
        revision = report.get("revision")
        same = revision == disk
        behind += not same
        line = (f"live: {process} ({report.get('kind')}): revision {revision}"
                + (f", serving {report['served']}" if report.get("served") else "")
                + (" = disk" if same else " != disk"))
        click.echo(line)
        for problem in report.get("problems") or ():
            where = problem["file"] + (f":{problem['line']}" if problem.get("line") else "")
            click.echo(f"  rejected at {report.get('rejected_at')}: {where}: "
                       f"{problem['message']}")
        if not same and report.get("served") == disk:
            click.echo("  the OPA sidecar has not taken the bundle the service serves yet "
                       "(it does at its next poll)")
    if problems or behind:
        click.echo(f"not live: {behind} of {len(current)} process(es) run other policies "
                   "than the files on disk" + (", which do not load" if problems else ""),
                   err=True)
        sys.exit(1)
    click.echo(f"live: every process ({len(current)}) runs the files on disk")


def _age_seconds(moment: Any, now: float) -> float:
    """How long ago an RFC 3339 UTC moment was (infinite when it is not one)."""
    from datetime import datetime

    try:
        return now - datetime.fromisoformat(str(moment).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")

