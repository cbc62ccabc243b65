"""The loss with F.cross_entropy's whole signature: weight, ignore_index, label_smoothing.

Every case of the table ``CASES`` is compared with the native twin (``reference.loss``, that
is ``F.cross_entropy`` on native autograd), value first, then every gradient (x, W1, b1, W2,
b2, and for probability targets the target and the weight), for every reduction, both loss
strategies (gradients in backward, and in the forward in small chunks with a ragged last
chunk), float64 and float32, batched and unbatched. A differentiated target or weight defers the
gradients to backward, so the gradients in the forward are compared again with constant ones, with
the classes relative to the last (eq. (19)-(21)) and with all C. Then gradcheck and gradgradcheck, one
compiled graph for every batch size with ignored rows present, torch.func, the errors, and a
negative control: a wrong denominator must be caught by the same comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
import torch
from conftest import DEVICES, TOLERANCES, make_problem

from manualgrad import TwoLayerNet, autograd, chunked, functional, kernels, modes, reference

D, H, C = 3, 7, 4
IGNORE = -100
REDUCTIONS = ["mean", "sum", "none"]
STRATEGIES = {  # name: (gradients in the forward?, rows per chunk)
    "in-backward": (False, None),
    "in-forward": (True, None),
    "in-forward-chunks-of-3": (True, 3),  # N = 10: chunks of 3, 3, 3 and 1 row
}


@dataclass(frozen=True)
class Case:
    """One way of calling the loss: the kind of target, which rows hold ignore_index, the options."""

    soft: bool = False
    ignored: tuple[int, ...] = ()  # rows whose label is ``ignore_index``
    weight: bool = False
    ignore_index: int = IGNORE
    label_smoothing: float = 0.0
    weight_requires_grad: bool = False  # probabilities only: F.cross_entropy differentiates w then
    rows: int = 10
    extra: dict = field(default_factory=dict, compare=False)


CASES = {
    "indices": Case(),
    "indices, weight": Case(weight=True),
    "indices, two rows ignored": Case(ignored=(1, 6)),
    "indices, every row ignored": Case(ignored=tuple(range(10))),
    "indices, ignore_index is a class": Case(ignore_index=2),
    "indices, label_smoothing": Case(label_smoothing=0.15),
    "indices, label_smoothing 1": Case(label_smoothing=1.0),
    "indices, weight, ignored, smoothing": Case(weight=True, ignored=(0, 5, 9), label_smoothing=0.3),
    "indices, weight, every row ignored": Case(weight=True, ignored=tuple(range(10)), label_smoothing=0.1),
    "indices, empty batch": Case(weight=True, label_smoothing=0.2, rows=0),
    "probabilities": Case(soft=True),
    "probabilities, weight": Case(soft=True, weight=True, weight_requires_grad=True),
    "probabilities, label_smoothing": Case(soft=True, label_smoothing=0.25),
    "probabilities, weight, smoothing": Case(soft=True, weight=True, label_smoothing=0.4, weight_requires_grad=True),
}


def make_case(case: Case, dtype=torch.float64, device="cpu", seed=0):
    """x, target, parameters and the options (as keyword arguments) for one case."""
    x, target, params = make_problem(case.rows, D, H, C, dtype=dtype, device=device, seed=seed, soft=case.soft)
    if not case.soft:
        target = target.clone()
        target[list(case.ignored)] = case.ignore_index
    generator = torch.Generator().manual_seed(seed + 1)
    weight = (torch.rand(C, generator=generator, dtype=torch.float64) + 0.25).to(device, dtype) if case.weight else None
    options = {"weight": weight, "ignore_index": case.ignore_index, "label_smoothing": case.label_smoothing}
    return x, target, params, options


def value_and_grads(loss_fn, case, x, target, params, options, reduction, unbatched=False, target_grad=None):
    """The loss and its gradients in (x, W1, b1, W2, b2[, target][, weight]), upstream g random;
    probabilities are differentiated unless ``target_grad`` is False."""
    target_grad = case.soft if target_grad is None else target_grad
    leaves = [t.detach().clone().requires_grad_() for t in (x, *params)]
    target = target.detach().clone().requires_grad_(target_grad)
    weight = options["weight"]
    if weight is not None:
        weight = weight.detach().clone().requires_grad_(case.weight_requires_grad)
    kwargs = {**options, "weight": weight}
    if case.soft:
        kwargs.pop("ignore_index")  # F refuses any other value with probabilities; -100 is its default
    inputs = leaves + [target] * target_grad + [weight] * case.weight_requires_grad
    if unbatched:
        out = torch.stack([loss_fn(leaves[0][n], target[n], *leaves[1:], reduction, **kwargs) for n in range(len(x))])
    else:
        out = loss_fn(leaves[0], target, *leaves[1:], reduction, **kwargs)
    g = torch.rand(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).add(0.5)
    return out, torch.autograd.grad(out, inputs, g.to(out.dtype))


def assert_close_relative(actual, expected, dtype, what):
    """Relative to the size of what is compared: atol scaled by its largest finite magnitude."""
    finite = expected.detach()[torch.isfinite(expected.detach())]
    scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale, equal_nan=True, msg=lambda m: f"{what}: {m}"
    )


def assert_matches_cross_entropy(case, reduction, dtype=torch.float64, device="cpu", unbatched=False, target_grad=None):
    x, target, params, options = make_case(case, dtype, device)
    args = (case, x, target, params, options, reduction, unbatched, target_grad)
    manual = value_and_grads(functional.two_layer_net_loss, *args)
    twin = value_and_grads(reference.loss, *args)
    assert_close_relative(manual[0], twin[0], dtype, "value")
    for i, (g, r) in enumerate(zip(manual[1], twin[1])):
        assert_close_relative(g, r, dtype, f"gradient {i} of (x, W1, b1, W2, b2, target, weight)")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", CASES)
def test_value_and_every_gradient_match_cross_entropy(case, reduction, strategy, dtype, device):
    in_forward, chunk_rows = STRATEGIES[strategy]
    with functional.loss_gradients_in_forward(in_forward, chunk_rows):
        assert_matches_cross_entropy(CASES[case], reduction, dtype, device)


def constant(case: Case) -> Case:
    """The case with a weight that is not differentiated (a differentiated target or weight defers
    the gradients to backward: ``modes.gradients_in_forward``)."""
    return replace(case, weight_requires_grad=False)


def _count_relative_chunks(monkeypatch):
    """How many chunks the loss kernel treats with the classes relative to the last, eq. (21)."""
    calls = []
    original = chunked.relative_delta
    monkeypatch.setattr(chunked, "relative_delta", lambda delta2: calls.append(len(delta2)) or original(delta2))
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("factored", [True, False], ids=["factored", "delta1"])
@pytest.mark.parametrize("relative", [True, False], ids=["relative-classes", "all-classes"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])  # a scalar loss: 'none' takes the gradients in backward
@pytest.mark.parametrize("case", CASES)
def test_gradients_in_the_forward_take_every_option(case, reduction, relative, factored, dtype, monkeypatch):
    """Targets and weight constant, so that the gradients are computed in the forward, in chunks of 3
    rows (a ragged last one), with weight, ignore_index and label_smoothing; ``relative``: by
    eq. (19)-(21) from 1 row instead of RELATIVE_MIN_ROWS, else with all C classes; ``factored``: the
    first layer's gradients by eq. (16')-(18') (as the default 2/500/2 network), else through delta1."""
    monkeypatch.setattr(modes, "RELATIVE_MIN_ROWS", 1 if relative else 2**62)
    monkeypatch.setattr(modes, "FACTORED_MAX_PRODUCTS", (D + 1) * C - 1 + factored)
    relative_chunks, in_forward = _count_relative_chunks(monkeypatch), []
    original = autograd.loss_and_gradients
    monkeypatch.setattr(
        autograd, "loss_and_gradients", lambda *a, **k: in_forward.append(k["factored"]) or original(*a, **k)
    )
    with functional.loss_gradients_in_forward(True, 3):
        assert_matches_cross_entropy(constant(CASES[case]), reduction, dtype, target_grad=False)
    assert in_forward == [factored], "the gradients were not computed in the forward, or not by that form"
    assert sum(relative_chunks) == CASES[case].rows * relative, f"rows in relative chunks: {relative_chunks}"


@pytest.mark.parametrize("case", ["indices, weight, ignored, smoothing", "probabilities, weight, smoothing"])
def test_the_classes_relative_to_the_last_from_their_threshold(case, monkeypatch):
    """At modes.RELATIVE_MIN_ROWS rows, with the default chunks, the loss takes eq. (21) and every option."""
    relative_chunks = _count_relative_chunks(monkeypatch)
    with functional.loss_gradients_in_forward(True):
        case = replace(constant(CASES[case]), rows=modes.RELATIVE_MIN_ROWS)
        assert_matches_cross_entropy(case, "mean", target_grad=False)
    assert sum(relative_chunks) == modes.RELATIVE_MIN_ROWS, f"rows in relative chunks: {relative_chunks}"


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "case", ["indices, two rows ignored", "indices, weight, ignored, smoothing", "probabilities, weight, smoothing"]
)
def test_unbatched_samples_match_cross_entropy(case, reduction):
    """One sample at a time (an ignored sample alone: NaN for the mean, 0 for sum and none)."""
    assert_matches_cross_entropy(CASES[case], reduction, unbatched=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_module_loss_and_forward_take_the_options(reduction):
    case = CASES["indices, weight, ignored, smoothing"]
    x, target, params, options = make_case(case, torch.float32)
    model = TwoLayerNet(D, H, C)
    with torch.no_grad():
        for p, value in zip(model.parameters(), params):
            p.copy_(value)
    twin = reference.loss(x, target, *params, reduction, **options)
    assert_close_relative(model.loss(x, target, reduction, **options), twin, torch.float32, "loss")
    assert_close_relative(model(x, target, reduction, **options), twin, torch.float32, "forward")


@pytest.mark.parametrize("option", [{"weight": torch.ones(C)}, {"ignore_index": 1}, {"label_smoothing": 0.1}])
def test_forward_without_target_refuses_the_loss_options(option):
    with pytest.raises(TypeError, match=f"{next(iter(option))} applies to the loss only: pass a target"):
        TwoLayerNet(D, H, C)(torch.randn(5, D), **option)


GRADCHECK_CASES = [  # (case, reduction, strategy): a few, gradgradcheck is slow
    ("indices, weight, ignored, smoothing", "mean", "in-forward-chunks-of-3"),
    ("indices, ignore_index is a class", "none", "in-backward"),
    ("probabilities, weight, smoothing", "mean", "in-backward"),
    ("probabilities, weight, smoothing", "sum", "in-forward-chunks-of-3"),
]


@pytest.mark.parametrize(("case", "reduction", "strategy"), GRADCHECK_CASES)
def test_gradcheck_and_gradgradcheck(case, reduction, strategy):
    case = CASES[case]
    x, target, params, options = make_case(case)
    weight = options.pop("weight")
    if case.soft:
        options.pop("ignore_index")
    inputs = [t.clone().requires_grad_() for t in (x, *params)]
    if case.soft:  # the target and the weight are differentiated too
        inputs += [target.clone().requires_grad_(), weight.clone().requires_grad_()]

        def loss(x, W1, b1, W2, b2, target, weight):
            return functional.two_layer_net_loss(x, target, W1, b1, W2, b2, reduction, weight=weight, **options)
    else:

        def loss(x, W1, b1, W2, b2):
            return functional.two_layer_net_loss(x, target, W1, b1, W2, b2, reduction, weight=weight, **options)

    in_forward, chunk_rows = STRATEGIES[strategy]
    with functional.loss_gradients_in_forward(in_forward, chunk_rows):
        assert torch.autograd.gradcheck(loss, inputs, fast_mode=True)
        assert torch.autograd.gradgradcheck(loss, inputs, fast_mode=True)


def test_one_compiled_graph_for_every_batch_size_with_ignored_rows():
    """torch.compile(dynamic=True, fullgraph=True): ignored rows, weights and smoothing add no guard on N."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    case = CASES["indices, weight, ignored, smoothing"]
    _, _, params, options = make_case(case)
    params = [p.requires_grad_() for p in params]

    def loss(x, target):
        return functional.two_layer_net_loss(x, target, *params, **options)

    compiled = torch.compile(loss, backend=counter, dynamic=True, fullgraph=True)
    for N in (5, 6, 9, 11, 15):  # rows ignored in every batch, all of them at N = 11; no N equals D, H or C
        x, target, _, _ = make_case(Case(rows=N), seed=N)
        target[:: 2 if N != 11 else 1] = IGNORE
        value = compiled(x, target)
        twin = reference.loss(x, target, *params, **options)
        assert_close_relative(value, twin, torch.float64, f"value at N={N}")
        for g, r in zip(torch.autograd.grad(value, params), torch.autograd.grad(twin, params)):
            assert_close_relative(g, r, torch.float64, f"gradient at N={N}")
    assert counter.frame_count == 1, f"{counter.frame_count} graphs for 5 batch sizes"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("upstream", [float("inf"), float("nan")], ids=["inf", "nan"])
@pytest.mark.parametrize("case", ["indices, two rows ignored", "indices, weight, ignored, smoothing"])
def test_an_ignored_row_passes_on_nothing_of_what_flows_back_to_it(case, upstream, device):
    """reduction="none": an ignored row's upstream gradient (an inf from dividing by a count of 0,
    say) reaches no gradient, as with F.cross_entropy, whose nll_loss never reads it: every gradient
    is the twin's, finite. (Multiplied by the row's zero q, it would make every parameter's NaN.)"""
    case = CASES[case]
    x, target, params, options = make_case(case, device=device)
    leaves = [[t.detach().clone().requires_grad_() for t in (x, *params)] for _ in range(2)]
    upstream_grad = torch.ones(len(x), dtype=x.dtype, device=device)
    upstream_grad[list(case.ignored)] = upstream
    grads = [
        torch.autograd.grad(loss_fn(mine[0], target, *mine[1:], "none", **options), mine, upstream_grad)
        for loss_fn, mine in zip((functional.two_layer_net_loss, reference.loss), leaves)
    ]
    for i, (g, r) in enumerate(zip(*grads)):
        assert bool(torch.isfinite(r).all()), "the twin's gradients are finite"
        torch.testing.assert_close(g, r, msg=lambda m, i=i: f"gradient {i} of (x, W1, b1, W2, b2): {m}")


