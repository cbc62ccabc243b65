"""A verification engine for any custom ``torch.autograd.Function``, against a reference.

:func:`check_function` runs the checks named in :data:`CHECK_NAMES` (values, gradients,
gradcheck, double backward, forward AD, vmap, torch.compile, torch.export, autocast, memory
saved for backward, CUDA, ...) and returns a :class:`Report`. ``python -m manualgrad check
FILE`` runs it on a file (see :mod:`manualgrad.testing.command`); ``python -m manualgrad
verify`` runs it on manualgrad's own three entry points.
"""

from .case import Case, Skip
from .engine import CHECK_NAMES, CHECKS, check_function, describe, run_check, run_checks
from .report import CheckResult, Report

__all__ = [
    "CHECK_NAMES",
    "CHECKS",
    "Case",
    "CheckResult",
    "Report",
    "Skip",
    "check_function",
    "describe",
    "run_check",
    "run_checks",
]
