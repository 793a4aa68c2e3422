"""`decision-service`: serve the API and operate the service from the command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from app.config import OPTIONS, REQUEST_TIMEOUT_SECONDS, Settings
from app.errors import ConfigurationError, DecisionServiceError, PolicyInvalid, RulesetInvalid
from app.store import EmbeddedRedis, is_cluster_url


class MomentParam(click.ParamType):
    """A date or a date and time with its offset, read by the API's own parser
    (app.schemas.parse_moment), so that the command line and the API agree."""

    name = "moment"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        from datetime import datetime

        from app.schemas import parse_moment

        if isinstance(value, datetime):
            return value
        try:
            return parse_moment(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _settings() -> Settings:
    try:
        return Settings.load()
    except ConfigurationError as exc:
        raise click.ClickException(exc.detail) from exc


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="log debug messages")
def main(verbose: bool) -> None:
    """Rule-engine decision service with OPA governance."""
    from app.logs import configure

    try:
        log_format = Settings.load().log_format
    except ConfigurationError:
        log_format = "json"  # the command itself reports the bad setting
    configure(log_format, verbose=verbose)


@main.command()
def config() -> None:
    """Print every setting: its variable, effective value and meaning."""
    settings = _settings()
    for option in OPTIONS:
        value = getattr(settings, option.field)
        click.echo(f"{option.env}={'' if value is None else value}")
        click.echo(f"    {option.help} (default: {option.default or 'unset'})")


@main.command()
@click.option("--host", help="bind address (default: DECISION_HOST)")
@click.option("--port", type=int, help="port (default: DECISION_PORT)")
@click.option("--workers", type=int, help="gunicorn workers (default: DECISION_WORKERS)")
@click.option("--dev", is_flag=True, help="Flask's single-process development server instead")
def serve(host: str | None, port: int | None, workers: int | None, dev: bool) -> None:
    """Serve the HTTP API (gunicorn), starting the embedded Redis if none is configured."""
    from app.policy.engines import exec_with_go_runtime

    exec_with_go_runtime()
    settings = _settings()
    settings = settings.replace(
        host=host or settings.host, port=port or settings.port,
        workers=workers or settings.workers,
    )
    embedded = None
    if settings.redis_url is None:
        # Started here, before the workers fork, so that every worker shares it.
        embedded = EmbeddedRedis(settings.data_dir)
        settings = settings.replace(redis_url=embedded.start())
        click.echo(f"embedded Redis: {settings.redis_url} (data in {embedded.data_dir})")
    elif settings.redis_cluster is None:  # asked once here, not by every worker that starts
        settings = settings.replace(redis_cluster=is_cluster_url(
            settings.redis_url, timeout_seconds=settings.redis_timeout_seconds))
    url = f"http://{settings.host}:{settings.port}"
    click.echo(f"decision service listening on {url}  (try: curl {url}/readyz)")
    try:
        if dev:
            from app.api import create_app

            create_app(settings).run(host=settings.host, port=settings.port, threaded=True)
        else:
            _run_gunicorn(settings)
    finally:
        if embedded is not None:
            embedded.stop()


@main.command("echo-executor")
@click.option("--host", default="127.0.0.1", show_default=True, help="bind address")
@click.option("--port", type=int, default=9000, show_default=True, help="port")
def echo_executor(host: str, port: int) -> None:
    """An executor for trying the service: print each action delivered to it, answer 200.

    config/executors.local.yaml (what `make run` uses) sends every action of the sample
    rules here. Stop it and deliveries are retried, then parked as failed."""
    from app.echo import serve_echo

    click.echo(f"echo executor on http://{host}:{port}: every action delivered here is "
               "printed (Ctrl-C stops it)")
    serve_echo(host, port, click.echo)


@main.group()
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

    target = directory or _settings().rules_dir
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


@main.group()
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

    target = directory or _settings().policy_dir
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

    from app.clock import rfc3339, system_clock
    from app.policy.engines import compile_policy_set
    from app.policy.files import disk_revision, load_policy_set
    from app.service import (
        POLICY_REPORT_STALE_SECONDS,
        forget_policy_reports,
        policy_reports,
    )
    from app.store import connect

    settings = _settings()
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


@main.group()
def keys() -> None:
    """API keys: make new ones (the service stores only their hashes)."""


@keys.command("new")
@click.option("--id", "caller_id", required=True, help="who the key is for, e.g. finance-erp")
@click.option("--department", "departments", multiple=True,
              help="a department it reports facts for (repeatable; * for all)")
@click.option("--ruleset", "rulesets", multiple=True,
              help="a ruleset it may take decisions on (repeatable; * for all)")
@click.option("--grant", "grants", multiple=True, help="analyst, operator (repeatable)")
def keys_new(caller_id: str, departments: tuple[str, ...], rulesets: tuple[str, ...],
             grants: tuple[str, ...]) -> None:
    """Print a new random key (shown once) and its entry for DECISION_API_KEYS_FILE."""
    import yaml

    from app.access import hash_key, new_key

    key = new_key()
    entry = {"id": caller_id, "sha256": hash_key(key), "departments": list(departments),
             "rulesets": list(rulesets), "grants": list(grants)}
    click.echo(f"# key for {caller_id} (give it to the caller; it is not stored anywhere):")
    click.echo(f"# {key}")
    click.echo(yaml.safe_dump({"keys": [entry]}, sort_keys=False).rstrip())


def _open_service() -> Any:
    from app.service import DecisionService

    try:
        return DecisionService.open(_settings().replace(background_worker=False))
    except ConfigurationError as exc:
        raise click.ClickException(exc.detail) from exc


@main.command()
@click.option("--once", is_flag=True, help="one pass over the due work, then exit")
def worker(once: bool) -> None:
    """Make triggered decisions and deliver the outbox until stopped (SIGTERM/SIGINT).

    Run as many as you like: each claims its work in Redis with a lease, and work of a
    worker that dies is taken over when its lease runs out."""
    import signal

    from app.policy.engines import exec_with_go_runtime

    exec_with_go_runtime()

    service = _open_service()
    if once:
        click.echo(f"{service.worker.run_once()} item(s) handled")
        service.close()
        return
    signal.signal(signal.SIGTERM, lambda *_: service.worker.stop(timeout=0))
    click.echo("worker running (triggered decisions, outbox delivery); Ctrl-C stops it")
    try:
        service.worker.run()
    except KeyboardInterrupt:
        pass
    finally:
        service.close()


@main.group()
def decisions() -> None:
    """The decision log."""


@decisions.command("export")
@click.option("--subject", help="only this subject's decisions (newest first)")
@click.option("-o", "--output", type=click.File("w"), default="-", help="file (default: stdout)")
def decisions_export(subject: str | None, output: Any) -> None:
    """Write recorded decisions as JSON lines."""
    import json

    from app.errors import NotFound

    service = _open_service()
    count = 0
    try:
        if subject:
            records = service.decisions.recent(subject, limit=1_000_000)
        else:
            records = []
            for decision_id in service.decisions.all_ids():
                try:
                    records.append(service.decisions.get(decision_id))
                except NotFound:
                    continue  # expired while exporting
        for record in records:
            output.write(json.dumps(record, sort_keys=True) + "\n")
            count += 1
    finally:
        service.close()
    click.echo(f"{count} decision(s) exported", err=True)


@main.group()
def actions() -> None:
    """Deliveries of allowed actions: inspect and re-drive the failed ones."""


@actions.command("failed")
@click.option("--limit", default=100, show_default=True)
def actions_failed(limit: int) -> None:
    """List actions parked after their last delivery attempt."""
    service = _open_service()
    try:
        for entry in service.outbox.failed(limit):
            action = entry["action"]
            click.echo(f"{entry['decision_id']} {action['id']} {action['type']} "
                       f"subject={entry['subject']} attempts={entry['attempts']} "
                       f"error={entry.get('last_error')!r}")
    finally:
        service.close()


@actions.command("redrive")
@click.argument("decision_id", required=False)
@click.argument("action_id", required=False)
@click.option("--all", "everything", is_flag=True, help="every parked action")
def actions_redrive(decision_id: str | None, action_id: str | None, everything: bool) -> None:
    """Put a parked action (or --all) back into delivery, with its attempts reset, if the
    policies now in force allow it (else it stays parked, the new verdict recorded)."""
    from app.errors import RedriveRefused

    service = _open_service()
    try:
        if everything:
            targets = [(e["subject"], e["decision_id"], e["action"]["id"])
                       for e in service.outbox.failed(limit=100_000)]
        elif decision_id and action_id:
            targets = [(service.decisions.get(decision_id)["subject"], decision_id, action_id)]
        else:
            raise click.UsageError("give DECISION_ID ACTION_ID, or --all")
        queued = 0
        for _, decision, action in targets:
            try:
                service.redrive(decision, action)
                queued += 1
            except RedriveRefused as exc:
                click.echo(f"{decision} {action}: {exc.detail}", err=True)
        click.echo(f"{queued} of {len(targets)} action(s) queued again")
    finally:
        service.close()


@main.group()
def triggers() -> None:
    """Triggered decisions: inspect and re-drive the parked ones."""


@triggers.command("parked")
@click.option("--limit", default=100, show_default=True)
def triggers_parked(limit: int) -> None:
    """List triggered decisions parked because they cannot run as things are."""
    service = _open_service()
    try:
        for parked in service.triggers.parked(limit):
            click.echo(f"{parked['subject']} {parked['ruleset']} attempts="
                       f"{parked.get('attempts', 0)} pending_facts={parked['pending_facts']} "
                       f"decision={parked.get('decision_id', '-')} "
                       f"reason={parked.get('reason')!r}")
    finally:
        service.close()


@triggers.command("redrive")
@click.argument("subject", required=False)
@click.argument("ruleset", required=False)
@click.option("--all", "everything", is_flag=True, help="every parked triggered decision")
def triggers_redrive(subject: str | None, ruleset: str | None, everything: bool) -> None:
    """Make a parked triggered decision (or --all) due again, its attempts reset."""
    service = _open_service()
    try:
        if everything:
            targets = [(p["subject"], p["ruleset"]) for p in service.triggers.parked(100_000)]
        elif subject and ruleset:
            targets = [(subject, ruleset)]
        else:
            raise click.UsageError("give SUBJECT RULESET, or --all")
        for target in targets:
            service.triggers.redrive(*target)
        click.echo(f"{len(targets)} triggered decision(s) due again")
    except DecisionServiceError as exc:
        raise click.ClickException(exc.detail) from exc
    finally:
        service.close()


@main.command()
@click.option("--decision", "decision_ids", multiple=True, help="a decision id (repeatable)")
@click.option("--subject", help="every recorded decision of this subject")
@click.option("--since", type=MomentParam(),
              help="recorded at or after: 2026-11-01 (midnight UTC) or a date and time with "
                   "its offset, 2026-11-01T09:30:00+01:00")
@click.option("--until", type=MomentParam(), help="recorded at or before (the same forms)")
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
@click.option("--fail-on-change", is_flag=True, help="exit 1 if any decision changed")
def replay(decision_ids: tuple[str, ...], subject: str | None, since: Any, until: Any,
           fact_sets: Any, rules_path: Path | None, policy_dir: Path | None, json_out: Any,
           html_out: Any, fail_on_change: bool) -> None:
    """Re-run recorded decisions or fact sets, against candidate rules and/or policies.

    Without candidates, each decision is pinned to the ruleset version and policy
    revision it was recorded with, and nothing may change. Never dispatches. Exits 2
    when a decision could not be replayed, 1 with --fail-on-change when one changed."""
    import json

    from app.clock import rfc3339, system_clock
    from app.policy.files import load_policy_set
    from app.replay import bulk, summarize
    from app.rules.loader import rule_files
    from app.schemas import FactSetSchema, epoch_ms, load

    def ms(moment: Any) -> int | None:
        return None if moment is None else epoch_ms(moment)

    service = _open_service()
    try:
        sets = [load(FactSetSchema, json.loads(line)) for line in fact_sets
                if line.strip()] if fact_sets else []
        rule_sources = {}
        if rules_path is not None:
            for path in [rules_path] if rules_path.is_file() else rule_files(rules_path):
                rule_sources[str(path)] = path.read_text(encoding="utf-8")
        policy_sources = dict(load_policy_set(policy_dir).sources) if policy_dir else None
        candidates = service.candidates(rule_sources=rule_sources,
                                        policy_sources=policy_sources, policy_overlay=False)
        with bulk():
            cases, _ = service.replay_cases(decision_ids=decision_ids, subject=subject,
                                            since_ms=ms(since), until_ms=ms(until),
                                            fact_sets=sets)
            if not cases:
                raise click.UsageError("nothing to replay: give --decision, --subject, "
                                       "--since/--until or --fact-sets")
            with service.replayer(candidates, per_call_budget=True) as replayer, \
                    click.progressbar(cases, label="replaying", file=sys.stderr) as bar:
                results = list(replayer.run(bar))
                failure = replayer.sandbox.failure if replayer.sandbox else None
                loaded = replayer.candidates
        summary = summarize(results, loaded)
        if failure:
            summary["candidate_error"] = failure
        report: dict[str, Any] = {"generated_at": rfc3339(system_clock()),
                                  "summary": summary, "results": results}
    except (RulesetInvalid, PolicyInvalid) as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    except DecisionServiceError as exc:
        raise click.ClickException(exc.detail) from exc
    finally:
        service.close()
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
    if json_out is not None:
        json.dump(report, json_out, indent=1, sort_keys=True)
    if html_out is not None:
        from app.web import replay_report_html

        html_out.write(replay_report_html(report))
    if summary["errors"]:
        sys.exit(2)
    if fail_on_change and summary["changed"]:
        sys.exit(1)


def _run_gunicorn(settings: Settings) -> None:
    from gunicorn.app.base import BaseApplication
    from gunicorn.glogging import Logger

    from app.logs import dict_config

    class AccessLogger(Logger):
        """gunicorn builds each access line (about 50 µs) whenever logging is configured:
        only when asked for (the decision lines carry what a decision did)."""

        def access(self, *args: Any) -> None:
            if settings.access_log:
                super().access(*args)

    class Application(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{settings.host}:{settings.port}")
            self.cfg.set("workers", settings.workers)
            self.cfg.set("worker_class", "sync")
            self.cfg.set("timeout", REQUEST_TIMEOUT_SECONDS)
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("logconfig_dict", dict_config(settings.log_format))
            self.cfg.set("logger_class", AccessLogger)

        def load(self) -> Any:
            # Each worker builds its own app after fork: its own Redis pool and engines.
            from app.api import create_app

            return create_app(settings)

    Application().run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
