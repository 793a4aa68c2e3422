"""The policies a running service has live: its gate, what it reports of them, its bundle.

`LivePolicies` builds the gate from the settings (embedded OPA, or the OPA sidecar with
the policy directory as the bundle this service serves it), says what is live beside what
is on disk, counts rejected changes once across the service, and records in Redis what
each process has live, which `decision-service policy status` compares (`policy_reports`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis

from app.policy.bundle import Bundle, build_bundle
from app.policy.embedded import EmbeddedPolicyEngine, PolicyDirectory
from app.policy.engines import PolicyEngine, PolicyStatus
from app.policy.files import PolicySet, disk_revision
from app.policy.gate import PolicyGate
from app.policy.sidecar import SidecarPolicyEngine
from app.shared import keys
from app.shared.clock import rfc3339, system_clock
from app.shared.config import Settings
from app.shared.errors import Conflict, DecisionServiceError, NotFound, PolicyUnavailable
from app.shared.metrics import Metrics
from app.shared.store import unavailable_on_outage

log = logging.getLogger(__name__)

# How often a process records in Redis what policies it has live (for `policy status`),
# and after how long without a word a process's record no longer counts.
POLICY_REPORT_SECONDS = 5.0
POLICY_REPORT_STALE_SECONDS = 60.0
# How long a rejected policy directory's content is remembered, so that every process
# rejecting it counts it once between them.
POLICY_REJECTED_KEPT_SECONDS = 7 * 24 * 3600


def policy_engine(settings: Settings, *,
                  on_rejected: Callable[[PolicyDirectory], None] | None = None) -> PolicyEngine:
    """Embedded OPA on the policy directory, or the OPA sidecar, with the policy directory
    as the bundle this service serves it. `on_rejected` hears of each rejected change."""
    if settings.opa_url:
        served = PolicyDirectory(settings.policy_dir, keep_engine=False,
                                 reload_seconds=settings.policy_reload_seconds,
                                 allowed_builtins=frozenset(settings.policy_allowed_builtins),
                                 on_rejected=on_rejected)
        return SidecarPolicyEngine(settings.opa_url, timeout_seconds=settings.opa_timeout_seconds,
                                   bundle=settings.opa_bundle, served=served)
    return EmbeddedPolicyEngine(settings.policy_dir,
                                reload_seconds=settings.policy_reload_seconds,
                                allowed_builtins=frozenset(settings.policy_allowed_builtins),
                                on_rejected=on_rejected)


def process_name() -> str:
    """A running service, as its policy report names it: "<host>:<pid>:<token>" (the token
    tells apart two services of one process, as tests make)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def policy_report(status: PolicyStatus, reported_at: float) -> dict[str, Any]:
    """What a process records of its policies (keys.policy_processes)."""
    return {"kind": status.kind, "revision": status.revision, "served": status.served,
            "disk_revision": status.disk_revision,
            "problems": [{"file": p.file, "line": p.line, "message": p.message}
                         for p in status.problems],
            "rejected_at": status.rejected_at, "reported_at": rfc3339(reported_at)}


def policy_reports(redis_client: redis.Redis) -> dict[str, dict[str, Any]]:
    """What each process last recorded of its policies (`policy_report`), by process."""
    with unavailable_on_outage():
        raw = cast(dict[str, str], redis_client.hgetall(keys.policy_processes()))
    reports = {}
    for process, text in sorted(raw.items()):
        try:
            reports[process] = json.loads(text)
        except ValueError:
            continue
    return reports


def forget_policy_reports(redis_client: redis.Redis, processes: Sequence[str]) -> None:
    """Drop the records of processes that stopped without a word (killed)."""
    if processes:
        with unavailable_on_outage():
            redis_client.hdel(keys.policy_processes(), *processes)


