"""`bench http`: decisions over HTTP under gunicorn, against a floor served the same way,
next to two servers that say where the time goes.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics

from .common import SUBJECTS, running_redis, seed_pool, table
from .servers import median_run, server, wrk, wrk_decisions

# What `bench http` serves, in the order each round measures them.
_HTTP_KINDS = {
    "floor": "floor: parse the body, read the subject's fact hash",
    "floor+opa": "floor plus one call into embedded OPA that evaluates nothing",
    "service": "decisions",
    "service-without-opa": "decisions, the policy gate answered without OPA (ablation)",
}


def run(seconds: int = 8, rounds: int = 3) -> str:
    """Every server stays up, idle but for the one measured, and each round measures them
    all in turn: drift on the machine (often ±10 % within minutes) then hits every kind
    alike, and each round's ratio compares runs seconds apart."""
    if shutil.which("wrk") is None:
        return "### Over HTTP\n\nwrk is not installed (`apt-get install wrk`, or `make bench`)."
    script = wrk_decisions()
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in _HTTP_KINDS}
    with running_redis() as url, contextlib.ExitStack() as stack:
        seed_pool(url)
        bases = {kind: stack.enter_context(server(kind, url)) for kind in _HTTP_KINDS}
        for base in bases.values():
            wrk(base, script, connections=8, seconds=3)  # warm up every path
        for _ in range(rounds):
            for kind, base in bases.items():
                runs[kind].append(wrk(base, script, connections=8, seconds=seconds,
                                       redis_url=url))
    shares = {kind: statistics.median(run["rps"] / floor["rps"]
                                      for run, floor in zip(runs[kind], runs["floor"],
                                                            strict=True))
              for kind in _HTTP_KINDS}
    median = {kind: median_run(kind_runs) for kind, kind_runs in runs.items()}
    rows = []
    for kind, label in _HTTP_KINDS.items():
        run = median[kind]
        rows.append((f"{label}: requests/s, p50 / p99 (ms)",
                     f"{run['rps']:,.0f}, {run['p50']:.2f} / {run['p99']:.2f}"))
    rows += [(f"{_HTTP_KINDS[kind]} ÷ floor", f"{shares[kind]:.0%} (rounds: " + ", ".join(
        f"{run['rps'] / floor['rps']:.0%}" for run, floor in zip(
            runs[kind], runs["floor"], strict=True)) + ")")
        for kind in _HTTP_KINDS if kind != "floor"]
    rows += [(f"CPU per request, gunicorn workers / Redis (µs): {_HTTP_KINDS[kind]}",
              f"{median[kind]['server_cpu_us']:.0f} / {median[kind]['redis_cpu_us']:.0f}")
             for kind in _HTTP_KINDS]
    rows += [("answers other than 2xx (all runs)",
              f"{sum(run['non2xx'] for kind_runs in runs.values() for run in kind_runs):.0f}"),
             ("bars", "decisions (API keys on) at least 33% of the floor; p99 under 15 ms")]
    return "\n".join([
        "### Decisions over HTTP",
        "",
        f"`POST /v1/decisions` on random subjects of {SUBJECTS} (each with the 12 facts of the"
        " sample), with API keys on (every request is authenticated and asks the access "
        "policy, as in production), gunicorn with 2 sync workers, wrk with 8 connections, "
        "against a floor served the same way: a Flask endpoint that parses the same body and "
        f"reads the subject's fact hash from Redis. {rounds} rounds of {seconds} s per server,"
        " each round measuring every server in turn; a ratio is the median of the rounds' "
        "ratios, the other figures are from each server's median round. wrk, the workers and "
        "Redis share the machine's 2 cores. Two rows are there to tell where the time goes, "
        "not modes of the service: the floor with one call into embedded OPA (the sample "
        "policies loaded, a query that reads nothing, no input) and the service with its "
        "policy gate answering allow without asking OPA.",
        "",
        table(rows),
    ])
