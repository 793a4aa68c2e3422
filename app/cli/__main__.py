"""`python -m app.cli`: the `decision-service` command."""

import sys

from app.cli import main

sys.exit(main())
