"""Outgoing HTTP (the OPA sidecar, the executors): pooled keep-alive connections, and no
retries inside requests, because each caller decides itself what a failure means."""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter


def pooled_session(*, pool_size: int) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
