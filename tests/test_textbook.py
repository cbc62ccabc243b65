"""manualgrad.textbook against its native-autograd twin, and the fast functional API against textbook.

Each entry point: the value, then every gradient, against manualgrad.reference in float64 and
float32; gradcheck and gradgradcheck in float64; Hessian-vector products against the twin's; a
broken variant that must fail. Then manualgrad.functional (the fast layer) must equal the
textbook in values and every gradient, including the chunked loss that computes its gradients
in the forward. Letters: N batch, D inputs, H hidden, C classes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from manualgrad import functional, reference, textbook

# Tolerances per dtype, relative to the largest entry of what is compared (see assert_close_relative):
# rounding of sums over up to N = 3000 rows.
TOLERANCES = {torch.float64: 1e-10, torch.float32: 5e-5}
DTYPES = [torch.float64, torch.float32]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
NAMES = ("x", "W1", "b1", "W2", "b2")


def make_inputs(N=6, D=3, H=5, C=4, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(N, D), (D, H), (H,), (H, C), (C,)]
    tensors = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
    tensors[1] /= D**0.5
    tensors[3] /= H**0.5
    inputs = [t.to(dtype=dtype, device=device).requires_grad_() for t in tensors]
    indices = torch.randint(0, C, (N,), generator=g).to(device)
    probabilities = torch.softmax(torch.randn(N, C, generator=g, dtype=torch.float64), 1).to(dtype=dtype, device=device)
    return inputs, indices, probabilities.requires_grad_()


def entry_points(indices, probabilities, reduction="mean"):
    """(name, textbook function, twin, fast function, leaves beyond x and the parameters)."""
    return {
        "probs": (textbook.two_layer_net, reference.probs, functional.two_layer_net, ()),
        "logits": (textbook.two_layer_net_logits, reference.logits, functional.two_layer_net_logits, ()),
        "loss_indices": (
            lambda x, *p: textbook.two_layer_net_loss(x, indices, *p, reduction=reduction),
            lambda x, *p: reference.loss(x, indices, *p, reduction=reduction),
            lambda x, *p: functional.two_layer_net_loss(x, indices, *p, reduction=reduction),
            (),
        ),
        "loss_probabilities": (
            lambda y, x, *p: textbook.two_layer_net_loss(x, y, *p, reduction=reduction),
            lambda y, x, *p: reference.loss(x, y, *p, reduction=reduction),
            lambda y, x, *p: functional.two_layer_net_loss(x, y, *p, reduction=reduction),
            (probabilities,),
        ),
    }


ENTRY_POINTS = ["probs", "logits", "loss_indices", "loss_probabilities"]
REDUCTIONS = ["mean", "sum", "none"]


def value_and_grads(fn, leaves, upstream_seed=1):
    out = fn(*leaves)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=torch.float64)
    grads = torch.autograd.grad(out, leaves, upstream.to(out))
    return out.detach(), grads


def assert_close_relative(actual, expected, dtype, name=""):
    """|actual - expected| <= tol * (|expected| + max |expected|): relative to the size of the tensor."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}")


def assert_same(fn, twin, leaves, dtype, names):
    """Forward first, then every gradient, with the dtype's tolerances."""
    value, grads = value_and_grads(fn, leaves)
    expected_value, expected_grads = value_and_grads(twin, leaves)
    assert_close_relative(value, expected_value, dtype, "value")
    for name, grad, expected in zip(names, grads, expected_grads):
        assert_close_relative(grad, expected, dtype, f"grad {name}")


def leaves_and_names(extra, inputs):
    names = (("target",) if extra else ()) + NAMES
    return (*extra, *inputs), names


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_textbook_value_and_every_gradient_match_the_autograd_twin(entry, reduction, dtype, device):
    if reduction != "mean" and not entry.startswith("loss"):
        pytest.skip("reductions apply to the loss only")
    inputs, indices, probabilities = make_inputs(dtype=dtype, device=device)
    fn, twin, _, extra = entry_points(indices, probabilities, reduction)[entry]
    leaves, names = leaves_and_names(extra, inputs)
    assert_same(fn, twin, leaves, dtype, names)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_textbook_gradcheck_and_gradgradcheck(entry, reduction):
    if reduction != "mean" and not entry.startswith("loss"):
        pytest.skip("reductions apply to the loss only")
    inputs, indices, probabilities = make_inputs(N=4, H=3, C=3)
    fn, _, _, extra = entry_points(indices, probabilities, reduction)[entry]
    leaves, _ = leaves_and_names(extra, inputs)
    assert gradcheck(fn, leaves)
    assert gradgradcheck(fn, leaves)


