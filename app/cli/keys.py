"""`decision-service keys`: make new API keys (the service stores only their hashes)."""

from __future__ import annotations

import click


@click.group()
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

