"""Time as the service reads and writes it: epoch seconds in, RFC 3339 UTC strings out.

Every timestamp the service stores has the same fixed width (microseconds, `Z`),
so stored timestamps compare correctly as strings.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]

system_clock: Clock = time.time


def rfc3339(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_MOMENT = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?"
                     r"([Zz]|[+-]\d{2}:\d{2})")


def parse_moment(text: str) -> datetime:
    """A moment as a user writes one: `YYYY-MM-DD` (midnight UTC) or a full ISO 8601 /
    RFC 3339 time with its offset (`2026-11-01T09:30:00+01:00`, `...Z`); aware, in UTC.
    A time without an offset is refused rather than read in some zone. ValueError says why."""
    text = text.strip()
    if not (_DAY.fullmatch(text) or _MOMENT.fullmatch(text)):
        raise ValueError(f"{text!r} is not YYYY-MM-DD or an ISO 8601 time with its offset "
                         "(e.g. 2026-11-01T09:30:00+01:00 or 2026-11-01T08:30:00Z)")
    try:
        moment = datetime.fromisoformat(text.upper().replace(" ", "T"))
    except ValueError as exc:
        raise ValueError(f"{text!r} is no such date or time: {exc}") from exc
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
