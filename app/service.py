"""The running service's parts, wired from one `Settings`: what the views and the CLI call.

Flask-free: `create_app` wraps one `DecisionService` per process, and the CLI
opens one the same way, so both run exactly the same code.
"""

from __future__ import annotations

import logging

import redis

from app.config import Settings
from app.errors import DecisionServiceError
from app.facts import FactPool
from app.rules import RulesetRegistry
from app.store import EmbeddedRedis, connect, unavailable_on_outage

log = logging.getLogger(__name__)


class DecisionService:
    def __init__(self, settings: Settings, redis_client: redis.Redis,
                 embedded_redis: EmbeddedRedis | None = None) -> None:
        self.settings = settings
        self.redis = redis_client
        self.facts = FactPool(redis_client)
        self.rulesets = RulesetRegistry(settings.rules_dir,
                                        check_interval_seconds=settings.rules_reload_seconds)
        self.rulesets.reload()
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
        return cls(settings, client, embedded)

    def readiness(self) -> dict[str, str]:
        """Each dependency and whether it answers: "ok" or the reason it does not."""
        checks: dict[str, str] = {}
        try:
            with unavailable_on_outage():
                self.redis.ping()
            checks["redis"] = "ok"
        except DecisionServiceError as exc:
            checks["redis"] = exc.detail
        return checks

    def close(self) -> None:
        self.redis.close()
        if self._embedded_redis is not None:
            self._embedded_redis.stop()
