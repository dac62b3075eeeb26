"""``python -m router``: the ``llm-router`` command line (see docs/cli.md)."""

import sys

from router._tools._cli import main

sys.exit(main())
