"""Time as the service reads and writes it: epoch seconds in, RFC 3339 UTC strings out.

Every timestamp the service stores has the same fixed width (microseconds, `Z`),
so stored timestamps compare correctly as strings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]

system_clock: Clock = time.time


def rfc3339(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
