"""Every path against the native-autograd twin, gradcheck, negative controls, training, the CLI."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from conftest import DEVICES, DTYPES, assert_matches_twin, make_problem, value_and_grads

import manualgrad
from manualgrad import TwoLayerNet, autograd, eager, functional, reference, verify

REDUCTIONS = ["mean", "sum", "none"]
SIZES = [(1, 2, 1, 2), (16, 2, 32, 2), (33, 3, 7, 5)]  # (N, D, H, C)
PATHS = {
    "probs": (functional.two_layer_net, reference.probs),
    "logits": (functional.two_layer_net_logits, reference.logits),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("path", PATHS)
def test_network_paths_match_autograd(device, dtype, size, path):
    x, _, params = make_problem(*size, device=device, dtype=dtype)
    grad_out = torch.randn(size[0], size[3], dtype=dtype, device=device)  # random: ones would cancel in softmax
    manual, twin = PATHS[path]
    assert_matches_twin(manual, twin, [x, *params], grad_out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
@pytest.mark.usefixtures("either_loss_strategy")
def test_loss_matches_autograd(device, dtype, size, reduction, soft):
    x, target, params = make_problem(*size, device=device, dtype=dtype, soft=soft)
    grad_out = torch.rand(size[0], dtype=dtype, device=device) if reduction == "none" else None
    assert_matches_twin(
        lambda x, *p: functional.two_layer_net_loss(x, target, *p, reduction=reduction),
        lambda x, *p: reference.loss(x, target, *p, reduction=reduction),
        [x, *params],
        grad_out,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_target_gradient_matches_autograd(device, reduction):
    x, target, params = make_problem(8, 2, 16, 3, device=device, soft=True)
    assert_matches_twin(
        lambda t, x, *p: functional.two_layer_net_loss(x, t, *p, reduction=reduction),
        lambda t, x, *p: reference.loss(x, t, *p, reduction=reduction),
        [target, x, *params],
        torch.rand(8, dtype=x.dtype, device=device) if reduction == "none" else None,
    )


@pytest.mark.parametrize("device", DEVICES)
def test_float64_default_size_agrees_to_1e10_relative(device):
    """Done-means of the core issue: all three paths at 2/500/2 agree to ~1e-10 relative."""
    x, target, params = make_problem(64, 2, 500, 2, device=device)
    grad_out = torch.randn(64, 2, dtype=torch.float64, device=device)
    cases = [
        (functional.two_layer_net, reference.probs, grad_out),
        (functional.two_layer_net_logits, reference.logits, grad_out),
        (lambda x, *p: functional.two_layer_net_loss(x, target, *p), lambda x, *p: reference.loss(x, target, *p), None),
    ]
    for manual, twin, upstream in cases:
        value, grads = value_and_grads(manual, [x, *params], upstream)
        ref_value, ref_grads = value_and_grads(twin, [x, *params], upstream)
        for a, b in zip((value, *grads), (ref_value, *ref_grads)):
            relative = (a - b).detach().abs().max() / b.detach().abs().max().clamp_min(1e-300)
            assert float(relative) < 1e-10


GRADCHECK_CASES = {
    "probs": lambda t: functional.two_layer_net,
    "logits": lambda t: functional.two_layer_net_logits,
    "loss-mean": lambda t: lambda x, *p: functional.two_layer_net_loss(x, t, *p),
    "loss-sum": lambda t: lambda x, *p: functional.two_layer_net_loss(x, t, *p, reduction="sum"),
    "loss-none": lambda t: lambda x, *p: functional.two_layer_net_loss(x, t, *p, reduction="none"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", GRADCHECK_CASES)
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
@pytest.mark.usefixtures("either_loss_strategy")
def test_gradcheck_float64(device, case, soft):
    x, target, params = make_problem(5, 3, 8, 3, device=device, soft=soft)
    inputs = [t.detach().requires_grad_() for t in (x, *params)]
    assert torch.autograd.gradcheck(GRADCHECK_CASES[case](target), inputs)


# ---------------------------------------------------------------------------------------
# Negative controls: a deliberately broken backward must be caught by the same checks.
# ---------------------------------------------------------------------------------------


# where each lean Function of eager.py returns (dx, dW1, db1, dW2, db2) among its gradients
LEAN_GRADIENTS = {
    eager.EagerLogitsFunction: (0, 1, 2, 3, 4),
    eager.EagerProbsFunction: (0, 1, 2, 3, 4),
    eager.EagerLossFunction: (0, 2, 3, 4, 5),  # (x, target, W1, b1, W2, b2, reduction, plan)
}


def _broken_lean_backward(backward, positions, change):
    """The lean ``backward`` with its (dx, dW1, db1, dW2, db2) replaced by ``change``'s."""

    def five(*args):
        gradients = backward(*args)
        return tuple(gradients[i] for i in positions)

    broken = change(five)

    def apply(ctx, *grads):
        if not eager._fast_backward(grads[0]):  # the general formulas: broken once, in the kernel
            return backward(ctx, *grads)
        gradients = list(backward(ctx, *grads))
        for i, gradient in zip(positions, broken(ctx, *grads)):
            gradients[i] = gradient
        return tuple(gradients)

    return apply


