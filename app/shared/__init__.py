"""Plumbing every stage shares. Imports nothing of the service but itself.

    config       every setting, its environment variable and its default (`Settings`)
    errors       every error raised on purpose, and the problem type each becomes
    store        the Redis connection, Lua scripts, the embedded redis-server
    keys         every Redis key, built here and nowhere else
    schemas      what valid input looks like (marshmallow), for the HTTP API and the CLI
    logs         JSON log lines carrying their decision, subject and trace
    metrics      counters and histograms per process, summed in Redis
    clock        time as the service reads and writes it
    jsontext     JSON on the hot path (orjson)
    documents    YAML and JSON written by someone else: what is accepted of them
    http_client  pooled outgoing HTTP, no hidden retries
    watch        noticing that files changed, cheaply
"""

VERSION = "0.1.0"  # the one place: setup.cfg, /openapi.json and the User-Agent read it
