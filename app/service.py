"""The running service's parts, wired from one `Settings`: what the views and the CLI call.

Flask-free: `create_app` wraps one `DecisionService` per process, and the CLI
opens one the same way, so both run exactly the same code. Each stage owns its part:

    decider   the decision path: posted facts, decisions, triggered decisions, redrive
              (app/decisions/path.py)
    policies  the gate and what it has live, its reports and bundle (app/policy/live.py)
    replays   replays, what-ifs, why-not, what a decision ran with (app/replay/replays.py)

and the service holds the shared plumbing (Redis, the pool, the log, the outbox, the
dispatcher, the worker) and what reads across the parts: readiness and the gauges.
"""

from __future__ import annotations

import contextlib
import ipaddress

import redis

from app.decisions.archive import Archive
from app.decisions.log import DecisionLog
from app.decisions.masking import Masking
from app.decisions.path import DecisionPath
from app.dispatch.dispatcher import Dispatcher
from app.dispatch.executors import Executors
from app.dispatch.outbox import Outbox
from app.dispatch.worker import Worker
from app.facts.pool import FactPool, Quotas
from app.facts.triggers import TriggerQueue
from app.policy.access import AccessControl, ApiKeys
from app.policy.live import LivePolicies
from app.replay.replays import Replays
from app.rules import RulesetRegistry
from app.rules.engine import Limits
from app.shared import keys
from app.shared.config import Settings
from app.shared.errors import ConfigurationError, DecisionServiceError
from app.shared.metrics import Metrics, label_value
from app.shared.store import EmbeddedRedis, connect, unavailable_on_outage


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _access_keys(settings: Settings) -> ApiKeys | None:
    if settings.api_keys_file is not None:
        return ApiKeys.load(settings.api_keys_file)
    if settings.env == "production":
        raise ConfigurationError("DECISION_ENV=production needs DECISION_API_KEYS_FILE")
    if not _loopback(settings.host):
        raise ConfigurationError(f"without DECISION_API_KEYS_FILE the service only serves on "
                                 f"loopback, not on {settings.host}")
    return None


def _limits(settings: Settings) -> Limits:
    """The evaluation limits; a full subject and a full batch of inline facts must fit."""
    limits = Limits(facts=settings.max_evaluation_facts, firings=settings.max_firings,
                    join_candidates=settings.max_join_candidates,
                    seconds=settings.max_evaluation_seconds, actions=settings.max_actions,
                    gate_pairs=settings.max_gate_pairs, rounds=settings.max_rounds)
    if settings.max_facts_per_subject + settings.max_batch > limits.facts:
        raise ConfigurationError(
            f"DECISION_MAX_FACTS_PER_SUBJECT ({settings.max_facts_per_subject}) plus "
            f"DECISION_MAX_BATCH ({settings.max_batch}) inline facts must fit in one "
            f"evaluation (DECISION_MAX_EVALUATION_FACTS, {limits.facts}), or a full "
            "subject could not be decided")
    return limits


