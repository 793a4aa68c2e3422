"""The pages for people: the decision explorer and the replay page (see `app.web`)."""

from __future__ import annotations

from flask import Blueprint, Response

from app.web import page

bp = Blueprint("pages", __name__)


def _html(name: str) -> Response:
    response = Response(page(name), mimetype="text/html")
    # The pages build their DOM from API data as text, never as markup; forbid the rest.
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'")
    return response


@bp.get("/explorer")
def explorer() -> Response:
    return _html("explorer.html")


@bp.get("/explorer/replay")
def replay_page() -> Response:
    return _html("replay.html")
