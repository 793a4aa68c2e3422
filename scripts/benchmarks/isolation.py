"""`bench isolation`: where a decision's rules run, bounded in the worker or in a child
process (as a what-if's candidates run), and what the join bound costs.
"""

from __future__ import annotations

import functools
import statistics
import time

from app.decisions.decision import snapshot

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


def run(evaluations: int = 2000) -> str:
    """Where a decision's rules run: in the worker, bounded before each call into the core,
    or in a child process that could be killed (as a what-if's candidates run)."""
    from app.replay.sandbox import Budget, CandidateSources, Sandbox
    from app.rules import engine, evaluate
    from app.rules.engine import Limits, _Run

    with running_redis() as url:
        service = open_service(url)
        pool(service)
        try:
            ruleset = service.rulesets.get("procurement")
            snaps = [snapshot(service.facts.facts_of(subject_of(n)), [])
                     for n in range(SUBJECTS)]
        finally:
            service.close()
    limits = Limits()
    sources = CandidateSources({ruleset.file: ruleset.source}, None, {})
    timings: dict[str, list[float]] = {"bounded": [], "unbounded": [], "child": []}
    check_joins = _Run._check_joins
    spawn: list[float] = []
    pin_to_one_core()
    try:
        for _ in range(5):
            started = time.perf_counter()
            with Sandbox.start(Budget(seconds=30, memory_mb=512)) as sandbox:
                sandbox.load(sources, governance_path="decision/governance",
                             access_path="decision/access", limits=limits)
            spawn.append(time.perf_counter() - started)
        with Sandbox.start(Budget(seconds=600, memory_mb=512)) as sandbox:
            candidate = sandbox.load(sources, governance_path="decision/governance",
                                     access_path="decision/access",
                                     limits=limits).rulesets[ruleset.name]
            for n in range(evaluations + 200):
                snap = snaps[n % SUBJECTS]
                for name, run, rules in (
                        ("bounded", functools.partial(evaluate, limits=limits), ruleset),
                        ("child", sandbox.evaluate, candidate)):
                    started = time.perf_counter()
                    run(rules, snap)
                    if n >= 200:
                        timings[name].append(time.perf_counter() - started)
                _Run._check_joins = lambda self, fact_type=None: None  # type: ignore[method-assign]
                started = time.perf_counter()
                engine.evaluate(ruleset, snap, limits=limits)
                if n >= 200:
                    timings["unbounded"].append(time.perf_counter() - started)
                _Run._check_joins = check_joins  # type: ignore[method-assign]
    finally:
        _Run._check_joins = check_joins  # type: ignore[method-assign]
        unpin()
    us = {k: statistics.median(v) * 1e6 for k, v in timings.items()}
    return "\n".join([
        "### Where the rules run: bounded in the worker, or in a child process",
        "",
        f"{evaluations} evaluations of the sample case, interleaved, one core (the caller's "
        "time, which for the child includes its work and the pipe both ways).",
        "",
        table([
            ("in the worker, join bound checked before each assert, median (µs)",
             f"{us['bounded']:.0f}"),
            ("in the worker, without the join bound, median (µs)", f"{us['unbounded']:.0f}"),
            ("what the bound costs per evaluation (µs)",
             f"{us['bounded'] - us['unbounded']:.0f}"),
            ("in a child process kept running, over a pipe, median (µs)", f"{us['child']:.0f}"),
            ("starting a child and loading the ruleset, median (ms)",
             f"{statistics.median(spawn) * 1000:.0f}"),
        ]),
    ])
