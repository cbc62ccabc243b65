"""The last of the wiring: what the loss's backward and jvp pass to the kernels, and the rare inputs.

As in test_mutants_autograd.py, choices that change no value beyond rounding (in place or not,
recomputing a1) are asserted where they are made, with spies on the kernels the wiring calls;
the rest is compared with the native twin or with the aten op a kernel stands for.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from planted.twins import assert_close_relative, problem

from manualgrad import autograd, functional, kernels, modes, reference


def _spy(monkeypatch, module, name):
    """Replace module.name by a wrapper that records each call's (positional, keyword) arguments."""
    calls, original = [], getattr(module, name)

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.parametrize("recorded", [False, True], ids=["plain", "create_graph"])
def test_loss_backward_in_place_only_where_not_recorded(recorded, monkeypatch):
    grads_z2 = _spy(monkeypatch, autograd, "loss_grad_logits")
    grads = _spy(monkeypatch, autograd, "backward_from_logits")
    x, target, _, params = problem(N=6, H=5)
    leaves = [t.clone().requires_grad_() for t in [x, *params]]
    loss = functional.two_layer_net_loss(leaves[0], target, *leaves[1:], "none")  # residuals saved: no precompute
    torch.autograd.grad(loss.sum(), leaves, create_graph=recorded)
    assert [kw for _, kw in grads_z2] == [dict(in_place=not recorded)]
    assert [kw for _, kw in grads] == [dict(in_place=not recorded)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_loss_jvp_out_of_place_with_ones_like_x(dtype, reduction, monkeypatch):
    forwards = _spy(monkeypatch, autograd, "_loss_forward")
    grads_z2 = _spy(monkeypatch, autograd, "loss_grad_logits")
    x, target, _, params = problem(N=6, H=5, dtype=dtype)
    tx = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, tx)
        tangent = fwAD.unpack_dual(functional.two_layer_net_loss(dual, target, *params, reduction)).tangent
    assert forwards and all(kw == dict(in_place=False) for _, kw in forwards)  # under forward AD: recorded
    (args, kw), = grads_z2  # fmt: skip
    ones = args[3]
    assert kw == dict(in_place=False)
    assert ones.dtype == dtype and ones.device == x.device and torch.equal(ones, torch.ones(6, dtype=dtype))
    assert tangent.dtype == dtype
    with fwAD.dual_level():  # the twin in float64 on the same (rounded) inputs
        dual = fwAD.make_dual(x.double(), tx.double())
        twin = fwAD.unpack_dual(reference.loss(dual, target, *[p.double() for p in params], reduction)).tangent
    rtol = {torch.float64: None, torch.float32: 1e-5, torch.bfloat16: 5e-2}[dtype]
    assert_close_relative(tangent.double(), twin, "loss tangent", rtol=rtol)


@pytest.mark.parametrize("entry", ["probs", "logits"])
def test_jvp_reuses_the_saved_a1(entry, monkeypatch):
    x, _, _, params = problem(N=6, H=5)
    manual = functional.two_layer_net if entry == "probs" else functional.two_layer_net_logits
    recomputed = _spy(monkeypatch, autograd, "hidden_activation")
    with fwAD.dual_level():
        out = manual(fwAD.make_dual(x, torch.randn_like(x)), *params)
        assert fwAD.unpack_dual(out).tangent is not None
    assert recomputed == []  # a1 was kept by the (unchunked) forward: the jvp does not recompute it


def test_device_type_names_every_device():
    assert modes.device_type(torch.zeros(1)) == "cpu"
    assert modes.device_type(torch.zeros(1, device="meta")) == "meta"


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("N, C", [(3, 1), (7, 4), (5, 3), (11, 5)])
def test_class_indices_loss_is_nll_loss_to_the_bit(N, C, reduction):
    """Class indices: the one nll_loss op (the docstring's contract), not gather-and-scale."""
    g = torch.Generator().manual_seed(N * C)
    for dtype in (torch.float32, torch.float64):
        log_probs = torch.log_softmax(torch.randn(N, C, generator=g, dtype=dtype) * 3, 1)
        target = torch.randint(0, C, (N,), generator=g)
        got = kernels.cross_entropy_of_log_probs(log_probs, target, reduction)
        assert torch.equal(got, F.nll_loss(log_probs, target, reduction=reduction))


def test_no_label_is_ignored_by_the_kernel():
    log_probs = torch.log_softmax(torch.randn(3, 4, dtype=torch.float64), 1)
    with pytest.raises((IndexError, RuntimeError), match="out of bounds"):
        kernels.cross_entropy_of_log_probs(log_probs, torch.tensor([0, -100, 1]), "mean")


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_no_classes(reduction):
    """C = 0 (an empty batch): F.cross_entropy's values, NaN for the mean (0/0)."""
    log_probs = torch.zeros(0, 0, dtype=torch.float64)
    target = torch.zeros(0, dtype=torch.int64)
    got = kernels.cross_entropy_of_log_probs(log_probs, target, reduction)
    want = F.cross_entropy(log_probs, target, reduction=reduction)
    assert got.shape == want.shape and torch.equal(got.isnan(), want.isnan())


def test_loss_jvp_stays_on_the_device_of_x():
    """The meta device stands for an accelerator: the jvp's ones must be made on x's device."""
    x, target, _, params = problem(N=6, H=5)
    x, target, params = x.to("meta"), target.to("meta"), [p.to("meta") for p in params]
    with fwAD.dual_level():
        loss = functional.two_layer_net_loss(fwAD.make_dual(x, torch.randn_like(x)), target, *params)
        tangent = fwAD.unpack_dual(loss).tangent
    assert tangent.device.type == "meta" and tangent.shape == () and tangent.dtype == torch.float64
