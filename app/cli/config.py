"""`decision-service config`: every setting, its effective value and meaning."""

from __future__ import annotations

from typing import Any

import click

from app.shared.config import OPTIONS

from .common import load_settings


@click.command()
def config() -> None:
    """Print every setting: its variable, effective value and meaning."""
    settings = load_settings()
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

