"""Benchmarks of the decision service, each against a floor measured in the same run.

    .venv/bin/python scripts/bench all            # everything, as Markdown (docs/PERFORMANCE.md)
    .venv/bin/python scripts/bench core|http|budget|scale|sidecar|ingest|memory|replay|zen|isolation

`make bench` installs what they need (wrk from Debian when running as root, zen-engine
and py-spy from PyPI) and runs them all. Every benchmark starts its own embedded Redis
under a temporary directory and uses the sample rules and policies with embedded OPA, on
the procurement sample: 12 pooled facts from 4 departments per subject. In-process
figures are taken on one core (Redis keeps the other). Each benchmark is a module of
scripts/benchmarks/.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from app.policy.embedded import exec_with_go_runtime

from . import budget, core, ingest, isolation, memory, over_http, replay, scale, sidecar, zen
from .common import CALM_MS, calibration_ms, machine
from .servers import serve_floor, serve_without_opa

# In the order `all` runs them.
BENCHMARKS: dict[str, Callable[[], str]] = {
    "core": core.run, "http": over_http.run, "sidecar": sidecar.run, "ingest": ingest.run,
    "memory": memory.run, "replay": replay.run, "zen": zen.run,
    "isolation": isolation.run, "budget": budget.run, "scale": scale.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark",
                        choices=[*BENCHMARKS, "all", "serve-floor", "serve-without-opa"])
    parser.add_argument("port", nargs="?", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    exec_with_go_runtime()  # embedded OPA as `decision-service serve` runs it
    if args.benchmark == "serve-floor":
        serve_floor(args.port)
        return
    if args.benchmark == "serve-without-opa":
        serve_without_opa()
        return
    chosen = list(BENCHMARKS) if args.benchmark == "all" else [args.benchmark]
    print(f"<!-- scripts/bench {args.benchmark} on {machine()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} -->")
    for name in chosen:
        before = calibration_ms()
        print(BENCHMARKS[name](), flush=True)
        print(f"\nMachine speed meanwhile: a fixed loop of plain Python took {before:.0f} ms "
              f"before and {calibration_ms():.0f} ms after this benchmark (best of 5; "
              f"{CALM_MS} ms when the machine is calm).\n", flush=True)
