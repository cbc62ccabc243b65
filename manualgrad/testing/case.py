"""What every check receives: the function, its reference, example inputs and tolerances."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# Normwise relative tolerance per dtype: max |a - b| <= rtol * max |b| + atol. float64 and
# float32 allow for a different order of summation; bfloat16 and float16 for one rounding of
# each operand of a matmul (autocast).
RTOL = {torch.float64: 1e-7, torch.float32: 1e-5, torch.bfloat16: 4e-2, torch.float16: 5e-3}
ATOL = {torch.float64: 1e-12, torch.float32: 1e-7, torch.bfloat16: 1e-3, torch.float16: 1e-4}


MAX_PARTS = 8  # comparisons listed one by one in a message; beyond, the failing ones or the worst


class Skip(Exception):
    """Raised by a check that does not apply; its message is the reason.

    :func:`~manualgrad.testing.run_check` turns it into a result with status ``"skip"``, which
    does not fail a report.

    Example:
        >>> from manualgrad.testing import Skip
        >>> def check_needs_cuda(case):
        ...     raise Skip("no CUDA device")
        >>> try:
        ...     check_needs_cuda(None)
        ... except Skip as reason:
        ...     print(reason)
        no CUDA device
    """


@dataclass
class Case:
    """A function, its reference and example inputs, as every check sees them.

    Every check copies ``inputs`` before using them, so a case can be run many times.

    Args:
        fn: the function under test; takes ``*inputs``, returns a tensor or a tuple of tensors.
        reference: the same computation with native PyTorch ops.
        inputs: example inputs: tensors (those with ``requires_grad=True`` are differentiated)
            and any other arguments, passed through unchanged.
        batch_dim: the inputs' batch dimension (None: none). Inputs whose size there equals the
            first tensor's carry the batch (vmap, per-sample gradients, dynamic shapes, export).
        atol, rtol: override the per-dtype tolerances of :meth:`tolerances`.
        seed: seed of the random upstream gradients, tangents and projections.
        names: the inputs' names in messages (default ``"input 0"``, ``"input 1"``, ...).
        fast_gradcheck: run gradcheck and gradgradcheck in ``fast_mode`` (a random projection of
            the Jacobian instead of all of it; for large inputs).

    Example:
        >>> import torch
        >>> from manualgrad.testing import Case
        >>> x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
        >>> w = torch.randn(4, dtype=torch.float64)
        >>> case = Case(torch.mul, torch.mul, (x, w), names=("x", "w"))
        >>> case.differentiable, case.batch_size, case.batched
        ([0], 6, [True, False])
        >>> case.tolerances(torch.float32)
        (1e-05, 1e-07)
    """

    fn: Callable[..., Any]
    reference: Callable[..., Any]
    inputs: tuple[Any, ...]
    batch_dim: int | None = 0
    atol: float | None = None
    rtol: float | None = None
    seed: int = 0
    names: tuple[str, ...] | None = None  # inputs' names in messages (default "input 0", ...)
    fast_gradcheck: bool = False  # gradcheck's fast_mode (a random projection of the Jacobian)

    def tolerances(self, dtype: torch.dtype) -> tuple[float, float]:
        """(rtol, atol) for comparing tensors of ``dtype``: the caller's, else the dtype's."""
        rtol = self.rtol if self.rtol is not None else RTOL.get(dtype, 1e-5)
        atol = self.atol if self.atol is not None else ATOL.get(dtype, 1e-7)
        return rtol, atol

    @property
    def differentiable(self) -> list[int]:
        """Positions of the inputs that require grad."""
        return [i for i, t in enumerate(self.inputs) if isinstance(t, Tensor) and t.requires_grad]

    @property
    def batch_size(self) -> int | None:
        """The size of the first tensor input along batch_dim (None if it has none)."""
        first = next((t for t in self.inputs if isinstance(t, Tensor)), None)
        if self.batch_dim is None or first is None or first.dim() <= self.batch_dim:
            return None
        return first.shape[self.batch_dim]

    @property
    def batched(self) -> list[bool]:
        """Which inputs carry the batch: tensors whose size along batch_dim is the first input's."""
        n, dim = self.batch_size, self.batch_dim
        if n is None or dim is None:
            return [False] * len(self.inputs)
        return [isinstance(t, Tensor) and t.dim() > dim and t.shape[dim] == n for t in self.inputs]

    def generator(self) -> torch.Generator:
        """A fresh CPU generator seeded with :attr:`seed` (the same draws on every call)."""
        return torch.Generator().manual_seed(self.seed)


