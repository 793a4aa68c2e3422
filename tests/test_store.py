"""The embedded Redis: a real redis-server that keeps its data under the data dir."""

from __future__ import annotations

from pathlib import Path

from app.store import EmbeddedRedis, connect


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