class LivePolicies:
    """The gate of this process and what it says of the policies it has live.
    `archived(revision)` is the text of a revision some decision used (NotFound if none
    did): what a sidecar on an earlier revision of the bundle runs."""

    def __init__(self, settings: Settings, redis_client: redis.Redis, metrics: Metrics, *,
                 archived: Callable[[str], PolicySet]) -> None:
        self.settings = settings
        self.redis = redis_client
        self.metrics = metrics
        self.archived = archived
        # The first report is due a report period after start (or at once on /readyz,
        # /v1/policies or a rejected change): a process that lives a moment writes nothing.
        self._reported_at, self._reported = time.monotonic(), False
        self.process_name = process_name()
        self.gate = PolicyGate(policy_engine(settings, on_rejected=self._rejected),
                               governance_path=settings.policy_path,
                               access_path=settings.access_policy_path, metrics=metrics)
        self._bundle: Bundle | None = None

    # --- the policy bundle -------------------------------------------------------------

    def bundle(self, name: str) -> Bundle:
        """The policy directory as the OPA bundle `name` (app/policy/bundle.py), as the
        files are now: NotFound for another name than DECISION_OPA_BUNDLE,
        PolicyUnavailable when no policies ever loaded."""
        if name != self.settings.opa_bundle:
            raise NotFound(f"there is no bundle {name!r} here, only "
                           f"{self.settings.opa_bundle!r}")
        directory = self.gate.engine.directory
        if directory is None:
            raise NotFound("this service reads no policy directory")
        _, policies = directory.current(check=True)
        cached = self._bundle
        if cached is None or cached.revision != policies.revision:
            cached = self._bundle = build_bundle(
                policies, [self.gate.governance_path, self.gate.access_path])
        return cached

    # --- what is live ------------------------------------------------------------------

    def status(self, *, check: bool = True) -> PolicyStatus:
        """What policies this process has live, after a reload check (`check`: if the files
        changed; else only if a reload is due, as for a decision), a sidecar's as OPA says
        now, beside the directory as it is on disk; recorded in Redis for
        `decision-service policy status`."""
        status = self.gate.engine.status(check=check)
        self._write_report(status)
        return status

    def overview(self) -> tuple[PolicyStatus, PolicySet | None]:
        """The status of the policies live now, and their text when this service has it:
        this process's, or, for a sidecar that runs an earlier revision of the bundle, the
        archived one (None for a sidecar on files of its own, or when none ever loaded)."""
        status = self.status()
        if status.policies is not None or status.revision == "none":
            return status, status.policies
        try:
            return status, self.archived(status.revision)
        except NotFound:
            return status, None

    def live(self) -> tuple[PolicyStatus, PolicySet]:
        """The status and the text of the policies live now (see `overview`);
        PolicyUnavailable when none ever loaded, Conflict when this service has not their
        text (a sidecar on files of its own)."""
        status, policies = self.overview()
        if policies is not None:
            return status, policies
        if status.revision == "none":
            problems = "; ".join(str(p) for p in status.problems) or "no policy files"
            raise PolicyUnavailable(f"no policies are loaded: {problems}")
        raise Conflict(
            f"the live policies are revision {status.revision}, which the OPA sidecar runs, "
            "and this service does not have their text (files of the sidecar's own, or a "
            "revision of the bundle no decision used): replay with the whole set "
            "(decision-service replay --policies DIR), or serve the sidecar this service's "
            "bundle")

    def rejection(self) -> tuple[list[dict[str, Any]], str | None]:
        """The last rejected change to the policy directory, while the policies live are
        the last good ones: its problems (file, line, message) and when it was rejected."""
        directory = self.gate.engine.directory
        if directory is None or not directory.problems:
            return [], None
        return ([{"file": p.file, "line": p.line, "message": p.message}
                 for p in directory.problems], directory.rejected_at)

    def revisions(self) -> dict[str, str]:
        """The policy revision each side has (after the service's `readiness`, which
        refreshes them): embedded, or the bundle this service serves and what the OPA
        sidecar runs."""
        return self.gate.revisions()

    # --- what this process reports -----------------------------------------------------

    def _rejected(self, directory: PolicyDirectory) -> None:
        """A change to the policy directory did not load: counted once across the service
        (the first process to reject that content counts it), and reported soon."""
        revision = disk_revision(directory.path)
        with unavailable_on_outage():
            first = self.redis.set(keys.policy_rejected(revision), rfc3339(system_clock()),
                                   nx=True, ex=POLICY_REJECTED_KEPT_SECONDS)
        if first:
            self.metrics.inc("decision_policy_files_rejected", {})
        self._reported_at = float("-inf")

    def report(self, *, first_now: bool = False) -> int:
        """Record what policies this process has live, at most every POLICY_REPORT_SECONDS
        (and soon after a rejected change; with `first_now`, at once if it never did);
        bookkeeping, like the metrics. It reloads only when a reload is due, as a decision
        would (DECISION_POLICY_RELOAD_SECONDS)."""
        if time.monotonic() - self._reported_at >= POLICY_REPORT_SECONDS or (
                first_now and not self._reported):
            self._reported_at = time.monotonic()  # tried: not again at every poll
            try:
                self.status(check=False)
            except DecisionServiceError as exc:
                log.debug("policy status not reported: %s", exc.detail)
        return 0

    def _write_report(self, status: PolicyStatus) -> None:
        self._reported_at, self._reported = time.monotonic(), True
        with unavailable_on_outage():
            self.redis.hset(keys.policy_processes(), self.process_name,
                            json.dumps(policy_report(status, system_clock()), sort_keys=True))

    def withdraw_report(self) -> None:
        """On closing: a process that said what it had live has nothing live now."""
        if self._reported:
            with unavailable_on_outage():
                self.redis.hdel(keys.policy_processes(), self.process_name)
