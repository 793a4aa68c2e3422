"""Run the scripts of this directory with the project's virtualenv, as README writes them.

README tells users to run `scripts/update-golden` (and `scripts/reliability soak`, ...)
as they are: the shebang's `python3` is then whatever Python comes first on PATH, usually
the system's, without the service's packages (`No module named 'opa_bindings'`) and with
its own `unicodedata` and no `.venv/bin/opa` beside it. Each script calls
`use_project_venv()` before it imports anything beyond the standard library.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def use_project_venv() -> None:
    """Start this script again with `.venv/bin/python` (the same arguments) when it runs on
    a Python outside any virtualenv and the project has one. A Python of a virtualenv is
    kept: whoever runs `some-venv/bin/python scripts/...` chose it (and a container that
    installed the service into its own Python has no `.venv` to switch to)."""
    python = ROOT / ".venv" / "bin" / "python"
    if sys.prefix != sys.base_prefix or not python.exists():
        return
    os.execv(python, [str(python), sys.argv[0], *sys.argv[1:]])
