"""Where each action type is delivered: `DECISION_EXECUTORS_FILE`, loaded and checked.

An executor is an HTTP endpoint with a timeout and a number of attempts; its timeout must
fit in the dispatcher's lease (`Executors.check_lease`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from marshmallow import Schema, ValidationError, fields, validate

from app.dispatch.outbox import lease_margin
from app.shared.errors import ConfigurationError
from app.shared.schemas import invalid_params

DEFAULT_TIMEOUT_SECONDS = 5.0
DEFAULT_MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class Executor:
    url: str
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS


class _ExecutorSchema(Schema):
    url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False)
    timeout_seconds = fields.Float(load_default=DEFAULT_TIMEOUT_SECONDS,
                                   validate=validate.Range(min=0.01, max=120))
    max_attempts = fields.Integer(load_default=DEFAULT_MAX_ATTEMPTS, strict=True,
                                  validate=validate.Range(min=1, max=100))


class Executors:
    """Action type -> where it is delivered (`DECISION_EXECUTORS_FILE`)."""

    def __init__(self, by_type: Mapping[str, Executor]) -> None:
        self._by_type = dict(by_type)

    @classmethod
    def load(cls, path: Path | None) -> Executors:
        if path is None:
            return cls({})
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"DECISION_EXECUTORS_FILE {path}: {exc}") from exc
        if not isinstance(document, dict):
            raise ConfigurationError(f"DECISION_EXECUTORS_FILE {path}: a mapping of action "
                                     "type to {url, timeout_seconds, max_attempts}")
        try:
            loaded = {str(action): _ExecutorSchema().load(spec)
                      for action, spec in document.items()}
        except ValidationError as exc:
            problems = "; ".join(f"{p.name}: {p.reason}" for p in invalid_params(exc.messages))
            raise ConfigurationError(f"DECISION_EXECUTORS_FILE {path}: {problems}") from exc
        return cls({action: Executor(**spec) for action, spec in loaded.items()})

    def check_lease(self, lease_seconds: float) -> None:
        """A delivery must be able to finish within the lease that holds it."""
        for action, executor in self._by_type.items():
            if executor.timeout_seconds + lease_margin(lease_seconds) >= lease_seconds:
                raise ConfigurationError(
                    f"DECISION_DISPATCH_LEASE_SECONDS ({lease_seconds:g}) must be longer than "
                    f"every executor's timeout_seconds ({executor.timeout_seconds:g} for "
                    f"{action}) and a tenth more (at most 1 s), the time to record the "
                    "outcome")

    def get(self, action_type: str) -> Executor | None:
        return self._by_type.get(action_type)

    def urls(self) -> set[str]:
        return {executor.url for executor in self._by_type.values()}

    def __contains__(self, action_type: object) -> bool:
        return action_type in self._by_type
