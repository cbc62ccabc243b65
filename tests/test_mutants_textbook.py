"""textbook.py against the native-autograd twin, at the corners mutation testing found untested.

Every gradient is compared with a relative tolerance (tests/planted/twins.py), for each subset
of inputs that require gradients (``needs_input_grad``), each reduction, non-unit upstream
gradients, second derivatives, and each error message of the boundary checks.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from planted.twins import assert_close_relative, assert_matches_twin, grads_of, problem

from manualgrad import reference, textbook

NEEDS = [n for n in itertools.product([False, True], repeat=5) if any(n)]
REDUCTIONS = ["mean", "sum", "none"]


@pytest.mark.parametrize("needs", NEEDS, ids=lambda n: "".join("1" if b else "0" for b in n))
@pytest.mark.parametrize("entry", ["probs", "logits"])
def test_network_each_subset_of_gradients_matches_twin(entry, needs):
    x, _, _, params = problem()
    manual = textbook.two_layer_net if entry == "probs" else textbook.two_layer_net_logits
    twin = reference.probs if entry == "probs" else reference.logits
    assert_matches_twin(manual, twin, [x, *params], list(needs), what=entry)


@pytest.mark.parametrize("needs", NEEDS, ids=lambda n: "".join("1" if b else "0" for b in n))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_each_subset_of_gradients_matches_twin(reduction, needs):
    x, indices, _, params = problem()
    manual = lambda x, t, *p: textbook.two_layer_net_loss(x, t, *p, reduction=reduction)  # noqa: E731
    twin = lambda x, t, *p: reference.loss(x, t, *p, reduction=reduction)  # noqa: E731
    assert_matches_twin(manual, twin, [x, indices, *params], [needs[0], False, *needs[1:]], what=reduction)


NEEDS_WITH_TARGET = [n for n in itertools.product([False, True], repeat=6) if n[1]]


@pytest.mark.parametrize("needs", NEEDS_WITH_TARGET, ids=lambda n: "".join("1" if b else "0" for b in n))
def test_loss_probability_target_gradient_with_each_subset_of_other_gradients(needs):
    """d loss / d y with any other inputs requiring grad or not (needs_input_grad is read per input)."""
    x, _, probabilities, params = problem()
    manual = lambda x, t, *p: textbook.two_layer_net_loss(x, t, *p, reduction="sum")  # noqa: E731
    twin = lambda x, t, *p: reference.loss(x, t, *p, reduction="sum")  # noqa: E731
    assert_matches_twin(manual, twin, [x, probabilities, *params], list(needs))


@pytest.mark.parametrize("target_grad", [False, True], ids=["fixed-target", "target-grad"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_probability_target_matches_twin(reduction, target_grad):
    x, _, probabilities, params = problem()
    manual = lambda x, t, *p: textbook.two_layer_net_loss(x, t, *p, reduction=reduction)  # noqa: E731
    twin = lambda x, t, *p: reference.loss(x, t, *p, reduction=reduction)  # noqa: E731
    assert_matches_twin(manual, twin, [x, probabilities, *params], [True, target_grad, True, True, True, True])


def test_loss_unnormalised_probability_target_matches_twin():
    """Rows of y summing to 2: eq. (7) is y_hat * sum_c y - y, not y_hat - y."""
    x, _, probabilities, params = problem()
    manual = lambda x, t, *p: textbook.two_layer_net_loss(x, t, *p, reduction="sum")  # noqa: E731
    twin = lambda x, t, *p: reference.loss(x, t, *p, reduction="sum")  # noqa: E731
    assert_matches_twin(manual, twin, [x, probabilities * 2, *params], [True] * 6)


@pytest.mark.parametrize("entry", ["probs", "logits", "loss-mean", "loss-sum", "loss-none", "loss-soft"])
def test_second_derivatives_match_twin(entry):
    """Hessian-vector products: the gradient of <grad, v> with respect to every input."""
    x, indices, probabilities, params = problem(N=5)
    if entry in ("probs", "logits"):
        manual = textbook.two_layer_net if entry == "probs" else textbook.two_layer_net_logits
        twin = reference.probs if entry == "probs" else reference.logits
        inputs, needs = [x, *params], [True] * 5
    else:
        reduction = "mean" if entry == "loss-soft" else entry[5:]
        target = probabilities if entry == "loss-soft" else indices
        manual = lambda x, t, *p: textbook.two_layer_net_loss(x, t, *p, reduction=reduction)  # noqa: E731
        twin = lambda x, t, *p: reference.loss(x, t, *p, reduction=reduction)  # noqa: E731
        inputs, needs = [x, target, *params], [True, entry == "loss-soft", True, True, True, True]
    results = []
    for fn in (manual, twin):
        _, grads, leaves = grads_of(fn, inputs, needs, create_graph=True)
        g = torch.Generator().manual_seed(1)
        vs = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in grads]
        wanted = [t for t in leaves if t.requires_grad]
        inner = sum((gr * v).sum() for gr, v in zip(grads, vs))
        results.append(torch.autograd.grad(inner, wanted, allow_unused=True))
    for i, (m, r) in enumerate(zip(*results)):
        assert_close_relative(m, r, f"{entry} second derivative {i}")


def test_textbook_output_shapes_and_dtypes():
    x, indices, _, params = problem(N=3, D=2, H=4, C=5)
    assert textbook.two_layer_net(x, *params).shape == (3, 5)
    assert textbook.two_layer_net_logits(x, *params).shape == (3, 5)
    assert textbook.two_layer_net_loss(x, indices, *params).shape == ()
    assert textbook.two_layer_net_loss(x, indices, *params, reduction="sum").shape == ()
    assert textbook.two_layer_net_loss(x, indices, *params, reduction="none").shape == (3,)
    assert textbook.two_layer_net_loss(x, indices.int(), *params).dtype == torch.float64


def _shapes_message(params):
    shapes = tuple(tuple(t.shape) for t in params)
    return f"W1, b1, W2, b2 must have shapes (D, H), (H,), (H, C), (C,), got {shapes}"


@pytest.mark.parametrize(
    "bad",
    ["W1-rank", "W2-rank", "b1", "W2-rows", "b2", "x-rank", "x-columns"],
)
def test_check_shapes_messages(bad):
    x, _, _, (W1, b1, W2, b2) = problem(N=3, D=2, H=4, C=5)
    params = {"W1": W1, "b1": b1, "W2": W2, "b2": b2}
    if bad == "W1-rank":
        params["W1"] = W1.reshape(-1)
    elif bad == "W2-rank":
        params["W2"] = W2.reshape(2, 2, 5)
    elif bad == "b1":
        params["b1"] = b1[:3]
    elif bad == "W2-rows":
        params["W2"] = W2[:3]
    elif bad == "b2":
        params["b2"] = b2[:4]
    elif bad == "x-rank":
        x = x.reshape(1, 3, 2)
    else:
        x = torch.ones(3, 3, dtype=x.dtype)
    values = list(params.values())
    if bad.startswith("x"):
        message = f"x must have shape (N, 2), got {tuple(x.shape)}"
    else:
        message = _shapes_message(values)
    for fn in (textbook.two_layer_net, textbook.two_layer_net_logits):
        with pytest.raises(ValueError) as info:
            fn(x, *values)
        assert str(info.value) == message


@pytest.mark.parametrize(
    "target, message",
    [
        (torch.zeros(3, 4), "target must be class indices (3,) or probabilities (3, 5), got (3, 4) torch.float64"),
        (
            torch.zeros(3, dtype=torch.bool),
            "target must be class indices (3,) or probabilities (3, 5), got (3,) torch.bool",
        ),
        (torch.zeros(3, dtype=torch.complex128), None),
        (
            torch.zeros(4, dtype=torch.long),
            "target must be class indices (3,) or probabilities (3, 5), got (4,) torch.int64",
        ),
    ],
    ids=["prob-shape", "bool", "complex", "index-shape"],
)
def test_loss_target_messages(target, message):
    x, _, _, params = problem(N=3, D=2, H=4, C=5)
    target = target.to(torch.float64) if target.is_floating_point() else target
    with pytest.raises(ValueError) as info:
        textbook.two_layer_net_loss(x, target, *params)
    if message is not None:
        assert str(info.value) == message


def test_loss_reduction_message():
    x, indices, _, params = problem(N=3)
    with pytest.raises(ValueError) as info:
        textbook.two_layer_net_loss(x, indices, *params, reduction="avg")
    assert str(info.value) == "reduction must be 'mean', 'sum' or 'none', got 'avg'"


def test_loss_int32_indices_match_twin():
    x, indices, _, params = problem()
    value = textbook.two_layer_net_loss(x, indices.int(), *params, reduction="none")
    assert_close_relative(value, reference.loss(x, indices, *params, reduction="none"), "int32 indices")
