"""validation.check_loss_options: F.cross_entropy's options refused with the whole message, accepted at the bounds."""

from __future__ import annotations

import re

import pytest
import torch
from planted.twins import problem

from manualgrad import validation


def _check(weight=None, ignore_index=-100, label_smoothing=0.0, soft=False, autocast=False, dtype=torch.float64):
    x, indices, probabilities, (W1, _, W2, _) = problem(N=5, H=3, dtype=dtype)
    target = probabilities if soft else indices
    return validation.check_loss_options(weight, ignore_index, label_smoothing, target, W1, W2, autocast=autocast)


REFUSED = [
    (dict(ignore_index=True), TypeError, "ignore_index must be an int, got bool (True)"),
    (dict(ignore_index=1.5), TypeError, "ignore_index must be an int, got float (1.5)"),
    (dict(ignore_index=2**63), ValueError, f"ignore_index must fit in int64, got {2**63}"),
    (dict(ignore_index=-(2**63) - 1), ValueError, f"ignore_index must fit in int64, got {-(2**63) - 1}"),
    (dict(ignore_index=3, soft=True), ValueError, "ignore_index (3) applies to class-index targets only, not to "
     "probabilities (F.cross_entropy refuses it too); to drop rows, give them zero probabilities or leave them out"),
    (dict(label_smoothing=True), TypeError, "label_smoothing must be a float in [0, 1], got bool (True)"),
    (dict(label_smoothing="a"), TypeError, "label_smoothing must be a float in [0, 1], got str ('a')"),
    (dict(label_smoothing=1.5), ValueError, "label_smoothing must lie in [0, 1], got 1.5"),
    (dict(label_smoothing=-0.1), ValueError, "label_smoothing must lie in [0, 1], got -0.1"),
    (dict(label_smoothing=float("nan")), ValueError, "label_smoothing must lie in [0, 1], got nan"),
    (dict(weight=torch.ones(3, dtype=torch.float64)), ValueError,
     "weight must have shape (4,), one per class, got (3,)"),
    (dict(weight=torch.ones(4, dtype=torch.float32)), TypeError,
     "weight has dtype torch.float32 but the parameters have dtype torch.float64; "
     "convert it with weight.to(torch.float64)"),
]  # fmt: skip


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: str(c[2])[:40])
def test_refused_with_the_whole_message(case):
    kwargs, error, message = case
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        _check(**kwargs)


def test_accepted_at_the_bounds():
    assert _check() == (None, 0.0)
    assert _check(ignore_index=-(2**63)) == (None, 0.0) and _check(ignore_index=2**63 - 1) == (None, 0.0)
    assert _check(ignore_index=-100, soft=True) == (None, 0.0)
    for eps in (0, 1, 0.0, 1.0, 0.25):
        weight, smoothing = _check(label_smoothing=eps)
        assert weight is None and type(smoothing) is float and smoothing == eps
    weight = torch.ones(4, dtype=torch.float32)
    converted, _ = _check(weight=weight, autocast=True)
    assert converted.dtype == torch.float64 and torch.equal(converted, weight.double())
    same = torch.ones(4, dtype=torch.float64)
    assert _check(weight=same)[0] is same


def test_a_weight_that_requires_grad():
    weight = torch.ones(4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="^weight requires grad, but the loss is not differentiable in weight"):
        _check(weight=weight)
    assert _check(weight=weight, soft=True)[0] is weight
    with torch.no_grad():
        assert _check(weight=weight)[0] is weight
