"""The pages a person looks at: the decision explorer and the replay report.

Both are static HTML with inline CSS and JavaScript that read the JSON API (so they
show exactly what the API says, and need no build step). The replay report page is
also the template of the self-contained HTML report `decision-service replay --html`
writes: the report JSON is embedded where the page would otherwise fetch it.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

_REPORT_SLOT = "/*REPORT*/null"


def page(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def replay_report_html(report: dict[str, Any]) -> str:
    """A self-contained HTML file showing `report` (no server needed to open it)."""
    embedded = json.dumps(report).replace("</", "<\\/")  # no early </script>
    return page("replay.html").replace(_REPORT_SLOT, embedded, 1)
