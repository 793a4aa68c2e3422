"""`decision-service actions` and `triggers`: what is parked (actions whose delivery
failed, triggered decisions that cannot run), inspected and re-driven."""

from __future__ import annotations

import click

from app.shared.errors import DecisionServiceError

from .common import open_service


@click.group()
def actions() -> None:
    """Deliveries of allowed actions: inspect and re-drive the failed ones."""


@actions.command("failed")
@click.option("--limit", default=100, show_default=True)
def actions_failed(limit: int) -> None:
    """List actions parked after their last delivery attempt."""
    service = open_service()
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

    service = open_service()
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


@click.group()
def triggers() -> None:
    """Triggered decisions: inspect and re-drive the parked ones."""


@triggers.command("parked")
@click.option("--limit", default=100, show_default=True)
def triggers_parked(limit: int) -> None:
    """List triggered decisions parked because they cannot run as things are."""
    service = open_service()
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
    service = open_service()
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

