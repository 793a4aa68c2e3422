"""Logs: one JSON object per line (or text, for a terminal), carrying the decision, subject
and trace they belong to.

`log_context(decision_id=..., subject=...)` marks everything logged inside it; the W3C
`traceparent` of an HTTP request is kept the same way, and the OPA sidecar and the
executors receive it. API keys and fact data are never logged.
"""

from __future__ import annotations

import contextlib
import logging
import logging.config
import re
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from app.shared import jsontext
from app.shared.clock import rfc3339

_context: ContextVar[dict[str, str]] = ContextVar("log_context", default={})  # noqa: B039
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


@contextlib.contextmanager
def log_context(**fields: str) -> Iterator[None]:
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def context() -> dict[str, str]:
    return _context.get()


def traceparent() -> str | None:
    return _context.get().get("traceparent")


def valid_traceparent(value: str | None) -> str | None:
    """A W3C trace context `traceparent` worth passing on, else None."""
    return value if value is not None and _TRACEPARENT.fullmatch(value.strip().lower()) else None


_default_factory = logging.getLogRecordFactory()


def _record_with_context(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Every log record carries the context it was made in, whichever handler gets it."""
    record = _default_factory(*args, **kwargs)
    fields = _context.get()
    record.__dict__["context"] = fields
    record.__dict__["context_text"] = "".join(f" {k}={v}" for k, v in fields.items())
    return record


logging.setLogRecordFactory(_record_with_context)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": rfc3339(record.created), "level": record.levelname,
                                 "logger": record.name, "message": record.getMessage()}
        entry.update(getattr(record, "context", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return jsontext.dumps(entry)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s:%(context_text)s %(message)s"


def dict_config(log_format: str, *, level: str = "INFO") -> dict[str, Any]:
    """The logging configuration (for `logging.config.dictConfig`, and for gunicorn, whose
    own lines then come out the same way): stderr, JSON lines or text, from `level` up."""
    formatter = {"()": JsonFormatter} if log_format == "json" else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"service": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "service",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {name: {"level": level, "handlers": [], "propagate": True}
                    for name in ("gunicorn.error", "gunicorn.access")},
    }


def configure(log_format: str, *, level: str = "INFO") -> None:
    logging.config.dictConfig(dict_config(log_format, level=level))
