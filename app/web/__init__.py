"""The pages a person looks at: the decision explorer and the replay report.

Both are static HTML with inline CSS and JavaScript that read the JSON API (so they
show exactly what the API says, and need no build step). The replay report page is
also the template of the self-contained HTML report `decision-service replay --html`
writes: the report JSON is embedded where the page would otherwise fetch it. What both
pages share (`common.css`, `common.js`) is inlined into each where it names the slot, so
each page, and the report, stays one file.

Imports nothing of the service: the pages know it only through the JSON API.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

_REPORT_SLOT = "/*REPORT*/null"
_SHARED = {"/*COMMON-CSS*/": "common.css", "/*COMMON-JS*/": "common.js"}


def _text(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def page(name: str) -> str:
    text = _text(name)
    for slot, shared in _SHARED.items():
        text = text.replace(slot, _text(shared), 1)
    return text


def replay_report_html(report: dict[str, Any]) -> str:
    """A self-contained HTML file showing `report` (no server needed to open it)."""
    # <, > and & as JSON escapes: no text of the report can end the script or open a
    # comment in it ("<!--<script" would keep the page's own </script> from ending it)
    embedded = (json.dumps(report).replace("<", "\\u003c").replace(">", "\\u003e")
                .replace("&", "\\u0026"))
    return page("replay.html").replace(_REPORT_SLOT, embedded, 1)