def test_out_of_range_label_other_than_ignore_index_raises_in_every_mode():
    x, target, params, options = make_case(CASES["indices, weight, ignored, smoothing"])
    bad = target.clone()
    bad[3] = C
    with pytest.raises(ValueError, match=rf"target holds class index {C} at position 3; .*or equal ignore_index"):
        functional.two_layer_net_loss(x, bad, *params, **options)  # eager CPU: the explicit check
    per_sample = torch.func.vmap(lambda xi, ti: functional.two_layer_net_loss(xi, ti, *params, "sum", **options))
    torch.testing.assert_close(per_sample(x, target), reference.loss(x, target, *params, "none", **options))
    with pytest.raises(RuntimeError, match="out of bounds"):
        per_sample(x, bad)  # torch.func: no value is read, gather and scatter check
    compiled = torch.compile(lambda x, t: functional.two_layer_net_loss(x, t, *params, **options), backend="aot_eager")
    with pytest.raises(RuntimeError, match="out of bounds"):
        compiled(x, bad)


def test_requires_grad_weight_with_class_indices_is_refused_like_cross_entropy():
    x, target, params, _ = make_case(CASES["indices"])
    weight = torch.ones(C, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        reference.loss(x, target, *params, weight=weight)
    with pytest.raises(RuntimeError, match="weight requires grad, but the loss is not differentiable in weight"):
        functional.two_layer_net_loss(x, target, *params, weight=weight)
    with torch.no_grad():  # nothing is differentiated: accepted, as F.cross_entropy accepts it
        torch.testing.assert_close(
            functional.two_layer_net_loss(x, target, *params, weight=weight),
            reference.loss(x, target, *params, weight=weight),
        )


def test_negative_control_a_wrong_denominator_is_caught(monkeypatch):
    """The mean divided by N instead of the summed weights of the rows that count must fail the comparison."""
    original = kernels.effective_target

    def divides_by_rows(target, num_classes, dtype, reduction, **options):
        q, reduction_of_q, add = original(target, num_classes, dtype, "sum", **options)
        return (q / target.shape[0], "sum", add) if reduction == "mean" else (q, reduction_of_q, add)

    monkeypatch.setattr(kernels, "effective_target", divides_by_rows)
    with pytest.raises(AssertionError, match="value"):
        assert_matches_cross_entropy(CASES["indices, weight"], "mean")
