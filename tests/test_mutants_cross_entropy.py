"""F.cross_entropy's weight, ignore_index and label_smoothing (kernels.effective_target) against the twin.

``effective_target`` turns the options into a target q such that the loss is -sum_c q log y_hat,
eq. (5'), reduced as it says, plus a term (NaN when no row counts). It is checked directly, on random
logits, against ``F.cross_entropy`` (value and gradient in the logits and in probability targets),
then through ``functional.two_layer_net_loss`` against ``reference.loss`` with every option, on both
loss strategies. Tolerances are relative (tests/planted/twins.py).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from planted.twins import assert_close_relative, assert_matches_twin, problem

from manualgrad import functional, kernels, reference

N, C = 7, 4
TARGETS = ["indices", "some-ignored", "all-ignored", "empty", "probabilities"]
OPTIONS = [*itertools.product([False, True], [0.0, 0.3]), (True, 1.0)]  # (weighted, label_smoothing)
OPTION_IDS = [f"{'weight' if w else 'noweight'}-eps{e}" for w, e in OPTIONS]
IGNORE = 2


def _target(kind, dtype, g):
    if kind == "probabilities":
        return torch.softmax(torch.randn(N, C, generator=g, dtype=torch.float64) * 2, 1).to(dtype) * 1.3
    if kind == "empty":
        return torch.zeros(0, dtype=torch.long)
    t = torch.tensor([0, 2, 1, 3, 2, 1, 0])
    if kind == "all-ignored":
        return torch.full((N,), IGNORE)
    return t if kind == "some-ignored" else torch.where(t == IGNORE, 3, t)


def _loss_from_q(logits, q, reduction, term):
    per_row = -(q * torch.log_softmax(logits, 1)).sum(1)  # (N,)  eq. (5')
    loss = per_row if reduction == "none" else per_row.sum()
    return loss if term is None else loss + term


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("kind", TARGETS)
def test_effective_target_gives_cross_entropy(kind, options, reduction, dtype):
    weighted, eps = options
    g = torch.Generator().manual_seed(11)
    target = _target(kind, dtype, g)
    n = target.shape[0]
    logits = (torch.randn(n, C, generator=g, dtype=torch.float64) * 2).to(dtype).requires_grad_()
    weight = torch.tensor([0.5, 2.0, 1.5, 0.25], dtype=dtype) if weighted else None
    soft = target.is_floating_point()
    target = target.requires_grad_() if soft else target
    ignore = -100 if soft else IGNORE  # F.cross_entropy takes no ignore_index with probabilities
    q, q_reduction, term = kernels.effective_target(
        target, C, dtype, reduction, weight=weight, ignore_index=ignore, label_smoothing=eps
    )
    assert q.shape == (n, C) and q.dtype == dtype
    assert q_reduction == (reduction if soft or reduction != "mean" else "sum")
    assert (term is None) == (soft or reduction != "mean")
    assert term is None or (term.shape == () and term.dtype == dtype)
    loss = _loss_from_q(logits, q, q_reduction if not soft else "none", term)
    if soft:  # probabilities keep their reduction: the mean divides by N
        loss = loss if reduction == "none" else loss.sum() / (n if reduction == "mean" else 1)
    expected = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore, reduction=reduction,
                               label_smoothing=eps)  # fmt: skip
    rtol = 1e-12 if dtype == torch.float64 else 2e-6
    if kind in ("all-ignored", "empty") and reduction == "mean":  # F.cross_entropy's 0/0
        assert loss.dtype == dtype and torch.isnan(loss), f"loss {loss}, expected NaN"
        grads = torch.autograd.grad(loss, logits)
        assert (grads[0] == 0).all(), "0/0 has gradient 0"
        return
    assert_close_relative(loss.detach(), expected.detach(), "loss", rtol)
    if n == 0:
        return
    leaves = [logits, target] if soft else [logits]
    grad_out = torch.linspace(0.5, 1.5, loss.numel(), dtype=dtype).reshape(loss.shape)
    for name, m, r in zip(["logits", "target"], torch.autograd.grad(loss, leaves, grad_out),
                          torch.autograd.grad(expected, leaves, grad_out)):  # fmt: skip
        assert_close_relative(m, r, f"gradient in the {name}", rtol)


def _loss(reduction, **options):
    manual = lambda x, t, *p: functional.two_layer_net_loss(x, t, *p, reduction=reduction, **options)  # noqa: E731
    twin = lambda x, t, *p: reference.loss(x, t, *p, reduction=reduction, **options)  # noqa: E731
    return manual, twin


@pytest.mark.parametrize("in_forward", [False, True], ids=["in_backward", "in_forward"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("kind", ["indices", "some-ignored", "all-ignored", "probabilities"])
def test_loss_options_match_twin(kind, options, reduction, in_forward):
    weighted, eps = options
    x, _, probabilities, params = problem(N=N, H=9, C=C)
    target = probabilities if kind == "probabilities" else _target(kind, torch.float64, None)
    weight = torch.tensor([0.5, 2.0, 1.5, 0.25], dtype=torch.float64) if weighted else None
    ignore = -100 if kind == "probabilities" else IGNORE
    manual, twin = _loss(reduction, weight=weight, ignore_index=ignore, label_smoothing=eps)
    needs = [True, kind == "probabilities", True, True, True, True]
    with functional.loss_gradients_in_forward(in_forward, chunk_rows=3):
        if kind == "all-ignored" and reduction == "mean":
            loss = manual(x, target, *params)
            assert torch.isnan(loss) and torch.isnan(twin(x, target, *params))
            return
        assert_matches_twin(manual, twin, [x, target, *params], needs)


@pytest.mark.parametrize("eps", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_effective_target_on_the_target_device(weighted, eps):
    """q and the term are made where the target is (the meta device: no data, any device mismatch raises)."""
    target = torch.tensor([0, 2, 1], device="meta")
    weight = torch.ones(C, dtype=torch.float64, device="meta") if weighted else None
    q, _, term = kernels.effective_target(
        target, C, torch.float64, "mean", weight=weight, ignore_index=1, label_smoothing=eps
    )
    assert q.device.type == "meta" and q.shape == (3, C) and term.device.type == "meta"


def test_effective_target_one_class_with_ignored_rows():
    """C = 1: an ignored row must not point at a class that does not exist."""
    logits = torch.randn(3, 1, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, -100, 0])
    q, reduction, term = kernels.effective_target(
        target, 1, torch.float64, "mean", weight=None, ignore_index=-100, label_smoothing=0.1
    )
    loss = _loss_from_q(logits, q, reduction, term)
    assert_close_relative(loss.detach(), F.cross_entropy(logits, target, label_smoothing=0.1).detach(), "loss")
