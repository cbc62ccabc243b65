# ruff: noqa: E501  (whole error messages are compared, one per line)
"""validation.check_class_indices and the rest of check_loss_options, called directly.

check_class_indices answers True when every label counts, False when some equal an in-range
ignore_index (or the values cannot be read), and refuses any other label outside [0, C) with the
label as the caller gave it (uint64 included) and its position. Each case is run with a few labels
(read as a list) and with more than 64 (read with aminmax), and the switch between the two at 64
labels is observed with a spy.
"""

from __future__ import annotations

import re

import pytest
import torch
from planted.twins import problem

from manualgrad import validation

SIZES = [5, 64, 65, 200]  # the list path (<= 64 labels) and the aminmax path


def labels(values, n, dtype=torch.int64):
    """``values`` repeated to n labels, in that dtype."""
    return torch.tensor([values[i % len(values)] for i in range(n)], dtype=dtype)


# (labels, C, ignore_index, expected)
ANSWERS = [
    ([0, 1, 2], 3, -100, True),  # 0 is a valid label (lowest >= 0)
    ([1, 2], 3, -100, True),
    ([0, 1], 3, 2, True),  # ignore_index in [0, C) but no label equals it
    ([0, 1, 2], 3, 0, False),  # ignore_index 0 is in range and present
    ([0, 1, 2], 3, 2, False),
    ([0, -100, 2], 3, -100, False),  # the only label outside [0, C) is ignore_index
    ([0, 3, 1], 3, 3, False),  # ignore_index == C, present
    ([0, 1], 3, 3, True),
]  # fmt: skip


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.uint64])
@pytest.mark.parametrize("case", ANSWERS, ids=str)
def test_answers(case, dtype, n):
    values, C, ignore_index, expected = case
    if min(values) < 0 and not dtype.is_signed:
        pytest.skip("negative labels need a signed dtype")
    assert validation.check_class_indices(labels(values, n, dtype), C, ignore_index) is expected


def test_any_shape_is_read_flat():
    grid = torch.tensor([[0, 1], [2, 0]])  # (2, 2) int64: flattened, not read row by row
    assert validation.check_class_indices(grid, 3, -100) is True
    assert validation.check_class_indices(grid, 3, 1) is False
    assert validation.check_class_indices(labels([0, 1, 2], 130).reshape(2, 65), 3, -100) is True


def test_empty_and_unreadable():
    assert validation.check_class_indices(torch.zeros(0, dtype=torch.int64), 3, 0) is True

    class Labels(torch.Tensor):
        pass

    assert validation.check_class_indices(torch.tensor([0, 1]).as_subclass(Labels), 3, -100) is False


def _refusal(value, position, C, ignore_index):
    return re.escape(
        f"target holds class index {value} at position {position}; class indices must lie in [0, {C}) "
        f"or equal ignore_index ({ignore_index})"
    )