def copy_inputs(
    inputs: Sequence[object], dtype: torch.dtype | None = None, device: str | torch.device | None = None
) -> tuple[Any, ...]:
    """Fresh leaves: detached copies (floating ones cast to ``dtype``), requires_grad as given."""
    out = []
    for t in inputs:
        if not isinstance(t, Tensor):
            out.append(t)
            continue
        copy = t.detach().to(device=device or t.device, dtype=dtype if t.is_floating_point() and dtype else t.dtype)
        copy = copy.clone() if copy.data_ptr() == t.data_ptr() else copy
        out.append(copy.requires_grad_(t.requires_grad))
    return tuple(out)


def outputs(value: object) -> tuple[Tensor, ...]:
    """A function's outputs as a tuple of tensors."""
    if isinstance(value, Tensor):
        return (value,)
    if isinstance(value, (tuple, list)) and all(isinstance(v, Tensor) for v in value):
        return tuple(value)
    raise TypeError(f"the function must return a tensor or a tuple of tensors, got {type(value).__name__}")


def differentiable_outputs(value: object) -> list[Tensor]:
    return [o for o in outputs(value) if o.is_floating_point() or o.is_complex()]


def weighted_sum(tensors: Sequence[Tensor], weights: Sequence[Tensor]) -> Tensor:
    """sum_i <tensors[i], weights[i]>: a scalar, in the tensors' promoted dtype."""
    total: Tensor | None = None
    for t, w in zip(tensors, weights):
        term = (t * w).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("the function has no floating-point output to differentiate")
    return total


def random_like(t: Tensor, generator: torch.Generator) -> Tensor:
    """A random tensor shaped like ``t`` (drawn on the CPU in float64, so seeds give the same values)."""
    return torch.randn(t.shape, generator=generator, dtype=torch.float64).to(t.device, t.dtype)


def compare(what: str, actual: Tensor, expected: Tensor, rtol: float, atol: float) -> tuple[bool, str, float]:
    """Normwise comparison: (passed, "what: max abs 1.2e-17, rel 3.4e-16", relative error)."""
    if actual.shape != expected.shape:
        return False, f"{what}: shape {tuple(actual.shape)}, reference {tuple(expected.shape)}", float("inf")
    a = actual.detach().to("cpu", torch.float64)
    b = expected.detach().to("cpu", torch.float64)
    if a.numel() == 0:
        return True, f"{what}: empty", 0.0
    same_nan = torch.equal(a.isnan(), b.isnan())
    finite = ~(a.isnan() | b.isnan())
    diff = (a - b)[finite].abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    if diff.numel() and not torch.isfinite(diff).all():
        max_abs = float("inf")
    scale = float(b[finite].abs().max()) if diff.numel() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    passed = same_nan and max_abs <= atol + rtol * scale
    nan_note = "" if same_nan else " (NaNs differ)"
    return passed, f"{what}: max abs {max_abs:.1e}, rel {max_rel:.1e}{nan_note}", max_rel


def compare_all(
    what: str,
    actual: Sequence[Tensor | None],
    expected: Sequence[Tensor | None],
    names: Sequence[str],
    case: Case,
    tolerance: tuple[float, float] | None = None,
    max_parts: int = MAX_PARTS,
) -> tuple[bool, str]:
    """Compare tensors pairwise (None as zeros) within ``tolerance`` (rtol, atol), by default
    the case's for the expected tensor's dtype; one message part per pair, or beyond
    ``max_parts`` pairs the failing ones (at most max_parts) or else the worst."""
    rows = []  # (passed, relative error, line)
    for name, a, b in zip(names, actual, expected):
        if a is None and b is None:
            continue
        a = torch.zeros_like(b) if a is None else a  # type: ignore[arg-type]
        b = torch.zeros_like(a) if b is None else b
        rtol, atol = tolerance or case.tolerances(b.dtype)
        passed, line, rel = compare(f"{what} {name}".strip(), a, b, rtol, atol)
        rows.append((passed, rel, line + ("" if passed else f" > tolerance (rtol {rtol:.0e})")))
    ok = all(passed for passed, _, _ in rows)
    if len(rows) <= max_parts:
        return ok, "; ".join(line for _, _, line in rows)
    failing = [line for passed, _, line in rows if not passed]
    worst = max(rows, key=lambda row: row[1])[2]
    shown = failing[:max_parts] if failing else [worst]
    return ok, f"{len(rows) - len(failing)} of {len(rows)} within tolerance; " + (
        "worst: " if not failing else ""
    ) + "; ".join(shown)


def input_names(case: Case, positions: Sequence[int]) -> list[str]:
    return [case.names[i] if case.names else f"input {i}" for i in positions]


def output_names(n: int) -> list[str]:
    return ["output"] if n == 1 else [f"output {i}" for i in range(n)]
