"""The background loop: triggered decisions and outbox delivery, in a thread or a process.

`serve` runs one in each web worker process (a daemon thread); `decision-service
worker` runs one in the foreground. Any number may run at once: every step claims
its work in Redis with a lease.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from app.errors import DecisionServiceError

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, steps: Sequence[Callable[[], int]], *, poll_seconds: float = 0.1,
                 name: str = "decision-worker") -> None:
        self.steps = list(steps)
        self.poll_seconds = poll_seconds
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """One pass over every step; how much work was done (0: idle)."""
        done = 0
        for step in self.steps:
            try:
                done += step()
            except DecisionServiceError as exc:  # Redis down and the like: try again later
                log.warning("%s: %s", self.name, exc.detail)
            except Exception:
                log.exception("%s: a step failed", self.name)
        return done

    def run(self) -> None:
        """Until `stop()`: work while there is work, then poll."""
        while not self._stop.is_set():
            if self.run_once() == 0:
                self._stop.wait(self.poll_seconds)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
