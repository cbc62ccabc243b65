"""The lean Functions of plain eager mode (eager.py): taken exactly where they may serve, equal to
the native-autograd twin there, and handing every other mode of PyTorch to the general Functions."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from conftest import DEVICES, DTYPES, assert_matches_twin, make_problem, value_and_grads
from torch.utils._python_dispatch import TorchDispatchMode

from manualgrad import eager, functional, modes, reference

LEAN = {
    "probs": (functional.two_layer_net, eager.EagerProbsFunction),
    "logits": (functional.two_layer_net_logits, eager.EagerLogitsFunction),
}
TWINS = {"probs": reference.probs, "logits": reference.logits}
# 1 and 5 rows: dW2 in W2's layout and tanh itself; 40: dW2 transposed, tanh in the sigmoid form
SIZES = [1, 2, 5, 40]  # 1: the sums over rows are the row itself (modes.EagerPlan.one_row); 2: they are not


@pytest.fixture
def taken(monkeypatch):
    """The lean Functions that served each call, in order."""
    calls: list[type] = []
    network, loss = eager.apply_network, eager.apply_loss

    def spy_network(function, *args):
        calls.append(function)
        return network(function, *args)

    def spy_loss(*args):
        calls.append(eager.EagerLossFunction)
        return loss(*args)

    monkeypatch.setattr(eager, "apply_network", spy_network)
    monkeypatch.setattr(eager, "apply_loss", spy_loss)
    return calls


def _loss(x, target, *params, **options):
    return functional.two_layer_net_loss(x, target, *params, **options)


# ---------------------------------------------------------------------------------------
# Where the lean Functions serve, and where they must not
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", LEAN)
def test_plain_eager_small_batches_take_the_lean_network(taken, path):
    entry, function = LEAN[path]
    x, _, params = make_problem(5)
    entry(x, *params)
    assert taken == [function]


def test_plain_eager_small_batches_take_the_lean_loss(taken):
    x, target, params = make_problem(5)
    _loss(x, target, *params)
    _loss(x, target, *params, reduction="sum")
    assert taken == [eager.EagerLossFunction] * 2


NOT_LEAN = {
    "unbatched x": lambda x, t, p: functional.two_layer_net_logits(x[0], *p),
    "from CHUNKED_NETWORK_MIN_ROWS rows": lambda x, t, p: functional.two_layer_net_logits(
        x[:1].expand(modes.CHUNKED_NETWORK_MIN_ROWS, -1), *p
    ),
    "loss from PRECOMPUTE_MIN_ROWS rows": lambda x, t, p: _loss(
        x[:1].expand(modes.PRECOMPUTE_MIN_ROWS, -1), t[:1].expand(modes.PRECOMPUTE_MIN_ROWS), *p
    ),
    "reduction none": lambda x, t, p: _loss(x, t, *p, reduction="none"),
    "weight": lambda x, t, p: _loss(x, t, *p, weight=torch.ones(2, dtype=x.dtype)),
    "label_smoothing": lambda x, t, p: _loss(x, t, *p, label_smoothing=0.1),
    "ignore_index in use": lambda x, t, p: _loss(
        x, t.masked_fill(t == 0, 1).index_fill(0, torch.tensor([0]), 0), *p, ignore_index=0
    ),
    "probability target": lambda x, t, p: _loss(x, torch.softmax(torch.randn(len(t), 2, dtype=x.dtype), 1), *p),
    "autocast": lambda x, t, p: _under(
        torch.autocast("cpu", dtype=torch.bfloat16), functional.two_layer_net_logits, x, p
    ),
    "forward AD level": lambda x, t, p: _under(fwAD.dual_level(), functional.two_layer_net_logits, x, p),
    "dispatch mode": lambda x, t, p: _under(PassThrough(), functional.two_layer_net_logits, x, p),
    "vmap": lambda x, t, p: torch.func.vmap(lambda row: functional.two_layer_net_logits(row, *p))(x),
    "loss strategy set": lambda x, t, p: _under(functional.loss_gradients_in_forward(False), _loss, x, p, t),
    "loss in bfloat16": lambda x, t, p: _loss(x.bfloat16(), t, *(q.bfloat16() for q in p)),
    "loss in float16": lambda x, t, p: _loss(x.half(), t, *(q.half() for q in p)),
}


class PassThrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _under(context, entry, x, params, *first):
    with context:
        return entry(x, *first, *params)


@pytest.mark.parametrize("case", NOT_LEAN)
def test_every_other_mode_takes_the_general_functions(taken, case):
    x, target, params = make_problem(5, dtype=torch.float32)
    NOT_LEAN[case](x, target, params)
    assert taken == []


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_for_xs_device_takes_the_general_functions(taken, device):
    """Autocast on x's own device (CPU or CUDA): inside it the general Functions serve."""
    x, _, params = make_problem(5, dtype=torch.float32)
    x, params = x.to(device), [p.to(device) for p in params]
    with torch.autocast(device, dtype=torch.bfloat16):
        out = functional.two_layer_net_logits(x, *params)
    assert taken == [] and out.dtype == torch.float32
    functional.two_layer_net_logits(x, *params)
    assert taken == [eager.EagerLogitsFunction]


