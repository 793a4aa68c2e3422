"""Operating the service: Prometheus metrics over all processes, JSON logs that name the
decision, and the W3C trace context passed on to OPA and to the executors."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from executor_server import Executor
from flask import Flask
from opa_sidecar import OpaServer
from test_decisions import case, executors_file

from app import create_app
from app.shared.config import Settings
from app.shared.logs import JsonFormatter, log_context

ROOT = Path(__file__).resolve().parent.parent
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def settings(redis_url: str, tmp_path: Path, **overrides: object) -> Settings:
    return Settings.load(environ={}, overrides={
        "redis_url": redis_url, "data_dir": tmp_path, "rules_dir": ROOT / "rules",
        "policy_dir": ROOT / "rego", "background_worker": False, **overrides})


@pytest.fixture
def app(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[Flask]:
    flask_app = create_app(settings(redis_url, tmp_path))
    yield flask_app
    flask_app.extensions["decision_service"].close()


def sample(text: str, name: str) -> dict[str, float]:
    """{labels: value} of one metric in Prometheus text."""
    return {m.group(1) or "": float(m.group(2)) for m in re.finditer(
        rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)}


def test_metrics_count_decisions_actions_and_requests(app: Flask) -> None:
    client = app.test_client()
    client.post("/v1/facts", json={"facts": case()})
    for _ in range(3):
        client.post("/v1/decisions", json={"subject": "PR-1", "ruleset": "procurement"})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert sample(text, "decision_decisions_total") == {'{ruleset="procurement"}': 3.0}
    assert sample(text, "decision_actions_total")[
        '{action="issue_purchase_order",ruleset="procurement",status="recorded"}'] == 3.0
    buckets = sample(text, "decision_duration_seconds_bucket")
    assert buckets['{ruleset="procurement",le="+Inf"}'] == 3.0
    assert sample(text, "decision_duration_seconds_count") == {'{ruleset="procurement"}': 3.0}
    assert sample(text, "decision_policy_duration_seconds_count") == {
        '{backend="embedded"}': 3.0}
    requests = sample(text, "decision_http_requests_total")
    assert requests['{method="POST",route="/v1/decisions",status="201"}'] == 3.0
    assert sample(text, "decision_outbox_depth") == {"": 0.0}
    assert list(sample(text, "decision_ruleset_info")) == [
        f'{{ruleset="procurement",version="{app.extensions["decision_service"].rulesets.get("procurement").version}"}}']
    assert "# TYPE decision_duration_seconds histogram" in text


def test_metrics_sum_every_process(app: Flask, redis_url: str, tmp_path: Path) -> None:
    other = create_app(settings(redis_url, tmp_path))  # another worker, same Redis
    try:
        app.test_client().post("/v1/facts", json={"facts": case()})
        app.test_client().post("/v1/decisions", json={"subject": "PR-1", "ruleset": "procurement"})
        other.test_client().post("/v1/decisions",
                                 json={"subject": "PR-1", "ruleset": "procurement"})
        app.extensions["decision_service"].metrics.flush(force=True)
        text = other.test_client().get("/metrics").get_data(as_text=True)
        assert sample(text, "decision_decisions_total") == {'{ruleset="procurement"}': 2.0}
    finally:
        other.extensions["decision_service"].close()


def test_dispatch_attempts_are_counted(redis_url: str, redis_client: redis.Redis,
                                       tmp_path: Path) -> None:
    executor = Executor()
    executor.statuses = [500]
    flask_app = create_app(settings(redis_url, tmp_path, dispatch_backoff_seconds=0.01,
                                    executors_file=executors_file(tmp_path, executor.url)))
    try:
        client = flask_app.test_client()
        client.post("/v1/facts", json={"facts": case(urgency="normal")})
        client.post("/v1/decisions", json={"subject": "PR-1", "ruleset": "procurement"})
        dispatcher = flask_app.extensions["decision_service"].dispatcher
        while redis_client.zcard("ds:{dispatch}:due"):
            dispatcher.run_once()
        text = client.get("/metrics").get_data(as_text=True)
        attempts = sample(text, "decision_dispatch_attempts_total")
        assert attempts == {'{action="issue_purchase_order",result="retry"}': 1.0,
                            '{action="issue_purchase_order",result="delivered"}': 1.0}
    finally:
        flask_app.extensions["decision_service"].close()
        executor.stop()


def test_json_logs_name_the_decision(app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = app.test_client()
    client.post("/v1/facts", json={"facts": case()})
    decision = client.post("/v1/decisions", json={"subject": "PR-1", "ruleset": "procurement"},
                           headers={"traceparent": TRACE}).get_json()
    [record] = [r for r in caplog.records if r.getMessage().startswith("decided")]
    line = json.loads(JsonFormatter().format(record))
    assert line["decision_id"] == decision["decision_id"]
    assert (line["subject"], line["traceparent"]) == ("PR-1", TRACE)
    assert line["level"] == "INFO" and line["time"].endswith("Z")
    assert "amount" not in line["message"]  # facts stay out of the logs


def test_the_log_context_ends_with_its_block(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with log_context(decision_id="d-1"):
        logging.getLogger("test").info("inside")
    logging.getLogger("test").info("outside")
    inside, outside = (json.loads(JsonFormatter().format(r)) for r in caplog.records)
    assert inside["decision_id"] == "d-1"
    assert "decision_id" not in outside


def test_traceparent_goes_to_the_opa_sidecar_and_the_executor(
        redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    """The real OPA, with its distributed tracing on, logs each decision with the trace id
    of the traceparent it was sent (its exporter points nowhere: only the log matters)."""
    opa = OpaServer(tmp_path / "opa.log", policies=ROOT / "rego", config={
        "distributed_tracing": {"type": "grpc", "address": "127.0.0.1:9"}})
    executor = Executor()
    flask_app = create_app(settings(redis_url, tmp_path, opa_url=opa.url, opa_timeout_seconds=5.0,
                                    executors_file=executors_file(tmp_path, executor.url)))
    trace_id = TRACE.split("-")[1]
    try:
        client = flask_app.test_client()
        client.post("/v1/facts", json={"facts": case(urgency="normal")})
        response = client.post("/v1/decisions", headers={"traceparent": TRACE},
                               json={"subject": "PR-1", "ruleset": "procurement"})
        assert response.status_code == 201
        [action] = response.get_json()["actions"]
        logged = opa.logged_decision(action["verdict"]["opa_decision_id"])
        assert logged["trace_id"] == trace_id
        flask_app.extensions["decision_service"].dispatcher.run_once()
        [delivery] = executor.deliveries
        assert delivery.headers["traceparent"] == TRACE
        bad = client.post("/v1/decisions", headers={"traceparent": "not-a-trace"},
                          json={"subject": "PR-1", "ruleset": "procurement", "dry_run": True})
        assert bad.status_code == 201
        [action] = bad.get_json()["actions"]
        entry = opa.logged_decision(action["verdict"]["opa_decision_id"])
        assert entry.get("trace_id") != trace_id  # a trace of OPA's own, not the bad one
    finally:
        flask_app.extensions["decision_service"].close()
        opa.close()
        executor.stop()


def test_counts_past_ten_million_are_exact(redis_client: redis.Redis) -> None:
    from app.shared.metrics import Metrics

    metrics = Metrics(redis_client)
    for value in (12_345_678, 2**53 + 1, 1):
        metrics.inc("decision_decisions_total", {"ruleset": "big"}, value)
    metrics.observe("decision_duration_seconds", {"ruleset": "big"}, 0.000123456789)
    text = metrics.render([])
    assert f'decision_decisions_total{{ruleset="big"}} {12_345_678 + 2**53 + 2}\n' in text
    assert 'decision_duration_seconds_sum{ruleset="big"} 0.000123456789\n' in text
    assert 'decision_duration_seconds_count{ruleset="big"} 1\n' in text
    assert "e+" not in text


def test_counts_are_published_without_a_background_worker(redis_client: redis.Redis) -> None:
    from app.shared.metrics import Metrics

    now = [0.0]
    counting = Metrics(redis_client, clock=lambda: now[0])
    scraping = Metrics(redis_client)
    counting.inc("decision_decisions_total", {"ruleset": "r"})
    assert "decision_decisions_total{" not in scraping.render([])
    now[0] = 1.5  # a second later this process counts again, and publishes as it does
    counting.inc("decision_decisions_total", {"ruleset": "r"})
    assert 'decision_decisions_total{ruleset="r"} 2\n' in scraping.render([])
