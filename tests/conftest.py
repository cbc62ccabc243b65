"""Shared fixtures and the helper that compares manualgrad with its native-autograd twin."""

from __future__ import annotations

import pytest
import torch

from manualgrad import boundary, functional

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")),
]
DTYPES = [torch.float64, torch.float32]
# (rtol, atol) per dtype for manual vs autograd: assert_close's defaults for float64, and
# float32 loosened for the different summation order of batch sums.
TOLERANCES = {torch.float64: {"rtol": 1e-7, "atol": 1e-7}, torch.float32: {"rtol": 1e-5, "atol": 1e-6}}


# Where the scalar loss computes its gradients. By default that depends on N (in the forward
# from functional.PRECOMPUTE_MIN_ROWS rows); tests force each way at every size.
LOSS_STRATEGIES = ["gradients-in-backward", "gradients-in-forward"]


def loss_strategy(name: str):
    """A context in which the loss follows one of LOSS_STRATEGIES at every N."""
    return functional.loss_gradients_in_forward(name == "gradients-in-forward")


@pytest.fixture(autouse=True)
def fresh_boundary_cache():
    """Each test starts with no boundary decision cached: the plans kept with them read the size
    thresholds of ``modes`` once per combination of metadata, and tests patch those thresholds."""
    boundary._checked.clear()
    yield
    boundary._checked.clear()


@pytest.fixture(params=LOSS_STRATEGIES)
def either_loss_strategy(request):
    """Run the test once with each loss strategy."""
    with loss_strategy(request.param):
        yield request.param


def make_problem(N=16, D=2, H=32, C=2, *, device="cpu", dtype=torch.float64, seed=0, soft=False):
    """Parameters, input and target on ``device``; the values do not depend on the device."""
    generator = torch.Generator().manual_seed(seed)
    params = [
        torch.randn(D, H, generator=generator, dtype=torch.float64) / D**0.5,
        torch.randn(H, generator=generator, dtype=torch.float64) * 0.1,
        torch.randn(H, C, generator=generator, dtype=torch.float64) / H**0.5,
        torch.randn(C, generator=generator, dtype=torch.float64) * 0.1,
    ]
    x = torch.randn(N, D, generator=generator, dtype=torch.float64)
    if soft:
        target = torch.softmax(torch.randn(N, C, generator=generator, dtype=torch.float64), 1).to(device, dtype)
    else:
        target = torch.randint(0, C, (N,), generator=generator).to(device)
    return x.to(device, dtype), target, [p.to(device, dtype) for p in params]


def value_and_grads(fn, inputs, grad_out=None):
    """fn(*inputs) and the gradients of <fn(*inputs), grad_out> w.r.t. every input."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    if grad_out is None:
        grad_out = torch.ones_like(out)
    return out, torch.autograd.grad(out, leaves, grad_out)


# Relative tolerance of assert_matches_twin per dtype: the error is measured against the largest
# entry of what is compared (an absolute atol would let a wrong small gradient pass: loss
# gradients at N=64 are about 1e-3, so atol=1e-7 passed relative errors up to 1e-4).
RELATIVE_TOLERANCES = {torch.float64: 1e-10, torch.float32: 2e-5}


def relative_tolerance(expected: torch.Tensor, rel: float) -> dict[str, float]:
    """assert_close tolerances: rtol ``rel`` and atol ``rel`` times the largest finite |expected|."""
    finite = expected.detach()[torch.isfinite(expected.detach())]
    scale = finite.abs().max().item() if finite.numel() else 0.0
    return {"rtol": rel, "atol": rel * scale}


def assert_matches_twin(manual, twin, inputs, grad_out=None, *, exact=False):
    """Value first, then every gradient, manual against the native-autograd twin.

    Tolerances are relative to the size of what is compared (``RELATIVE_TOLERANCES``).
    """
    value, grads = value_and_grads(manual, inputs, grad_out)
    ref_value, ref_grads = value_and_grads(twin, inputs, grad_out)
    rel = 0.0 if exact else RELATIVE_TOLERANCES[ref_value.dtype]
    torch.testing.assert_close(value, ref_value, **relative_tolerance(ref_value, rel), msg=lambda m: f"value: {m}")
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        tol = relative_tolerance(r, rel)
        torch.testing.assert_close(g, r, **tol, msg=lambda m, i=i: f"gradient of input {i}: {m}")
