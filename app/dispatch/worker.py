"""The background loop: triggered decisions and outbox delivery, in a thread or a process.

`serve` runs one in each web worker process (a daemon thread); `decision-service
worker` runs one in the foreground. Any number may run at once: every step claims
its work in Redis with a lease.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from app.shared.errors import DecisionServiceError

log = logging.getLogger(__name__)

OUTAGE_POLL_SECONDS = 0.25  # well inside the 2 s a recovery may take


class Worker:
    def __init__(self, steps: Sequence[Callable[[], int]], *, poll_seconds: float = 0.1,
                 name: str = "decision-worker") -> None:
        self.steps = list(steps)
        self.poll_seconds = poll_seconds
        self.name = name
        self.failing: str | None = None  # why the last pass could not work
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """One pass over every step; how much work was done (0: idle)."""
        done = 0
        failing = None
        for step in self.steps:
            try:
                done += step()
            except DecisionServiceError as exc:  # Redis down and the like: try again later
                failing = exc.detail
            except Exception:
                log.exception("%s: a step failed", self.name)
        if failing != self.failing:  # said once when it starts, once when it ends
            if failing is not None:
                log.warning("%s: %s; retrying every %gs", self.name, failing,
                            self.retry_seconds)
            else:
                log.warning("%s: working again", self.name)
            self.failing = failing
        return done

    @property
    def retry_seconds(self) -> float:
        return max(self.poll_seconds, OUTAGE_POLL_SECONDS)

    def run(self) -> None:
        """Until `stop()`: work while there is work, then poll (slower while Redis or the
        like is down)."""
        while not self._stop.is_set():
            if self.run_once() == 0:
                self._stop.wait(self.retry_seconds if self.failing else self.poll_seconds)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