def hvp(fn, leaves, seed=2):
    """Hessian-vector product of sum(fn * fixed weights) with a random direction v, by double backward."""
    out = fn(*leaves)
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(out.shape, generator=g, dtype=out.dtype)
    v = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in leaves]
    grads = torch.autograd.grad((out * weights).sum(), leaves, create_graph=True)
    pairs = [(grad, direction) for grad, direction in zip(grads, v) if grad.requires_grad]  # dz2/db2 is constant
    outputs, directions = zip(*pairs)
    return torch.autograd.grad(outputs, leaves, directions, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_textbook_hessian_vector_products_equal_autograd(entry):
    inputs, indices, probabilities = make_inputs()
    fn, twin, _, extra = entry_points(indices, probabilities)[entry]
    leaves, names = leaves_and_names(extra, inputs)
    for name, ours, expected in zip(names, hvp(fn, leaves), hvp(twin, leaves)):
        assert_close_relative(ours, expected, torch.float64, f"HVP {name}")


def test_textbook_hvp_with_torch_autograd_functional():
    inputs, indices, _ = make_inputs()
    x, *params = inputs
    v = tuple(torch.ones_like(p) for p in params)
    _, ours = torch.autograd.functional.hvp(lambda *p: textbook.two_layer_net_loss(x, indices, *p), tuple(params), v)
    _, expected = torch.autograd.functional.hvp(lambda *p: reference.loss(x, indices, *p), tuple(params), v)
    for name, a, b in zip(NAMES[1:], ours, expected):
        assert_close_relative(a, b, torch.float64, f"HVP {name}")


class SavedHiddenProbs(textbook.Probs):
    """Broken on purpose: backward reuses a1 computed outside the record, cutting double backward."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs, textbook.hidden(*inputs[:3]).detach(), output)

    @staticmethod
    def backward(ctx, grad_y_hat):
        x, W1, b1, W2, b2, a1, y_hat = ctx.saved_tensors
        grad_z2 = y_hat * (grad_y_hat - (grad_y_hat * y_hat).sum(1, keepdim=True))
        return textbook.backward_from_z2(grad_z2, x, W1, W2, a1, ctx.needs_input_grad)


def test_negative_control_a_saved_a1_passes_gradcheck_but_fails_double_backward():
    inputs, _, _ = make_inputs(N=4, H=3, C=3)
    assert gradcheck(SavedHiddenProbs.apply, inputs)  # first order is right ...
    assert not gradgradcheck(SavedHiddenProbs.apply, inputs, raise_exception=False)  # ... second order is not
    for ours, expected in zip(hvp(SavedHiddenProbs.apply, inputs), hvp(reference.probs, inputs)):
        if not torch.allclose(ours, expected):
            break
    else:
        pytest.fail("the broken variant's HVP equals autograd's: the HVP comparison cannot catch this bug")


def test_negative_control_a_dropped_1_over_N_is_caught(monkeypatch):
    """A backward that forgets the 1/N of the mean (delta2 N times too large) must fail assert_same."""

    def without_1_over_N(grad_z2, x, *rest):
        return original(grad_z2 * x.shape[0], x, *rest)

    original = textbook.backward_from_z2
    monkeypatch.setattr(textbook, "backward_from_z2", without_1_over_N)
    inputs, indices, probabilities = make_inputs()
    fn, twin, _, _ = entry_points(indices, probabilities)["loss_indices"]
    with pytest.raises(AssertionError, match="grad"):
        assert_same(fn, twin, inputs, torch.float64, NAMES)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (lambda x, p: (x[0], *p), r"x must have shape \(N, 3\)"),
        (lambda x, p: (x, p[0].T, *p[1:]), "W1, b1, W2, b2 must have shapes"),
        (lambda x, p: (x, p[0], p[1], p[2], p[3][:-1]), "W1, b1, W2, b2 must have shapes"),
    ],
)
def test_textbook_rejects_shapes_that_would_broadcast(args, match):
    inputs, _, _ = make_inputs()
    with pytest.raises(ValueError, match=match):
        textbook.two_layer_net(*args(inputs[0], inputs[1:]))


def test_textbook_loss_rejects_bad_targets_and_reductions():
    (x, *params), indices, probabilities = make_inputs()
    with pytest.raises(ValueError, match="target must be"):
        textbook.two_layer_net_loss(x, probabilities[:, :2], *params)
    with pytest.raises(ValueError, match="target must be"):
        textbook.two_layer_net_loss(x, indices[:, None], *params)
    with pytest.raises(ValueError, match="reduction"):
        textbook.two_layer_net_loss(x, indices, *params, reduction="avg")
    with pytest.raises(RuntimeError):  # a class index outside [0, C): never a silent zero row
        textbook.two_layer_net_loss(x, indices + 4, *params)


# ----------------------------------------------------------------------------------------
# The fast layer (manualgrad.functional) equals the textbook
# ----------------------------------------------------------------------------------------

FAST_SIZES = [(5, 3, 7, 4), (300, 2, 64, 2), (2049, 2, 64, 3), (3000, 2, 64, 2)]  # (N, D, H, C)


def fast_and_textbook_loss(target, reduction):
    return (
        lambda x, *p: functional.two_layer_net_loss(x, target, *p, reduction=reduction),
        lambda x, *p: textbook.two_layer_net_loss(x, target, *p, reduction=reduction),
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", FAST_SIZES, ids=lambda s: "N{}-D{}-H{}-C{}".format(*s))
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_fast_functional_equals_textbook(entry, size, dtype):
    inputs, indices, probabilities = make_inputs(*size, dtype=dtype)
    textbook_fn, _, fast_fn, extra = entry_points(indices, probabilities)[entry]
    leaves, names = leaves_and_names(extra, inputs)
    assert_same(fast_fn, textbook_fn, leaves, dtype, names)  # a differentiated target: gradients in backward
    if entry == "loss_probabilities":  # the target not differentiated: from 256 rows, gradients in the forward
        fast_fn, textbook_fn = fast_and_textbook_loss(probabilities.detach(), "mean")
        assert_same(fast_fn, textbook_fn, inputs, dtype, NAMES)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
@pytest.mark.parametrize("enabled", [True, False], ids=["in_forward", "in_backward"])
def test_fast_loss_gradients_in_forward_in_chunks_equal_textbook(enabled, soft, reduction):
    inputs, indices, probabilities = make_inputs(N=30, H=6, C=3)
    fast_fn, textbook_fn = fast_and_textbook_loss(probabilities.detach() if soft else indices, reduction)
    with functional.loss_gradients_in_forward(enabled, chunk_rows=7):  # 30 rows: chunks of 7, 7, 7, 7, 2
        fast = value_and_grads(fast_fn, inputs)
    expected = value_and_grads(textbook_fn, inputs)
    assert_close_relative(fast[0], expected[0], torch.float64, "value")
    for name, a, b in zip(NAMES, fast[1], expected[1]):
        assert_close_relative(a, b, torch.float64, f"grad {name}")


def test_readme_quotes_lines_the_textbook_runs():
    """The README's "Learning from it" quotes textbook.py verbatim, and the loss path is eq. (7)-(18)."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    source = (root / "manualgrad" / "textbook.py").read_text()
    section = readme.split("## Learning from it", 1)[1].split("\n## ", 1)[0]
    quoted = section.split("```python\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert quoted, "no quoted code in Learning from it"
    for line in quoted:
        assert line in source, f"README quotes a line textbook.py does not run: {line}"
    assert "loss.backward()                         # hand-derived backward, eq. (7)-(18)" in readme