def _patch_everywhere(monkeypatch, change):
    """Break eq. (10)-(18) in both layers that write them: the kernel of the general Functions
    (``autograd.backward_from_logits``) and each lean eager Function's backward, which writes them
    out (called by autograd's engine as ``_backward_cls.apply``). ``change(original)`` gives the broken
    one of a function that returns (dx, dW1, db1, dW2, db2)."""
    monkeypatch.setattr(autograd, "backward_from_logits", change(autograd.backward_from_logits))
    for function, positions in LEAN_GRADIENTS.items():
        broken = _broken_lean_backward(function.backward, positions, change)
        monkeypatch.setattr(function._backward_cls, "apply", broken)


def _broken(fault):
    def change(original):
        def broken_backward(*args, **flags):
            return tuple(fault(list(original(*args, **flags))))

        return broken_backward

    return change


FAULTS = {
    "drop 1/N (dW2 times N)": lambda g: [g[0], g[1], g[2], g[3] * 7, g[4]],
    "flip sign of y_hat - y (dW2, db2)": lambda g: [g[0], g[1], g[2], -g[3], -g[4]],
    "dx missing": lambda g: [torch.zeros_like(g[0]), g[1], g[2], g[3], g[4]],
    "db1 scaled by 1.01": lambda g: [g[0], g[1], g[2] * 1.01, g[3], g[4]],
}


@pytest.mark.parametrize("fault", FAULTS)
def test_negative_control_broken_backward_is_caught(monkeypatch, fault):
    _patch_everywhere(monkeypatch, _broken(FAULTS[fault]))
    x, target, params = make_problem(7, 2, 8, 2)
    with pytest.raises(AssertionError):
        assert_matches_twin(
            lambda x, *p: functional.two_layer_net_loss(x, target, *p, reduction="none"),
            lambda x, *p: reference.loss(x, target, *p, reduction="none"),
            [x, *params],
        )
    inputs = [t.detach().requires_grad_() for t in (x, *params)]
    assert not torch.autograd.gradcheck(functional.two_layer_net_logits, inputs, raise_exception=False)
    report = verify.verify(["cpu"], [torch.float64], batch=8, hidden=8, gradcheck=False)
    assert not report.passed


def test_negative_control_dropped_tanh_derivative_is_caught(monkeypatch):
    """The article's most common slip: forgetting (1 - a1^2) in eq. (11)."""

    def without_tanh_derivative(original):
        def broken(grad_z2, x, W1, W2, a1, *rest, **flags):
            return original(grad_z2, x, W1, W2, torch.zeros_like(a1), *rest, **flags)  # a1 := 0: 1 - a1^2 == 1

        return broken

    monkeypatch.setattr(autograd, "backward_from_logits", without_tanh_derivative(autograd.backward_from_logits))
    monkeypatch.setattr(eager, "tanh_backward", lambda grad_a1, a1: grad_a1)  # the lean Functions' eq. (11)
    x, _, params = make_problem(6, 2, 8, 2)
    inputs = [t.detach().requires_grad_() for t in (x, *params)]
    assert not torch.autograd.gradcheck(functional.two_layer_net, inputs, raise_exception=False)


