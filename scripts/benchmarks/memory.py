"""`bench memory`: the resident set size of one process over 100,000 decisions.
"""

from __future__ import annotations

import time

from .common import (
    SUBJECTS,
    open_service,
    pin_to_one_core,
    pool,
    running_redis,
    subject_of,
    table,
    unpin,
)


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kib / 1024


def run(total: int = 100_000) -> str:
    with running_redis() as url:
        service = open_service(url, decision_retention_seconds=600)
        pool(service)
        pin_to_one_core()
        marks = {}
        started = time.perf_counter()
        try:
            for n in range(1, total + 1):
                service.decider.decide(subject=subject_of(n % SUBJECTS), ruleset_name="procurement")
                if n in (10_000, total):
                    marks[n] = _rss_mib()
        finally:
            unpin()
            service.close()
        elapsed = time.perf_counter() - started
    growth = marks[total] / marks[10_000] - 1
    return "\n".join([
        "### Memory",
        "",
        f"{total:,} decisions in one process (as a worker takes them), resident set size "
        f"after 10,000 and after {total:,} ({elapsed:.0f} s).",
        "",
        table([
            ("RSS after 10,000 decisions (MiB)", f"{marks[10_000]:.1f}"),
            (f"RSS after {total:,} decisions (MiB)", f"{marks[total]:.1f}"),
            ("growth", f"{growth:+.1%}"),
            ("bar", "within 10%"),
        ]),
    ])
