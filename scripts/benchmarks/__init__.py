"""The benchmarks `scripts/bench` runs (docs/PERFORMANCE.md), one module each.

    cli        the command line: which benchmark, `all`, and the servers' hidden subcommands
    common     the sample, a Redis and a service on it, one-core pinning, tables, the machine
    servers    the floor and the service under gunicorn, wrk against them, CPU per request
    core       one decision in-process, and the rules next to raw durable_rules
    over_http  decisions over HTTP against the floor (`bench http`)
    budget     a decision's worker CPU by step, from py-spy
    scale      1, 2 and 4 workers; two service processes on one Redis
    sidecar    embedded OPA against the real OPA sidecar; a delivery's CPU
    ingest     posting facts
    memory     RSS over 100,000 decisions
    replay     replaying recorded decisions
    zen        the same logic in GoRules zen-engine, for reference
    isolation  the rules bounded in the worker, or in a child process

Imported by `scripts/bench` (which puts the project's root on the path for `app`), never
by the service or its tests.
"""
