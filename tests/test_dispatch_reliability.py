"""Crashes and outages around dispatch: a worker killed mid-delivery, Redis dying mid-decision."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from executor_server import Executor
from flask import Flask
from test_decisions import AppFactory, case, executors_file, make_app, statuses  # noqa: F401

from app import create_app
from app.dispatch.dispatcher import Dispatcher
from app.dispatch.outbox import Outbox, member_of
from app.dispatch.worker import Worker
from app.policy.embedded import EmbeddedPolicyEngine
from app.policy.engines import Answer
from app.shared import keys
from app.shared.config import Settings
from app.shared.errors import ConfigurationError, StoreUnavailable
from app.shared.store import EmbeddedRedis, connect

ROOT = Path(__file__).resolve().parent.parent


def _worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("decision-service")
    return subprocess.Popen([str(exe), "worker"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _wait_for(condition: Any, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_worker_killed_mid_delivery_is_taken_over_with_the_same_key(
        redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    executor = Executor()
    executor.delay_seconds = 3.0  # the first delivery hangs while its worker is killed
    executors = executors_file(tmp_path, executor.url, max_attempts=5)
    settings = Settings.load(environ={}, overrides={
        "redis_url": redis_url, "data_dir": tmp_path, "rules_dir": ROOT / "rules",
        "policy_dir": ROOT / "rego", "background_worker": False, "executors_file": executors})
    app = create_app(settings)
    client = app.test_client()
    client.post("/v1/facts", json={"facts": case(urgency="normal")})
    record = client.post("/v1/decisions", json={"subject": "PR-1",
                                                "ruleset": "procurement"}).get_json()
    assert statuses(record) == {"issue_purchase_order": "queued"}
    env = {**os.environ, "DECISION_REDIS_URL": redis_url, "DECISION_DATA_DIR": str(tmp_path),
           "DECISION_RULES_DIR": str(ROOT / "rules"), "DECISION_POLICY_DIR": str(ROOT / "rego"),
           "DECISION_EXECUTORS_FILE": str(executors), "DECISION_DISPATCH_LEASE_SECONDS": "2.5",
           "DECISION_WORKER_POLL_SECONDS": "0.05"}
    first = _worker(env)
    try:
        _wait_for(lambda: len(executor.deliveries) == 1)
        first.send_signal(signal.SIGKILL)
        first.wait()
        executor.delay_seconds = 0
        second = _worker(env)
        try:
            _wait_for(lambda: statuses(client.get(
                f"/v1/decisions/{record['decision_id']}").get_json()) == {
                "issue_purchase_order": "dispatched"})
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=15) == 0
    finally:
        if first.poll() is None:
            first.kill()
        executor.stop()
        app.extensions["decision_service"].close()
    action_id = record["actions"][0]["id"]
    assert executor.keys() == [f"{record['decision_id']}:{action_id}"] * 2


class _RedisDiesDuringPolicyCheck(EmbeddedPolicyEngine):
    """The real embedded engine; Redis is stopped while it decides, before the commit."""

    def __init__(self, server: EmbeddedRedis) -> None:
        super().__init__(ROOT / "rego", reload_seconds=0)
        self.server = server

    def decide(self, path: str, common: dict[str, Any], items: list[dict[str, Any]], *,
               item_key: str = "action") -> Answer:
        self.server.stop()
        return super().decide(path, common, items, item_key=item_key)


def test_redis_down_during_a_decision_is_503_and_writes_nothing(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    executor = Executor()
    settings = Settings.load(environ={}, overrides={
        "redis_url": url, "data_dir": tmp_path, "rules_dir": ROOT / "rules",
        "policy_dir": ROOT / "rego", "background_worker": False, "redis_timeout_seconds": 0.5,
        "executors_file": executors_file(tmp_path, executor.url)})
    app = create_app(settings)
    try:
        client = app.test_client()
        client.post("/v1/facts", json={"facts": case()})
        service = app.extensions["decision_service"]
        service.policy.engine = _RedisDiesDuringPolicyCheck(server)
        response = client.post("/v1/decisions", json={"subject": "PR-1",
                                                      "ruleset": "procurement"})
        assert response.status_code == 503
        assert response.mimetype == "application/problem+json"
        server.start()
        left = connect(url, timeout_seconds=1.0)
        written = [key for key in left.scan_iter("ds:*") if any(
            part in key for part in (":decision", ":outbox", "{dispatch}", ":idempotency",
                                     ":sent-actions"))]
        assert written == [], "a decision was half-written"
        assert left.dbsize() > 0  # the facts posted before are still there
    finally:
        app.extensions["decision_service"].close()
        server.stop()
        executor.stop()


def test_the_dispatcher_repairs_what_a_crash_between_steps_leaves(
        redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    """On Redis Cluster a decision's writes and a delivery's bookkeeping run step by step
    (see `store.in_order`). Each state a crash between steps can leave is repaired by the
    next claim, and never sends anything that was not allowed and recorded."""
    executor = Executor()
    settings = Settings.load(environ={}, overrides={
        "redis_url": redis_url, "data_dir": tmp_path, "rules_dir": ROOT / "rules",
        "policy_dir": ROOT / "rego", "background_worker": False,
        "executors_file": executors_file(tmp_path, executor.url)})
    app = create_app(settings)
    try:
        service = app.extensions["decision_service"]
        # 1. Held for a decision whose commit never ran: due after the hold, then dropped.
        held = Outbox(redis_client, hold_seconds=0.01)
        ghost = member_of("PR-9", "d-never-written", "act-0")
        held.hold([ghost])(redis_client)
        time.sleep(0.02)
        assert service.dispatcher.run_once() == 1
        assert executor.deliveries == []
        assert redis_client.zscore(keys.dispatch_due(), ghost) is None
        # 2. Parked, but the worker died before it unscheduled the entry: the next claim
        #    finishes the parking and sends nothing.
        client = app.test_client()
        client.post("/v1/facts", json={"facts": case(urgency="normal")})
        record = client.post("/v1/decisions", json={"subject": "PR-1",
                                                    "ruleset": "procurement"}).get_json()
        [action] = [a for a in record["actions"] if a["status"] == "queued"]
        member = member_of("PR-1", record["decision_id"], action["id"])
        entry = service.outbox.entry(member)
        redis_client.hset(keys.outbox("PR-1"), f"{record['decision_id']}:{action['id']}",
                          json.dumps({**entry, "attempts": 8, "last_error": "HTTP 500",
                                      "failed_at": "2026-11-24T00:00:00Z"}))
        assert service.dispatcher.run_once() == 1
        assert executor.deliveries == []
        assert redis_client.zscore(keys.dispatch_due(), member) is None
        assert [e["action"]["id"] for e in service.outbox.failed()] == [action["id"]]
        # 3. Re-driven, delivered, and the re-drive's last step (leaving the failed list)
        #    never ran: the failed list drops it instead of offering it again.
        service.outbox.redrive("PR-1", record["decision_id"], action["id"])
        assert service.dispatcher.run_once() == 1
        assert len(executor.deliveries) == 1
        redis_client.zadd(keys.dispatch_failed(), {member: 0})
        assert service.outbox.failed() == []
        assert redis_client.zcard(keys.dispatch_failed()) == 0
    finally:
        app.extensions["decision_service"].close()
        executor.stop()


def test_a_lease_must_outlast_every_executor_timeout(redis_url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"LEASE_SECONDS \(2\) must be longer .* "
                                                  r"\(2 for [a-z_]+\)"):
        create_app(Settings.load(environ={}, overrides={
            "redis_url": redis_url, "data_dir": tmp_path, "dispatch_lease_seconds": 2.0,
            "executors_file": executors_file(tmp_path, "http://127.0.0.1:9")}))


def test_an_attempt_that_could_outlive_its_lease_is_left_for_the_next_claim(
        make_app: AppFactory, redis_client: redis.Redis, tmp_path: Path) -> None:  # noqa: F811
    executor = Executor()
    try:
        app = make_app(executors_file=executors_file(tmp_path, executor.url))
        client = app.test_client()
        client.post("/v1/facts", json={"facts": case(urgency="normal")})
        client.post("/v1/decisions", json={"subject": "PR-1", "ruleset": "procurement"})
        service = app.extensions["decision_service"]
        times = iter([100.0, 101.5])  # claimed at 100 with a 3 s lease; 1.5 s left, 2 needed
        late = Dispatcher(service.outbox, service.executors, lease_seconds=3.0,
                          clock=lambda: next(times))
        assert late.run_once() == 1
        assert executor.deliveries == []
        assert redis_client.zcard(keys.dispatch_due()) == 1  # due again when the lease ends
    finally:
        executor.stop()


def test_a_worker_says_once_that_redis_is_down_and_once_that_it_is_back(
        caplog: pytest.LogCaptureFixture) -> None:
    down = [True, True, True, False]

    def step() -> int:
        if down.pop(0):
            raise StoreUnavailable("Redis did not answer")
        return 1

    worker = Worker([step], poll_seconds=0.01)
    with caplog.at_level(logging.WARNING):
        assert [worker.run_once() for _ in range(4)] == [0, 0, 0, 1]
    assert [r.getMessage() for r in caplog.records] == [
        "decision-worker: Redis did not answer; retrying every 0.25s",
        "decision-worker: working again"]


def _queued(make_app: AppFactory, executor: Executor, tmp_path: Path,  # noqa: F811
            **overrides: Any) -> tuple[Flask, str]:
    """An app with one purchase order queued for delivery, and its outbox member."""
    app = make_app(executors_file=executors_file(tmp_path, executor.url), **overrides)
    client = app.test_client()
    client.post("/v1/facts", json={"facts": case(urgency="normal")})
    record = client.post("/v1/decisions", json={"subject": "PR-1",
                                                "ruleset": "procurement"}).get_json()
    [action] = [a for a in record["actions"] if a["status"] == "queued"]
    return app, member_of("PR-1", record["decision_id"], action["id"])


def test_a_late_retry_cannot_undo_a_delivery_another_worker_made(
        make_app: AppFactory, redis_client: redis.Redis, tmp_path: Path) -> None:  # noqa: F811
    """Worker A claims, its delivery outlives the lease; worker B takes over and delivers;
    A's retry then comes in late. It is refused by the fence: one delivery in all."""
    executor = Executor()
    try:
        app, member = _queued(make_app, executor, tmp_path)
        service = app.extensions["decision_service"]
        token_a, [claimed] = service.outbox.claim(limit=1, lease_seconds=0.05)
        entry_a = service.outbox.adopt(claimed, token_a)
        assert claimed == member and entry_a is not None
        time.sleep(0.1)  # A's lease runs out; B claims the entry and delivers it
        assert service.dispatcher.run_once() == 1
        assert len(executor.deliveries) == 1
        assert not service.outbox.retry(member, token_a, entry_a, 1, "slow executor", 0.0)
        assert not service.outbox.park(member, token_a, entry_a, 8, "slow executor")
        assert service.outbox.entry(member) is None
        assert redis_client.zcard(keys.dispatch_due()) == 0
        assert redis_client.zcard(keys.dispatch_failed()) == 0
        status = json.loads(redis_client.hget(keys.decision_action_status(
            "PR-1", member.split("|")[1]), member.split("|")[2]))
        assert status["status"] == "dispatched"
        assert service.dispatcher.run_once() == 0
        assert len(executor.deliveries) == 1
    finally:
        executor.stop()


