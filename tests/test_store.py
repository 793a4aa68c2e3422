"""Redis: the embedded server that keeps its data under the data dir, and the client that
follows a single server or a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from conftest import CLUSTER
from redis.crc import key_slot
from redis.exceptions import RedisClusterUnreachableError
from redis_cluster import LocalCluster

from app.shared import keys
from app.shared.errors import StoreUnavailable
from app.shared.store import EmbeddedRedis, connect, is_cluster, unavailable_on_outage


def test_embedded_redis_keeps_acknowledged_writes_across_a_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    client = connect(server.start(), timeout_seconds=1.0)
    client.set("k", "v")
    server.stop()
    assert (tmp_path / "appendonly.aof").exists()
    server.start()
    assert client.get("k") == "v"
    server.stop()


def test_a_second_start_adopts_the_running_server(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path)
    url = first.start()
    second = EmbeddedRedis(tmp_path)
    assert second.start() == url
    second.stop()  # it did not start the server, so it does not stop it
    assert connect(url, timeout_seconds=1.0).ping()
    first.stop()


def test_a_long_data_dir_gets_a_short_socket_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = EmbeddedRedis(deep)
    assert len(server.socket_path) <= 100
    assert connect(server.start(), timeout_seconds=1.0).ping()
    server.stop()


def test_the_client_matches_the_server_it_was_given(redis_url: str,
                                                    redis_client: redis.Redis) -> None:
    """Asked, the server says whether it is a cluster node; the client follows (in a run
    with DECISION_TEST_REDIS=cluster, every test here talks to a three-master cluster)."""
    assert is_cluster(redis_client) is CLUSTER
    if CLUSTER:
        nodes = {redis_client.get_node_from_key(keys.subject_facts(f"S-{i}")).name  # type: ignore[attr-defined]
                 for i in range(20)}
        assert len(nodes) == 3  # subjects spread over the masters
    assert is_cluster(connect(redis_url, timeout_seconds=1.0, cluster=False)) is False


def test_a_server_that_cannot_be_asked_is_503_with_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="set DECISION_REDIS_CLUSTER"):
        connect("redis://127.0.0.1:1", timeout_seconds=0.2)


def test_one_subject_keeps_its_keys_in_one_hash_slot() -> None:
    subject_keys = [build("PR-7") for build in (
        keys.subject_facts, keys.subject_fact_expiry, keys.subject_decisions, keys.outbox,
        keys.subject_sent_actions)] + [keys.decision_record("PR-7", "d"),
                                       keys.idempotency("PR-7", "c", "k")]
    assert len({key_slot(key.encode()) for key in subject_keys}) == 1


def test_a_cluster_gone_entirely_is_503_not_an_error_of_the_service(tmp_path: Path) -> None:
    """Every node down: each call a 503. When the client must find the cluster again
    (with no node left to ask) it raises its own error, which is no ConnectionError: that
    one was a traceback when a worker closed after the test cluster had gone."""
    cluster = LocalCluster(tmp_path)
    client = connect(cluster.start(), timeout_seconds=1.0)
    try:
        client.hset(keys.subject_facts("S"), "f", "v")
        cluster.stop()
        for _ in range(3):  # each a ConnectionError, its nodes refusing the connection
            with pytest.raises(StoreUnavailable), unavailable_on_outage():
                client.hgetall(keys.subject_facts("S"))
    finally:
        client.close()
        cluster.stop()
    with pytest.raises(StoreUnavailable, match="cannot serve"), unavailable_on_outage():
        raise RedisClusterUnreachableError("Redis Cluster cannot be connected")
