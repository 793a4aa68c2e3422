"""`decision-service`: serve the API and operate the service from the command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from app.shared.config import OPTIONS, REQUEST_TIMEOUT_SECONDS, Settings
from app.shared.errors import (
    ConfigurationError,
    DecisionServiceError,
    PolicyInvalid,
    RulesetInvalid,
    ScenarioInvalid,
)
from app.shared.store import EmbeddedRedis, is_cluster_url


class Moment(click.ParamType):
    """`YYYY-MM-DD` (midnight UTC) or an ISO 8601 time with its offset, read by the API's
    own parser (`app.shared.schemas.parse_moment`), so that every command and the API agree."""

    name = "moment"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        from datetime import datetime

        from app.shared.schemas import parse_moment

        if isinstance(value, datetime):
            return value
        try:
            return parse_moment(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _epoch_ms(moment: Any) -> int | None:
    from app.shared.schemas import epoch_ms

    return None if moment is None else epoch_ms(moment)


def _subject(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A subject as the API takes it (GET /v1/decisions?subject=): a typo is refused, not
    answered with nothing."""
    from app.shared.errors import InvalidInput
    from app.shared.schemas import DecisionQuerySchema, load

    if value is None:
        return None
    try:
        return str(load(DecisionQuerySchema, {"subject": value})["subject"])
    except InvalidInput as exc:
        raise click.BadParameter(exc.detail) from exc


def _settings() -> Settings:
    try:
        return Settings.load()
    except ConfigurationError as exc:
        raise click.ClickException(exc.detail) from exc


# Commands that run until stopped: their INFO lines (what was loaded, started, decided)
# are what an operator watches. The others log warnings and errors only, unless asked.
_LONG_RUNNING = ("serve", "worker")


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="log info and debug messages too")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Rule-engine decision service with OPA governance."""
    from app.shared.logs import configure

    try:
        settings = Settings.load()
        log_format, level = settings.log_format, settings.log_level
    except ConfigurationError:
        log_format, level = "json", None  # the command itself reports the bad setting
    if verbose:
        level = "DEBUG"
    elif level is None:
        level = "INFO" if ctx.invoked_subcommand in _LONG_RUNNING else "WARNING"
    configure(log_format, level=level)


@main.command()
def config() -> None:
    """Print every setting: its variable, effective value and meaning."""
    settings = _settings()
    for option in OPTIONS:
        value = getattr(settings, option.field)
        shown = (option.default or "(not set)") if value is None else _shown(value)
        default = option.default or _shown(option.parse("")).strip("()")
        click.echo(f"{option.env}={shown}")
        click.echo(f"    {option.help} (default: {default})")


def _shown(value: Any) -> str:
    """A setting's value in words, not Python's: '(not set)', 'none' for an empty list, a
    list comma-separated, a flag true or false. (An option that parses to None from a
    default it has, `auto`, shows that default.)"""
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return ",".join(map(str, value)) if value else "none"
    return str(value)


@main.command()
@click.option("--host", help="bind address (default: DECISION_HOST)")
@click.option("--port", type=int, help="port (default: DECISION_PORT)")
@click.option("--workers", type=int, help="gunicorn workers (default: DECISION_WORKERS)")
@click.option("--dev", is_flag=True, help="Flask's single-process development server instead")
def serve(host: str | None, port: int | None, workers: int | None, dev: bool) -> None:
    """Serve the HTTP API (gunicorn), starting the embedded Redis if none is configured."""
    from app.policy.embedded import exec_with_go_runtime

    exec_with_go_runtime()
    settings = _settings()
    settings = settings.replace(
        host=host or settings.host, port=port or settings.port,
        workers=workers or settings.workers,
    )
    taken = _cannot_listen(settings.host, settings.port)
    if taken:  # before Redis starts and before "listening": gunicorn would retry, then fail
        raise click.ClickException(
            f"cannot listen on {settings.host}:{settings.port}: {taken} (another server, "
            "perhaps another `decision-service serve`, holds it: stop it, or choose another "
            "port with --port or DECISION_PORT)")
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


def _cannot_listen(host: str, port: int) -> str | None:
    """Why a server could not bind host:port now (as gunicorn binds: SO_REUSEADDR, so a
    port left in TIME_WAIT is free), or None when it could."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        return f"{host} is no address here ({exc.strerror})"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _control_socket(settings: Settings) -> Path | None:
    """gunicorn's control socket (`gunicornc`) of this instance, in the data directory and
    named by port; by default gunicorn puts one in ~/.gunicorn that every instance of the
    user shares, each new one taking it from the last. None (no control socket) when the
    path is too long for a Unix socket."""
    from app.shared.store import MAX_SOCKET_PATH

    path = settings.data_dir.resolve() / f"gunicorn-{settings.port}.ctl"
    return path if len(str(path)) <= MAX_SOCKET_PATH else None


