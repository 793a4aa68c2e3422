"""Every Redis key the service uses, built here and nowhere else.

A subject's keys carry the subject as a `{hash tag}`, so they share one hash slot
and one subject's writes can be a single transaction on Redis Cluster too.
Keys that are looked up by something other than the subject (a fact id) live in
their own slot and only ever point back to the subject's keys.
"""

from __future__ import annotations

PREFIX = "ds"


def subject_facts(subject: str) -> str:
    """Hash: fact id -> stored fact (JSON), the subject's pool."""
    return f"{PREFIX}:{{{subject}}}:facts"


def subject_fact_expiry(subject: str) -> str:
    """Sorted set: fact id -> expiry (epoch ms), for facts posted with ttl_seconds."""
    return f"{PREFIX}:{{{subject}}}:fact-expiry"


def fact_owner(fact_id: str) -> str:
    """String: the subject a fact id belongs to (expires with the fact)."""
    return f"{PREFIX}:fact:{fact_id}"
