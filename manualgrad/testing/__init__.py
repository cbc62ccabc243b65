"""A verification engine for any custom ``torch.autograd.Function``, against a reference.

:func:`check_function` runs the checks named in :data:`CHECK_NAMES` (values, gradients,
gradcheck, double backward, forward AD, vmap, torch.compile, torch.export, autocast, memory
saved for backward, CUDA, ...) and returns a :class:`Report`. ``python -m manualgrad check
FILE`` runs it on a file (see :mod:`manualgrad.testing.command`); ``python -m manualgrad
verify`` runs it on manualgrad's own three entry points (:func:`manualgrad.verify.verify`).

* :func:`check_function`: one function against its reference, the checks you choose;
* :class:`Case`, :func:`run_check`, :func:`run_checks`: the same engine one level down, for
  cases built by hand and several cases in one report;
* :class:`Report`, :class:`CheckResult`: what the checks return; :class:`Skip`: what a check
  raises when it does not apply.

In a test suite, ``raise_if_failed`` turns a report into a pytest failure that prints the table:

>>> import torch
>>> from manualgrad.testing import check_function
>>> x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
>>> check_function(torch.sigmoid, lambda x: 1 / (1 + torch.exp(-x)), x, checks=["values"]).raise_if_failed()
"""

from . import engine as _engine
from .case import Case, Skip
from .engine import CheckFn, check_function, describe, run_check, run_checks
from .report import CheckResult, Report

CHECKS: dict[str, CheckFn] = _engine.CHECKS
"""Every check by name, in the order they run and print: ``check(case) -> (passed, message)``.

A check raises :class:`Skip` when it does not apply to the case (no input requires grad, no
batch dimension, no CUDA device); any other exception is its failure. :func:`describe` gives
a check's one-line description; ``python -m manualgrad check --list-checks`` lists them all.
"""

CHECK_NAMES: tuple[str, ...] = _engine.CHECK_NAMES
"""The names of :data:`CHECKS`, in the order they run; stable: ``checks=``, reports and
``--checks`` use them.

Example:
    >>> from manualgrad.testing import CHECK_NAMES
    >>> CHECK_NAMES[:4]
    ('values', 'gradients', 'gradcheck', 'gradgradcheck')
"""

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
