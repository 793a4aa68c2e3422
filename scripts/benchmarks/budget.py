"""`bench budget`: a decision's worker CPU shared out by step, from py-spy's samples of the
gunicorn workers under the `bench http` load.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import ROOT, running_redis, seed_pool
from .servers import SERVER_GROUPS, server, wrk, wrk_decisions

# The step a sample of a worker's stack is charged to: the first step, in this order, one of
# whose patterns some frame of the stack matches (py-spy's frames read "Class.function
# (path:line)"). Cross-cutting steps come first: a log line written in the gate is logging.
_APP = re.escape(str(ROOT / "app")) + "/"


def _calls(names: str, where: str = "") -> str:
    return rf"(^|\.)({names}) \({_APP}{where}"


BUDGET_STEPS: list[tuple[str, str]] = [
    ("logging", r"/logging/__init__\.py:|" + _APP + r"shared/logs\.py:"),
    ("metrics", _APP + r"shared/metrics\.py:"),
    ("masking", _APP + r"decisions/masking\.py:"),
    ("idempotency", _calls("replayed|_idempotency_key|request_fingerprint")),
    ("body parsing and validation", _calls("json_body|load", r"(api/|shared/schemas\.py)") +
     "|/marshmallow/"),
    ("authentication and the access check",
     _calls("authenticate|authorize", r"policy/access\.py")),
    ("the fact read (and the ownership filter)", _calls("facts_of|admissible|snapshot")),
    ("rule evaluation", _APP + r"rules/"),
    ("the policy gate (governance policy)", _calls("check", r"policy/gate\.py")),
    ("recording (record, outbox, archive)", _calls("commit|written|entries_for")),
    ("the decision's own logic (rounds, statuses, policy input)",
     _APP + r"decisions/(decision|path)\.py:"),
    ("the view and the response", _APP + r"api/"),
    ("Flask, Werkzeug and gunicorn (the rest)", r"/(flask|werkzeug|gunicorn)/"),
]


def _budget_step(stack: list[str]) -> str:
    for step, pattern in BUDGET_STEPS:
        if any(re.search(pattern, frame) for frame in stack):
            return step
    return "other Python"


def budget_table(directory: Path, *, seconds: int = 20,
                 rate: int = 250) -> tuple[list[tuple[str, float]], dict[str, float]]:
    """Decisions under the `bench http` load (API keys on, 2 workers, wrk 8 connections)
    while py-spy samples every worker's stacks `rate` times a second: the workers' CPU per
    decision (from /proc) shared out by step in proportion to the samples. Also the run's
    wrk figures."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with running_redis() as url:
        seed_pool(url)
        with server("service", url) as base:
            script = wrk_decisions()
            wrk(base, script, connections=8, seconds=3)  # warm up
            out = directory / "budget.txt"
            spying = subprocess.Popen(
                [spy, "record", "--pid", str(SERVER_GROUPS[base]), "--subprocesses",
                 "--nonblocking", "--full-filenames", "--format", "raw", "--rate", str(rate),
                 "--duration", str(seconds + 2), "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1)  # py-spy attaches
            run = wrk(base, script, connections=8, seconds=seconds, redis_url=url)
            _, errors = spying.communicate(timeout=60)
            if spying.returncode != 0 or not out.is_file():
                raise RuntimeError(f"py-spy failed: {errors.decode()[-2000:]}")
    samples: dict[str, int] = {}
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not count.isdigit() or not any("/gunicorn/workers/" in f for f in frames):
            continue  # only the workers (not the arbiter)
        step = _budget_step(frames)
        samples[step] = samples.get(step, 0) + int(count)
    total = sum(samples.values()) or 1
    order = [step for step, _ in BUDGET_STEPS] + ["other Python"]
    return [(step, samples[step] / total * run["server_cpu_us"])
            for step in order if step in samples], run


def run(seconds: int = 20) -> str:
    if shutil.which("wrk") is None:
        return "### A decision's CPU budget\n\nwrk is not installed (`make bench`)."
    with tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp:
        rows, run = budget_table(Path(tmp), seconds=seconds)
    total = run["server_cpu_us"]
    return "\n".join([
        "### A decision's CPU budget",
        "",
        "`POST /v1/decisions` under the `bench http` load (API keys on, gunicorn with 2 sync "
        f"workers, wrk with 8 connections, {seconds} s) while py-spy samples the workers' "
        "stacks 250 times a second (`--nonblocking`: it does not stop them). The workers' "
        "CPU per decision, from /proc, is shared out by step in proportion to the samples "
        "(py-spy counts a thread that is runnable but waiting for a core as busy, so "
        "its sample counts alone overstate CPU on this oversubscribed machine). Time inside "
        "OPA's Go code counts to the step that called it; the Go runtime's own threads are "
        "not sampled and share out with the rest. py-spy's CPU shares the 2 cores too.",
        "",
        "| step | µs of worker CPU per decision | share |",
        "|---|---|---|",
        *[f"| {step} | {us:,.0f} | {us / total:.0%} |" for step, us in rows],
        f"| **all (the workers' CPU per decision, from /proc)** | **{total:,.0f}** | |",
        "",
        f"Meanwhile: {run['rps']:,.0f} decisions/s, p50 / p99 {run['p50']:.2f} / "
        f"{run['p99']:.2f} ms, Redis {run['redis_cpu_us']:,.0f} µs per decision, "
        f"{run['non2xx']:.0f} answers other than 2xx.",
    ])
