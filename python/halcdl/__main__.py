"""``python -m halcdl``: the command line (halcdl.cli)."""

import sys

from .cli import main

sys.exit(main())
