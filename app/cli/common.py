"""What every command of `decision-service` shares: the settings, the service, and how a
moment or a subject is read from the command line."""

from __future__ import annotations

from typing import Any

import click

from app.shared.config import Settings
from app.shared.errors import ConfigurationError


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


def moment_ms(moment: Any) -> int | None:
    """A moment (from `Moment`) in milliseconds since the epoch, or None when not given."""
    from app.shared.schemas import epoch_ms

    return None if moment is None else epoch_ms(moment)


def subject_callback(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
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


def load_settings() -> Settings:
    """The settings from the environment; a bad one ends the command with its problem."""
    try:
        return Settings.load()
    except ConfigurationError as exc:
        raise click.ClickException(exc.detail) from exc


def open_service() -> Any:
    """The service, opened to be operated from here: without the background worker."""
    from app.service import DecisionService

    try:
        return DecisionService.open(load_settings().replace(background_worker=False))
    except ConfigurationError as exc:
        raise click.ClickException(exc.detail) from exc

