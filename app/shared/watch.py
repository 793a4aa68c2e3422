"""Noticing that files changed, cheaply, so workers can reload rules and policies on use."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

Signature = tuple[tuple[str, int, int], ...]


def signature(paths: Iterable[Path]) -> Signature:
    """Name, modification time and size of each file: changes when any file does."""
    entries = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        entries.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(sorted(entries))


class ChangeWatch:
    """Says when a reload is due: at most every `interval_seconds` (0: never by itself)."""

    def __init__(self, interval_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.interval_seconds = interval_seconds
        self._clock = clock
        self._checked_at = float("-inf")

    def due(self) -> bool:
        return self.interval_seconds > 0 and (
            self._clock() - self._checked_at >= self.interval_seconds)

    def checked(self) -> None:
        self._checked_at = self._clock()
