"""The running service's parts, wired from one `Settings`: what the views and the CLI call.

Flask-free: `create_app` wraps one `DecisionService` per process, and the CLI
opens one the same way, so both run exactly the same code.
"""

from __future__ import annotations

import ipaddress
import logging

import redis

from app.access import AccessControl, ApiKeys
from app.config import Settings
from app.errors import ConfigurationError, DecisionServiceError
from app.facts import FactPool
from app.policy.engines import EmbeddedPolicyEngine, PolicyEngine, SidecarPolicyEngine
from app.policy.gate import PolicyGate
from app.rules import RulesetRegistry
from app.store import EmbeddedRedis, connect, unavailable_on_outage

log = logging.getLogger(__name__)


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
    log.warning("NO API KEYS (DECISION_API_KEYS_FILE unset): anyone who can reach %s:%s may "
                "post facts and take decisions. For local use only.", settings.host, settings.port)
    return None


def policy_engine(settings: Settings) -> PolicyEngine:
    if settings.opa_url:
        return SidecarPolicyEngine(settings.opa_url, timeout_seconds=settings.opa_timeout_seconds)
    return EmbeddedPolicyEngine(settings.policy_dir, reload_seconds=settings.policy_reload_seconds)


class DecisionService:
    def __init__(self, settings: Settings, redis_client: redis.Redis,
                 embedded_redis: EmbeddedRedis | None = None) -> None:
        self.settings = settings
        self.redis = redis_client
        self.facts = FactPool(redis_client)
        self.rulesets = RulesetRegistry(settings.rules_dir,
                                        check_interval_seconds=settings.rules_reload_seconds)
        self.rulesets.reload()
        self.policy = PolicyGate(policy_engine(settings), governance_path=settings.policy_path,
                                 access_path=settings.access_policy_path)
        self.access = AccessControl(_access_keys(settings), self.policy)
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
        client = connect(url, timeout_seconds=settings.redis_timeout_seconds)
        try:
            return cls(settings, client, embedded)
        except BaseException:
            client.close()
            if embedded is not None:
                embedded.stop()
            raise

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
        return checks

    def close(self) -> None:
        self.redis.close()
        if self._embedded_redis is not None:
            self._embedded_redis.stop()
