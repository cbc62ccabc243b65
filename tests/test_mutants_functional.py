"""functional.py and modes.py at their edges: the cached boundary checks, autocast casts, one-row batches,
vmap with class targets, an ignore_index outside [0, C), and when the loss computes its gradients in the
forward (modes.gradients_in_forward, asserted directly). Values against the native-autograd twin,
tolerances relative (tests/planted/twins.py); error messages asserted whole where they matter.
"""

from __future__ import annotations

import pytest
import torch
from planted.twins import assert_close_relative, assert_matches_twin, problem

from manualgrad import autograd, boundary, functional, modes, reference


@pytest.fixture(autouse=True)
def _fresh_check_cache():
    boundary._checked.clear()
    yield
    boundary._checked.clear()


def test_the_target_check_is_cached_per_target_x_and_weights():
    """A target once accepted is not accepted for another target, x or W2 of other metadata (W1 agrees with W2)."""
    x, indices, probabilities, params = problem(N=7, H=5)
    W1, b1, W2, b2 = params
    functional.two_layer_net_loss(x, indices, *params)
    with pytest.raises(ValueError, match=r"target of class indices must have"):
        functional.two_layer_net_loss(x, indices[:5], *params)
    with pytest.raises(ValueError, match=r"target of class indices must have"):
        functional.two_layer_net_loss(x[:5], indices, *params)
    functional.two_layer_net_loss(x, probabilities, *params)
    with pytest.raises(TypeError, match=r"probability target has dtype torch.float64 but the parameters have"):
        functional.two_layer_net_loss(x.float(), probabilities, *[p.float() for p in params])
    with pytest.raises(ValueError, match=r"probability target must have shape \(7, 3\)"):
        functional.two_layer_net_loss(x, probabilities, W1, b1, W2[:, :3], b2[:3])


def test_a_bad_target_is_refused_on_the_first_call_and_a_non_tensor_by_name():
    x, indices, _, params = problem(N=7, H=5)
    with pytest.raises(ValueError, match=r"target of class indices must have"):
        functional.two_layer_net_loss(x, indices[:3], *params)
    with pytest.raises(TypeError, match=r"target"):
        functional.two_layer_net_loss(x, [0, 1, 2, 3, 0, 1, 2], *params)


def test_the_cache_keeps_at_most_its_size(monkeypatch):
    monkeypatch.setattr(boundary, "_MAX_CHECKED", 2)
    for N in (3, 4, 5):
        x, indices, _, params = problem(N=N, H=5)
        functional.two_layer_net_loss(x, indices, *params)
    assert len(boundary._checked) == 2


@pytest.mark.parametrize("entry", ["probs", "logits", "loss-indices", "loss-probabilities"])
def test_autocast_casts_a_low_precision_input_and_target_to_the_parameters(entry):
    x, indices, probabilities, params = problem(N=7, H=5, dtype=torch.float32)
    x16 = x.to(torch.bfloat16)
    x_ref = x16.float()
    if entry in ("probs", "logits"):
        manual = functional.two_layer_net if entry == "probs" else functional.two_layer_net_logits
        twin = reference.probs if entry == "probs" else reference.logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = manual(x16, *params)
        expected = twin(x_ref, *params)
    else:
        target = indices if entry == "loss-indices" else probabilities.to(torch.bfloat16)
        target_ref = target if entry == "loss-indices" else target.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = functional.two_layer_net_loss(x16, target, *params, label_smoothing=0.1)
        expected = reference.loss(x_ref, target_ref, *params, label_smoothing=0.1)
    assert out.dtype == torch.float32
    assert_close_relative(out, expected, "value", rtol=1e-5)


@pytest.mark.parametrize("entry", ["probs", "logits", "loss-none", "loss-mean"])
def test_a_batch_of_one_row_keeps_its_batch_dimension(entry):
    x, indices, _, params = problem(N=1, H=5)
    if entry in ("probs", "logits"):
        manual = functional.two_layer_net if entry == "probs" else functional.two_layer_net_logits
        out = manual(x, *params)
        assert out.shape == (1, 4)
    else:
        reduction = entry[5:]
        out = functional.two_layer_net_loss(x, indices, *params, reduction=reduction)
        assert out.shape == ((1,) if reduction == "none" else ())
        assert_close_relative(out, reference.loss(x, indices, *params, reduction=reduction), "loss")


