"""``python -m manualgrad``: see :mod:`manualgrad.cli`."""

import sys

from .cli import main

sys.exit(main())
