"""The lean preamble: boundary checks decided once per combination of metadata still refuse
every bad input that comes after a good one with the same parameters."""

from __future__ import annotations

import pytest
import torch
from conftest import make_problem

from manualgrad import functional


@pytest.fixture
def warm():
    """Parameters, x and labels that have passed the checks once (so their metadata is cached)."""
    x, target, params = make_problem(6, D=3, H=8, C=4)
    functional.two_layer_net_loss(x, target, *params)
    functional.two_layer_net_logits(x, *params)
    return x, target, params


def test_after_a_good_call_a_bad_x_is_still_refused(warm):
    x, _, params = warm
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3\)"):
        functional.two_layer_net_logits(torch.randn(6, 2, dtype=x.dtype), *params)
    with pytest.raises(TypeError, match="dtype"):
        functional.two_layer_net_logits(x.float(), *params)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        functional.two_layer_net_logits(x.tolist(), *params)


def test_after_a_good_call_bad_parameters_are_still_refused(warm):
    x, _, (W1, b1, W2, b2) = warm
    with pytest.raises(ValueError, match="b1 must have shape"):
        functional.two_layer_net(x, W1, b1[:-1], W2, b2)
    with pytest.raises(TypeError, match="dtype"):
        functional.two_layer_net(x, W1, b1, W2.float(), b2)


def test_after_a_good_call_bad_labels_are_still_refused(warm):
    x, target, params = warm
    bad = target.clone()
    bad[3] = 4
    with pytest.raises(ValueError, match="class index 4 at position 3"):
        functional.two_layer_net_loss(x, bad, *params)
    with pytest.raises(ValueError, match="class index -1 at position 0"):
        functional.two_layer_net_loss(x, torch.full_like(target, -1), *params)
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        functional.two_layer_net_loss(x, target[:5], *params)
    with pytest.raises(TypeError, match="integer"):
        functional.two_layer_net_loss(x, target.double(), *params)


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(functional, "_checked", {})
    monkeypatch.setattr(functional, "_MAX_CHECKED", 3)
    for N in range(1, 8):
        x, _, params = make_problem(N, D=3, H=8, C=4)
        functional.two_layer_net_logits(x, *params)
    assert len(functional._checked) == 3