def test_vmap_over_samples_with_class_targets():
    """Under torch.func the labels are never read on the host (check_values off), and the values match."""
    x, indices, _, params = problem(N=6, H=5)
    per_sample = torch.func.vmap(lambda xi, ti: functional.two_layer_net_loss(xi, ti, *params))(x, indices)
    assert_close_relative(per_sample, reference.loss(x, indices, *params, reduction="none"), "per-sample loss")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ignore_index_outside_the_classes(reduction):
    """ignore_index = 5 with C = 4: rows labelled 5 are ignored, as F.cross_entropy does."""
    x, _, _, params = problem(N=6, H=5)
    target = torch.tensor([0, 5, 3, 1, 5, 2])
    manual = lambda x, *p: functional.two_layer_net_loss(x, target, *p, reduction=reduction, ignore_index=5)  # noqa: E731
    twin = lambda x, *p: reference.loss(x, target, *p, reduction=reduction, ignore_index=5)  # noqa: E731
    assert_matches_twin(manual, twin, [x, *params])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_full_label_smoothing_without_weight(reduction):
    x, indices, _, params = problem(N=6, H=5)
    manual = lambda x, *p: functional.two_layer_net_loss(x, indices, *p, reduction=reduction, label_smoothing=1.0)  # noqa: E731
    twin = lambda x, *p: reference.loss(x, indices, *p, reduction=reduction, label_smoothing=1.0)  # noqa: E731
    assert_matches_twin(manual, twin, [x, *params])


def _leaves(params, needs):
    return [p.clone().requires_grad_(n) for p, n in zip(params, needs)]


def test_gradients_in_forward_decision():
    rows = modes.PRECOMPUTE_MIN_ROWS
    x, indices, probabilities, params = problem(N=rows, H=3)
    leaves = _leaves(params, [True, False, True, False])
    decide = modes.gradients_in_forward
    assert decide(x, indices, leaves, "mean") == (False, True, False, True, False)
    assert decide(x.requires_grad_(), indices, leaves, "sum") == (True, True, False, True, False)
    assert decide(x[: rows - 1], indices, leaves, "mean") is None, "fewer rows than the threshold"
    assert decide(x, indices, leaves, "none") is None
    assert decide(x, probabilities.requires_grad_(), leaves, "mean") is None, "the target needs its gradient"
    assert decide(x.detach(), indices, _leaves(params, [False] * 4), "mean") is None, "no gradient needed"
    with torch.no_grad():
        assert decide(x, indices, leaves, "mean") is None
    with functional.loss_gradients_in_forward(True):
        assert decide(x[:1], indices[:1], leaves, "mean") == (True, True, False, True, False)


@pytest.mark.parametrize("in_forward", [False, True])
def test_the_loss_takes_the_strategy_asked_for(in_forward, monkeypatch):
    calls = []
    original = autograd.loss_and_gradients
    monkeypatch.setattr(autograd, "loss_and_gradients", lambda *a, **k: calls.append(1) or original(*a, **k))
    x, indices, _, params = problem(N=9, H=5)
    with functional.loss_gradients_in_forward(in_forward, chunk_rows=4):
        assert_matches_twin(lambda *t: functional.two_layer_net_loss(*t), reference.loss, [x, indices, *params])
    assert len(calls) == in_forward


def test_autocast_takes_a_weight_of_another_floating_dtype():
    x, indices, _, params = problem(N=7, H=5, dtype=torch.float32)
    weight = torch.tensor([0.5, 2.0, 1.5, 0.25], dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = functional.two_layer_net_loss(x, indices, *params, weight=weight)
    expected = reference.loss(x, indices, *params, weight=weight.float())
    assert loss.dtype == torch.float32
    assert_close_relative(loss, expected, "weighted loss", rtol=1e-5)
    with pytest.raises(TypeError, match=r"weight"):
        functional.two_layer_net_loss(x, indices, *params, weight=weight)


@pytest.mark.parametrize("entry", ["logits", "loss"])
def test_no_eager_plan_is_made_for_symbolic_sizes(monkeypatch, entry):
    """The lean paths' plan compares N: under make_fx(symbolic) it would become a guard, so none is made."""
    from torch.fx.experimental.proxy_tensor import make_fx

    made = []
    for name in ("eager_network_plan", "eager_loss_plan"):
        original = getattr(modes, name)
        monkeypatch.setattr(modes, name, lambda *a, original=original: made.append(a) or original(*a))
    x, target, _, params = problem(N=4, H=5)
    if entry == "logits":
        make_fx(functional.two_layer_net_logits, tracing_mode="symbolic")(x, *params)
    else:
        make_fx(lambda *args: functional.two_layer_net_loss(*args), tracing_mode="symbolic")(x, target, *params)
    assert made == []
    eager_call = functional.two_layer_net_logits if entry == "logits" else functional.two_layer_net_loss
    eager_call(x, *params) if entry == "logits" else eager_call(x, target, *params)
    assert len(made) == 1  # plain eager: made once, with the checks


def test_symbolic_sizes_are_checked_on_every_call():
    """Under make_fx(symbolic) the metadata cannot be hashed: the checks run, a bad x is refused by name."""
    from torch.fx.experimental.proxy_tensor import make_fx

    x, _, _, params = problem(N=4, H=5)
    make_fx(functional.two_layer_net, tracing_mode="symbolic")(x, *params)
    with pytest.raises(ValueError, match=r"x must have"):
        make_fx(functional.two_layer_net, tracing_mode="symbolic")(x[:, :2], *params)