class DecisionService:
    """One running service: the parts of each stage, built from one `Settings` over one
    Redis, and the worker that runs their background steps."""

    def __init__(self, settings: Settings, redis_client: redis.Redis,
                 embedded_redis: EmbeddedRedis | None = None) -> None:
        self.settings = settings
        self.redis = redis_client
        self.facts = FactPool(redis_client, quotas=Quotas(
            per_department=settings.max_facts_per_department,
            per_type=settings.max_facts_per_type, per_subject=settings.max_facts_per_subject))
        self.rulesets = RulesetRegistry(settings.rules_dir,
                                        check_interval_seconds=settings.rules_reload_seconds)
        self.rulesets.reload()
        limits = _limits(settings)
        self.metrics = Metrics(redis_client)
        archive = Archive(redis_client)
        self.policies = LivePolicies(settings, redis_client, self.metrics,
                                     archived=archive.policies)
        self.policy = self.policies.gate
        self.access = AccessControl(_access_keys(settings), self.policy)
        self.executors = Executors.load(settings.executors_file)
        self.executors.check_lease(settings.dispatch_lease_seconds)
        self.outbox = Outbox(redis_client, hold_seconds=settings.dispatch_lease_seconds,
                             retention_seconds=settings.decision_retention_seconds)
        self.decisions = DecisionLog(redis_client, self.outbox,
                                     retention_seconds=settings.decision_retention_seconds,
                                     idempotency_ttl_seconds=settings.idempotency_ttl_seconds)
        self.dispatcher = Dispatcher(self.outbox, self.executors,
                                     backoff_seconds=settings.dispatch_backoff_seconds,
                                     backoff_max_seconds=settings.dispatch_backoff_max_seconds,
                                     lease_seconds=settings.dispatch_lease_seconds,
                                     metrics=self.metrics)
        self.triggers = TriggerQueue(redis_client, max_attempts=settings.trigger_max_attempts,
                                     backoff=self.dispatcher.backoff)
        self.decider = DecisionPath(
            facts=self.facts, rulesets=self.rulesets, limits=limits, policy=self.policy,
            executors=self.executors, outbox=self.outbox, decisions=self.decisions,
            triggers=self.triggers, archive=archive,
            masking=Masking(settings.mask_fields), metrics=self.metrics)
        self.replays = Replays(settings, redis_client, self.decider, self.policies)
        self.worker = Worker([self.decider.run_triggers_once, self.dispatcher.run_once,
                              self._flush_metrics, self._expire_parked, self.policies.report],
                             poll_seconds=settings.worker_poll_seconds)
        self._embedded_redis = embedded_redis

    @classmethod
    def open(cls, settings: Settings) -> DecisionService:
        """Connect to `DECISION_REDIS_URL`, or start the embedded Redis when it is unset."""
        embedded = None
        url = settings.redis_url
        if url is None:
            embedded = EmbeddedRedis(settings.data_dir)
            url = embedded.start()
            settings = settings.replace(redis_url=url)
        client = connect(url, timeout_seconds=settings.redis_timeout_seconds,
                         cluster=settings.redis_cluster)
        try:
            return cls(settings, client, embedded)
        except BaseException:
            client.close()
            if embedded is not None:
                embedded.stop()
            raise

    # --- the worker's bookkeeping steps ------------------------------------------------

    def _flush_metrics(self) -> int:
        self.metrics.flush()
        return 0  # bookkeeping, not work: an idle worker keeps polling slowly

    def _expire_parked(self) -> int:
        self.outbox.expire_parked()
        return 0  # bookkeeping, like the metrics

    # --- operations --------------------------------------------------------------------

    def readiness(self) -> dict[str, str]:
        """Each dependency and whether it answers: "ok" or the reason it does not."""
        checks: dict[str, str] = {}
        try:
            with unavailable_on_outage():
                self.redis.ping()
            checks["redis"] = "ok"
        except DecisionServiceError as exc:
            checks["redis"] = exc.detail
        checks["policy"] = self.policy.readiness()
        self.policies.report(first_now=True)
        return checks

    def gauges(self) -> list[tuple[str, str, dict[str, str], float]]:
        """What /metrics reads fresh at each scrape: queues, and the versions in use."""
        with unavailable_on_outage(), self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(keys.dispatch_due())
            pipe.zcard(keys.dispatch_failed())
            pipe.zcard(keys.triggers_due())
            pipe.zcard(keys.triggers_parked())
            due, failed, triggers, parked = pipe.execute()
        gauges = [
            ("decision_outbox_depth", "allowed actions waiting for delivery", {}, float(due)),
            ("decision_outbox_failed", "actions parked after their last attempt", {},
             float(failed)),
            ("decision_triggers_pending", "subjects waiting for a triggered decision", {},
             float(triggers)),
            ("decision_triggers_parked", "triggered decisions parked: they cannot run as "
             "things are (an operator re-drives them)", {}, float(parked)),
            ("decision_policy_info", "the policy revision this process evaluates",
             {"revision": label_value(self.policy.revision)}, 1.0),
            ("decision_rule_files_rejected", "rule files this process rejected at its last "
             "reload", {}, float(len(self.rulesets.problems))),
        ]
        gauges += [("decision_ruleset_info", "the active version of each ruleset",
                    {"ruleset": label_value(r.name), "version": r.version}, 1.0)
                   for r in self.rulesets.active()]
        return gauges

    def close(self) -> None:
        self.worker.stop()
        self.dispatcher.close()
        with contextlib.suppress(DecisionServiceError):
            self.policies.withdraw_report()
        with contextlib.suppress(DecisionServiceError):
            self.metrics.flush(force=True)
        self.redis.close()
        if self._embedded_redis is not None:
            self._embedded_redis.stop()
