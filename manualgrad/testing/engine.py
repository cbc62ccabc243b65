"""check_function: run the checks on one Function against its reference, into a Report."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from . import checks_autograd as ad
from . import checks_transforms as tf
from .case import Case, Skip
from .report import CheckResult, Report

CheckFn = Callable[[Case], tuple[bool, str]]
"""A check: ``check(case) -> (passed, message)``, or raises :class:`~manualgrad.testing.Skip`."""

# name -> check, in the order they run and print (documented in manualgrad.testing's __init__).
CHECKS: dict[str, CheckFn] = {
    "values": ad.check_values,
    "gradients": ad.check_gradients,
    "gradcheck": ad.check_gradcheck,
    "gradgradcheck": ad.check_gradgradcheck,
    "hvp": ad.check_hvp,
    "forward_ad": ad.check_forward_ad,
    "vmap": tf.check_vmap,
    "per_sample_grad": tf.check_per_sample_grad,
    "compile": tf.check_compile,
    "compile_dynamic": tf.check_compile_dynamic,
    "export": tf.check_export,
    "autocast": tf.check_autocast,
    "non_contiguous": ad.check_non_contiguous,
    "saved_memory": tf.check_saved_memory,
    "cuda": tf.check_cuda,
    "grad_output_unmodified": ad.check_grad_output_unmodified,
}
CHECK_NAMES: tuple[str, ...] = tuple(CHECKS)
MESSAGE_LINES, MESSAGE_CHARS = 3, 400


def describe(name: str) -> str:
    """What check ``name`` compares, in one line (the first line of its docstring).

    Args:
        name: one of :data:`CHECK_NAMES`.

    Returns:
        The description, as ``python -m manualgrad check --list-checks`` prints it.

    Raises:
        KeyError: an unknown name.

    Example:
        >>> from manualgrad.testing import describe
        >>> describe("gradcheck")
        'torch.autograd.gradcheck in float64 (finite differences; no reference needed).'
    """
    return (CHECKS[name].__doc__ or "").strip().splitlines()[0]


def exception_message(error: BaseException) -> str:
    """``Type: first lines of the message`` (PyTorch's own words, shortened; no traceback)."""
    lines = [line.rstrip() for line in str(error).strip().splitlines() if line.strip()]
    text = "\n".join(lines[:MESSAGE_LINES])
    if len(text) > MESSAGE_CHARS:
        text = text[:MESSAGE_CHARS] + " ..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def run_check(name: str, case: Case, label: str = "") -> CheckResult:
    """Run one check on one case; every exception raised inside it becomes its result.

    Warnings raised inside the check are silenced, and torch.compile's state is reset after it,
    so that one check cannot change the next.

    Args:
        name: one of :data:`CHECK_NAMES`.
        case: the function, its reference and example inputs.
        label: the result's ``case`` field (to tell cases apart in one report).

    Returns:
        A :class:`~manualgrad.testing.CheckResult`: ``"pass"`` or ``"fail"`` with the measured
        error or PyTorch's message, ``"skip"`` with the reason the check does not apply.

    Raises:
        KeyError: an unknown check name.

    Example:
        >>> import torch
        >>> from manualgrad.testing import Case, run_check
        >>> x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        >>> run_check("gradients", Case(torch.sin, torch.sin, (x,)), label="sin").status
        'pass'
        >>> run_check("gradients", Case(torch.sin, torch.cos, (x,))).status
        'fail'
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            passed, message = CHECKS[name](case)
    except Skip as reason:
        return CheckResult(name, "skip", str(reason), label)
    except Exception as error:  # a bad Function is a failing check, never a crash
        return CheckResult(name, "fail", exception_message(error), label)
    finally:
        torch._dynamo.reset()  # compiled state must not leak into the next check
    return CheckResult(name, "pass" if passed else "fail", message, label)


def select_checks(checks: Iterable[str] | None) -> list[str]:
    """The names to run, in CHECK_NAMES order; ValueError naming any unknown one."""
    if checks is None:
        return list(CHECK_NAMES)
    if isinstance(checks, str):
        checks = [c for c in checks.split(",") if c]
    wanted = list(checks)
    unknown = [c for c in wanted if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(map(repr, unknown))}; known: {', '.join(CHECK_NAMES)}")
    return [c for c in CHECK_NAMES if c in wanted]


def run_checks(case: Case, checks: Iterable[str] | None = None, label: str = "") -> list[CheckResult]:
    """Run the selected checks on one case, in :data:`CHECK_NAMES` order.

    The lower-level form of :func:`check_function`, for a :class:`~manualgrad.testing.Case`
    built by hand (names of the inputs, a fixed seed, fast gradcheck) or for several cases
    gathered in one :class:`~manualgrad.testing.Report` (as ``verify`` does).

    Args:
        case: the function, its reference and example inputs.
        checks: names from :data:`CHECK_NAMES`, or one comma-separated string (default: all).
        label: every result's ``case`` field.

    Returns:
        One :class:`~manualgrad.testing.CheckResult` per selected check.

    Raises:
        ValueError: an unknown check name (before any check runs).

    Example:
        >>> import torch
        >>> from manualgrad.testing import Case, Report, run_checks
        >>> x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
        >>> report = Report(title="two cases")
        >>> report.extend(run_checks(Case(torch.tanh, torch.tanh, (x,)), "values,gradcheck", "tanh"))
        >>> report.extend(run_checks(Case(torch.exp, torch.exp, (x,)), ["values"], "exp"))
        >>> [(r.case, r.name, r.status) for r in report]
        [('tanh', 'values', 'pass'), ('tanh', 'gradcheck', 'pass'), ('exp', 'values', 'pass')]
    """
    return [run_check(name, case, label) for name in select_checks(checks)]


def check_function(
    fn: Callable[..., object],
    reference: Callable[..., object],
    *inputs: object,
    checks: Sequence[str] | None = None,
    batch_dim: int | None = 0,
    atol: float | None = None,
    rtol: float | None = None,
) -> Report:
    """Check a function built on a custom ``autograd.Function`` against a native-autograd reference.

    Each check (see :data:`CHECK_NAMES`) compares ``fn`` with ``reference`` on fresh copies of
    ``inputs``: values, gradients for random upstream gradients, gradcheck and gradgradcheck in
    float64, Hessian-vector products, forward AD, vmap and per-sample gradients, torch.compile
    (also with a dynamic batch), torch.export, autocast, non-contiguous inputs, memory saved for
    backward, CUDA, and that backward leaves its ``grad_output`` alone. A check that does not
    apply is skipped with its reason; an exception inside a check is that check's failure, never
    a crash.

    Args:
        fn: the function under test; takes ``inputs``, returns a tensor or a tuple of tensors.
        reference: the same computation with native PyTorch ops (autograd differentiates it).
        *inputs: example tensors, float64 recommended (checks that need float32 or bfloat16 make
            copies). Inputs with ``requires_grad=True`` are the ones differentiated; integer
            inputs (class indices) are passed through.
        checks: names from :data:`CHECK_NAMES` to run (default: all).
        batch_dim: the batch dimension, for vmap, per-sample gradients, dynamic compile and
            export: inputs whose size there equals the first input's carry the batch. None: no batch.
        atol, rtol: override the per-dtype tolerances; comparisons are normwise,
            ``max |a - b| <= atol + rtol * max |b|``.

    Returns:
        A :class:`~manualgrad.testing.Report`: ``.passed``, ``.results`` (``name``, ``status``,
        ``message``), ``str(report)`` a table, ``report.raise_if_failed()`` for pytest.

    Raises:
        TypeError: ``fn`` or ``reference`` is not callable.
        ValueError: no tensor among ``inputs``, or an unknown check name.

    Example:
        A Function whose backward forgets the factor 2 of d(x^2)/dx:

        >>> import torch
        >>> from manualgrad.testing import check_function
        >>> class Square(torch.autograd.Function):
        ...     @staticmethod
        ...     def forward(x):
        ...         return x * x
        ...     @staticmethod
        ...     def setup_context(ctx, inputs, output):
        ...         ctx.save_for_backward(*inputs)
        ...     @staticmethod
        ...     def backward(ctx, grad_output):
        ...         (x,) = ctx.saved_tensors
        ...         return x * grad_output  # should be 2 * x * grad_output
        >>> def square(x):
        ...     return Square.apply(x)
        >>> def reference(x):
        ...     return x**2
        >>> x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
        >>> report = check_function(square, reference, x, checks=["values", "gradients", "gradcheck"])
        >>> report.passed
        False
        >>> [(r.name, r.status) for r in report]
        [('values', 'pass'), ('gradients', 'fail'), ('gradcheck', 'fail')]
        >>> print(report)  # doctest: +ELLIPSIS
        check_function: square against reference
        check      status  message
        ...
        values     PASS    output: max abs 0.0e+00, rel 0.0e+00
        gradients  FAIL    output: max abs 0.0e+00, rel 0.0e+00; grad input 0: max abs ... > tolerance (rtol 1e-07)
        gradcheck  FAIL    GradcheckError: Jacobian mismatch for output 0 with respect to input 0,
        ...
        FAILED: 1 passed, 2 failed, 0 skipped
    """
    if not callable(fn) or not callable(reference):
        raise TypeError("fn and reference must be callables taking the inputs")
    if not any(isinstance(t, Tensor) for t in inputs):
        raise ValueError("check_function needs at least one example tensor in inputs")
    names = select_checks(checks)
    case = Case(fn, reference, tuple(inputs), batch_dim, atol, rtol)
    title = f"check_function: {getattr(fn, '__name__', 'fn')} against {getattr(reference, '__name__', 'reference')}"
    return Report(run_checks(case, names), title)
