"""`bench scale`: decisions/s with 1, 2 and 4 gunicorn workers on the same cores, and with
two service processes sharing one Redis.
"""

from __future__ import annotations

import contextlib
import shutil

from .common import running_redis, seed_pool
from .servers import median_run, server, wrk, wrk_decisions


def run(seconds: int = 8, rounds: int = 2) -> str:
    """Decisions/s (API keys on) with 1, 2 and 4 gunicorn workers on the machine's cores,
    and with two service processes of 2 workers each sharing one Redis (a wrk per
    process, 4 connections each). Rounds interleave the setups."""
    if shutil.which("wrk") is None:
        return "### Scale\n\nwrk is not installed (`make bench`)."
    setups = {"1 worker": [1], "2 workers": [2], "4 workers": [4],
              "2 processes of 2 workers, one Redis": [2, 2]}
    script = wrk_decisions()
    runs: dict[str, list[dict[str, float]]] = {setup: [] for setup in setups}
    with running_redis() as url, contextlib.ExitStack() as stack:
        seed_pool(url)
        bases = {setup: [stack.enter_context(server("service", url, workers=n))
                         for n in workers] for setup, workers in setups.items()}
        for urls in bases.values():
            for base in urls:
                wrk(base, script, connections=8, seconds=2)  # warm up
        for _ in range(rounds):
            for setup, urls in bases.items():
                runs[setup].append(_parallel_wrk(urls, script, seconds=seconds,
                                                 redis_url=url))
    rows = []
    for setup in setups:
        run = median_run(runs[setup])
        rows.append(f"| {setup} | {run['rps']:,.0f} (rounds: "
                    + ", ".join(f"{r['rps']:,.0f}" for r in runs[setup])
                    + f") | {run['p50']:.2f} / {run['p99']:.2f} | {run['server_cpu_us']:,.0f} "
                    f"| {run['redis_cpu_us']:,.0f} | {run['non2xx']:.0f} |")
    return "\n".join([
        "### Scale: workers and processes",
        "",
        f"Decisions as in `bench http` (API keys on, 8 connections in all), {rounds} rounds "
        f"of {seconds} s, interleaved; the figures are each setup's median round (p50 / p99: "
        "the slower wrk's, with two processes). All of it, wrk and Redis too, shares the "
        "machine's 2 cores.",
        "",
        "| setup | decisions/s | p50 / p99 (ms) | worker CPU per decision (µs) "
        "| Redis CPU per decision (µs) | non-2xx |",
        "|---|---|---|---|---|---|",
        *rows,
    ])


def _parallel_wrk(urls: list[str], script: str, *, seconds: int,
                  redis_url: str) -> dict[str, float]:
    """One wrk per URL at once, 8 connections split between them: summed rates, the worst
    latencies, CPU per decision over all the servers' processes."""
    import concurrent.futures

    connections = 8 // len(urls)
    with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool_:
        results = list(pool_.map(lambda base: wrk(base, script, connections=connections,
                                                   seconds=seconds, redis_url=redis_url),
                                 urls))
    rps = sum(r["rps"] for r in results)
    return {"rps": rps, "p50": max(r["p50"] for r in results),
            "p99": max(r["p99"] for r in results),
            "non2xx": sum(r["non2xx"] for r in results),
            # each wrk saw every process's CPU of its own server only
            "server_cpu_us": sum(r["server_cpu_us"] * r["rps"] for r in results) / rps,
            # Redis is shared: each wrk's figure is the whole of Redis over its requests
            "redis_cpu_us": results[0]["redis_cpu_us"] * results[0]["rps"] / rps}
