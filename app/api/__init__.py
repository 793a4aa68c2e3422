"""The HTTP face of the service: thin Flask views over `app.service.DecisionService`.

Each view validates with the shared marshmallow schemas, makes one call into the
core and serialises the answer. Every error is an RFC 9457 problem document.

    facts            the fact pool: post, read a subject's facts, retract
    decisions        take a decision, read them back, why-not, parked actions and triggers
    replays          replay and what-if, for small jobs
    rulesets         the active rulesets, their sources and versions, rejected files
    policies         which policies are live, and their source files
    archive          the policy files a recorded decision ran with
    bundles          the policies as an OPA bundle, for a sidecar to pull
    caller           who the caller is, and which of the pages' operations it may use
    health           /healthz, /readyz and /metrics
    pages            the explorer and replay pages (`app.web`)
    openapi          /openapi.json, from the views' `@documented` notes
    problems         RFC 9457 problem documents for every error
    request_context  per request: the service, the JSON body, the caller, its access, the
                     trace context of the logs and the request counter

May import every layer below it (`app.web`, `app.service` and the stages); only `app.cli`
is above it.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask

from app.api import (
    archive,
    bundles,
    caller,
    decisions,
    facts,
    health,
    openapi,
    pages,
    policies,
    problems,
    replays,
    rulesets,
)
from app.api.request_context import begin_request, end_request, leave_request
from app.service import DecisionService
from app.shared.config import Settings

log = logging.getLogger(__name__)


def create_app(config: Settings | Mapping[str, Any] | None = None) -> Flask:
    """The WSGI application. `config`: a `Settings`, or overrides of the environment's."""
    settings = config if isinstance(config, Settings) else Settings.load(overrides=config)
    service = DecisionService.open(settings)
    atexit.register(service.close)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["decision_service"] = service
    if service.access.open:
        log.warning("NO API KEYS (DECISION_API_KEYS_FILE unset): anyone who can reach %s:%s "
                    "may post facts and take decisions. For local use only.",
                    settings.host, settings.port)

    problems.init_app(app)
    app.before_request(begin_request)
    app.after_request(end_request)
    app.teardown_request(leave_request)
    for blueprint in (health.bp, facts.bp, decisions.bp, replays.bp, rulesets.bp, bundles.bp,
                      policies.bp, archive.bp, caller.bp, openapi.bp, pages.bp):
        app.register_blueprint(blueprint)
    if settings.background_worker:
        service.worker.start()
    return app
