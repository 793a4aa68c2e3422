"""`bench ingest`: `POST /v1/facts` with 1,000 facts per request under gunicorn.
"""

from __future__ import annotations

import json
import shutil

from .common import running_redis, sample_facts, table
from .servers import server, wrk


def run(seconds: int = 15) -> str:
    if shutil.which("wrk") is None:
        return "### Fact ingest\n\nwrk is not installed (`apt-get install wrk`, or `make bench`)."
    facts = [f for n in range(84) for f in sample_facts(f"IN-{n:03d}", n)][:1000]
    body = json.dumps({"facts": facts})
    script = ("wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
              f"wrk.body = {json.dumps(body)}\n")
    with running_redis() as url, server("service", url) as base:
        wrk(base + "/v1/facts", script, connections=2, seconds=3)
        result = wrk(base + "/v1/facts", script, connections=2, seconds=seconds)
    return "\n".join([
        "### Fact ingest",
        "",
        "`POST /v1/facts` with 1,000 facts per request (84 subjects, the sample's types, so "
        "each batch also asks for the decisions its facts trigger), gunicorn with 2 workers, "
        f"wrk with 2 connections (one per worker) for {seconds} s. (With more connections than "
        "sync workers, wrk's 165 KB uploads queue behind the busy workers and the rate halves "
        "for every endpoint alike: a property of the load generator and sync workers.)",
        "",
        table([
            ("requests/s, p50 / p99 (ms)",
             f"{result['rps']:,.1f}, {result['p50']:.1f} / {result['p99']:.1f}"),
            ("facts/s", f"{result['rps'] * 1000:,.0f}"),
            ("answers other than 2xx", f"{result['non2xx']:.0f}"),
            ("bar", "at least 20,000 facts/s"),
        ]),
    ])