def test_a_stale_claim_cannot_even_adopt_an_entry_a_later_claim_holds(
        make_app: AppFactory, tmp_path: Path) -> None:  # noqa: F811
    executor = Executor()
    try:
        app, member = _queued(make_app, executor, tmp_path)
        outbox = app.extensions["decision_service"].outbox
        old, _ = outbox.claim(limit=1, lease_seconds=0.01)
        time.sleep(0.02)
        new, _ = outbox.claim(limit=1, lease_seconds=30)
        assert new > old and outbox.adopt(member, new) is not None
        assert outbox.adopt(member, old) is None
        assert not outbox.retry(member, old, {}, 1, "late", 0.0)
        assert outbox.retry(member, new, outbox.entry(member) or {}, 1, "on time", 0.0)
    finally:
        executor.stop()


def test_an_attempt_ends_before_its_lease_however_slowly_the_executor_answers(
        make_app: AppFactory, redis_client: redis.Redis, tmp_path: Path) -> None:  # noqa: F811
    """An executor that sends its answer a byte at a time keeps each socket read short,
    so a socket timeout alone never fires: the attempt's total deadline does."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def drip() -> None:
        connection, _ = server.accept()
        connection.recv(65536)
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
            time.sleep(0.15)
            with contextlib.suppress(OSError):
                connection.send(bytes([byte]))
        connection.close()

    threading.Thread(target=drip, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump({"issue_purchase_order": {"url": url,
                                                             "timeout_seconds": 1}}))
    app = make_app(executors_file=path, dispatch_lease_seconds=3)
    client = app.test_client()
    client.post("/v1/facts", json={"facts": case(urgency="normal")})
    client.post("/v1/decisions", json={"subject": "PR-1", "ruleset": "procurement"})
    started = time.monotonic()
    assert app.extensions["decision_service"].dispatcher.run_once() == 1
    assert time.monotonic() - started < 2.0  # not the 6 s the drip takes
    [member] = redis_client.zrange(keys.dispatch_due(), 0, -1)
    entry = app.extensions["decision_service"].outbox.entry(member)
    assert entry is not None and entry["last_error"] == "no answer within 1s"
    server.close()