def test_autocast_for_another_device_also_takes_the_general_functions(taken):
    """Plain eager mode asks whether autocast is on for CPU, CUDA and most devices at once: a CPU call
    inside a CUDA autocast region takes the general Functions, which compute as the lean ones do."""
    x, _, params = make_problem(5, dtype=torch.float32)
    previous = torch.is_autocast_enabled("cuda")
    torch.set_autocast_enabled("cuda", True)
    try:
        out = functional.two_layer_net_logits(x, *params)
    finally:
        torch.set_autocast_enabled("cuda", previous)
    assert taken == []
    torch.testing.assert_close(out, reference.logits(x, *params))


def test_compiled_code_takes_the_general_functions(taken):
    x, _, params = make_problem(5, dtype=torch.float32)
    # no fullgraph: mutmut's trampolines break graphs (test_tracing keeps the one-graph checks)
    compiled = torch.compile(functional.two_layer_net_logits, backend="eager")
    torch.testing.assert_close(compiled(x, *params), reference.logits(x, *params))
    assert taken == []


# ---------------------------------------------------------------------------------------
# Equal to the twin: value, then every gradient
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", SIZES)
@pytest.mark.parametrize("path", LEAN)
def test_lean_network_matches_twin(taken, path, N, dtype):
    x, _, params = make_problem(N, D=3, H=300, C=4, dtype=dtype)
    upstream = torch.randn(N, 4, dtype=dtype, generator=torch.Generator().manual_seed(1))
    assert_matches_twin(LEAN[path][0], TWINS[path], [x, *params], upstream)
    assert taken == [LEAN[path][1]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", SIZES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("upstream", [1.0, -2.5])
def test_lean_loss_matches_twin(taken, reduction, N, dtype, upstream):
    x, target, params = make_problem(N, D=3, H=300, C=4, dtype=dtype)
    assert_matches_twin(
        lambda x, *p: _loss(x, target, *p, reduction=reduction),
        lambda x, *p: reference.loss(x, target, *p, reduction=reduction),
        [x, *params],
        torch.tensor(upstream, dtype=dtype),
    )
    assert taken == [eager.EagerLossFunction]


def test_lean_loss_of_int32_labels_matches_twin(taken):
    x, target, params = make_problem(6, C=3)
    assert_matches_twin(
        lambda x, *p: _loss(x, target.int(), *p), lambda x, *p: reference.loss(x, target, *p), [x, *params]
    )
    assert taken == [eager.EagerLossFunction]


IGNORED = {"one row": [0], "two rows": [1, 3], "every row": [0, 1, 2, 3, 4]}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("ignored", IGNORED)
def test_lean_loss_leaves_out_rows_labelled_minus_100(taken, ignored, reduction):
    """F.cross_entropy's default ignore_index: those rows count for nothing, and the mean divides
    by the rows that count (every row ignored: NaN, F.cross_entropy's 0/0, and zero gradients)."""
    x, target, params = make_problem(5, C=3)
    target = target.index_fill(0, torch.tensor(IGNORED[ignored]), -100)
    mine, mine_grads = value_and_grads(lambda x, *p: _loss(x, target, *p, reduction=reduction), [x, *params])
    assert taken == [eager.EagerLossFunction]
    twin, twin_grads = value_and_grads(lambda x, *p: reference.loss(x, target, *p, reduction=reduction), [x, *params])
    torch.testing.assert_close(mine, twin, equal_nan=True)
    for g, r in zip(mine_grads, twin_grads):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("label", [2, -1, -101], ids=["C", "minus one", "minus 101"])
def test_lean_loss_refuses_a_label_out_of_range_and_changes_nothing(taken, label):
    """nll_loss checks the range inside the lean forward; the error is the general path's ValueError,
    naming the label, and neither a parameter nor a .grad has changed."""
    x, target, params = make_problem(5, C=2)
    leaves = [p.requires_grad_() for p in params]
    _loss(x, target, *leaves).backward()
    before = [(p.clone(), p.grad.clone()) for p in leaves]
    with pytest.raises(ValueError, match=f"target holds class index {label} at position 3; ") as info:
        _loss(x, target.index_fill(0, torch.tensor([3]), label), *leaves)
    assert info.value.__context__ is None, "nll_loss's IndexError shows in the traceback"
    assert taken == [eager.EagerLossFunction] * 2
    for p, (value, grad) in zip(leaves, before):
        assert torch.equal(p, value) and torch.equal(p.grad, grad)


def test_a_uint64_label_that_wraps_onto_minus_100_is_refused(taken):
    """.long() maps 2**64 - 100 onto -100, which nll_loss would ignore: uint64 labels take the general path."""
    x, target, params = make_problem(4, C=3)
    big = torch.tensor([0, 1, 2**64 - 100, 2], dtype=torch.uint64)
    with pytest.raises(ValueError, match=f"target holds class index {2**64 - 100} at position 2; "):
        _loss(x, big, *params)
    assert taken == []


def test_lean_loss_recorded_backward_leaves_out_ignored_rows(taken):
    """The general backward that create_graph takes: its gradients, and their gradients, as the twin's."""
    x, target, params = make_problem(5, H=8)
    target = target.index_fill(0, torch.tensor([1, 3]), -100)

    def second_order(loss, leaves):
        grads = torch.autograd.grad(loss(x, *leaves), leaves, create_graph=True)
        return grads, torch.autograd.grad(sum(g.square().sum() for g in grads), leaves)

    mine = second_order(lambda x, *p: _loss(x, target, *p), [p.detach().requires_grad_() for p in params])
    assert taken == [eager.EagerLossFunction]
    twin = second_order(lambda x, *p: reference.loss(x, target, *p), [p.detach().requires_grad_() for p in params])
    for m, r in zip((*mine[0], *mine[1]), (*twin[0], *twin[1])):
        torch.testing.assert_close(m, r, rtol=1e-12, atol=1e-14)  # float64 throughout: 1/3 in float32 would show


def test_lean_loss_batched_backward_leaves_out_ignored_rows(taken):
    x, target, params = make_problem(5, H=8)
    target = target.index_fill(0, torch.tensor([1, 3]), -100)
    inputs = [t.detach().requires_grad_() for t in (x, *params)]
    assert torch.autograd.gradcheck(lambda x, *p: _loss(x, target, *p), inputs, check_batched_grad=True)
    assert taken and set(taken) == {eager.EagerLossFunction}


@pytest.mark.parametrize("upstream", [float("inf"), float("nan")])
def test_a_non_finite_upstream_gradient_gives_what_autograd_gives(taken, upstream):
    """The lean loss applies the upstream gradient first, with autograd's own kernels for
    F.cross_entropy, so that inf and NaN land where autograd puts them."""
    x, target, params = make_problem(4)
    grad_out = torch.tensor(upstream, dtype=x.dtype)
    _, grads = value_and_grads(lambda x, *p: _loss(x, target, *p), [x, *params], grad_out)
    assert taken == [eager.EagerLossFunction]
    _, twin = value_and_grads(lambda x, *p: reference.loss(x, target, *p), [x, *params], grad_out)
    for g, r in zip(grads, twin):
        torch.testing.assert_close(g, r, equal_nan=True)
        assert torch.equal(g.isnan(), r.isnan()) and not torch.isfinite(g).all()


def test_a_retained_graph_gives_new_gradient_tensors_each_time(taken):
    """The forward's gradients are never handed out themselves: a second backward of a retained graph
    must not return the tensors the first one returned (changing one would change the other)."""
    x, target, params = make_problem(4)
    leaves = [p.requires_grad_() for p in params]
    loss = _loss(x, target, *leaves)
    first = torch.autograd.grad(loss, leaves, retain_graph=True)
    second = torch.autograd.grad(loss, leaves)
    expected = [g.clone() for g in second]
    for g in first:
        g.mul_(10)
    for g, e in zip(second, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    assert taken == [eager.EagerLossFunction]


@pytest.mark.parametrize("which", ["loss", "logits", "probs"])
def test_each_lean_backward_computes_gradients_only_for_inputs_that_require_them(monkeypatch, which):
    """Only W1 and b2 require grad: the lean backward returns those two and None for the others."""
    function = {"loss": eager.EagerLossFunction, "logits": eager.EagerLogitsFunction, "probs": eager.EagerProbsFunction}
    backward_class = function[which]._backward_cls
    returned = []
    original = backward_class.apply
    monkeypatch.setattr(backward_class, "apply", lambda ctx, *g: returned.append(original(ctx, *g)) or returned[-1])
    x, target, (W1, b1, W2, b2) = make_problem(4)
    W1.requires_grad_()
    b2.requires_grad_()
    network = {"logits": functional.two_layer_net_logits, "probs": functional.two_layer_net}
    (_loss(x, target, W1, b1, W2, b2) if which == "loss" else network[which](x, W1, b1, W2, b2).sum()).backward()
    [gradients] = returned
    given = [g is not None for g in gradients]
    if which == "loss":  # (x, target, W1, b1, W2, b2, reduction, plan)
        assert given == [False, False, True, False, False, True, False, False]
    else:  # (x, W1, b1, W2, b2, plan)
        assert given == [False, True, False, False, True, False]


@pytest.mark.parametrize("N, transposed", [(1, False), (15, False), (16, True)])
def test_dW2_is_made_in_W2s_layout_below_16_rows(N, transposed):
    """From 16 rows (delta2^T a1)^T is faster (strides (1, H)); below, a1^T delta2 is, in W2's own
    layout (strides (C, 1)), which AccumulateGrad keeps. A hook sees dW2 as the backward made it."""
    x, target, params = make_problem(N)
    W1, b1, W2, b2 = [p.requires_grad_() for p in params]
    strides = []
    W2.register_hook(lambda grad: strides.append(grad.stride()))
    _loss(x, target, W1, b1, W2, b2).backward()
    functional.two_layer_net_logits(x, W1, b1, W2, b2).sum().backward()
    functional.two_layer_net(x, W1, b1, W2, b2)[:, 0].sum().backward()
    H, C = W2.shape
    assert strides == [(1, H) if transposed else (C, 1)] * 3


# ---------------------------------------------------------------------------------------
# Backward in other modes: recorded, batched, inside autocast
# ---------------------------------------------------------------------------------------

ENTRIES = {
    "probs": functional.two_layer_net,
    "logits": functional.two_layer_net_logits,
    "loss": None,  # built per problem: it needs the target
}


def _entry(name, target):
    return ENTRIES[name] or (lambda x, *p: _loss(x, target, *p))


@pytest.mark.parametrize("name", ENTRIES)
@pytest.mark.parametrize("N", [1, 2])
def test_gradients_never_share_memory_with_the_upstream_gradient(taken, name, N):
    """At one row the sums over rows are views (modes.EagerPlan.one_row), but only of tensors the
    backward made: a gradient that shared memory with the caller's upstream gradient would change
    it when written to (a second accumulation, clip_grad_norm_, a hook), and be changed by it."""
    x, target, params = make_problem(N, H=8)
    leaves = [p.requires_grad_() for p in params]
    out = _entry(name, target)(x, *leaves)
    upstream = torch.full_like(out, 0.5)
    kept = upstream.clone()
    first = torch.autograd.grad(out, leaves, upstream, retain_graph=True)
    second = torch.autograd.grad(out, leaves, upstream)
    expected = [g.clone() for g in second]
    for g in first:
        assert not g.untyped_storage().data_ptr() == upstream.untyped_storage().data_ptr()
        g.mul_(10)
    torch.testing.assert_close(upstream, kept, rtol=0, atol=0)
    for g, e in zip(second, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    assert taken


@pytest.mark.parametrize("name", ENTRIES)
def test_double_backward_of_the_lean_functions(taken, name):
    x, target, params = make_problem(5, H=8)
    inputs = [t.detach().requires_grad_() for t in (x, *params)]
    assert torch.autograd.gradgradcheck(_entry(name, target), inputs)
    assert taken and set(taken) <= {eager.EagerLossFunction, eager.EagerProbsFunction, eager.EagerLogitsFunction}


@pytest.mark.parametrize("name", ENTRIES)
def test_batched_upstream_gradients_of_the_lean_functions(taken, name):
    x, target, params = make_problem(5, H=8)
    inputs = [t.detach().requires_grad_() for t in (x, *params)]
    assert torch.autograd.gradcheck(_entry(name, target), inputs, check_batched_grad=True)
    assert taken


def _handed_over_with(monkeypatch, name, upstream_of, **options):
    """Backward of a lean entry with ``upstream_of(out)`` -> (its upstream gradient, the twin's):
    (how many times the general formulas were called, the gradients, the twin's gradients)."""
    handed_over = []
    original = eager._general
    monkeypatch.setattr(eager, "_general", lambda *a: handed_over.append(1) or original(*a))
    x, target, params = make_problem(5, H=8)
    leaves = [p.requires_grad_() for p in params]
    out = _entry(name, target)(x, *leaves)
    upstream, twin_upstream = upstream_of(out)
    grads = torch.autograd.grad(out, leaves, upstream, **options)
    twin_entry = (lambda x, *p: reference.loss(x, target, *p)) if name == "loss" else TWINS[name]
    expected = torch.autograd.grad(twin_entry(x, *leaves), leaves, twin_upstream, **options)
    return len(handed_over), [torch.Tensor(g) for g in grads], list(expected)


@pytest.mark.parametrize("name", ENTRIES)
def test_a_batched_upstream_gradient_takes_the_general_formulas(monkeypatch, name):
    """A vmap-batched upstream gradient (``is_grads_batched``, gradcheck's batched-grad check) goes to
    the general formulas, those checked under every transform, and gets the twin's gradients."""

    def two_upstreams(out):  # (2, *out.shape)
        upstream = torch.stack([torch.full_like(out, 0.5), torch.full_like(out, -2.0)])
        return upstream, upstream

    handed_over, grads, expected = _handed_over_with(monkeypatch, name, two_upstreams, is_grads_batched=True)
    assert handed_over == 1
    torch.testing.assert_close(grads, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ENTRIES)
def test_backward_inside_autocast_computes_in_the_parameters_dtype(name, device):
    """The forward ran outside autocast (lean); ``backward()`` inside a bfloat16 region of x's device
    must not cast."""
    x, target, params = make_problem(6, H=16, dtype=torch.float32)
    x, target = x.to(device), target.to(device)
    leaves = [p.detach().to(device).requires_grad_() for p in params]
    twin = [p.detach().to(device).requires_grad_() for p in params]
    out = _entry(name, target)(x, *leaves).square().sum()
    with torch.autocast(device, dtype=torch.bfloat16):
        out.backward()
    twin_entry = (lambda x, *p: reference.loss(x, target, *p)) if name == "loss" else TWINS[name]
    twin_entry(x, *twin).square().sum().backward()
    for mine, theirs in zip(leaves, twin):
        assert mine.grad.dtype == torch.float32
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=2e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# The module's parameters: read from its dict, or as attributes where they moved
# ---------------------------------------------------------------------------------------


def test_a_parametrized_weight_is_used(taken):
    from torch.nn.utils import parametrize

    from manualgrad import TwoLayerNet

    class Doubled(torch.nn.Module):
        def forward(self, W):
            return 2 * W

    model = TwoLayerNet(2, 8, 3, dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64)
    plain = model.logits(x)
    parametrize.register_parametrization(model, "W2", Doubled())
    original = model.parametrizations.W2.original
    twin = original.detach().requires_grad_()
    W1, b1, b2 = model.W1, model.b1, model.b2
    z2 = model.logits(x)
    torch.testing.assert_close(z2, reference.logits(x, W1, b1, 2 * twin, b2))
    assert not torch.allclose(z2, plain)
    z2.square().sum().backward()  # the gradient reaches the parametrization's original through 2 W
    reference.logits(x, W1, b1, 2 * twin, b2).square().sum().backward()
    torch.testing.assert_close(original.grad, twin.grad)


# ---------------------------------------------------------------------------------------
# What the lean Functions pass to the kernels (choices that change speed, not values)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("N, sigmoid_form, column_major", [(1, False, False), (8, False, False), (16, True, True)])
@pytest.mark.parametrize("path", [*LEAN, "loss"])
def test_lean_network_forms_and_layouts(monkeypatch, path, N, sigmoid_form, column_major):
    """tanh in the sigmoid form from N H >= 4096 (CPU, float), in place; W2 column-major from 16 rows."""
    forms, layouts = [], []
    for form in ("tanh_", "sigmoid_"):  # eq. (2) in place, as tanh or in the sigmoid form
        method = getattr(torch.Tensor, form)
        monkeypatch.setattr(torch.Tensor, form, lambda t, method=method, form=form: forms.append(form) or method(t))
    reorder = eager.column_major
    monkeypatch.setattr(eager, "column_major", lambda W2: layouts.append(W2.shape) or reorder(W2))
    products, addmm = [], torch.addmm  # the layout of the W2 that eq. (3) multiplies by
    monkeypatch.setattr(torch, "addmm", lambda b, a, W, **k: products.append(W.stride()) or addmm(b, a, W, **k))
    x, target, params = make_problem(N, H=256)
    LEAN[path][0](x, *params) if path in LEAN else _loss(x, target, *params)
    assert forms == ["sigmoid_" if sigmoid_form else "tanh_"]
    assert layouts == ([(256, 2)] if column_major else [])
    assert products[-1] == ((1, 256) if column_major else (2, 1))


def test_the_boundary_checks_run_once_per_metadata_outside_plain_eager_mode(monkeypatch):
    """Inside autocast (not plain eager mode) the network's checks are those of
    ``boundary.prepare_network``, also decided once per combination of metadata and autocast state."""
    from manualgrad import boundary

    monkeypatch.setattr(boundary, "_checked", boundary._Checked())
    checks = []
    original = boundary._check_network
    monkeypatch.setattr(boundary, "_check_network", lambda *a: checks.append(1) or original(*a))
    x, _, params = make_problem(5, H=8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(3):
            functional.two_layer_net_logits(x, *params)
    assert len(checks) == 1 and len(boundary._checked) == 1


@pytest.mark.parametrize("rows", ["lean", "general"])
@pytest.mark.parametrize("entry", ["logits", "loss"])
def test_the_boundary_checks_run_once_per_metadata(monkeypatch, entry, rows):
    """On the lean path (5 rows) and on the general one (from the lean bound: chunked or precomputed)."""
    from manualgrad import boundary

    monkeypatch.setattr(boundary, "_checked", boundary._Checked())
    checks = []
    original = boundary._check_network
    monkeypatch.setattr(boundary, "_check_network", lambda *a: checks.append(1) or original(*a))
    bound = modes.CHUNKED_NETWORK_MIN_ROWS if entry == "logits" else modes.PRECOMPUTE_MIN_ROWS
    x, target, params = make_problem(5 if rows == "lean" else bound, H=8)
    for _ in range(3):
        functional.two_layer_net_logits(x, *params) if entry == "logits" else _loss(x, target, *params)
    assert len(checks) == 1 and len(boundary._checked) == 1


@pytest.mark.parametrize("entry", ["logits", "loss"])
@pytest.mark.parametrize("above", [False, True], ids=["below-the-bound", "from-the-bound"])
def test_one_metadata_lookup_per_call(monkeypatch, entry, above):
    """One key per call, also when two combinations of metadata alternate (the last key found then
    differs, and the lookup goes to the dict, not to the checks): the network's entry points make
    their one lookup at any N; the lean loss steps aside before its lookup from its bound, and the
    general path's own is the only one."""
    from manualgrad import boundary, modes

    bound = modes.CHUNKED_NETWORK_MIN_ROWS if entry == "logits" else modes.PRECOMPUTE_MIN_ROWS
    x, target, params = make_problem(bound if above else bound - 1, H=8)

    def call(rows):
        if entry == "logits":
            return functional.two_layer_net_logits(x[:rows], *params)
        return _loss(x[:rows], target[:rows], *params)

    call(len(x)), call(len(x) - 1)  # both combinations seen
    keys = []
    name = "_network_key" if entry == "logits" else "_loss_key"
    original = getattr(boundary, name)
    monkeypatch.setattr(boundary, name, lambda *a: keys.append(1) or original(*a))
    call(len(x)), call(len(x) - 1), call(len(x))
    assert keys == [1, 1, 1]


def test_a_tensor_left_over_from_a_finished_transform_is_unwrapped(taken):
    """A tensor that escaped torch.func.grad (a dead wrapper) is unwrapped, as Function.apply does."""
    escaped = []

    def keep(x):
        escaped.append(x)
        return x.sum()

    x, _, params = make_problem(4)
    torch.func.grad(keep)(x.clone())
    assert torch._C._functorch.is_functorch_wrapped_tensor(escaped[0])
    torch.testing.assert_close(functional.two_layer_net_logits(escaped[0], *params), reference.logits(x, *params))
    assert taken == [eager.EagerLogitsFunction]


def test_x_and_parameters_all_left_over_from_a_finished_transform(taken):
    """Every tensor a dead wrapper (x included): each is unwrapped, and the gradients reach the
    tensors themselves."""
    x, _, params = make_problem(4, H=8)
    leaves = [t.requires_grad_() for t in (x.clone(), *params)]
    escaped = []

    def keep(*tensors):
        escaped.extend(tensors)
        return functional.two_layer_net_logits(*tensors).sum()

    torch.func.grad(keep, argnums=(0, 1, 2, 3, 4))(*leaves)
    assert all(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in escaped)
    functional.two_layer_net_logits(*escaped).sum().backward()
    assert taken[-1] is eager.EagerLogitsFunction
    twin = [t.detach().requires_grad_() for t in leaves]
    reference.logits(*twin).sum().backward()
    for mine, theirs in zip(leaves, twin):
        torch.testing.assert_close(mine.grad, theirs.grad)


def test_a_target_left_over_from_a_finished_transform_is_unwrapped(monkeypatch, taken):
    """Labels that escaped torch.func.grad (a dead wrapper, the only tensor without storage): the
    lean loss Function receives them unwrapped, as Function.apply would hand them over, and the loss
    and gradients are the twin's."""
    x, target, params = make_problem(4, H=8)
    escaped = []

    def keep(x):
        escaped.append(target.clone())
        return x.sum()

    torch.func.grad(keep)(x.clone())
    assert torch._C._functorch.is_functorch_wrapped_tensor(escaped[0])
    received = []
    raw_apply = eager._RAW_APPLY[eager.EagerLossFunction]

    def spy(*args):
        received.append(torch._C._functorch.is_functorch_wrapped_tensor(args[1]))
        return raw_apply(*args)

    monkeypatch.setitem(eager._RAW_APPLY, eager.EagerLossFunction, spy)
    leaves = [p.requires_grad_() for p in params]
    loss = _loss(x, escaped[0], *leaves)
    assert taken == [eager.EagerLossFunction] and received == [False]
    twin = [p.detach().requires_grad_() for p in params]
    expected = reference.loss(x, target, *twin)
    torch.testing.assert_close(loss, expected)
    for mine, theirs in zip(torch.autograd.grad(loss, leaves), torch.autograd.grad(expected, twin)):
        torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize("dead", range(5), ids=["x", "W1", "b1", "W2", "b2"])
@pytest.mark.parametrize("name", ["logits", "loss"])
def test_one_tensor_left_over_from_a_finished_transform_among_live_ones(taken, name, dead):
    """One of x and the parameters a dead wrapper, the others live: it is unwrapped too (the
    storage test asks every tensor), and every gradient reaches its leaf."""
    x, target, params = make_problem(4, H=8)
    leaves = [t.requires_grad_() for t in (x.clone(), *params)]
    escaped = []

    def keep(tensor):
        escaped.append(tensor)
        return tensor.sum()

    torch.func.grad(keep)(leaves[dead])
    assert torch._C._functorch.is_functorch_wrapped_tensor(escaped[0])
    inputs = [escaped[0] if i == dead else leaf for i, leaf in enumerate(leaves)]
    _entry(name, target)(*inputs).sum().backward()
    assert taken == [eager.EagerLossFunction if name == "loss" else eager.EagerLogitsFunction]
    twin = [t.detach().requires_grad_() for t in leaves]
    twin_entry = (lambda x, *p: reference.loss(x, target, *p)) if name == "loss" else TWINS[name]
    twin_entry(*twin).sum().backward()
    for mine, theirs in zip(leaves, twin):
        torch.testing.assert_close(mine.grad, theirs.grad)


@pytest.mark.parametrize("N", [4, modes.CHUNKED_NETWORK_MIN_ROWS], ids=["lean", "general"])
@pytest.mark.parametrize("name", ENTRIES)
def test_parameters_left_over_from_a_finished_transform_get_their_gradients(name, N):
    """Parameters that escaped torch.func.grad (dead wrappers) are unwrapped, as Function.apply does:
    without that, the gradients would not reach the parameters themselves."""
    x, target, params = make_problem(N, H=8)
    leaves = [p.requires_grad_() for p in params]
    escaped = []

    def keep(*params):
        escaped.extend(params)
        return _entry(name, target)(x, *params).sum()

    torch.func.grad(keep, argnums=(0, 1, 2, 3))(*leaves)
    assert all(torch._C._functorch.is_functorch_wrapped_tensor(p) for p in escaped)
    _entry(name, target)(x, *escaped).sum().backward()
    twin = [p.detach().requires_grad_() for p in params]
    twin_entry = (lambda x, *p: reference.loss(x, target, *p)) if name == "loss" else TWINS[name]
    twin_entry(x, *twin).sum().backward()
    for mine, theirs in zip(leaves, twin):
        torch.testing.assert_close(mine.grad, theirs.grad)


@pytest.mark.parametrize("name", ENTRIES)
def test_a_plain_backward_stays_on_the_lean_formulas(monkeypatch, name):
    """First order, a plain upstream gradient, no autocast: the general formulas are not called;
    a recorded backward (create_graph) calls them once."""
    handed_over = []
    original = eager._general
    monkeypatch.setattr(eager, "_general", lambda *a: handed_over.append(1) or original(*a))
    x, target, params = make_problem(5, H=8)
    leaves = [p.requires_grad_() for p in params]
    torch.autograd.grad(_entry(name, target)(x, *leaves).sum(), leaves)
    assert handed_over == []
    torch.autograd.grad(_entry(name, target)(x, *leaves).sum(), leaves, create_graph=True)
    assert handed_over == [1]


class _MarkedTensor(torch.Tensor):
    """A tensor subclass, as wrapper tensors (and tensor-like gradients) are."""


@pytest.mark.parametrize("name", ENTRIES)
def test_a_subclass_upstream_gradient_takes_the_general_formulas(monkeypatch, name):
    """The first-order formulas are written for plain tensors: an upstream gradient of another kind
    (a wrapper or other subclass) goes to the general formulas and gets the twin's gradients."""

    def marked(out):
        return torch.full_like(out, 0.5).as_subclass(_MarkedTensor), torch.full_like(out, 0.5)

    handed_over, grads, expected = _handed_over_with(monkeypatch, name, marked)
    assert handed_over == 1
    torch.testing.assert_close(grads, expected)


@pytest.mark.parametrize("name", ENTRIES)
def test_autograd_calls_the_lean_backwards_directly(name):
    """The engine calls ``backward`` itself, not BackwardCFunction.apply's Python around it
    (``eager._call_backward_directly``); ``grad_fn.apply`` still gives backward's gradients."""
    x, target, params = make_problem(3)
    params = [p.requires_grad_() for p in params]
    out = _entry(name, target)(x, *params)
    function = type(out.grad_fn)._forward_cls
    assert function in (eager.EagerProbsFunction, eager.EagerLogitsFunction, eager.EagerLossFunction)
    assert vars(function._backward_cls)["apply"] is function.backward
    upstream = torch.ones_like(out)
    by_apply = [g for g in out.grad_fn.apply(upstream) if g is not None]
    for got, expected in zip(by_apply, torch.autograd.grad(out, params, upstream)):
        torch.testing.assert_close(got, expected)


def test_call_backward_directly_sets_apply_once():
    """``_call_backward_directly`` (run at import for the lean Functions) makes ``backward`` the
    context class's ``apply``, and leaves an ``apply`` the class already defines alone."""

    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 2

    eager._call_backward_directly(Double)
    assert vars(Double._backward_cls)["apply"] is Double.backward
    x = torch.ones(3, requires_grad=True)
    Double.apply(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), 2.0))

    class Own(Double):
        pass

    def own_apply(ctx, *grads):
        return Own.backward(ctx, *grads)

    Own._backward_cls.apply = own_apply
    eager._call_backward_directly(Own)
    assert vars(Own._backward_cls)["apply"] is own_apply


@pytest.mark.parametrize("name", ENTRIES)
def test_compiled_autograd_runs_the_lean_backwards(name):
    """Under compiled autograd (dynamo traces the backward graph, our Python backward included) the
    lean Functions' gradients are the twin's."""
    x, target, params = make_problem(4)
    leaves = [p.requires_grad_() for p in params]
    out = _entry(name, target)(x, *leaves)
    lean = (eager.EagerProbsFunction, eager.EagerLogitsFunction, eager.EagerLossFunction)
    assert type(out.grad_fn)._forward_cls in lean
    with torch._dynamo.compiled_autograd._enable(torch.compile(backend="eager")):
        out.sum().backward()
    twin = [p.detach().requires_grad_() for p in params]
    twin_entry = (lambda x, *p: reference.loss(x, target, *p)) if name == "loss" else TWINS[name]
    twin_entry(x, *twin).sum().backward()
    for mine, theirs in zip(leaves, twin):
        torch.testing.assert_close(mine.grad, theirs.grad)
