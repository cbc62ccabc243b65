"""The lean preamble: boundary checks decided once per combination of metadata still refuse
every bad input that comes after a good one with the same parameters."""

from __future__ import annotations

import pytest
import torch
from conftest import make_problem

from manualgrad import boundary, functional, reference


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


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
)
@pytest.mark.parametrize("moved", ["x", "target", "W1", "b1", "W2", "b2"])
def test_after_a_good_call_a_tensor_on_another_device_is_still_refused(warm, moved, device):
    """The key holds a CPU tensor's device as ``is_cpu`` and any other's as its torch.device: after
    a good call on ``device``, a tensor of the same metadata on another device (meta here) is
    another key, and the checks refuse it (on CUDA: two devices that are both not the CPU)."""
    x, target, params = warm
    x, target, (W1, b1, W2, b2) = x.to(device), target.to(device), [p.to(device) for p in params]
    tensors = dict(x=x, target=target, W1=W1, b1=b1, W2=W2, b2=b2)
    functional.two_layer_net_loss(**tensors)  # the good call on this device
    functional.two_layer_net_logits(**{name: t for name, t in tensors.items() if name != "target"})
    tensors[moved] = tensors[moved].to("meta")
    named = rf"\b{moved} is on meta"  # the boundary's message, not an op's
    with pytest.raises(RuntimeError, match=named):
        functional.two_layer_net_loss(**tensors)
    if moved != "target":
        network = {name: t for name, t in tensors.items() if name != "target"}
        with pytest.raises(RuntimeError, match=named):
            functional.two_layer_net_logits(**network)


def test_clearing_the_cache_forgets_the_last_key(warm, monkeypatch):
    """``_checked.clear()`` (how tests make a patched threshold take effect) also forgets the last
    key found, which is compared before the dict: the next call is checked and planned anew."""
    x, target, params = warm
    checks = []
    original = boundary._check_network
    monkeypatch.setattr(boundary, "_check_network", lambda *a: checks.append(1) or original(*a))
    functional.two_layer_net_loss(x, target, *params)
    assert checks == [] and boundary._checked.last[0] != ()
    boundary._checked.clear()
    assert boundary._checked.last[0] == ()
    functional.two_layer_net_loss(x, target, *params)
    assert checks == [1]


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(boundary, "_checked", boundary._Checked())
    monkeypatch.setattr(boundary, "_MAX_CHECKED", 3)
    for N in range(1, 8):
        x, _, params = make_problem(N, D=3, H=8, C=4)
        functional.two_layer_net_logits(x, *params)
    assert len(boundary._checked) == 3
    # past the bound, each call is checked and planned anew, and still right (lean path, N=6 not kept)
    x, target, params = make_problem(6, D=3, H=8, C=4)
    leaves = [p.requires_grad_() for p in params]
    pairs = ((functional.two_layer_net_logits, reference.logits), (functional.two_layer_net_loss, reference.loss))
    soft = torch.softmax(torch.randn(6, 4, dtype=x.dtype), 1)  # (6, 4)  probabilities: the general loss
    logits, loss = pairs
    cases = [(logits, (x,)), (logits, (x[0],)), (loss, (x, target)), (loss, (x, soft)), (loss, (x[0], target[0]))]
    for (manual, twin), inputs in cases:
        out, expected = manual(*inputs, *leaves), twin(*inputs, *leaves)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(torch.autograd.grad(out.sum(), leaves), torch.autograd.grad(expected.sum(), leaves))
    with pytest.raises(ValueError, match="class index"):  # uint64 label that .long() wraps onto -100: refused
        functional.two_layer_net_loss(x, torch.tensor([2**64 - 100] + [0] * 5, dtype=torch.uint64), *leaves)
    assert len(boundary._checked) == 3


class _ListShaped(torch.Tensor):
    """A parameter whose shape is a list: its metadata cannot be hashed, so it is checked on every call."""

    @property
    def shape(self):
        return list(super().shape)


@pytest.mark.parametrize("entry", ["logits", "loss"])
def test_metadata_that_cannot_be_hashed_is_checked_on_every_call(entry):
    x, target, params = make_problem(5, D=3, H=8, C=4)
    W1 = params[0].as_subclass(_ListShaped)
    for _ in range(2):
        inputs = (x,) if entry == "logits" else (x, target)
        manual = functional.two_layer_net_logits if entry == "logits" else functional.two_layer_net_loss
        out, expected = manual(*inputs, W1, *params[1:]), getattr(reference, entry)(*inputs, *params)
        torch.testing.assert_close(torch.Tensor(out), expected)
    assert len(boundary._checked) == 0
    with pytest.raises(ValueError, match="W2 must have shape"):
        functional.two_layer_net_logits(x, W1, params[1], params[2][:3], params[3])


@pytest.mark.parametrize("x_shape, match", [((), r"got \(\) \(rank 0\)"), ((2, 3, 3), r"got \(2, 3, 3\) \(rank 3\)")])
@pytest.mark.parametrize("entry", ["logits", "probs", "loss"])
def test_x_of_another_rank_is_refused_in_plain_eager_mode(entry, x_shape, match):
    """Plain eager mode, where the lean paths route the call first: the same error as every other mode."""
    _, target, params = make_problem(3, D=3, H=8, C=4)
    x = torch.zeros(x_shape, dtype=params[0].dtype)
    call = {"logits": functional.two_layer_net_logits, "probs": functional.two_layer_net}.get(entry)
    with pytest.raises(ValueError, match=match):
        call(x, *params) if call else functional.two_layer_net_loss(x, target, *params)


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"ignore_index": -100.0}, TypeError, "ignore_index must be an int"),
        ({"ignore_index": True}, TypeError, "ignore_index must be an int"),
        ({"label_smoothing": torch.tensor(0.0)}, TypeError, "label_smoothing must be a float"),
        ({"label_smoothing": -0.5}, ValueError, r"label_smoothing must lie in \[0, 1\]"),
    ],
)
def test_after_a_good_call_options_that_look_like_the_defaults_are_still_refused(warm, options, error, match):
    """The defaults return at once from check_loss_options; values equal to them but of another kind do not."""
    x, target, params = warm
    with pytest.raises(error, match=match):
        functional.two_layer_net_loss(x, target, *params, **options)