@main.command("echo-executor")
@click.option("--host", default="127.0.0.1", show_default=True, help="bind address")
@click.option("--port", type=int, default=9000, show_default=True, help="port")
def echo_executor(host: str, port: int) -> None:
    """An executor for trying the service: print each action delivered to it, answer 200.

    config/executors.local.yaml (what `make run` uses) sends every action of the sample
    rules here. Stop it and deliveries are retried, then parked as failed."""
    from app.dispatch.echo import serve_echo

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

    target = directory or _settings().rules_dir
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

            settings = _settings()
            policies = load_policy_set(policy_dir or settings.policy_dir)
            made.append(PolicyGate(EmbeddedPolicyEngine(None, policies=policies),
                                   governance_path=settings.policy_path,
                                   access_path=settings.access_policy_path))
        return made[0]

    return gate


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

    from app.policy.embedded import compile_policy_set
    from app.policy.files import disk_revision, load_policy_set
    from app.policy.live import (
        POLICY_REPORT_STALE_SECONDS,
        forget_policy_reports,
        policy_reports,
    )
    from app.shared.clock import rfc3339, system_clock
    from app.shared.store import connect

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

    from app.policy.access import hash_key, new_key

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

    from app.policy.embedded import exec_with_go_runtime

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
@click.option("--subject", callback=_subject, help="only this subject's decisions (newest first)")
@click.option("--since", type=Moment(),
              help="recorded at or after: YYYY-MM-DD (midnight UTC) or an ISO 8601 time with "
                   "its offset (2026-11-01T09:30:00+01:00)")
@click.option("--until", type=Moment(), help="recorded at or before (as --since)")
@click.option("-o", "--output", type=click.File("w"), default="-", help="file (default: stdout)")
def decisions_export(subject: str | None, since: Any, until: Any, output: Any) -> None:
    """Write recorded decisions as JSON lines (oldest first; a subject's newest first)."""
    import json

    from app.shared.errors import NotFound

    if since is not None and until is not None and until < since:
        raise click.BadParameter(f"{until.isoformat()} is before --since {since.isoformat()}",
                                 param_hint="--until")
    service = _open_service()
    count = 0
    try:
        log = service.decisions
        if subject:
            ids = log.ids_of(subject, since_ms=_epoch_ms(since), until_ms=_epoch_ms(until))[::-1]
        else:
            ids = log.all_ids(since_ms=_epoch_ms(since), until_ms=_epoch_ms(until))
        for decision_id in ids:
            try:
                record = log.get(decision_id)
            except NotFound:
                continue  # expired while exporting
            output.write(json.dumps(record, sort_keys=True) + "\n")
            count += 1
    finally:
        service.close()
    click.echo(f"{count} decision(s) exported", err=True)


@decisions.command("why-not")
@click.argument("decision_id")
@click.argument("rule")
@click.option("--json", "as_json", is_flag=True, help="the answer as JSON (the API's body)")
def decisions_why_not(decision_id: str, rule: str, as_json: bool) -> None:
    """Why RULE did (not) fire in decision DECISION_ID: which condition failed first, on
    which facts, with the values compared; from the record, on the ruleset version the
    decision ran with."""
    import json

    from app.shared.schemas import WhyNotQuerySchema, load

    try:
        query = load(WhyNotQuerySchema, {"rule": rule})
    except DecisionServiceError as exc:
        raise click.ClickException(exc.detail) from exc
    service = _open_service()
    try:
        answer = service.replays.why_not(decision_id, query["rule"])
    except DecisionServiceError as exc:
        raise click.ClickException(exc.detail) from exc
    finally:
        service.close()
    if as_json:
        click.echo(json.dumps(answer, indent=2, ensure_ascii=False))
        return
    click.echo(_why_not_text(answer))


_STATUS_MARK = {"matched": "ok  ", "failed": "FAIL", "not reached": " -  "}


def _why_not_text(answer: dict[str, Any]) -> str:
    """The answer for a terminal: the explanation, then each condition with its status."""
    lines = [f"decision {answer['decision_id']}, ruleset {answer['ruleset']} version "
             f"{answer['ruleset_version']}, rule {answer['rule']}: "
             f"{'fired' if answer['fired'] else 'did not fire'}",
             "", answer["explanation"], ""]
    for step in answer["steps"]:
        facts = f"  [{', '.join(step['facts'])}]" if step["facts"] else ""
        lines.append(f"{_STATUS_MARK.get(step['status'], step['status'])}  "
                     f"{step['condition']}{facts}")
        lines.append(f"      {step['detail']}")
    return "\n".join(lines)


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
    from app.shared.errors import RedriveRefused

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
                service.decider.redrive(decision, action)
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

    service = _open_service()
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
                                            since_ms=_epoch_ms(since), until_ms=_epoch_ms(until),
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


def _run_gunicorn(settings: Settings) -> None:
    import logging

    from gunicorn.app.base import BaseApplication
    from gunicorn.glogging import Logger

    from app.shared.logs import dict_config

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
            self.cfg.set("logconfig_dict", dict_config(  # the level `main` chose
                settings.log_format, level=logging.getLevelName(logging.getLogger().level)))
            self.cfg.set("logger_class", AccessLogger)
            control = _control_socket(settings)
            if "control_socket" not in self.cfg.settings:
                pass  # a gunicorn before 25.1 has none
            elif control is None:
                self.cfg.set("control_socket_disable", True)
            else:
                self.cfg.set("control_socket", str(control))

        def load(self) -> Any:
            # Each worker builds its own app after fork: its own Redis pool and engines.
            from app.api import create_app

            return create_app(settings)

    Application().run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
