"""`bench zen`, for reference: the same procurement logic as a GoRules zen-engine decision
graph, next to the rules evaluation here.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from typing import Any

from app.decisions.decision import snapshot

from .common import ROOT, pin_to_one_core, sample_facts, subject_of, table, unpin


def _zen_graph() -> dict[str, Any]:
    """rules/procurement.yaml as a JDM decision graph: pick each department's fact,
    derive the confirmations, decide the actions (zen has no Rete: one pass, in order)."""
    def node(name: str, expressions: list[tuple[str, str]]) -> dict[str, Any]:
        return {"id": name, "type": "expressionNode", "name": name, "position": {"x": 0, "y": 0},
                "content": {"passThrough": True, "expressions": [
                    {"id": f"{name}{i}", "key": k, "value": v}
                    for i, (k, v) in enumerate(expressions)]}}

    pick = [(alias, f"filter(facts, #.type == '{kind}')[0].data") for alias, kind in (
        ("req", "purchase_request"), ("bud", "budget_check"), ("rsk", "risk_assessment"),
        ("leg", "legal_review"), ("urg", "urgency_assessment"))]
    steps = [
        node("pick", pick),
        node("derive", [
            ("budget_confirmed", "bud != null and bud.available >= req.amount"),
            ("budget_shortfall", "bud != null and bud.available < req.amount"),
            ("risk_cleared", "rsk != null and rsk.score < 0.5"),
            ("risk_escalation", "rsk != null and rsk.score >= 0.7"),
            ("legal_cleared", "req.amount <= 100000 or (leg != null and leg.status == 'cleared')"),
            ("legal_review_required", "req.amount > 100000 and leg == null"),
            ("legal_rejected", "leg != null and leg.status == 'rejected'"),
        ]),
        node("approve", [
            ("approved", "budget_confirmed and risk_cleared and legal_cleared")]),
        node("act", [
            ("issue_purchase_order", "approved and urg != null"),
            ("request_urgency_assessment", "approved and urg == null"),
            ("expedite_delivery", "approved and urg != null and "
                                  "(urg.level == 'critical' or urg.level == 'high')"),
            ("order.request_id", "req.request_id"), ("order.amount", "req.amount"),
            ("order.vendor", "req.vendor"), ("order.approver", "bud.approver"),
        ]),
    ]
    nodes = [{"id": "in", "type": "inputNode", "name": "in", "position": {"x": 0, "y": 0}},
             *steps, {"id": "out", "type": "outputNode", "name": "out",
                      "position": {"x": 0, "y": 0}}]
    edges = [{"id": f"e{i}", "sourceId": a["id"], "targetId": b["id"], "type": "edge"}
             for i, (a, b) in enumerate(itertools.pairwise(nodes))]
    return {"nodes": nodes, "edges": edges}


def run(evaluations: int = 3000) -> str:
    try:
        import zen
    except ImportError:
        return "### GoRules zen-engine\n\nzen-engine is not installed (`make bench`)."
    from app.rules import evaluate, load_ruleset_file

    ruleset = load_ruleset_file(ROOT / "rules" / "procurement.yaml")
    decision = zen.ZenEngine().create_decision(json.dumps(_zen_graph()))
    snaps = [snapshot([{**f, "id": f"{n}-{i}"} for i, f in enumerate(
        sample_facts(subject_of(n), n))], []) for n in range(300)]
    for snap in snaps:  # both decide the same orders
        ours = any(a.type == "issue_purchase_order" for a in evaluate(ruleset, snap).actions)
        theirs = decision.evaluate({"facts": snap})["result"]["issue_purchase_order"]
        assert ours == theirs
    pin_to_one_core()
    timings: dict[str, list[float]] = {"ours": [], "zen": []}
    try:
        for n in range(evaluations):
            snap = snaps[n % len(snaps)]
            started = time.perf_counter()
            evaluate(ruleset, snap)
            timings["ours"].append(time.perf_counter() - started)
            started = time.perf_counter()
            decision.evaluate({"facts": snap})
            timings["zen"].append(time.perf_counter() - started)
    finally:
        unpin()
    ours, theirs = (statistics.median(timings[k]) * 1e6 for k in ("ours", "zen"))
    return "\n".join([
        "### For reference: GoRules zen-engine",
        "",
        "The same procurement logic as a zen-engine (Rust) decision graph evaluated in-process "
        "on the same 12 facts (`_zen_graph` in scripts/benchmarks/zen.py: expression nodes, "
        "one pass, no forward chaining), next to the rules evaluation here. One core.",
        "",
        table([
            ("rules evaluation here, median (µs)", f"{ours:.0f}"),
            ("zen-engine graph, median (µs)", f"{theirs:.0f}"),
            ("here / zen-engine", f"{ours / theirs:.2f} times"),
        ]),
    ])
