"""What every benchmark shares: the procurement sample, an embedded Redis and a service
on it, pinning to one core, Markdown tables, and the machine line and speed check that
frame each benchmark's output.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.service import DecisionService
from app.shared.config import Settings
from app.shared.store import EmbeddedRedis, connect

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench"  # what starts the benchmarks' own servers (servers.py)
SUBJECTS = 1000
CALM_MS = 30  # calibration_ms() on this machine class at its fastest (seen 2026-12-01)


def sample_facts(subject: str, n: int) -> list[dict[str, Any]]:
    """The procurement sample: 12 facts from 4 departments about one purchase request."""
    amount = 40000 + (n * 7919) % 150000
    facts = [
        ("purchase_request", "procurement", {"request_id": subject, "amount": amount,
                                             "vendor": "Globex", "requester": "alice",
                                             "needed_by": "2026-12-15", "category": "it"}),
        ("vendor_profile", "procurement", {"vendor": "Globex", "country": "DE", "since": 2014}),
        ("quote", "procurement", {"request_id": subject, "vendor": "Globex", "amount": amount}),
        ("budget_check", "finance", {"request_id": subject, "available": 250000,
                                     "approver": "bob", "cost_center": "CC-40"}),
        ("cost_center", "finance", {"cost_center": "CC-40", "owner": "bob", "year": 2026}),
        ("invoice_history", "finance", {"vendor": "Globex", "late_payments": 0}),
        ("risk_assessment", "risk", {"request_id": subject, "score": (0.2, 0.3, 0.6)[n % 3]}),
        ("vendor_screening", "risk", {"vendor": "Globex", "result": "clear"}),
        ("legal_review", "legal", {"request_id": subject, "status": "cleared",
                                   "reviewer": "carol"}),
        ("urgency_assessment", "operations", {"request_id": subject,
                                              "level": ("normal", "high", "critical")[n % 3]}),
        ("stock_level", "operations", {"item": "laptops", "units": 12}),
        ("delivery_slot", "operations", {"request_id": subject, "week": 51}),
    ]
    return [{"subject": subject, "type": t, "department": d, "data": data}
            for t, d, data in facts]


def subject_of(n: int) -> str:
    return f"PR-{n:05d}"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def pin_to_one_core() -> None:
    """Measure on one core; call after Redis has started, so that it keeps the others."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def unpin() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


@contextlib.contextmanager
def running_redis() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis")
        try:
            yield server.start()
        finally:
            server.stop()


def settings_for(redis_url: str, **overrides: Any) -> Settings:
    return Settings.load(environ={}, overrides={
        "redis_url": redis_url, "data_dir": Path(tempfile.gettempdir()),
        "rules_dir": ROOT / "rules", "policy_dir": ROOT / "rego", "background_worker": False,
        **overrides})


def open_service(redis_url: str, **overrides: Any) -> DecisionService:
    settings = settings_for(redis_url, **overrides)
    return DecisionService(settings, connect(redis_url, timeout_seconds=5.0))


def pool(service: DecisionService, subjects: int = SUBJECTS) -> None:
    for n in range(subjects):
        service.facts.put(sample_facts(subject_of(n), n))


def seed_pool(url: str) -> None:
    """The sample's facts for SUBJECTS subjects, in the Redis at `url`, for servers to
    decide on."""
    service = open_service(url)
    try:
        pool(service)
    finally:
        service.close()


def table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info
                    if line.startswith("model name")), "")
    return (f"{cpu or platform.processor()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, {platform.platform()}")


def calibration_ms() -> float:
    """How long a fixed loop of plain Python takes here now (best of 5): the machine's speed
    drifts by half from one minute to the next, and absolute figures drift with it."""
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        total = 0
        for n in range(1_000_000):
            total += n * n
        best = min(best, time.process_time() - started)
    return best * 1000
