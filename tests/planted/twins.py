"""Comparison with the native-autograd twin, with tolerances relative to what is compared.

``torch.testing.assert_close`` with an absolute ``atol`` lets a wrong gradient pass when the
gradient itself is small (loss gradients at N=64 are about 1e-3, so atol=1e-7 means a relative
error up to 1e-4 passes). Here the error is measured against the largest entry of the expected
tensor: ``max|actual - expected| <= rtol * max|expected|``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from manualgrad import reference

RTOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def assert_close_relative(
    actual: Tensor | None, expected: Tensor | None, what: str = "", rtol: float | None = None
) -> None:
    assert (actual is None) == (expected is None), (
        f"{what}: one of the two is None ({actual is None}, {expected is None})"
    )
    if actual is None or expected is None:
        return
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    tol = RTOL[expected.dtype] if rtol is None else rtol
    if expected.numel() == 0:
        return
    assert torch.isfinite(expected).all(), f"{what}: the twin is not finite"
    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert error <= tol * max(scale, 1e-300), f"{what}: max error {error:.3e} > {tol:.0e} * max|expected| {scale:.3e}"


def problem(N=7, D=3, H=5, C=4, *, dtype=torch.float64, seed=0, scale=1.0):
    """x, class indices, probabilities (rows sum to 1), [W1, b1, W2, b2]; biases non-zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=torch.float64) * scale
    params = [
        torch.randn(D, H, generator=g, dtype=torch.float64) / D**0.5,
        torch.randn(H, generator=g, dtype=torch.float64) * 0.5,
        torch.randn(H, C, generator=g, dtype=torch.float64) / H**0.5 * 2,
        torch.randn(C, generator=g, dtype=torch.float64) * 0.5,
    ]
    indices = torch.randint(0, C, (N,), generator=g)
    probabilities = torch.softmax(torch.randn(N, C, generator=g, dtype=torch.float64) * 2, 1)
    return x.to(dtype), indices, probabilities.to(dtype), [p.to(dtype) for p in params]


def twin_for(entry: str, target: Tensor | None = None, reduction: str = "mean"):
    if entry == "probs":
        return reference.probs
    if entry == "logits":
        return reference.logits
    return lambda x, t, *p: reference.loss(x, t, *p, reduction=reduction)


def grads_of(fn, inputs, needs, grad_out=None, create_graph=False):
    """fn(*inputs) and d<fn, grad_out>/d input for each input with needs True (others: no grad)."""
    leaves = [t.detach().clone().requires_grad_(n) for t, n in zip(inputs, needs)]
    out = fn(*leaves)
    if grad_out is None:
        grad_out = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    wanted = [t for t in leaves if t.requires_grad]
    grads = torch.autograd.grad(out, wanted, grad_out, create_graph=create_graph)
    return out, grads, leaves


def assert_matches_twin(manual, twin, inputs, needs=None, grad_out=None, rtol=None, what=""):
    """Value, then the gradient of each input asked for, against the twin, relative tolerance."""
    needs = needs if needs is not None else [t.is_floating_point() for t in inputs]
    value, grads, _ = grads_of(manual, inputs, needs, grad_out)
    ref_value, ref_grads, _ = grads_of(twin, inputs, needs, grad_out)
    assert_close_relative(value, ref_value, f"{what} value", rtol)
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert_close_relative(g, r, f"{what} gradient {i}", rtol)
