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

# name -> check, in the order they run and print. The names are stable: checks= selects them.
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
    """The first line of a check's docstring."""
    return (CHECKS[name].__doc__ or "").strip().splitlines()[0]


def exception_message(error: BaseException) -> str:
    """``Type: first lines of the message`` (PyTorch's own words, shortened; no traceback)."""
    lines = [line.rstrip() for line in str(error).strip().splitlines() if line.strip()]
    text = "\n".join(lines[:MESSAGE_LINES])
    if len(text) > MESSAGE_CHARS:
        text = text[:MESSAGE_CHARS] + " ..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def run_check(name: str, case: Case, label: str = "") -> CheckResult:
    """One check; every exception raised inside it becomes its result."""
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
        A :class:`Report`: ``.passed``, ``.results`` (``name``, ``status``, ``message``),
        ``str(report)`` a table, ``report.raise_if_failed()`` for pytest.

    Example:
        >>> import torch
        >>> from manualgrad.testing import check_function
        >>> x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
        >>> report = check_function(torch.tanh, torch.tanh, x, checks=["values", "gradients"])
        >>> report.passed, [r.name for r in report.results]
        (True, ['values', 'gradients'])
    """
    if not callable(fn) or not callable(reference):
        raise TypeError("fn and reference must be callables taking the inputs")
    if not any(isinstance(t, Tensor) for t in inputs):
        raise ValueError("check_function needs at least one example tensor in inputs")
    names = select_checks(checks)
    case = Case(fn, reference, tuple(inputs), batch_dim, atol, rtol)
    title = f"check_function: {getattr(fn, '__name__', 'fn')} against {getattr(reference, '__name__', 'reference')}"
    return Report(run_checks(case, names), title)
