"""`bench core`: one decision in-process through `DecisionPath.decide`, and the rules
evaluation alone next to raw durable_rules running the same rules on the same facts.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from app.decisions.decision import snapshot

from .common import (
    SUBJECTS,
    open_service,
    percentile,
    pin_to_one_core,
    pool,
    running_redis,
    subject_of,
    table,
    unpin,
)


def _raw_durable(ruleset: Any) -> Callable[[list[dict[str, Any]]], list[str]]:
    """The same rules in durable_rules used the way its documentation shows: a Host whose
    actions are Python callables (here: derive the fact, collect the proposal), facts
    asserted as one batch, retracted afterwards. No checks around it."""
    from durable import engine as durable_engine

    from app.rules.compiler import _condition, compile_ruleset, rule_key
    from app.rules.model import Derive, Propose

    by_key = {rule_key(rule.index): rule for rule in ruleset.rules}
    proposals: list[str] = []
    derived: list[dict[str, Any]] = []

    def action_for(rule: Any) -> Callable[[Any], None]:
        def act(c: Any) -> None:
            bindings = {p.alias: getattr(c, p.alias)._d for p in rule.when}
            for step in rule.then:
                if isinstance(step, Propose):
                    proposals.append(json.dumps([step.action, step.params.render(bindings)]))
                elif isinstance(step, Derive):
                    fact = {**step.data.render(bindings), "type": step.type,
                            "_e": bindings[rule.when[0].alias]["_e"],
                            "id": f"d{len(derived)}"}
                    derived.append(fact)
                    c.assert_fact(fact)
        return act

    class Host(durable_engine.Host):  # type: ignore[misc]
        def get_action(self, name: str) -> Callable[[Any], None]:
            return action_for(by_key[name]) if name in by_key else (lambda c: None)

        def _run(self) -> None:  # no timer and dispatch threads
            pass

    definition = compile_ruleset(ruleset)
    for key, rule in definition.items():
        rule["run"] = key
        if key in by_key:  # negation in durable_rules' own terms
            first = by_key[key].when[0].alias
            rule["all"] += [{f"{p.alias}$not": _condition(p, first, set())[p.alias]}
                            for p in by_key[key].unless]
    host = Host()
    name = f"raw-{ruleset.version}"
    host.register_rulesets({name: copy.deepcopy(definition)})
    tags = iter(range(1, 10**9))

    def evaluate(facts: list[dict[str, Any]]) -> list[str]:
        tag = str(next(tags))
        proposals.clear()
        derived.clear()
        batch = [{**f["data"], "sid": "0", "id": f"{tag}.{i}", "_e": tag, "_id": f["id"],
                  "type": f["type"], "department": f["department"]}
                 for i, f in enumerate(facts)]
        host.assert_facts(name, batch)
        for fact in batch + derived:
            host.retract_fact(name, {"sid": "0", "id": fact["id"]})
        return list(proposals)

    return evaluate


def run(decisions: int = 3000) -> str:
    from app.rules import evaluate

    with running_redis() as url:
        service = open_service(url)
        pool(service)
        pin_to_one_core()
        try:
            ruleset = service.rulesets.get("procurement")
            snaps = [snapshot(service.facts.facts_of(subject_of(n)), [])
                     for n in range(SUBJECTS)]
            raw = _raw_durable(ruleset)
            for n in range(300):  # warm up every path
                service.decider.decide(subject=subject_of(n % SUBJECTS), ruleset_name="procurement")
                evaluate(ruleset, snaps[n % SUBJECTS])
                raw(snaps[n % SUBJECTS])
            ours_proposed = sum(len(evaluate(ruleset, s).actions) for s in snaps)
            raw_proposed = sum(len(raw(s)) for s in snaps)
            timings: dict[str, list[float]] = {"decide": [], "evaluate": [], "raw": []}
            for n in range(decisions):
                snap = snaps[n % SUBJECTS]
                started = time.perf_counter()
                service.decider.decide(subject=subject_of(n % SUBJECTS), ruleset_name="procurement")
                timings["decide"].append(time.perf_counter() - started)
                started = time.perf_counter()
                evaluate(ruleset, snap)
                timings["evaluate"].append(time.perf_counter() - started)
                started = time.perf_counter()
                raw(snap)
                timings["raw"].append(time.perf_counter() - started)
        finally:
            unpin()
            service.close()
    us = {k: (statistics.median(v) * 1e6, percentile(v, 0.99) * 1e6) for k, v in timings.items()}
    ratio = us["evaluate"][0] / us["raw"][0]
    return "\n".join([
        "### One decision in-process",
        "",
        f"{decisions} decisions through `DecisionPath.decide` (read the pool, evaluate, "
        "gate every action with embedded OPA, record the decision in Redis), and the rules "
        "evaluation alone next to the same facts asserted into raw durable_rules with the "
        "same rules (its documented Host API with Python actions, no checks). One core.",
        "",
        table([
            ("decision through the core, median / p99 (µs)",
             f"{us['decide'][0]:.0f} / {us['decide'][1]:.0f}"),
            ("rules evaluation (`app.rules.evaluate`), median / p99 (µs)",
             f"{us['evaluate'][0]:.0f} / {us['evaluate'][1]:.0f}"),
            ("raw durable_rules, same rules and facts, median / p99 (µs)",
             f"{us['raw'][0]:.0f} / {us['raw'][1]:.0f}"),
            ("evaluation / raw durable_rules", f"{ratio:.2f} times"),
            (f"actions proposed for the {SUBJECTS} subjects, here / raw",
             f"{ours_proposed} / {raw_proposed} (raw durable_rules' negation misfires when "
             "the negating fact comes later in the batch)"),
            ("bars", "decision median under 1,000 µs; evaluation at most 3 times raw"),
        ]),
    ])
