"""Decision service: facts from every department, forward-chaining rules, OPA before action.

The core (facts, rules engine, policy gate, dispatch, decision log, replay) is
Flask-free; `app.api` is the HTTP face and `app.cli` the command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

from app.shared import VERSION as __version__

__all__ = ["__version__", "create_app"]


def create_app(config: Any = None) -> Flask:
    """The WSGI application (`app.api.create_app`), imported lazily: the core stays Flask-free."""
    from app.api import create_app as _create_app

    return _create_app(config)
