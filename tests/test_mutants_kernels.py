"""The fast layer (kernels.py through autograd.py and functional.py) against the native-autograd twin.

Sizes are picked to reach every path: the loss with gradients in the forward and in backward,
one chunk and several with a one-row last chunk, the sigmoid form of tanh (N*H >= 4096), the
column-major W2 (N >= 16), double backward past that switch, forward-mode AD in each input,
autocast, unbatched input and empty batches. Tolerances are relative (tests/planted/twins.py).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from planted.twins import assert_close_relative, assert_matches_twin, grads_of, problem

from manualgrad import functional, kernels, reference

NEEDS = [n for n in itertools.product([False, True], repeat=5) if any(n)]
NEED_IDS = ["".join("1" if b else "0" for b in n) for n in NEEDS]
# (N, H, chunk_rows): one chunk; several with a one-row last chunk; sigmoid form (N*H >= 4096), chunked and not
LOSS_SIZES = [(7, 5, None), (7, 5, 3), (9, 512, 4), (40, 120, None), (40, 120, 13)]


def loss_fn(reduction):
    manual = lambda x, t, *p: functional.two_layer_net_loss(x, t, *p, reduction=reduction)  # noqa: E731
    twin = lambda x, t, *p: reference.loss(x, t, *p, reduction=reduction)  # noqa: E731
    return manual, twin


@pytest.mark.parametrize("size", LOSS_SIZES, ids=lambda s: "N{}-H{}-chunk{}".format(*s))
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("in_forward", [True, False], ids=["in_forward", "in_backward"])
def test_loss_paths_match_twin(in_forward, reduction, soft, size):
    N, H, rows = size
    x, indices, probabilities, params = problem(N=N, H=H)
    target = probabilities if soft else indices
    manual, twin = loss_fn(reduction)
    with functional.loss_gradients_in_forward(in_forward, chunk_rows=rows):
        assert_matches_twin(manual, twin, [x, target, *params], [True, False, True, True, True, True])


@pytest.mark.parametrize("needs", NEEDS, ids=NEED_IDS)
@pytest.mark.parametrize("in_forward", [True, False], ids=["in_forward", "in_backward"])
def test_loss_each_subset_of_gradients_matches_twin(in_forward, needs):
    x, indices, _, params = problem(N=9, H=512)
    manual, twin = loss_fn("mean")
    with functional.loss_gradients_in_forward(in_forward, chunk_rows=4):
        assert_matches_twin(manual, twin, [x, indices, *params], [needs[0], False, *needs[1:]])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("N, H", [(7, 5), (40, 120)])
def test_loss_probability_target_gradient_matches_twin(reduction, N, H):
    x, _, probabilities, params = problem(N=N, H=H)
    manual, twin = loss_fn(reduction)
    for needs in ([True] * 6, [False, True, False, False, False, False]):
        assert_matches_twin(manual, twin, [x, probabilities * 1.5, *params], needs)


@pytest.mark.parametrize("needs", NEEDS, ids=NEED_IDS)
@pytest.mark.parametrize("entry", ["probs", "logits"])
@pytest.mark.parametrize("N", [7, 40])
def test_network_each_subset_of_gradients_matches_twin(N, entry, needs):
    x, _, _, params = problem(N=N, H=120)
    manual = functional.two_layer_net if entry == "probs" else functional.two_layer_net_logits
    twin = reference.probs if entry == "probs" else reference.logits
    assert_matches_twin(manual, twin, [x, *params], list(needs))


def _second_derivatives(fn, inputs, needs):
    _, grads, leaves = grads_of(fn, inputs, needs, create_graph=True)
    g = torch.Generator().manual_seed(1)
    vs = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in grads]
    inner = sum((gr * v).sum() for gr, v in zip(grads, vs))
    return torch.autograd.grad(inner, [t for t in leaves if t.requires_grad], allow_unused=True)


@pytest.mark.parametrize("entry", ["probs", "logits", "loss-mean", "loss-sum", "loss-none", "loss-soft"])
@pytest.mark.parametrize("N, H", [(5, 7), (40, 120)], ids=["small", "sigmoid-form"])
def test_second_derivatives_match_twin(entry, N, H):
    x, indices, probabilities, params = problem(N=N, H=H)
    if entry in ("probs", "logits"):
        manual = functional.two_layer_net if entry == "probs" else functional.two_layer_net_logits
        twin = reference.probs if entry == "probs" else reference.logits
        inputs, needs = [x, *params], [True] * 5
    else:
        manual, twin = loss_fn("mean" if entry == "loss-soft" else entry[5:])
        target = probabilities if entry == "loss-soft" else indices
        inputs, needs = [x, target, *params], [True, entry == "loss-soft", True, True, True, True]
    for i, (m, r) in enumerate(
        zip(_second_derivatives(manual, inputs, needs), _second_derivatives(twin, inputs, needs))
    ):
        assert_close_relative(m, r, f"{entry} second derivative {i}")


@pytest.mark.parametrize("wrt", ["x", "target", "W1", "b1", "W2", "b2", "all"])
@pytest.mark.parametrize("entry", ["probs", "logits", "loss-mean", "loss-sum", "loss-none"])
@pytest.mark.parametrize("N, H", [(5, 7), (40, 120)], ids=["small", "sigmoid-form"])
def test_forward_mode_matches_twin(entry, wrt, N, H):
    x, _, probabilities, params = problem(N=N, H=H)
    if entry in ("probs", "logits"):
        if wrt == "target":
            pytest.skip("no target")
        manual = functional.two_layer_net if entry == "probs" else functional.two_layer_net_logits
        twin = reference.probs if entry == "probs" else reference.logits
        names, inputs = ["x", "W1", "b1", "W2", "b2"], [x, *params]
    else:
        manual, twin = loss_fn(entry[5:])
        names, inputs = ["x", "target", "W1", "b1", "W2", "b2"], [x, probabilities, *params]
    g = torch.Generator().manual_seed(2)
    tangents = [
        torch.randn(t.shape, generator=g, dtype=t.dtype) if wrt in (n, "all") else torch.zeros_like(t)
        for n, t in zip(names, inputs)
    ]
    value, tangent = torch.func.jvp(manual, tuple(inputs), tuple(tangents))
    ref_value, ref_tangent = torch.func.jvp(twin, tuple(inputs), tuple(tangents))
    assert_close_relative(value, ref_value, "value")
    assert_close_relative(tangent, ref_tangent, f"tangent in {wrt}")
    # the same through torch.autograd.forward_ad, where only the tangents given are set
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        duals = [fwAD.make_dual(t, d) if wrt in (n, "all") else t for n, t, d in zip(names, inputs, tangents)]
        out = fwAD.unpack_dual(manual(*duals)).tangent
    assert_close_relative(out, ref_tangent, f"forward_ad tangent in {wrt}")


@pytest.mark.parametrize("entry", ["probs", "logits", "loss-mean", "loss-sum", "loss-soft"])
@pytest.mark.parametrize("size", ["small", "large"])
def test_autocast_computes_in_parameter_precision_like_the_float32_twin(entry, size):
    """Inside a bfloat16 autocast region, forward and backward match the twin to float32 precision.

    The twin runs in float64 on the same float32 values; bfloat16 anywhere gives errors of 5e-4 to 1e-2.
    The loss's large size (300 rows) computes its gradients in the forward, the network's (40) uses
    the column-major W2.
    """
    N = 7 if size == "small" else 300 if entry.startswith("loss") else 40
    x, indices, probabilities, params = problem(N=N, H=64, dtype=torch.float32)
    if entry in ("probs", "logits"):
        manual = functional.two_layer_net if entry == "probs" else functional.two_layer_net_logits
        twin = reference.probs if entry == "probs" else reference.logits
        inputs = [x, *params]
    else:
        manual, twin = loss_fn("mean" if entry == "loss-soft" else entry[5:])
        inputs = [x, probabilities if entry == "loss-soft" else indices, *params]
    needs = [t.is_floating_point() for t in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value, grads, _ = grads_of(manual, inputs, needs)
    ref_value, ref_grads, _ = grads_of(twin, [t.double() if t.is_floating_point() else t for t in inputs], needs)
    assert_close_relative(value.double(), ref_value, "value", rtol=1e-4)
    for i, (m, r) in enumerate(zip(grads, ref_grads)):
        assert m.dtype == torch.float32, f"gradient {i} dtype {m.dtype}"
        assert_close_relative(m.double(), r, f"gradient {i}", rtol=1e-4)


@pytest.mark.parametrize("entry", ["probs", "logits", "loss-mean", "loss-none", "loss-soft"])
def test_unbatched_sample_matches_twin(entry):
    x, indices, probabilities, params = problem(N=1, H=9)
    if entry in ("probs", "logits"):
        manual = functional.two_layer_net if entry == "probs" else functional.two_layer_net_logits
        twin = reference.probs if entry == "probs" else reference.logits
        inputs = [x[0], *params]
    else:
        manual, twin = loss_fn(entry[5:] if entry != "loss-soft" else "mean")
        inputs = [x[0], probabilities[0] if entry == "loss-soft" else indices[0], *params]
    assert_matches_twin(manual, twin, inputs, [t.is_floating_point() for t in inputs])


@pytest.mark.parametrize("in_forward", [True, False], ids=["in_forward", "in_backward"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch_matches_cross_entropy(in_forward, reduction):
    x, indices, _, params = problem(N=0)
    leaves = [t.requires_grad_() for t in [x, *params]]
    with functional.loss_gradients_in_forward(in_forward):
        loss = functional.two_layer_net_loss(leaves[0], indices, *leaves[1:], reduction=reduction)
    expected = reference.loss(x.detach(), indices, *[p.detach() for p in params], reduction=reduction)
    torch.testing.assert_close(loss.detach(), expected, equal_nan=True)
    grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
    for g, t in zip(grads, leaves):
        assert g is None or (g.shape == t.shape and (g == 0).all() or torch.isnan(g).all())


# ---- the kernels called directly: exact formulas, the out= buffer, layouts, devices ------------------

HIDDEN_FORMS = [  # (sigmoid_form, doubled, out given, in_place)
    (s, d, o, i) for s, d, o, i in itertools.product([False, True], repeat=4) if not (d and not s)
]


@pytest.mark.parametrize("form", HIDDEN_FORMS, ids=lambda f: "sigmoid{:d}-doubled{:d}-out{:d}-inplace{:d}".format(*f))
def test_hidden_activation_fast_formula_and_buffer(form):
    """Each form evaluates exactly its formula of eq. (2) (bit for bit, float32) and writes into ``out``."""
    sigmoid_form, doubled, with_out, in_place = form
    x, _, _, (W1, b1, _, _) = problem(N=9, H=33, dtype=torch.float32, scale=2.0)
    out = torch.full((9, 33), float("nan")) if with_out else None
    W1_a, b1_a = (W1 * 2, b1 * 2) if doubled else (W1, b1)
    a1 = kernels.hidden_activation_fast(
        x, W1_a, b1_a, out, sigmoid_form=sigmoid_form, in_place=in_place, doubled=doubled
    )
    z1 = torch.addmm(b1, x, W1)
    expected = torch.sigmoid(2 * z1) * 2 - 1 if sigmoid_form else torch.tanh(z1)
    assert torch.equal(a1, expected), f"max difference {(a1 - expected).abs().max():.3e}"
    assert_close_relative(a1.double(), torch.tanh(z1.double()), "against tanh", rtol=1e-6)
    if with_out:
        assert a1.data_ptr() == out.data_ptr() and a1.shape == out.shape, "a1 must be written into out"


@pytest.mark.parametrize("sigmoid_form", [False, True], ids=["tanh", "sigmoid"])
def test_hidden_activation_fast_recorded_is_differentiable(sigmoid_form):
    x, _, _, params = problem(N=5, H=7)
    W1, b1 = (p.clone().requires_grad_() for p in params[:2])
    a1 = kernels.hidden_activation_fast(x, W1, b1, sigmoid_form=sigmoid_form, in_place=False)
    (g,) = torch.autograd.grad(a1.sum(), W1)
    W1_ref = params[0].clone().requires_grad_()
    (r,) = torch.autograd.grad(torch.tanh(x @ W1_ref + params[1]).sum(), W1_ref)
    assert_close_relative(g, r, "dW1 through the recorded form")


def test_column_major_layout_and_values():
    W2 = torch.arange(12.0).reshape(4, 3)
    cols = kernels.column_major(W2)
    assert cols.stride() == (1, 4) and torch.equal(cols, W2)
    assert kernels.column_major(cols) is cols, "already column-major: no copy"
    assert kernels.column_major(W2.T.contiguous().T) is not W2


def test_target_distribution_on_the_target_device():
    target = torch.tensor([2, 0, 1], device="meta")
    y = kernels.target_distribution(target, 4, torch.float32)
    assert y.device.type == "meta" and y.shape == (3, 4) and y.dtype == torch.float32
    y = kernels.target_distribution(torch.tensor([2, 0, 1]), 4, torch.float64)
    assert torch.equal(y, torch.eye(4, dtype=torch.float64)[[2, 0, 1]])


def test_backward_from_logits_default_is_recordable():
    """Without ``in_place`` the formulas are out of place: they can be differentiated again, a1 included."""
    x, _, _, params = problem(N=6, H=5)
    leaves = [t.clone().requires_grad_() for t in [x, *params]]
    x_, W1, b1, W2, _ = leaves
    a1 = kernels.hidden_activation(x_, W1, b1)  # recorded: double backward recomputes a1 so
    grad_z2 = torch.randn(6, 4, dtype=x.dtype, generator=torch.Generator().manual_seed(7)).requires_grad_()
    grads = kernels.backward_from_logits(grad_z2, x_, W1, W2, a1, [True] * 5)
    second = torch.autograd.grad(sum(g.sum() for g in grads), [grad_z2, *leaves[:4]])
    twin_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    grad_z2_ref = grad_z2.detach().clone().requires_grad_()
    ref = torch.autograd.grad(reference.logits(*twin_leaves), twin_leaves, grad_z2_ref, create_graph=True)
    second_ref = torch.autograd.grad(sum(g.sum() for g in ref), [grad_z2_ref, *twin_leaves[:4]])
    for name, m, r in zip(["delta2", "x", "W1", "b1", "W2"], second, second_ref):
        assert_close_relative(m, r, f"d(sum of gradients)/d {name}")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_grad_logits_default_is_recordable(reduction):
    """Without ``in_place`` delta2 is out of place: it can be differentiated again (double backward)."""
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, 1, 1, 2])
    grad_loss = torch.tensor(1.5, dtype=torch.float64) if reduction != "none" else torch.linspace(0.5, 1.5, 5)
    delta2 = kernels.loss_grad_logits(torch.log_softmax(logits, 1), target, reduction, grad_loss.double())
    (second,) = torch.autograd.grad((delta2 * delta2).sum(), logits)
    loss = torch.nn.functional.cross_entropy(logits, target, reduction=reduction)
    (ref,) = torch.autograd.grad(loss, logits, grad_loss.double(), create_graph=True)
    assert_close_relative(delta2.detach(), ref.detach(), "delta2")
    (second_ref,) = torch.autograd.grad((ref * ref).sum(), logits)
    assert_close_relative(second, second_ref, "d|delta2|^2/dz2")


def test_reduce_loss_and_mean_scale():
    per_row = torch.tensor([1.0, 2.0, 6.0], dtype=torch.float64)
    assert kernels.reduce_loss(per_row, "mean") == 3.0 and kernels.reduce_loss(per_row, "sum") == 9.0
    assert kernels.reduce_loss(per_row, "none") is per_row
    assert torch.isnan(kernels.reduce_loss(per_row, "mean", 0)), "no classes: 0/0 as F.cross_entropy"
    assert torch.isnan(kernels.reduce_loss(per_row[:0], "mean", 3)), "empty batch: 0/0"
    assert kernels.mean_scale(4) == 0.25 and kernels.mean_scale(4, 2) == 0.25