def test_negative_control_wrong_loss_gradient_is_caught(monkeypatch):
    original = autograd.loss_grad_logits
    monkeypatch.setattr(autograd, "loss_grad_logits", lambda *a, **k: -original(*a, **k))
    fused = eager.loss_grad_logits_fused
    monkeypatch.setattr(eager, "loss_grad_logits_fused", lambda *args: -fused(*args))
    x, target, params = make_problem(6, 2, 8, 2)
    inputs = [t.detach().requires_grad_() for t in (x, *params)]
    assert not torch.autograd.gradcheck(
        lambda x, *p: functional.two_layer_net_loss(x, target, *p), inputs, raise_exception=False
    )


# ---------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------


def test_module_parameters_shapes_init_and_repr():
    torch.manual_seed(0)
    model = TwoLayerNet()
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == [
        ("W1", (2, 500)),
        ("b1", (500,)),
        ("W2", (500, 2)),
        ("b2", (2,)),
    ]
    assert model.W1.abs().max() <= 1 / math.sqrt(2) and model.b1.abs().max() <= 1 / math.sqrt(2)
    assert model.W2.abs().max() <= 1 / math.sqrt(500) and model.b2.abs().max() <= 1 / math.sqrt(500)
    assert model.W1.std() > 0.3  # uniform(-0.707, 0.707) has std 0.41: really initialised
    assert "in_features=2, hidden_features=500, out_features=2" in repr(model)


@pytest.mark.parametrize("device", DEVICES)
def test_module_methods_match_the_twin(device):
    torch.manual_seed(0)
    model = TwoLayerNet(3, 20, 4, device=device, dtype=torch.float64)
    x = torch.randn(9, 3, dtype=torch.float64, device=device)
    target = torch.randint(0, 4, (9,), device=device)
    params = list(model.parameters())
    z2 = reference.logits(x, *params)
    torch.testing.assert_close(model.logits(x), z2)
    torch.testing.assert_close(model(x), torch.softmax(z2, 1))
    torch.testing.assert_close(model.loss(x, target), torch.nn.functional.cross_entropy(z2, target))
    assert torch.equal(model.predict(x), z2.argmax(1))
    assert model.predict(x[0]).shape == () and model(x[0]).shape == (4,)


def test_sgd_trains_the_module():
    torch.manual_seed(0)
    x = torch.randn(256, 2)
    target = (x[:, 0] * x[:, 1] > 0).long()  # XOR-like: needs the hidden layer
    model = TwoLayerNet(hidden_features=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    first = model.loss(x, target).item()
    for _ in range(300):
        optimizer.zero_grad()
        model.loss(x, target).backward()
        optimizer.step()
    assert model.loss(x, target).item() < 0.25 * first
    assert (model.predict(x) == target).float().mean() > 0.95


def test_public_api_names():
    assert callable(manualgrad.functional.two_layer_net)
    assert callable(manualgrad.functional.two_layer_net_logits)
    assert callable(manualgrad.functional.two_layer_net_loss)
    assert manualgrad.TwoLayerNet is TwoLayerNet


# ---------------------------------------------------------------------------------------
# The verify command
# ---------------------------------------------------------------------------------------


# verify's coverage, report, progress and --json: tests/test_verify.py


def test_verify_command_rejects_bad_options():
    result = subprocess.run(
        [sys.executable, "-m", "manualgrad", "verify", "--batch", "0"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "positive" in result.stderr


def test_layers_depend_one_way_and_kernels_never_ask_the_mode():
    """functional -> eager -> autograd -> chunked -> kernels (and tangents, factored, relative); modes answers
    mode questions. The kernels import none of the wiring and call none of PyTorch's mode queries:
    the wiring passes what they need."""
    import ast
    import inspect

    from manualgrad import chunked, factored, kernels, modes, relative, tangents

    def imported(module):
        names = set()
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                names |= {node.module} if node.module else {alias.name for alias in node.names}
        return names

    assert imported(kernels) == {"tangents"}
    assert imported(chunked) == {"factored", "kernels", "relative"}
    assert imported(tangents) == imported(factored) == imported(relative) == set()
    assert imported(modes) == set()
    assert not imported(autograd) & {"functional", "module", "eager"}
    assert not imported(eager) & {"functional", "module"}
    for module in (kernels, chunked, tangents, factored, relative):
        source = inspect.getsource(module)
        for query in ("is_grad_enabled", "is_compiling", "functorch", "forward_ad", "differentiated", "autocast"):
            assert query not in source, f"{module.__name__} asks {query}"
