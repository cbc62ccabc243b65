"""``python -m manualgrad``: see :mod:`manualgrad.cli`."""

import sys

from .cli import main

if __name__ == "__main__":  # spawned worker processes (the DDP check) import this module too
    sys.exit(main())
