"""`bench replay`: recorded decisions replayed pinned to their recorded versions.
"""

from __future__ import annotations

import statistics
import time

from app.replay.replayer import bulk

from .common import (
    open_service,
    percentile,
    pin_to_one_core,
    running_redis,
    sample_facts,
    subject_of,
    table,
    unpin,
)


def run(decisions: int = 2000) -> str:
    with running_redis() as url:
        service = open_service(url)
        try:
            ids = []
            for n in range(decisions):
                service.facts.put(sample_facts(subject_of(n), n))
                record = service.decider.decide(subject=subject_of(n), ruleset_name="procurement",
                                        dry_run=True).record
                ids.append(record["decision_id"])
            pin_to_one_core()
            with service.replays.replayer() as replayer:
                warm, _ = service.replays.replay_cases(decision_ids=ids[:200])
                for result in replayer.run(warm):
                    assert not result["changed"]
                runs = []
                for _ in range(3):
                    started = time.perf_counter()
                    with bulk():
                        cases, _ = service.replays.replay_cases(decision_ids=ids)
                        results = list(replayer.run(cases))
                    runs.append(time.perf_counter() - started)
                    assert not any(r["changed"] or "error" in r for r in results)
                per_case = []
                for case in cases[:500]:
                    started = time.perf_counter()
                    replayer.replay(case)
                    per_case.append((time.perf_counter() - started) * 1e6)
        finally:
            unpin()
            service.close()
    return "\n".join([
        "### Replay of recorded decisions",
        "",
        f"{decisions} recorded dry-run decisions, replayed pinned to their recorded versions "
        "(so every one re-runs the rules and the policies), records read from Redis in "
        "pipelined chunks, one core.",
        "",
        table([
            ("replayed decisions/s (best of 3 runs, including the Redis reads)",
             f"{decisions / min(runs):,.0f}"),
            ("all 3 runs", ", ".join(f"{decisions / run:,.0f}" for run in runs)),
            ("one replay, median / p99 (µs)",
             f"{statistics.median(per_case):.0f} / {percentile(per_case, 0.99):.0f}"),
            ("bar", "at least 2,000/s"),
        ]),
    ])
