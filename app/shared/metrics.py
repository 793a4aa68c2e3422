"""Metrics: counters and histograms kept per process, summed in Redis, shown at /metrics.

Every process (each gunicorn worker, each `decision-service worker`) counts in memory
and adds its counts to one Redis hash about once a second, in one round trip, as it
counts (a background thread is not needed for it); the hash is what `/metrics` renders,
so any worker answering a scrape shows the totals of all of them. Counts are integers
in Redis (HINCRBY) and on the page, exactly; sums of seconds are floats. Gauges (outbox
depth, versions in use) are read when scraped.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import redis

from app.shared import keys
from app.shared.store import unavailable_on_outage

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
    "decision_policy_files_rejected": ("counter", "changes to the policy directory that were "
                                       "rejected (did not load), each counted once across "
                                       "all processes; the last good policies stay live"),
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
        self._pending: dict[str, int | float] = {}  # counts are ints, sums of seconds floats
        self._flush_every = flush_every_seconds
        self._clock = clock
        self._flushed_at = clock()

    def _add(self, field: str, value: int | float) -> None:
        with self._lock:
            self._pending[field] = self._pending.get(field, 0) + value

    def inc(self, name: str, labels: Mapping[str, str], value: int = 1) -> None:
        self._add(_field(name, labels), value)
        self._publish_when_due()

    def observe(self, name: str, labels: Mapping[str, str], seconds: float) -> None:
        bucket = BUCKETS[bisect.bisect_left(BUCKETS, seconds)] if seconds <= BUCKETS[-1] \
            else "+Inf"
        self._add(_field(name + "_bucket", {**labels, "le": str(bucket)}), 1)
        self._add(_field(name + "_count", labels), 1)
        self._add(_field(name + "_sum", labels), float(seconds))
        self._publish_when_due()

    def _publish_when_due(self) -> None:
        """Counting publishes too, at most once a flush period: a process with no
        background worker (or one that is busy) still adds its counts to the totals."""
        if self._clock() - self._flushed_at < self._flush_every:
            return
        try:
            self.flush()
        except Exception as exc:  # counting never fails a request: the counts are kept
            log.debug("metrics not published yet: %s", exc)

    def flush(self, *, force: bool = False) -> None:
        """Add what this process counted to the shared totals (at most once a flush period,
        unless forced): counts exactly, as integers; sums of seconds as floats."""
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
                    if isinstance(value, int):
                        pipe.hincrby(keys.metrics(), field, value)
                    else:
                        pipe.hincrbyfloat(keys.metrics(), field, value)
                pipe.execute()
        except Exception:
            with self._lock:  # keep them for the next flush
                for field, value in pending.items():
                    self._pending[field] = self._pending.get(field, 0) + value
            raise

    def render(self, gauges: Iterable[tuple[str, str, Mapping[str, str], float]]) -> str:
        """The Prometheus text exposition of the shared totals and of `gauges`
        (name, help, labels, value)."""
        self.flush(force=True)
        with unavailable_on_outage():
            totals = cast(dict[str, str], self._redis.hgetall(keys.metrics()))
        series: dict[str, list[tuple[str, int | float]]] = {}
        for field, total in totals.items():
            name, _, labels = field.partition("|")
            series.setdefault(name, []).append((labels, _number(total)))
        lines: list[str] = []
        for base, (kind, text) in HELP.items():
            lines += [f"# HELP {base} {text}", f"# TYPE {base} {kind}"]
            if kind == "counter":
                lines += [f"{base}{_labels_text(pairs)} {_text(total)}"
                          for pairs, total in sorted(series.get(base, []))]
            else:
                lines += _histogram(base, series)
        for gauge, gauge_help, gauge_labels, value in gauges:
            if f"# TYPE {gauge} gauge" not in lines:
                lines += [f"# HELP {gauge} {gauge_help}", f"# TYPE {gauge} gauge"]
            lines.append(f"{gauge}{_labels_text(_pairs(gauge_labels))} {_text(value)}")
        return "\n".join(lines) + "\n"


def _number(text: str) -> int | float:
    """A total as Redis holds it: an integer count, or a float sum."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _text(value: int | float) -> str:
    """Exactly: an integer as its digits, a float as the shortest text that reads back the
    same (never %g, which turned 1234567 into 1.23457e+06)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return str(value) if isinstance(value, int) else repr(value)


def _histogram(base: str, series: dict[str, list[tuple[str, int | float]]]) -> list[str]:
    """Cumulative buckets from the per-bucket counts the processes add up."""
    lines: list[str] = []
    by_labels: dict[str, dict[str, int | float]] = {}
    for labels, value in series.get(base + "_bucket", []):
        pairs = dict(pair.split("=", 1) for pair in labels.split(","))
        le = pairs.pop("le")
        key = ",".join(f"{k}={v}" for k, v in sorted(pairs.items()))
        by_labels.setdefault(key, {})[le] = value
    sums = dict(series.get(base + "_sum", []))
    counts = dict(series.get(base + "_count", []))
    for labels in sorted(by_labels):
        running: int | float = 0
        for bound in [*map(str, BUCKETS), "+Inf"]:
            running += by_labels[labels].get(bound, 0)
            le = _labels_text(",".join(filter(None, [labels, f"le={bound}"])))
            lines.append(f"{base}_bucket{le} {_text(running)}")
        lines.append(f"{base}_sum{_labels_text(labels)} {_text(sums.get(labels, 0.0))}")
        lines.append(f"{base}_count{_labels_text(labels)} {_text(counts.get(labels, 0))}")
    return lines


def label_value(value: Any) -> str:
    """Label values may not hold the separators of the shared hash's fields."""
    return str(value).replace(",", "_").replace("=", "_").replace("|", "_")
