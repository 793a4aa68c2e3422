"""Liveness, readiness, and what a Redis outage looks like to a caller."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.shared.config import Settings
from app.shared.store import EmbeddedRedis

FACT = {"subject": "PR-1", "type": "purchase_request", "department": "procurement",
        "data": {"amount": 1}}


def test_healthz_answers_while_the_process_lives(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_readyz_reports_redis_and_the_policy_engine(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["checks"] == {"redis": "ok", "policy": "ok"}


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, so the test can stop and restart it."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def outage_app(own_redis: EmbeddedRedis, tmp_path: Path) -> Iterator[Flask]:
    settings = Settings.load(environ={}, overrides={
        "redis_url": own_redis.url, "data_dir": tmp_path, "redis_timeout_seconds": 0.5})
    flask_app = create_app(settings)
    yield flask_app
    flask_app.extensions["decision_service"].close()


def test_redis_down_is_503_with_a_reason_then_recovers(own_redis: EmbeddedRedis,
                                                       outage_app: Flask) -> None:
    client = outage_app.test_client()
    assert client.post("/v1/facts", json=FACT).status_code == 201

    own_redis.stop()
    started = time.monotonic()
    for response in (client.post("/v1/facts", json=FACT), client.get("/v1/subjects/PR-1/facts"),
                     client.delete("/v1/facts/x"), client.get("/readyz")):
        assert response.status_code == 503
        assert response.mimetype == "application/problem+json"
        assert response.headers["Retry-After"] == "1"
        assert "Redis" in response.get_json()["detail"]
    assert time.monotonic() - started < 5, "an outage must answer, not hang"
    assert "redis" in client.get("/readyz").get_json()["checks"]

    own_redis.start()  # same data dir: the append-only file brings the fact back
    assert client.get("/readyz").status_code == 200
    assert len(client.get("/v1/subjects/PR-1/facts").get_json()["facts"]) == 1
