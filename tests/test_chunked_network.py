"""The row-chunked probs and logits paths (``chunked.py``): values and every gradient against the
native-autograd twin, at batch sizes that span several chunks with a full, a ragged and a
one-row last chunk, in both forms of tanh; under double backward, forward AD, vmap and compile;
and the memory they hold for backward."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from conftest import TOLERANCES, assert_matches_twin, make_problem

from manualgrad import bench_loss, bench_memory, functional, modes, reference
from manualgrad.chunked import backward_from_logits_chunked, network_output_chunked
from manualgrad.kernels import backward_from_logits, hidden_activation

CHUNK = 8
# N: exactly 3 chunks, a ragged last chunk of 5 rows, a last chunk of one row, fewer rows than a chunk
SIZES = [3 * CHUNK, 3 * CHUNK + 5, 3 * CHUNK + 1, 5]
FORMS = ["tanh", "sigmoid-form"]
# the chunked forward keeps a1 for backward below modes.KEEP_A1_BELOW_ROWS rows, else backward recomputes it
A1 = ["recompute-a1", "keep-a1"]
ENTRY_POINTS = {
    "probs": (functional.two_layer_net, reference.probs),
    "logits": (functional.two_layer_net_logits, reference.logits),
}


@pytest.fixture(params=[(form, a1) for form in FORMS for a1 in A1], ids=lambda p: f"{p[0]}-{p[1]}")
def chunked(request, monkeypatch):
    """Probs and logits take the chunked path from one row, CHUNK rows per chunk, in the given form of
    tanh, a1 kept by the forward or recomputed by the backward."""
    form, a1 = request.param
    monkeypatch.setattr(modes, "CHUNKED_NETWORK_MIN_ROWS", 1)
    monkeypatch.setattr(modes, "NETWORK_CHUNK_ROWS", CHUNK)
    monkeypatch.setattr(modes, "NETWORK_CHUNK_ROWS_ACCELERATOR", CHUNK)
    monkeypatch.setattr(modes, "SIGMOID_TANH_MIN_ELEMENTS", 0 if form == "sigmoid-form" else 1 << 62)
    monkeypatch.setattr(modes, "KEEP_A1_BELOW_ROWS", 1 << 62 if a1 == "keep-a1" else 0)
    return a1


def _saved_shapes(fn):
    shapes = []

    def pack(tensor):
        shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return out, shapes


# ----------------------------------------------------------------------------------------
# The kernels themselves
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("N", SIZES + [0])
@pytest.mark.parametrize("sigmoid_form", [False, True])
@pytest.mark.parametrize("probabilities", [False, True])
def test_output_kernel_matches_the_twin(N, sigmoid_form, probabilities):
    x, _, params = make_problem(N, D=3, H=32, C=4)
    twin = reference.probs if probabilities else reference.logits
    out = network_output_chunked(
        x, *params, chunk_rows=CHUNK, sigmoid_form=sigmoid_form, column_major_W2=True, probabilities=probabilities
    )
    torch.testing.assert_close(out, twin(x, *params), **TOLERANCES[torch.float64])


@pytest.mark.parametrize("N", SIZES + [0])
@pytest.mark.parametrize("sigmoid_form", [False, True])
@pytest.mark.parametrize("factored", [False, True], ids=["delta1", "factored"])
def test_backward_kernel_matches_the_saved_a1_backward_and_autograd(factored, N, sigmoid_form):
    x, _, (W1, b1, W2, b2) = make_problem(N, D=3, H=32, C=4)
    grad_z2 = torch.randn(N, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    leaves = [t.clone().requires_grad_() for t in (x, W1, b1, W2, b2)]
    expected = torch.autograd.grad(reference.logits(*leaves), leaves, grad_z2)
    with_a1 = backward_from_logits(grad_z2, x, W1, W2, hidden_activation(x, W1, b1), [True] * 5)
    for needs in itertools.product([False, True], repeat=5):
        got = backward_from_logits_chunked(
            grad_z2, x, W1, b1, W2, needs, chunk_rows=CHUNK, sigmoid_form=sigmoid_form, factored=factored
        )
        for name, g, e, a, need in zip(("x", "W1", "b1", "W2", "b2"), got, expected, with_a1, needs):
            if not need:
                assert g is None, name
                continue
            torch.testing.assert_close(g, e, **TOLERANCES[torch.float64], msg=lambda m, n=name: f"d{n}: {m}")
            torch.testing.assert_close(g, a, **TOLERANCES[torch.float64], msg=lambda m, n=name: f"d{n}: {m}")


# ----------------------------------------------------------------------------------------
# Through the public entry points
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("N", SIZES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path", ENTRY_POINTS)
def test_values_and_every_gradient_match_the_twin(chunked, path, dtype, N):
    x, _, params = make_problem(N, D=3, H=32, C=4, dtype=dtype)
    manual, twin = ENTRY_POINTS[path]
    grad_out = torch.randn(N, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(dtype)
    assert_matches_twin(manual, twin, [x, *params], grad_out)


@pytest.mark.parametrize("path", ENTRY_POINTS)
def test_the_chunked_path_saves_nothing_of_size_N_by_H_unless_it_keeps_a1(chunked, path):
    N, H = 3 * CHUNK + 5, 32
    x, _, params = make_problem(N, D=3, H=H, C=4)
    leaves = [p.clone().requires_grad_() for p in params]
    _, shapes = _saved_shapes(lambda: ENTRY_POINTS[path][0](x, *leaves))
    assert shapes  # x, the parameters, y_hat (N, C) for probs, and a1 where it is kept
    assert shapes.count((N, H)) == (chunked == "keep-a1"), shapes


LOSSES_ON_TOP = {  # the benchmark's paths, as PyTorch users write them: (probs, logits, target) -> loss
    "cross_entropy": lambda probs, logits, target: lambda *a: F.cross_entropy(logits(*a), target),
    "nll_of_log_probs": lambda probs, logits, target: lambda *a: F.nll_loss(probs(*a).log(), target),
    "square_mean": lambda probs, logits, target: lambda *a: logits(*a).square().mean(),
}


@pytest.mark.parametrize("loss", LOSSES_ON_TOP)
def test_losses_on_top_against_the_autograd_twin(chunked, loss):
    x, target, params = make_problem(3 * CHUNK + 5, D=3, H=32, C=4)
    manual = LOSSES_ON_TOP[loss](functional.two_layer_net, functional.two_layer_net_logits, target)
    twin = LOSSES_ON_TOP[loss](reference.probs, reference.logits, target)
    assert_matches_twin(manual, twin, [x, *params])


def test_cross_entropy_on_chunked_logits_against_the_numpy_twin(chunked):
    """A third witness without torch: the hand-derived mean cross-entropy and gradients in numpy."""
    x, target, params = make_problem(3 * CHUNK + 1, D=3, H=32, C=4)
    y = F.one_hot(target, 4).double()  # (N, C)
    value, expected = reference.numpy_loss_and_gradients(*(t.numpy() for t in (x, y, *params)))
    leaves = [t.clone().requires_grad_() for t in (x, *params)]
    loss = F.cross_entropy(functional.two_layer_net_logits(*leaves), target)
    grads = torch.autograd.grad(loss, leaves)
    assert abs(loss.item() - value) <= 1e-12 * abs(value)
    for name, g in zip(("x", "W1", "b1", "W2", "b2"), grads):
        torch.testing.assert_close(g, torch.from_numpy(expected[name]), **TOLERANCES[torch.float64])


def test_double_backward_through_the_chunked_path(chunked):
    x, _, params = make_problem(3 * CHUNK + 1, D=3, H=6, C=3)
    inputs = [t.clone().requires_grad_() for t in (x, *params)]
    for manual in (functional.two_layer_net, functional.two_layer_net_logits):
        assert torch.autograd.gradgradcheck(manual, inputs)


def test_forward_ad_through_the_chunked_path(chunked):
    x, _, params = make_problem(3 * CHUNK + 1, D=3, H=32, C=4)
    inputs = (x, *params)
    tangents = tuple(torch.randn_like(t) for t in inputs)
    for path, (manual, twin) in ENTRY_POINTS.items():
        with fwAD.dual_level():
            out = manual(*(fwAD.make_dual(p, t) for p, t in zip(inputs, tangents)))
            tangent = fwAD.unpack_dual(out).tangent
        _, expected = torch.func.jvp(twin, inputs, tangents)
        torch.testing.assert_close(tangent, expected, **TOLERANCES[torch.float64], msg=lambda m, p=path: f"{p}: {m}")


def test_vmap_and_grad_over_the_chunked_entry_points(chunked):
    x, _, params = make_problem(3 * CHUNK + 5, D=3, H=32, C=4)
    batched = x.reshape(1, *x.shape).expand(2, *x.shape) * torch.tensor([1.0, -0.5], dtype=x.dtype).view(2, 1, 1)
    for path, (manual, twin) in ENTRY_POINTS.items():
        got = torch.func.vmap(manual, in_dims=(0, None, None, None, None))(batched, *params)
        torch.testing.assert_close(got, torch.func.vmap(twin, in_dims=(0, None, None, None, None))(batched, *params))
        grad = torch.func.grad(lambda W1, m=manual: m(x, W1, *params[1:]).square().sum())(params[0])
        expected = torch.func.grad(lambda W1, t=twin: t(x, W1, *params[1:]).square().sum())(params[0])
        torch.testing.assert_close(grad, expected, **TOLERANCES[torch.float64], msg=lambda m, p=path: f"{p}: {m}")


def test_compile_takes_one_path_for_every_N(chunked):
    """Under torch.compile the chunked eager path is not taken: one graph serves every N."""
    torch._dynamo.reset()
    compiled = torch.compile(functional.two_layer_net_logits, backend="aot_eager", dynamic=True, fullgraph=True)
    _, _, params = make_problem(4, D=3, H=32, C=4)
    leaves = [p.clone().requires_grad_() for p in params]
    for N in (3 * CHUNK + 1, 3 * CHUNK + 5, 70):
        x = make_problem(N, D=3, H=32, C=4, seed=N)[0]
        out = compiled(x, *leaves)
        grads = torch.autograd.grad(out.square().sum(), leaves)
        expected = torch.autograd.grad(reference.logits(x, *leaves).square().sum(), leaves)
        torch.testing.assert_close(out, reference.logits(x, *leaves), **TOLERANCES[torch.float64])
        for g, e in zip(grads, expected):
            torch.testing.assert_close(g, e, **TOLERANCES[torch.float64])


# ----------------------------------------------------------------------------------------
# Memory at the size, with the default thresholds
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["probs", "logits"])
def test_probs_and_logits_hold_under_a_tenth_of_autograd_at_65536_rows(path):
    model, x, target = bench_loss.make_problem(65536, bench_loss.HIDDEN, "cpu")
    params = list(model.parameters())
    inputs = [x, target, *params]
    fns = bench_memory.network_paths(model, x, target)
    mine = bench_memory.saved_bytes(fns[f"manualgrad {path}"], inputs)
    theirs = bench_memory.saved_bytes(fns[f"autograd {path}"], inputs)
    assert mine[2] <= 0.10 * theirs[2]  # held: what the graph keeps from being freed
    assert theirs[2] >= 65536 * bench_loss.HIDDEN * 4  # autograd holds at least a1 (N, H)


def test_gradcheck_with_batched_gradients_and_forward_ad_through_the_chunked_path(chunked):
    """gradcheck's batched-gradient check vmaps the backward: the chunked kernels (out=) are not
    vmap-able, so a batched upstream gradient takes the saved-a1 formulas on a recomputed a1."""
    x, _, params = make_problem(2 * CHUNK + 1, D=3, H=6, C=3)
    inputs = [t.clone().requires_grad_() for t in (x, *params)]
    for manual in (functional.two_layer_net, functional.two_layer_net_logits):
        assert torch.autograd.gradcheck(manual, inputs, check_batched_grad=True, check_forward_ad=True)


@pytest.mark.parametrize("N", SIZES)
@pytest.mark.parametrize("sigmoid_form", [False, True])
def test_a_kept_a1_gives_what_recomputing_gives(N, sigmoid_form):
    """Below modes.KEEP_A1_BELOW_ROWS the forward writes a1 into an (N, H) tensor and backward reads it."""
    x, _, (W1, b1, W2, b2) = make_problem(N, D=3, H=32, C=4)
    kept = x.new_empty(N, 32)
    z2 = network_output_chunked(
        x, W1, b1, W2, b2, chunk_rows=CHUNK, sigmoid_form=sigmoid_form, column_major_W2=False,
        probabilities=False, a1_out=kept,
    )  # fmt: skip
    torch.testing.assert_close(kept, reference.logits(x, W1, b1, torch.eye(32, dtype=x.dtype), torch.zeros(32)))
    torch.testing.assert_close(z2, reference.logits(x, W1, b1, W2, b2))
    grad_z2 = torch.randn(N, 4, dtype=x.dtype, generator=torch.Generator().manual_seed(3))
    chunks = dict(chunk_rows=CHUNK, sigmoid_form=sigmoid_form, factored=False)
    from_kept = backward_from_logits_chunked(grad_z2, x, W1, b1, W2, (True,) * 5, **chunks, a1=kept)
    recomputed = backward_from_logits_chunked(grad_z2, x, W1, b1, W2, (True,) * 5, **chunks)
    for got, expected in zip(from_kept, recomputed):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def _saturated_problem(N, dtype):
    """x, class-0 targets and parameters whose every row gives class 0 a margin of about 20: in
    float32 y_hat_0 rounds to 1 and y_hat_0 - 1 to 0, in float64 neither does."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(N, 2, generator=g, dtype=torch.float64)
    W1, b1 = torch.randn(2, 16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    W2 = torch.randn(16, 2, generator=g, dtype=torch.float64) * 0.05
    b2 = torch.tensor([20.0, 0.0], dtype=torch.float64)
    return [t.to(dtype) for t in (x, W1, b1, W2, b2)], torch.zeros(N, dtype=torch.long)


SATURATED_STEPS = {
    "loss": (1100, lambda m, x, t, *p: m.loss(x, t, *p, reduction="sum")),
    "nll-of-log-probs": (1100, lambda m, x, t, *p: F.nll_loss(m.probs(x, *p).log(), t, reduction="sum")),
}


class _Manual:
    loss = staticmethod(lambda x, t, *p, reduction: functional.two_layer_net_loss(x, t, *p, reduction=reduction))
    probs = staticmethod(functional.two_layer_net)


class _Twin:
    loss = staticmethod(lambda x, t, *p, reduction: reference.loss(x, t, *p, reduction=reduction))
    probs = staticmethod(reference.probs)


@pytest.mark.parametrize("step", SATURATED_STEPS)
def test_saturated_rows_keep_their_gradient_behind_the_softmax(step):
    """Every row saturated on class 0, not the last: the entry y_hat_0 - 1 of delta2 is 0 in float32,
    and the row's gradient lives only in its other entries (docs/derivation.md, eq. (19)-(21)). The
    float32 gradients match the float64 truth to 1e-3 of each tensor's largest value, where autograd's
    own float32 dW2[:, 0] is 0 (the control)."""
    N, fn = SATURATED_STEPS[step]
    (leaves32, t), (leaves64, _) = _saturated_problem(N, torch.float32), _saturated_problem(N, torch.float64)
    leaves32, leaves64 = [p.requires_grad_() for p in leaves32], [p.requires_grad_() for p in leaves64]
    grads = torch.autograd.grad(fn(_Manual, leaves32[0], t, *leaves32[1:]), leaves32)
    truth = torch.autograd.grad(fn(_Twin, leaves64[0], t, *leaves64[1:]), leaves64)
    twin32 = torch.autograd.grad(fn(_Twin, leaves32[0], t, *leaves32[1:]), leaves32)
    for name, got, expected in zip(("x", "W1", "b1", "W2", "b2"), grads, truth):
        scale = float(expected.abs().max())
        assert scale > 0, name
        torch.testing.assert_close(
            got.double(), expected, rtol=1e-3, atol=1e-3 * scale, msg=lambda m, n=name: f"{n}: {m}"
        )
    assert bool((twin32[3][:, 0] == 0).all()), "the control: autograd's float32 loses dW2[:, 0]"