@pytest.mark.parametrize("n", SIZES)
def test_refuses_the_first_label_outside(n):
    values = [0, 1] * (n // 2 - 1) + [3, -1] + [0] * (n % 2)
    with pytest.raises(ValueError, match="^" + _refusal(3, 2 * (n // 2 - 1), 3, -100) + "$"):
        validation.check_class_indices(labels(values, n), 3, -100)
    with pytest.raises(ValueError, match="^" + _refusal(-1, 2 * (n // 2 - 1) + 1, 3, 3) + "$"):
        validation.check_class_indices(labels(values, n), 3, 3)


@pytest.mark.parametrize("n", SIZES)
def test_uint64_labels_are_reported_as_given(n):
    big = 2**63 + 5  # wraps to a negative int64 inside; reported unwrapped
    with pytest.raises(ValueError, match="^" + _refusal(big, n - 1, 3, -100) + "$"):
        validation.check_class_indices(labels([1] * (n - 1) + [big], n, torch.uint64), 3, -100)
    with pytest.raises(ValueError, match="^" + _refusal(2**64 - 1, 0, 3, -100) + "$"):
        validation.check_class_indices(labels([2**64 - 1], n, torch.uint64), 3, -100)
    # a label that .long() wraps onto ignore_index is no ignored row: refused, as given
    with pytest.raises(ValueError, match="^" + _refusal(2**64 - 100, n - 1, 3, -100) + "$"):
        validation.check_class_indices(labels([1] * (n - 1) + [2**64 - 100], n, torch.uint64), 3, -100)
    # a label of 0 outside [0, C) (C = 0) is not wrapped: reported as 0
    with pytest.raises(ValueError, match="^" + _refusal(0, 0, 0, -100) + "$"):
        validation.check_class_indices(labels([0], n, torch.uint64), 0, -100)


@pytest.mark.parametrize("n, kernel", [(1, False), (64, False), (65, True), (500, True)])
def test_a_few_labels_are_read_as_a_list(monkeypatch, n, kernel):
    calls = []
    aminmax = torch.aminmax

    def spy(*args, **kwargs):
        calls.append(args[0].numel())
        return aminmax(*args, **kwargs)

    monkeypatch.setattr(torch, "aminmax", spy)
    assert validation.check_class_indices(labels([0, 1, 2], n), 3, -100) is True
    assert calls == ([n] if kernel else [])


# check_loss_options beyond the shortcut for the defaults


def _options(weight=None, ignore_index=-100, label_smoothing=0.0, soft=False, autocast=False):
    x, indices, probabilities, (W1, _, W2, _) = problem(N=5, H=3, dtype=torch.float64)
    target = probabilities if soft else indices
    return validation.check_loss_options(weight, ignore_index, label_smoothing, target, W1, W2, autocast=autocast)


REFUSED = [
    # near the defaults: only an int -100 with a real smoothing of 0 and no weight skips the checks
    (dict(ignore_index=-100.0), TypeError, "ignore_index must be an int, got float (-100.0)"),
    (dict(label_smoothing=False), TypeError, "label_smoothing must be a float in [0, 1], got bool (False)"),
    (dict(ignore_index=100, soft=True), ValueError, "ignore_index (100) applies to class-index targets only, not to "
     "probabilities (F.cross_entropy refuses it too); to drop rows, give them zero probabilities or leave them out"),
    (dict(ignore_index=-101, soft=True), ValueError, "ignore_index (-101) applies to class-index targets only, not to "
     "probabilities (F.cross_entropy refuses it too); to drop rows, give them zero probabilities or leave them out"),
    # the weight, named in each message
    (dict(weight=[1.0, 1.0, 1.0, 1.0]), TypeError,
     "weight must be a torch.Tensor, got list; convert it with torch.as_tensor(weight, dtype=..., device=...)"),
    (dict(weight=torch.ones(4, dtype=torch.float64).to_sparse()), TypeError,
     "weight must be a dense (torch.strided) tensor, got layout torch.sparse_coo; convert it with weight.to_dense()"),
    (dict(weight=torch.ones(4, dtype=torch.int64)), TypeError,
     "weight must be a floating-point tensor, got dtype torch.int64; "
     "convert it with weight.to(torch.float32) or another floating dtype"),
    (dict(weight=torch.ones(4, dtype=torch.float64, device="meta")), RuntimeError,
     "Expected all tensors to be on the same device, but found at least two devices: weight is on meta and W1 is on cpu"),
    (dict(weight=torch.ones(4, dtype=torch.float64, requires_grad=True)), RuntimeError,
     "weight requires grad, but the loss is not differentiable in weight for class-index targets "
     "(F.cross_entropy refuses it too); pass weight.detach()"),
]  # fmt: skip


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: str(c[2])[:40])
def test_options_refused_with_the_whole_message(case):
    kwargs, error, message = case
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        _options(**kwargs)


def test_options_accepted_near_the_defaults():
    assert _options(ignore_index=-100, label_smoothing=0) == (None, 0.0)
    assert _options(ignore_index=100) == (None, 0.0) and _options(ignore_index=-101) == (None, 0.0)
    weight = torch.ones(4, dtype=torch.float64, requires_grad=True)
    assert _options(weight=weight, soft=True)[0] is weight  # differentiable for probabilities
    with torch.no_grad():
        assert _options(weight=weight)[0] is weight
