"""`decision-service decisions`: the decision log, exported (`export`) and asked why a rule
did not fire (`why-not`)."""

from __future__ import annotations

from typing import Any

import click

from app.shared.errors import DecisionServiceError

from .common import Moment, moment_ms, open_service, subject_callback


@click.group()
def decisions() -> None:
    """The decision log."""


@decisions.command("export")
@click.option("--subject", callback=subject_callback,
              help="only this subject's decisions (newest first)")
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
    service = open_service()
    count = 0
    try:
        log = service.decisions
        if subject:
            ids = log.ids_of(subject, since_ms=moment_ms(since), until_ms=moment_ms(until))[::-1]
        else:
            ids = log.all_ids(since_ms=moment_ms(since), until_ms=moment_ms(until))
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
    service = open_service()
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

