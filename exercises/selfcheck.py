"""``python exercises/<name>.py``: check an exercise's Function against its reference.

The same engine as ``python -m manualgrad check FILE`` (``manualgrad.testing.check_function``):
it prints the report and exits 0 when every check passes or skips, 1 when one fails. A stub's
``NotImplementedError("TODO ...")`` is a failing line of the report, not a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from manualgrad.testing import check_function


def main(function: Callable, reference: Callable, make_inputs: Callable, checks: Sequence[str] | None) -> None:
    report = check_function(function, reference, *make_inputs(), checks=checks)
    print(report)
    sys.exit(0 if report.passed else 1)
