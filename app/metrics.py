"""Metrics: counters and histograms kept per process, summed in Redis, shown at /metrics.

Every process (each gunicorn worker, each `decision-service worker`) counts in memory
and adds its counts to one Redis hash about once a second, in one round trip; the
hash is what `/metrics` renders, so any worker answering a scrape shows the totals of
all of them. Gauges (outbox depth, versions in use) are read when scraped.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import redis

from app import keys
from app.store import unavailable_on_outage

log = logging.getLogger(__name__)

# Seconds: a decision takes about a millisecond here; a slow OPA sidecar, hundreds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

HELP = {
    "decision_decisions_total": ("counter", "decisions recorded, by ruleset"),
    "decision_decisions_failed_total": ("counter", "decisions the rules could not make "
                                        "(recorded with their error), by ruleset"),
    "decision_actions_total": ("counter", "proposed actions, by ruleset, type and status"),
    "decision_duration_seconds": ("histogram", "time to decide and record, by ruleset"),
    "decision_policy_duration_seconds": ("histogram", "time for the policy gate to judge the "
                                         "actions of one decision, by backend"),
    "decision_policy_failures_total": ("counter", "policy evaluations that held actions"),
    "decision_dispatch_attempts_total": ("counter", "delivery attempts, by action type and "
                                         "result (delivered, retry, failed)"),
    "decision_http_requests_total": ("counter", "HTTP requests, by route and status"),
}


def _pairs(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _field(name: str, labels: Mapping[str, str]) -> str:
    return f"{name}|{_pairs(labels)}"


def _labels_text(labels: str) -> str:
    if not labels:
        return ""
    pairs = (pair.split("=", 1) for pair in labels.split(","))
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    def __init__(self, redis_client: redis.Redis, *, flush_every_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis_client
        self._lock = threading.Lock()
        self._pending: dict[str, float] = {}
        self._flush_every = flush_every_seconds
        self._clock = clock
        self._flushed_at = float("-inf")

    def inc(self, name: str, labels: Mapping[str, str], value: float = 1.0) -> None:
        field = _field(name, labels)
        with self._lock:
            self._pending[field] = self._pending.get(field, 0.0) + value

    def observe(self, name: str, labels: Mapping[str, str], seconds: float) -> None:
        bucket = BUCKETS[bisect.bisect_left(BUCKETS, seconds)] if seconds <= BUCKETS[-1] \
            else "+Inf"
        with self._lock:
            for field, value in ((_field(name + "_bucket", {**labels, "le": str(bucket)}), 1.0),
                                 (_field(name + "_count", labels), 1.0),
                                 (_field(name + "_sum", labels), seconds)):
                self._pending[field] = self._pending.get(field, 0.0) + value

    def flush(self, *, force: bool = False) -> None:
        """Add what this process counted to the shared totals (at most once a second, unless
        forced)."""
        if not force and self._clock() - self._flushed_at < self._flush_every:
            return
        self._flushed_at = self._clock()
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            with unavailable_on_outage(), self._redis.pipeline(transaction=False) as pipe:
                for field, value in pending.items():
                    pipe.hincrbyfloat(keys.metrics(), field, value)
                pipe.execute()
        except Exception:
            with self._lock:  # keep them for the next flush
                for field, value in pending.items():
                    self._pending[field] = self._pending.get(field, 0.0) + value
            raise

    def render(self, gauges: Iterable[tuple[str, str, Mapping[str, str], float]]) -> str:
        """The Prometheus text exposition of the shared totals and of `gauges`
        (name, help, labels, value)."""
        self.flush(force=True)
        with unavailable_on_outage():
            totals = cast(dict[str, str], self._redis.hgetall(keys.metrics()))
        series: dict[str, list[tuple[str, float]]] = {}
        for field, total in totals.items():
            name, _, labels = field.partition("|")
            series.setdefault(name, []).append((labels, float(total)))
        lines: list[str] = []
        for base, (kind, text) in HELP.items():
            lines += [f"# HELP {base} {text}", f"# TYPE {base} {kind}"]
            if kind == "counter":
                lines += [f"{base}{_labels_text(pairs)} {total:g}"
                          for pairs, total in sorted(series.get(base, []))]
            else:
                lines += _histogram(base, series)
        for gauge, gauge_help, gauge_labels, value in gauges:
            if f"# TYPE {gauge} gauge" not in lines:
                lines += [f"# HELP {gauge} {gauge_help}", f"# TYPE {gauge} gauge"]
            lines.append(f"{gauge}{_labels_text(_pairs(gauge_labels))} {value:g}")
        return "\n".join(lines) + "\n"


def _histogram(base: str, series: dict[str, list[tuple[str, float]]]) -> list[str]:
    """Cumulative buckets from the per-bucket counts the processes add up."""
    lines: list[str] = []
    by_labels: dict[str, dict[str, float]] = {}
    for labels, value in series.get(base + "_bucket", []):
        pairs = dict(pair.split("=", 1) for pair in labels.split(","))
        le = pairs.pop("le")
        key = ",".join(f"{k}={v}" for k, v in sorted(pairs.items()))
        by_labels.setdefault(key, {})[le] = value
    sums = dict(series.get(base + "_sum", []))
    counts = dict(series.get(base + "_count", []))
    for labels in sorted(by_labels):
        running = 0.0
        for bound in [*map(str, BUCKETS), "+Inf"]:
            running += by_labels[labels].get(bound, 0.0)
            le = _labels_text(",".join(filter(None, [labels, f"le={bound}"])))
            lines.append(f"{base}_bucket{le} {running:g}")
        lines.append(f"{base}_sum{_labels_text(labels)} {sums.get(labels, 0.0):g}")
        lines.append(f"{base}_count{_labels_text(labels)} {counts.get(labels, 0.0):g}")
    return lines


def label_value(value: Any) -> str:
    """Label values may not hold the separators of the shared hash's fields."""
    return str(value).replace(",", "_").replace("=", "_").replace("|", "_")
