"""``python exercises/<name>.py``: check an exercise's Function against its reference.

Uses manualgrad's checker (``manualgrad.testing.check_function``, the same engine as
``python -m manualgrad check FILE``) when it can be imported; otherwise gradcheck,
gradgradcheck and a table of relative errors per input. Exit status 0 when everything
passes, 1 otherwise; a failing step prints one line (the exception's message), no traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
from torch.autograd import gradcheck, gradgradcheck


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (cs231n's habit: below 1e-7 in float64 is right)."""
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def fallback(function: Callable, reference: Callable, inputs: Sequence[torch.Tensor]) -> bool:
    """gradcheck, gradgradcheck and a relative-error table; True when all pass."""
    ok = True
    leaves = [t for t in inputs if t.requires_grad]

    def step(name: str, run: Callable[[], object]) -> object:
        nonlocal ok
        try:
            result = run()
        except Exception as error:  # a TODO or a wrong formula: one line, no traceback
            print(f"  {name:<14} FAIL  {type(error).__name__}: {str(error).strip().splitlines()[0]}")
            ok = False
            return None
        print(f"  {name:<14} pass")
        return result

    out, expected = function(*inputs), reference(*inputs)
    value_error = relative_error(out.detach(), expected.detach())
    print(f"  {'value':<14} relative error {value_error:.1e}")
    ok &= value_error < 1e-10
    upstream = torch.randn_like(expected)
    grads = step("backward", lambda: torch.autograd.grad(function(*inputs), leaves, upstream))
    if grads is not None:
        expected_grads = torch.autograd.grad(reference(*inputs), leaves, upstream)
        for index, (grad, want) in enumerate(zip(grads, expected_grads)):
            error = relative_error(grad, want)
            print(f"  grad input {index:<3} relative error {error:.1e}")
            ok &= error < 1e-10
    step("gradcheck", lambda: gradcheck(function, tuple(inputs)))
    step("gradgradcheck", lambda: gradgradcheck(function, tuple(inputs)))
    return ok


def main(function: Callable, reference: Callable, make_inputs: Callable, checks: Sequence[str] | None) -> None:
    inputs = make_inputs()
    try:
        from manualgrad.testing import check_function
    except ImportError:
        print("manualgrad.testing not importable: gradcheck, gradgradcheck and relative errors")
        sys.exit(0 if fallback(function, reference, inputs) else 1)
    report = check_function(function, reference, *inputs, checks=checks)
    print(report)
    sys.exit(0 if report.passed else 1)
