"""Reliability: bad input is refused at the boundary, numerics are stable, edge cases match the twin.

* The catalogue (``BAD_INPUTS``): every bad input, with its exception type and message fragment,
  on the module and on the functional API; the error comes before any kernel runs and leaves
  the parameters and their existing ``.grad`` bit-identical.
* Class-index range checks under ``torch.func.vmap`` and ``torch.compile`` (PyTorch's own
  bounds checks) still raise, and do not refuse valid labels.
* Numerics: logits of 1e4, NaN and inf propagation, autocast and half-precision parameters.
* Edge cases against the native-autograd twin: N = 0, N = 1, unbatched input, non-contiguous
  tensors, a stride-0 upstream gradient, requires_grad on some inputs only, backward twice.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, DTYPES, TOLERANCES, make_problem
from torch.utils._python_dispatch import TorchDispatchMode

from manualgrad import TwoLayerNet, functional, reference

# every test runs with the loss computing its gradients in backward, and in forward
pytestmark = pytest.mark.usefixtures("either_loss_strategy")

N, D, H, C = 6, 3, 5, 4  # catalogue problem: batch, inputs, hidden units, classes
REDUCTIONS = ["mean", "sum", "none"]
NAMES = ("x", "W1", "b1", "W2", "b2")


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def one_intra_op_thread():
    """The problems are tiny: with one thread, no matmul waits for a second core that is busy elsewhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor, for bit-identical comparisons (NaN == NaN, -0.0 != 0.0)."""
    return t.detach().reshape(-1).clone(memory_format=torch.contiguous_format).view(torch.uint8)


def grads_keeping_layout(fn, inputs, grad_out=None, requires=None):
    """fn(*inputs) and its gradients, with leaves that keep the inputs' strides (no clone).

    ``requires`` (one bool per input) says which inputs require grad; integer inputs never do.
    Returns the output and the gradients of the inputs that require grad, in order.
    """
    if requires is None:
        requires = [t.is_floating_point() for t in inputs]
    leaves = [t.detach().requires_grad_(r) for t, r in zip(inputs, requires)]
    out = fn(*leaves)
    if grad_out is None:
        grad_out = torch.ones_like(out)
    wanted = [leaf for leaf, r in zip(leaves, requires) if r]
    return out, torch.autograd.grad(out, wanted, grad_out)


def scaled_tolerance(reference_value: torch.Tensor, dtype: torch.dtype) -> dict[str, float]:
    """TOLERANCES[dtype], with atol scaled by the tensor's largest finite magnitude (when above 1).

    A batch sum of order-1 terms that cancel to nearly 0 keeps an absolute rounding error of
    the terms' size, whatever the summation order; a fixed atol would flag that as a mismatch.
    """
    finite = reference_value.detach()[torch.isfinite(reference_value.detach())]
    scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    return {"rtol": TOLERANCES[dtype]["rtol"], "atol": TOLERANCES[dtype]["atol"] * scale}


def assert_close_to_twin(manual, twin, dtype, what, equal_nan=False):
    """Value then every gradient; NaN must appear at exactly the same places when equal_nan."""
    (value, grads), (ref_value, ref_grads) = manual, twin
    assert len(grads) == len(ref_grads)
    for i, (a, b) in enumerate(zip((value, *grads), (ref_value, *ref_grads))):
        name = "value" if i == 0 else f"gradient {i - 1}"
        assert a.shape == b.shape, f"{what}, {name}: shape {tuple(a.shape)} against {tuple(b.shape)}"
        if equal_nan:
            assert torch.equal(torch.isnan(a), torch.isnan(b)), f"{what}, {name}: NaN at different places"
        torch.testing.assert_close(
            a, b, **scaled_tolerance(b, dtype), equal_nan=equal_nan, msg=lambda m, name=name: f"{what}, {name}: {m}"
        )


PATHS = ["probs", "logits", "loss-mean", "loss-sum", "loss-none"]


def pair(path, target=None):
    """(manual, twin) for a path of PATHS, as functions of (x, W1, b1, W2, b2)."""
    if path == "probs":
        return functional.two_layer_net, reference.probs
    if path == "logits":
        return functional.two_layer_net_logits, reference.logits
    reduction = path.removeprefix("loss-")
    return (
        lambda x, *p: functional.two_layer_net_loss(x, target, *p, reduction=reduction),
        lambda x, *p: reference.loss(x, target, *p, reduction=reduction),
    )


def upstream(path, N, C, dtype=torch.float64, device="cpu"):
    """A random upstream gradient of the path's output (random: ones would cancel in the softmax)."""
    generator = torch.Generator().manual_seed(1)
    shape = {"probs": (N, C), "logits": (N, C), "loss-none": (N,)}.get(path, ())
    return torch.rand(shape, generator=generator, dtype=torch.float64).add_(0.5).to(device, dtype)


def loss_of_everything(loss, reduction):
    """The loss as a function of (x, W1, b1, W2, b2, target): probability targets get a gradient too."""
    return lambda x, W1, b1, W2, b2, target: loss(x, target, W1, b1, W2, b2, reduction=reduction)


# ----------------------------------------------------------------------------------------
# The catalogue of bad inputs
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadInput:
    """One bad call: ``method`` of the module (or the functional API), with arguments built by ``args``.

    ``args(x, target, probs)`` receives good inputs on the test's device: x (6, 3) float32,
    class indices (6,), probabilities (6, 4); the module has D=3, H=5, C=4. ``params(W1, b1,
    W2, b2)``, for the functional API only, replaces the module's parameters by bad ones.
    ``match`` may name ``{device}``, the parameters' device.
    """

    id: str
    method: str  # "__init__", "forward", "logits", "loss", "predict"
    args: Callable[..., tuple]
    error: type[Exception]
    match: str
    surfaces: tuple[str, ...] = ("module", "functional")
    params: Callable[..., tuple] | None = None
    cpu_only: bool = False  # the explicit value check runs in eager mode on the CPU only
    marks: tuple = ()


def _with(t: torch.Tensor, index: int, value: int) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


def _uint64_with(t: torch.Tensor, index: int, value: int) -> torch.Tensor:
    """t as uint64 with ``value`` (up to 2**64 - 1) at ``index``, set through its int64 bits."""
    bits = t.long().clone()
    bits[index] = value - (1 << 64) if value >= 1 << 63 else value
    return bits.view(torch.uint64)


MODULE, FUNCTIONAL = ("module",), ("functional",)
BAD_INPUTS = [
    # x: kind
    BadInput("x is a list", "forward", lambda x, t, p: (x.tolist(),), TypeError,
             r"x must be a torch.Tensor, got list; convert it with torch.as_tensor\(x, dtype=..., device=...\)"),
    BadInput("x is a numpy array", "logits", lambda x, t, p: (x.cpu().numpy(),), TypeError,
             r"x must be a torch.Tensor, got ndarray; convert it with torch.from_numpy\(x\)"),
    BadInput("x is None", "loss", lambda x, t, p: (None, t), TypeError, "x must be a torch.Tensor, got NoneType"),
    BadInput("x is a list (predict)", "predict", lambda x, t, p: (x.tolist(),), TypeError,
             "x must be a torch.Tensor, got list", surfaces=MODULE),
    # x: dtype
    BadInput("x int64", "forward", lambda x, t, p: (x.long(),), TypeError,
             r"x must be a floating-point tensor, got dtype torch.int64; convert it with x.to\(torch.float32\)"),
    BadInput("x bool", "loss", lambda x, t, p: (x > 0, t), TypeError,
             "x must be a floating-point tensor, got dtype torch.bool"),
    BadInput("x complex", "logits", lambda x, t, p: (x.to(torch.complex64),), TypeError,
             "x must be a floating-point tensor, got dtype torch.complex64"),
    BadInput("x float64, parameters float32", "forward", lambda x, t, p: (x.double(),), TypeError,
             r"x has dtype torch.float64 but the parameters have dtype torch.float32; "
             r"convert x with x.to\(torch.float32\)"),
    BadInput("x bfloat16 without autocast", "loss", lambda x, t, p: (x.bfloat16(), t), TypeError,
             "x has dtype torch.bfloat16 but the parameters have dtype torch.float32"),
    # x: shape
    BadInput("x has 2 features, W1 wants 3", "forward", lambda x, t, p: (x[:, :2],), ValueError,
             r"x must have shape \(N, 3\) or \(3,\) to match W1 \(3, 5\), got \(6, 2\)"),
    BadInput("x has 4 features (loss)", "loss", lambda x, t, p: (torch.cat([x, x[:, :1]], 1), t), ValueError,
             r"x must have shape \(N, 3\) or \(3,\) to match W1 \(3, 5\), got \(6, 4\)"),
    BadInput("x unbatched with 2 features", "logits", lambda x, t, p: (x[0, :2],), ValueError,
             r"x must have shape \(N, 3\) or \(3,\) to match W1 \(3, 5\), got \(2,\)"),
    BadInput("x rank 3", "forward", lambda x, t, p: (x.unsqueeze(0),), ValueError,
             r"x must have shape \(N, 3\) or \(3,\), got \(1, 6, 3\) \(rank 3\)"),
    BadInput("x rank 0", "logits", lambda x, t, p: (x[0, 0],), ValueError,
             r"x must have shape \(N, 3\) or \(3,\), got \(\) \(rank 0\)"),
    # devices (no GPU here: "meta" stands in for the other device; the message names both)
    BadInput("x on meta, parameters elsewhere", "forward", lambda x, t, p: (x.to("meta"),), RuntimeError,
             "Expected all tensors to be on the same device.*x is on meta and W1 is on {device}"),
    BadInput("x on meta, parameters elsewhere (loss)", "loss", lambda x, t, p: (x.to("meta"), t), RuntimeError,
             "x is on meta and W1 is on {device}"),
    BadInput("class indices on meta", "loss", lambda x, t, p: (x, t.to("meta")), RuntimeError,
             "Expected all tensors to be on the same device.*target is on meta and W1 is on {device}"),
    BadInput("probabilities on meta", "loss", lambda x, t, p: (x, p.to("meta")), RuntimeError,
             "target is on meta and W1 is on {device}"),
    # target: kind and dtype
    BadInput("target is a list", "loss", lambda x, t, p: (x, t.tolist()), TypeError,
             r"target must be a torch.Tensor, got list; convert it with torch.as_tensor\(target"),
    BadInput("target is a numpy array", "loss", lambda x, t, p: (x, t.cpu().numpy()), TypeError,
             r"target must be a torch.Tensor, got ndarray; convert it with torch.from_numpy\(target\)"),
    BadInput("float class indices", "loss", lambda x, t, p: (x, t.float()), TypeError,
             r"target of shape \(6,\) holds class indices and must be an integer \(int64\) tensor, "
             r"got dtype torch.float32; use target.long\(\)"),
    BadInput("float class index, unbatched", "loss", lambda x, t, p: (x[0], t[0].float()), TypeError,
             r"target of shape \(\) holds class indices and must be an integer"),
    BadInput("bool target", "loss", lambda x, t, p: (x, t > 0), TypeError,
             "target must hold integer .* class indices or floating probabilities, got dtype torch.bool"),
    BadInput("probabilities float64, parameters float32", "loss", lambda x, t, p: (x, p.double()), TypeError,
             r"probability target has dtype torch.float64 but the parameters have dtype torch.float32"),
    # target: values (explicit check in eager CPU; elsewhere PyTorch's gather, see the vmap/compile tests)
    BadInput("class index == C", "loss", lambda x, t, p: (x, _with(t, 2, 4)), ValueError,
             r"target holds class index 4 at position 2; class indices must lie in \[0, 4\)", cpu_only=True),
    BadInput("class index negative", "loss", lambda x, t, p: (x, _with(t, 5, -1)), ValueError,
             r"target holds class index -1 at position 5; class indices must lie in \[0, 4\)", cpu_only=True),
    BadInput("class index huge", "forward", lambda x, t, p: (x, _with(t, 0, 2**40)), ValueError,
             rf"target holds class index {2**40} at position 0", cpu_only=True),
    BadInput("class index out of range, unbatched", "loss", lambda x, t, p: (x[0], torch.tensor(7)), ValueError,
             r"target holds class index 7 at position 0; class indices must lie in \[0, 4\)", cpu_only=True),
    # target: shape
    BadInput("target batch 5, x batch 6", "loss", lambda x, t, p: (x, t[:5]), ValueError,
             r"target of class indices must have shape \(6,\), one per row of x, got shape \(5,\)"),
    BadInput("target batch 12, x batch 6", "forward", lambda x, t, p: (x, torch.cat([t, t])), ValueError,
             r"must have shape \(6,\), one per row of x, got shape \(12,\)"),
    BadInput("batched target, unbatched x", "loss", lambda x, t, p: (x[0], t), ValueError,
             r"target of class indices must have shape \(\), one class index for an unbatched x, got shape \(6,\)"),
    BadInput("integer one-hot target", "loss", lambda x, t, p: (x, F.one_hot(t, 4)), ValueError,
             r"got shape \(6, 4\); for probabilities \(soft or one-hot labels\) use a floating tensor"),
    BadInput("probabilities with 3 classes, C = 4", "loss", lambda x, t, p: (x, p[:, :3]), ValueError,
             r"probability target must have shape \(6, 4\) \(rows of x, classes\), got \(6, 3\)"),
    BadInput("probabilities with 5 classes, C = 4", "forward", lambda x, t, p: (x, torch.cat([p, p[:, :1]], 1)),
             ValueError, r"probability target must have shape \(6, 4\) \(rows of x, classes\), got \(6, 5\)"),
    BadInput("probabilities with batch 5", "loss", lambda x, t, p: (x, p[:5]), ValueError,
             r"probability target must have shape \(6, 4\) \(rows of x, classes\), got \(5, 4\)"),
    BadInput("probabilities with 3 classes, unbatched", "loss", lambda x, t, p: (x[0], p[0, :3]), ValueError,
             r"probability target must have shape \(4,\) \(classes,\) for an unbatched x, got \(3,\)"),
    # reduction
    BadInput("unknown reduction", "loss", lambda x, t, p: (x, t, "avg"), ValueError,
             r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'"),
    BadInput("unknown reduction (forward)", "forward", lambda x, t, p: (x, t, "batchmean"), ValueError,
             "reduction must be one of .*got 'batchmean'"),
    BadInput("reduction None", "loss", lambda x, t, p: (x, t, None), TypeError,
             r"reduction must be a str, one of \('mean', 'sum', 'none'\), got NoneType \(None\)"),
    # constructor sizes
    BadInput("in_features 0", "__init__", lambda x, t, p: (0, 5, 4), ValueError, "in_features must be positive, got 0",
             surfaces=MODULE),
    BadInput("hidden_features -1", "__init__", lambda x, t, p: (3, -1, 4), ValueError,
             "hidden_features must be positive, got -1", surfaces=MODULE),
    BadInput("out_features 0", "__init__", lambda x, t, p: (3, 5, 0), ValueError,
             "out_features must be positive, got 0", surfaces=MODULE),
    BadInput("in_features float", "__init__", lambda x, t, p: (3.0, 5, 4), TypeError,
             r"in_features must be an int, got float \(3.0\)", surfaces=MODULE),
    BadInput("hidden_features str", "__init__", lambda x, t, p: (3, "5", 4), TypeError,
             r"hidden_features must be an int, got str \('5'\)", surfaces=MODULE),
    BadInput("out_features bool", "__init__", lambda x, t, p: (3, 5, True), TypeError,
             r"out_features must be an int, got bool \(True\)", surfaces=MODULE),
    BadInput("in_features numpy int", "__init__", lambda x, t, p: (np.int64(3), 5, 4), TypeError,
             r"in_features must be an int, got int64 .*pass a Python int", surfaces=MODULE),
    # parameters given to the functional API
    BadInput("W1 rank 1", "loss", lambda x, t, p: (x, t), ValueError, r"W1 must have shape \(D, H\), got \(15,\)",
             surfaces=FUNCTIONAL, params=lambda W1, b1, W2, b2: (W1.reshape(-1), b1, W2, b2)),
    BadInput("W2 with 4 rows, H = 5", "forward", lambda x, t, p: (x,), ValueError,
             r"W2 must have shape \(5, C\) to follow W1 \(3, 5\), got \(4, 4\)",
             surfaces=FUNCTIONAL, params=lambda W1, b1, W2, b2: (W1, b1, W2[:4], b2)),
    BadInput("b1 of shape (1, H)", "logits", lambda x, t, p: (x,), ValueError,
             r"b1 must have shape \(5,\), got \(1, 5\)",
             surfaces=FUNCTIONAL, params=lambda W1, b1, W2, b2: (W1, b1.unsqueeze(0), W2, b2)),
    BadInput("b2 with 3 classes, C = 4", "loss", lambda x, t, p: (x, t), ValueError,
             r"b2 must have shape \(4,\), got \(3,\)",
             surfaces=FUNCTIONAL, params=lambda W1, b1, W2, b2: (W1, b1, W2, b2[:3])),
    BadInput("W1 int64", "forward", lambda x, t, p: (x,), TypeError,
             "W1 must be a floating-point tensor, got dtype torch.int64",
             surfaces=FUNCTIONAL, params=lambda W1, b1, W2, b2: (W1.long(), b1, W2, b2)),
    BadInput("b2 float64, W1 float32", "loss", lambda x, t, p: (x, t), TypeError,
             "b2 has dtype torch.float64 but W1 has dtype torch.float32; all parameters must share one dtype",
             surfaces=FUNCTIONAL, params=lambda W1, b1, W2, b2: (W1, b1, W2, b2.double())),
    BadInput("W2 is a list", "logits", lambda x, t, p: (x,), TypeError,
             r"W2 must be a torch.Tensor, got list; convert it with torch.as_tensor\(W2",
             surfaces=FUNCTIONAL, params=lambda W1, b1, W2, b2: (W1, b1, W2.tolist(), b2)),
    BadInput("b1 on meta", "loss", lambda x, t, p: (x, t), RuntimeError,
             "Expected all tensors to be on the same device.*b1 is on meta and W1 is on {device}",
             surfaces=FUNCTIONAL, params=lambda W1, b1, W2, b2: (W1, b1.to("meta"), W2, b2)),
    # layouts: refused at the boundary, not deep inside a kernel above 2048 rows
    BadInput("x sparse COO", "forward", lambda x, t, p: (x.to_sparse(),), TypeError,
             r"x must be a dense \(torch.strided\) tensor, got layout torch.sparse_coo; "
             r"convert it with x.to_dense\(\)"),
    BadInput("x sparse CSR (loss)", "loss", lambda x, t, p: (x.to_sparse_csr(), t), TypeError,
             r"x must be a dense \(torch.strided\) tensor, got layout torch.sparse_csr"),
    BadInput("class indices sparse", "loss", lambda x, t, p: (x, t.to_sparse()), TypeError,
             "target must be a dense .* got layout torch.sparse_coo"),
    BadInput("W1 sparse", "logits", lambda x, t, p: (x,), TypeError, "W1 must be a dense .* layout torch.sparse_coo",
             surfaces=FUNCTIONAL, params=lambda W1, b1, W2, b2: (W1.to_sparse(), b1, W2, b2)),
    # uint64 labels beyond int64 are reported as given, not wrapped to negative
    BadInput("uint64 class index 2**63 + 5", "loss", lambda x, t, p: (x, _uint64_with(t, 1, 2**63 + 5)), ValueError,
             rf"target holds class index {2**63 + 5} at position 1; class indices must lie in \[0, 4\)",
             cpu_only=True),
    # arguments that do not apply are errors, not ignored
    BadInput("reduction without a target", "forward", lambda x, t, p: (x, None, "bogus"), TypeError,
             r"reduction='bogus' applies to the loss only: pass a target", surfaces=MODULE),
    BadInput("reduction 'sum' without a target", "forward", lambda x, t, p: (x, None, "sum"), TypeError,
             "reduction='sum' applies to the loss only", surfaces=MODULE),
]  # fmt: skip


class FunctionalAPI:
    """The functional API with the module's method names, on the module's parameters."""

    def __init__(self, model: TwoLayerNet, replace: Callable[..., tuple] | None = None) -> None:
        self.params = (model.W1, model.b1, model.W2, model.b2)
        if replace is not None:
            self.params = replace(*(p.detach() for p in self.params))

    def forward(self, x, target=None, reduction="mean"):
        if target is not None:
            return self.loss(x, target, reduction)
        return functional.two_layer_net(x, *self.params)

    def logits(self, x):
        return functional.two_layer_net_logits(x, *self.params)

    def loss(self, x, target, reduction="mean"):
        return functional.two_layer_net_loss(x, target, *self.params, reduction=reduction)


class RecordOps(TorchDispatchMode):
    """Records every aten op that runs, with whether it touched a watched tensor (by identity)."""

    def __init__(self, watched):
        super().__init__()
        self.watched = {id(t) for t in watched}
        self.ops: list[tuple[str, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = list(args) + list(kwargs.values())
        flat = [u for a in flat for u in (a if isinstance(a, (list, tuple)) else (a,))]
        self.ops.append((str(func), any(id(u) in self.watched for u in flat if isinstance(u, torch.Tensor))))
        return func(*args, **kwargs)


def _catalogue_cases():
    for entry in BAD_INPUTS:
        for surface in entry.surfaces:
            yield pytest.param(entry, surface, id=f"{entry.id}-{surface}", marks=entry.marks)


def _good_inputs(device):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(N, D, generator=generator).to(device)
    target = torch.tensor([0, 1, 2, 3, 1, 0], device=device)
    probs = torch.softmax(torch.randn(N, C, generator=generator), 1).to(device)
    return x, target, probs


def test_catalogue_ids_are_unique_and_cover_every_method():
    ids = [entry.id for entry in BAD_INPUTS]
    assert len(ids) == len(set(ids))
    assert {entry.method for entry in BAD_INPUTS} == {"__init__", "forward", "logits", "loss", "predict"}


def assert_refused_before_any_kernel_and_nothing_lost(
    entry: BadInput, surface: str, device: str, check_kernels: bool = True
) -> None:
    torch.manual_seed(0)
    model = TwoLayerNet(D, H, C, device=device)
    x, target, probs = _good_inputs(device)
    model.loss(x, target).backward()  # existing .grad that must survive the bad call
    before = {name: (p, bits(p), p.grad, bits(p.grad)) for name, p in model.named_parameters()}
    args = entry.args(x, target, probs)
    api = FunctionalAPI(model, entry.params) if surface == "functional" else model
    call = (lambda: TwoLayerNet(*args)) if entry.method == "__init__" else (lambda: getattr(api, entry.method)(*args))
    x_arg = [args[0]] if args and isinstance(args[0], torch.Tensor) else []
    match = entry.match.replace("{device}", re.escape(str(model.W1.device)))

    grads = [p.grad for p in model.parameters()]
    given = [t for t in getattr(api, "params", ()) if isinstance(t, torch.Tensor)]
    with RecordOps(watched=[*model.parameters(), *grads, *given, *x_arg]) as recorder:
        with pytest.raises(entry.error, match=match):
            call()

    if check_kernels and entry.cpu_only:  # the range check reads the target's values, and nothing else
        assert [op for op, touches in recorder.ops if touches] == [], "x, a parameter or a .grad was used"
    elif check_kernels:
        assert recorder.ops == [], f"kernels ran before the error: {recorder.ops}"
    for name, p in model.named_parameters():
        p0, p0_bits, grad0, grad0_bits = before[name]
        assert p is p0 and p.grad is grad0, f"{name} or its .grad was replaced"
        assert torch.equal(bits(p), p0_bits), f"{name} changed"
        assert torch.equal(bits(p.grad), grad0_bits), f"{name}.grad changed"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("entry", "surface"), list(_catalogue_cases()))
def test_bad_input_is_refused_before_any_kernel_and_nothing_is_lost(entry, surface, device):
    if entry.cpu_only and device != "cpu":
        pytest.skip("off the CPU the class range is checked by gather's device-side assertion")
    assert_refused_before_any_kernel_and_nothing_lost(entry, surface, device)


def _entry(entry_id: str) -> BadInput:
    return next(entry for entry in BAD_INPUTS if entry.id == entry_id)


def test_negative_control_a_kernel_before_validation_is_caught(monkeypatch):
    original = functional.two_layer_net_logits

    def computes_first(x, W1, b1, W2, b2):
        torch.tanh(W1)  # a kernel on a parameter before the checks
        return original(x, W1, b1, W2, b2)

    monkeypatch.setattr(functional, "two_layer_net_logits", computes_first)
    with pytest.raises(AssertionError, match="kernels ran before the error"):
        assert_refused_before_any_kernel_and_nothing_lost(_entry("x rank 0"), "functional", "cpu")


def test_negative_control_a_lost_gradient_is_caught(monkeypatch):
    original = functional.two_layer_net_loss

    def clobbers_grad(x, target, W1, b1, W2, b2, reduction="mean", **options):
        if W2.grad is not None:  # not on the first, good call that makes the .grad
            with torch.no_grad():
                W2.grad.mul_(0.5)  # state changed before the error, the slip this check exists for
        return original(x, target, W1, b1, W2, b2, reduction, **options)

    monkeypatch.setattr(functional, "two_layer_net_loss", clobbers_grad)
    with pytest.raises(AssertionError, match="W2.grad changed"):
        assert_refused_before_any_kernel_and_nothing_lost(
            _entry("unknown reduction"), "functional", "cpu", check_kernels=False
        )


@pytest.mark.parametrize("rows", [5, 100], ids=["few labels", "many labels"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16, torch.uint32, torch.int32], ids=str)
def test_other_integer_label_dtypes_are_accepted_and_range_checked(dtype, rows):
    x, target, params = make_problem(rows, D, H, C)
    loss = functional.two_layer_net_loss(x, target.to(dtype), *params)
    torch.testing.assert_close(loss, reference.loss(x, target, *params))
    with pytest.raises(ValueError, match=f"class index {C} at position 3; class indices must lie in"):
        functional.two_layer_net_loss(x, _with(target, 3, C).to(dtype), *params)


def test_meta_model_infers_shapes():
    """A model on the meta device (deferred initialisation, shape inference) runs every method."""
    model = TwoLayerNet(D, H, C, device="meta")
    x = torch.empty(N, D, device="meta", requires_grad=True)
    target = torch.empty(N, dtype=torch.long, device="meta")
    shapes = [tuple(model(x).shape), tuple(model.logits(x).shape), tuple(model.predict(x).shape)]
    loss = model.loss(x, target)
    loss.backward()
    assert shapes == [(N, C), (N, C), (N,)] and loss.shape == () and x.grad.shape == (N, D)
    assert model.W1.grad.shape == (D, H) and model.W1.grad.device.type == "meta"


# ----------------------------------------------------------------------------------------
# Class-index range where the explicit check cannot run: PyTorch's own bounds checks
# ----------------------------------------------------------------------------------------

BAD_LABELS = [C, -1, 2**31]


def _per_sample_problem():
    x, target, params = make_problem(N, D, H, C, seed=5)
    return x, target, params


def _per_sample_losses(x, target, params):
    """vmap over samples of the unbatched loss: x (N, D), target (N,) -> (N,)."""
    return torch.func.vmap(lambda xi, ti: functional.two_layer_net_loss(xi, ti, *params))(x, target)


def _per_sample_grads(x, target, params):
    """vmap(grad) over samples: the per-sample gradients w.r.t. (W1, b1, W2, b2)."""

    def loss(p, xi, ti):
        return functional.two_layer_net_loss(xi, ti, *p)

    return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(tuple(params), x, target)


def _grad_of_mean_loss(x, target, params):
    return torch.func.grad(lambda W1: functional.two_layer_net_loss(x, target, W1, *params[1:]))(params[0])


TORCH_FUNC = {"vmap": _per_sample_losses, "vmap(grad)": _per_sample_grads, "grad": _grad_of_mean_loss}


@pytest.mark.parametrize("bad", BAD_LABELS)
@pytest.mark.parametrize("transform", TORCH_FUNC)
def test_out_of_range_label_under_torch_func_raises(transform, bad):
    x, target, params = _per_sample_problem()
    with pytest.raises(RuntimeError, match="out of bounds"):
        TORCH_FUNC[transform](x, _with(target, 3, bad), params)


def test_valid_labels_under_torch_func_are_not_refused_and_match_the_twin():
    x, target, params = _per_sample_problem()
    twin_losses = torch.stack([reference.loss(x[n], target[n], *params) for n in range(N)])
    torch.testing.assert_close(_per_sample_losses(x, target, params), twin_losses, rtol=1e-12, atol=1e-12)
    grads = _per_sample_grads(x, target, params)
    for n in range(N):
        leaves = [p.clone().requires_grad_() for p in params]
        twin = torch.autograd.grad(reference.loss(x[n], target[n], *leaves), leaves)
        for g, r in zip(grads, twin):
            torch.testing.assert_close(g[n], r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("requires_grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_out_of_range_label_under_compile_raises_and_valid_labels_do_not(backend, requires_grad):
    x, target, params = make_problem(N, D, H, C, dtype=torch.float32, seed=6)
    params = [p.requires_grad_(requires_grad) for p in params]
    compiled = torch.compile(
        lambda x, t: functional.two_layer_net_loss(x, t, *params), backend=backend, fullgraph=True, dynamic=False
    )
    loss = compiled(x, target)
    twin = reference.loss(x, target, *params)
    torch.testing.assert_close(loss, twin, **TOLERANCES[torch.float32])
    if requires_grad:
        grads = torch.autograd.grad(loss, params)
        for g, r in zip(grads, torch.autograd.grad(twin, params)):
            torch.testing.assert_close(g, r, **TOLERANCES[torch.float32])
    for bad in BAD_LABELS:
        with pytest.raises(RuntimeError, match="out of bounds"):
            compiled(x, _with(target, 2, bad))


def test_fake_tensors_trace_without_reading_values():
    """Under FakeTensorMode (tracing, memory estimates) there are no values to check: gather checks later."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        model = TwoLayerNet(D, H, C)
        x = torch.randn(N, D, requires_grad=True)
        loss = model.loss(x, torch.zeros(N, dtype=torch.long))
        loss.backward()
    assert loss.shape == () and x.grad.shape == (N, D) and model.W1.grad.shape == (D, H)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_loss_and_backward_do_not_synchronise():
    """The range check must not read CUDA values (a stream sync); gather's device-side assert checks them."""
    torch.manual_seed(0)
    model = TwoLayerNet(D, H, C, device="cuda")
    x, target, probs = _good_inputs("cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in (target, probs):
            model.loss(x, t).backward()
            model(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ----------------------------------------------------------------------------------------
# Numerics
# ----------------------------------------------------------------------------------------


def _huge_logits_problem(dtype, soft, scale=2e4):
    """W2 and b2 scaled so that max |z2| is about ``scale``: a naive exp() overflows in any dtype."""
    x, target, params = make_problem(64, D, 16, 5, dtype=torch.float64, soft=soft, seed=7)
    W1, b1, W2, b2 = params
    W2 = W2 * (scale / W2.abs().sum(0).max())
    b2 = b2 * (scale / 10) / b2.abs().max()
    params = [W1, b1, W2, b2]
    move = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
    return move(x), move(target), [move(p) for p in params]


HUGE_LOGITS_CASES = [("probs", False)] + [(f"loss-{r}", soft) for soft in (False, True) for r in REDUCTIONS]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("path", "soft"),
    HUGE_LOGITS_CASES,
    ids=[f"{p}-{'probabilities' if s else 'indices'}" for p, s in HUGE_LOGITS_CASES],
)
def test_logits_of_1e4_give_finite_values_and_cross_entropys_gradients(path, soft, dtype):
    x, target, params = _huge_logits_problem(dtype, soft)
    assert reference.logits(x, *params).abs().max() > 1e4  # the premise: huge logits
    manual, twin = pair(path, target)
    inputs = [x, *params]
    grad_out = upstream(path, 64, 5, dtype)
    value, grads = grads_keeping_layout(manual, inputs, grad_out)
    for t in (value, *grads):
        assert bool(torch.isfinite(t).all())
    if dtype == torch.float64:
        assert_close_to_twin((value, grads), grads_keeping_layout(twin, inputs, grad_out), dtype, path)
        return
    # float32: |z2| ~ 1e4 carries an absolute rounding error of ~1e-3 in any implementation. Compare with
    # the float64 truth on the same values, allowing what F.cross_entropy itself gets wrong in float32.
    inputs64 = [t.double() if t.is_floating_point() else t for t in inputs]
    truth = grads_keeping_layout(twin, inputs64, grad_out.double())
    twin32 = grads_keeping_layout(twin, inputs, grad_out)
    for i, (a, b, ref) in enumerate(zip((value, *grads), (twin32[0], *twin32[1]), (truth[0], *truth[1]))):
        twin_error = float((b.double() - ref).detach().abs().max())
        torch.testing.assert_close(
            a.double(), ref, rtol=TOLERANCES[dtype]["rtol"], atol=TOLERANCES[dtype]["atol"] + 4 * twin_error,
            msg=lambda m, i=i: f"{path} output {i}: {m}",
        )  # fmt: skip


def _set(index, value):
    def mutate(x, target, params):
        tensors = {"x": x, "target": target, "W1": params[0], "b1": params[1], "W2": params[2], "b2": params[3]}
        name, position = index
        tensors[name][position] = value

    return mutate


NONFINITE_CASES = {
    "NaN in one x entry": _set(("x", (2, 1)), float("nan")),
    "NaN in one x row": _set(("x", 2), float("nan")),
    "NaN in W1": _set(("W1", (1, 2)), float("nan")),
    "NaN in b1": _set(("b1", 3), float("nan")),
    "NaN in W2": _set(("W2", (1, 2)), float("nan")),
    "NaN in b2": _set(("b2", 0), float("nan")),
    "NaN in a probability target": _set(("target", (2, 1)), float("nan")),
    "+inf in x": _set(("x", (2, 1)), float("inf")),
    "-inf in b1": _set(("b1", 3), float("-inf")),
}


@pytest.mark.parametrize(
    ("case", "path"),
    [(c, p) for c in NONFINITE_CASES for p in PATHS if "target" not in c or p.startswith("loss")],
)
def test_nan_and_inf_propagate_as_in_pytorch(case, path):
    soft = "target" in case
    x, target, params = make_problem(5, D, 6, C, soft=soft, seed=8)
    NONFINITE_CASES[case](x, target, params)
    manual, twin = pair(path, target)
    grad_out = upstream(path, 5, C)
    result = grads_keeping_layout(manual, [x, *params], grad_out)
    expected = grads_keeping_layout(twin, [x, *params], grad_out)
    assert any(bool(torch.isnan(t).any()) for t in (expected[0], *expected[1])) or "inf" in case
    assert_close_to_twin(result, expected, torch.float64, f"{case}, {path}", equal_nan=True)


def _overflowing_relative_logits(x, target, params):
    """a1 = s = (1, 1, 1, -1, -1) in every row, W2's first class 3e307 s and its last -3e307 s, every
    label the first class: each plain logit stays within 5 * 3e307 = 1.5e308 and the loss is 0, W2r
    and its sum (6e307) are finite, but the relative first logit would reach 3e308 (inf)."""
    W1, b1, W2, _ = params
    signs = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0], dtype=W2.dtype)
    W1.zero_()
    b1.copy_(30 * signs)
    W2[:, 0], W2[:, -1] = 3e307 * signs, -3e307 * signs
    target.zero_()


# A class whose weights or bias are not finite, or whose differences overflow. Behind a softmax, the
# chunked paths (the loss from 256 rows, the probabilities from 1024) take the classes relative to
# the last (from modes.RELATIVE_MIN_ROWS rows) only where W2 - W2[:, C-1] and b2 - b2[C-1] are
# finite (docs/derivation.md, eq. (20)).
EXTREME_CLASSES = {
    "-inf in the last b2": _set(("b2", C - 1), float("-inf")),
    "+inf in the last b2": _set(("b2", C - 1), float("inf")),
    "+inf in the last W2 column": _set(("W2", (1, C - 1)), float("inf")),
    "-inf in the first b2": _set(("b2", 0), float("-inf")),
    "b2 differences that overflow": lambda x, target, params: params[3].copy_(torch.tensor([1e308, 0, 0, -1e308])),
    "relative logits that overflow": _overflowing_relative_logits,
    "+inf in a probability target": _set(("target", (2, 1)), float("inf")),
}


@pytest.mark.parametrize("N", [5, 300, 1100])
@pytest.mark.parametrize("path", ["probs", "loss-mean", "loss-sum"])
@pytest.mark.parametrize("case", EXTREME_CLASSES)
def test_a_class_with_extreme_parameters_gives_the_twins_values_at_every_N(case, path, N):
    soft = "target" in case
    if soft and path == "probs":
        pytest.skip("the probabilities take no target")
    x, target, params = make_problem(N, D, H, C, soft=soft, seed=8)
    EXTREME_CLASSES[case](x, target, params)
    manual, twin = pair(path, target)
    grad_out = upstream(path, N, C)
    result = grads_keeping_layout(manual, [x, *params], grad_out)
    expected = grads_keeping_layout(twin, [x, *params], grad_out)
    assert_close_to_twin(result, expected, torch.float64, f"{case}, {path}, N={N}", equal_nan=True)


AUTOCAST_PATHS = ["probs", "logits", "loss-mean", "loss-none"]


def _autocast_value_and_grads(path, autocast_dtype, x_dtype, backward_inside, compile_backend=None):
    x, target, params = make_problem(64, 2, 500, 3, dtype=torch.float32, seed=9)
    x = x.to(x_dtype)
    manual, twin = pair(path, target)
    if compile_backend is not None:
        manual = torch.compile(manual, backend=compile_backend, fullgraph=True)
    grad_out = upstream(path, 64, 3, torch.float32)
    leaves = [t.detach().clone().requires_grad_() for t in (x, *params)]
    with torch.autocast("cpu", dtype=autocast_dtype):
        value = manual(*leaves)
        if backward_inside:
            grads = torch.autograd.grad(value, leaves, grad_out)
    if not backward_inside:
        grads = torch.autograd.grad(value, leaves, grad_out)
    # the same float32 math in the twin, on the (already rounded) input
    expected = grads_keeping_layout(twin, [x.float(), *params], grad_out)
    return (value, grads), expected


@pytest.mark.parametrize("backward_inside", [False, True], ids=["backward-after", "backward-inside"])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("path", ["probs", "logits", "loss-mean", "loss-none"])
def test_autocast_stays_finite(path, autocast_dtype, x_dtype, backward_inside):
    (value, grads), _ = _autocast_value_and_grads(path, autocast_dtype, x_dtype, backward_inside)
    assert value.dtype == torch.float32 and grads[0].dtype == x_dtype
    for t in (value, *grads):
        assert bool(torch.isfinite(t).all())


def _assert_autocast_matches_float32(result, expected, x_dtype, path):
    (value, grads), (ref_value, ref_grads) = result, expected
    # the gradient of x comes back in x's dtype: the float32 gradient, rounded once
    rounding = {"rtol": torch.finfo(x_dtype).eps, "atol": 1e-6}
    torch.testing.assert_close(grads[0].float(), ref_grads[0].to(x_dtype).float(), **rounding)
    assert_close_to_twin((value, grads[1:]), (ref_value, ref_grads[1:]), torch.float32, path)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("path", ["probs", "logits", "loss-mean", "loss-none"])
def test_autocast_computes_in_the_parameters_dtype(path, x_dtype):
    result, expected = _autocast_value_and_grads(path, torch.bfloat16, x_dtype, backward_inside=False)
    _assert_autocast_matches_float32(result, expected, x_dtype, path)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("path", AUTOCAST_PATHS)
def test_autocast_backward_inside_the_region_keeps_the_parameters_dtype(path, x_dtype):
    result, expected = _autocast_value_and_grads(path, torch.bfloat16, x_dtype, backward_inside=True)
    _assert_autocast_matches_float32(result, expected, x_dtype, path)


@pytest.mark.parametrize("backward_inside", [False, True], ids=["backward-after", "backward-inside"])
@pytest.mark.parametrize("path", AUTOCAST_PATHS)
def test_autocast_under_compile_computes_in_the_parameters_dtype(path, backward_inside):
    """The compiled backward is traced once: it must turn autocast off whatever the state at trace time."""
    result, expected = _autocast_value_and_grads(path, torch.bfloat16, torch.float32, backward_inside, "aot_eager")
    _assert_autocast_matches_float32(result, expected, torch.float32, path)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("path", ["probs", "logits", "loss-mean"])
def test_half_precision_parameters_stay_finite_and_close_to_float32(path, dtype):
    x, target, params = make_problem(64, 2, 500, 3, dtype=dtype, seed=10)
    manual, twin = pair(path, target)
    grad_out = upstream(path, 64, 3, dtype)
    value, grads = grads_keeping_layout(manual, [x, *params], grad_out)
    for t in (value, *grads):
        assert t.dtype == dtype and bool(torch.isfinite(t).all())
    ref_value, ref_grads = grads_keeping_layout(twin, [t.float() for t in (x, *params)], grad_out.float())
    for i, (a, b) in enumerate(zip((value, *grads), (ref_value, *ref_grads))):
        scale = float(b.detach().abs().max())  # normwise: half precision carries ~3 significant digits
        torch.testing.assert_close(a.float(), b, rtol=0.05, atol=0.02 * scale, msg=lambda m, i=i: f"output {i}: {m}")


# ----------------------------------------------------------------------------------------
# Edge cases, each against the native-autograd twin
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch_loss_matches_cross_entropy_with_zero_gradients(reduction, soft, device):
    x, target, params = make_problem(0, D, H, C, device=device, soft=soft)
    inputs = [x, *params, target]
    manual = loss_of_everything(functional.two_layer_net_loss, reduction)
    twin = loss_of_everything(reference.loss, reduction)
    value, grads = grads_keeping_layout(manual, inputs)
    assert_close_to_twin((value, grads), grads_keeping_layout(twin, inputs), torch.float64, "N=0", equal_nan=True)
    assert bool(value.isnan()) if reduction == "mean" else float(value.detach().sum()) == 0.0  # as F.cross_entropy
    for g, t in zip(grads, [t for t in inputs if t.is_floating_point()]):
        assert g.shape == t.shape and bool((g == 0).all())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("N", [8, 300], ids=["N=8", "N=300"])
@pytest.mark.parametrize("upstream", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
def test_non_finite_upstream_gradient_gives_autograds_values_at_every_batch_size(upstream, N, reduction):
    """autograd gives NaN where +-inf times row terms of both signs are summed; so must we, at every N
    (from 256 rows the loss computes its gradients in the forward and used to scale them to +-inf)."""
    x, target, params = make_problem(N, D, H, C, seed=4)
    inputs, grad_out = [x, *params], torch.tensor(upstream, dtype=x.dtype)
    manual = grads_keeping_layout(lambda x, *p: functional.two_layer_net_loss(x, target, *p, reduction=reduction),
                                  inputs, grad_out)  # fmt: skip
    twin = grads_keeping_layout(lambda x, *p: reference.loss(x, target, *p, reduction=reduction), inputs, grad_out)
    assert_close_to_twin(manual, twin, torch.float64, f"upstream {upstream}, N={N}", equal_nan=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_classes_matches_cross_entropy(reduction):
    """C = 0 (probability targets of shape (N, 0)): F.cross_entropy's mean is 0/0 = nan, sum and none 0."""
    x, _, (W1, b1, W2, b2) = make_problem(5, D, H, C)
    inputs = [x, W1, b1, W2[:, :0], b2[:0], torch.zeros(5, 0, dtype=x.dtype)]
    manual = grads_keeping_layout(loss_of_everything(functional.two_layer_net_loss, reduction), inputs)
    twin = grads_keeping_layout(loss_of_everything(reference.loss, reduction), inputs)
    assert_close_to_twin(manual, twin, torch.float64, "C=0", equal_nan=True)
    assert bool(manual[0].isnan().any()) == (reduction == "mean")


def test_loss_strategy_is_per_thread_with_two_overlapping_threads(either_loss_strategy):
    """Two threads inside loss_gradients_in_forward at once, leaving in the order they did not enter
    in: each sees its own setting throughout, a new thread the default, and afterwards nobody's."""
    x, target, params = make_problem(8, D, H, C)  # 8 rows: by default the gradients wait for backward
    params = [p.requires_grad_() for p in params]
    both_inside, first_left = threading.Barrier(2, timeout=30), threading.Event()
    seen: dict[str, object] = {}

    def precomputed() -> bool:
        return getattr(functional.two_layer_net_loss(x, target, *params).grad_fn, "precomputed", False)  # eager.py: no

    def worker(name: str, enabled: bool, leaves_first: bool) -> None:
        try:
            with functional.loss_gradients_in_forward(enabled, chunk_rows=3):
                both_inside.wait()
                seen[name] = precomputed()
                if not leaves_first:
                    first_left.wait(timeout=30)
                    seen[name + " after the other left"] = precomputed()
            if leaves_first:
                first_left.set()
            seen[name + " outside"] = precomputed()
        except Exception as error:  # surfaced by the assertion below
            seen[name] = error

    threads = [
        threading.Thread(target=worker, args=("A", True, True)),
        threading.Thread(target=worker, args=("B", False, False)),
    ]
    threads.append(threading.Thread(target=lambda: seen.setdefault("fresh thread", precomputed())))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert seen == {"A": True, "B": False, "B after the other left": False, "A outside": False, "B outside": False,
                    "fresh thread": False}  # fmt: skip
    assert precomputed() == (either_loss_strategy == "gradients-in-forward")  # this thread's own setting


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["probs", "logits"])
def test_empty_batch_network_paths_match_the_twin(path, device):
    x, _, params = make_problem(0, D, H, C, device=device)
    manual, twin = pair(path)
    value, grads = grads_keeping_layout(manual, [x, *params])
    assert value.shape == (0, C)
    assert_close_to_twin((value, grads), grads_keeping_layout(twin, [x, *params]), torch.float64, path)
    assert all(bool((g == 0).all()) for g in grads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(1, D, H, C), (1, 1, 1, 2)], ids=["N=1", "N=D=H=1"])
@pytest.mark.parametrize("path", PATHS)
def test_single_sample_batch_matches_the_twin(path, size, device):
    x, target, params = make_problem(*size, device=device, seed=11)
    manual, twin = pair(path, target)
    grad_out = upstream(path, 1, size[3], device=device)
    assert_close_to_twin(
        grads_keeping_layout(manual, [x, *params], grad_out),
        grads_keeping_layout(twin, [x, *params], grad_out),
        torch.float64,
        path,
    )


UNBATCHED_CASES = ["probs", "logits"] + [f"loss-{r}-{kind}" for r in REDUCTIONS for kind in ("index", "probabilities")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", UNBATCHED_CASES)
def test_unbatched_sample_matches_the_twin(case, device):
    x, target, params = make_problem(1, D, H, C, device=device, soft=case.endswith("probabilities"), seed=12)
    x, target = x[0], target[0]  # (D,), and a 0-dim index or (C,) probabilities
    name, _, rest = case.partition("-")
    reduction = rest.partition("-")[0]
    if name == "loss":
        inputs = [x, *params, target]
        manual = loss_of_everything(functional.two_layer_net_loss, reduction)
        twin = loss_of_everything(reference.loss, reduction)
        shape = ()
    else:
        inputs = [x, *params]
        manual, twin = pair(name)
        shape = (C,)
    grad_out = torch.rand(shape, dtype=torch.float64, device=device) + 0.5
    value, grads = grads_keeping_layout(manual, inputs, grad_out)
    assert value.shape == shape and grads[0].shape == (D,)
    assert_close_to_twin((value, grads), grads_keeping_layout(twin, inputs, grad_out), torch.float64, case)


def _transposed(t):
    """The same values, stored column-major: t.T.contiguous().T (2-D only)."""
    return t.T.contiguous().T


def _strided(t):
    """The same values, every other element of a larger buffer along the last dimension."""
    buffer = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    buffer[..., ::2] = t
    return buffer[..., ::2]


def _rows_sliced(t):
    """The same values, every other row of a larger buffer."""
    buffer = torch.zeros(2 * t.shape[0], *t.shape[1:], dtype=t.dtype, device=t.device)
    buffer[::2] = t
    return buffer[::2]


LAYOUTS = {
    "x transposed": (0, _transposed),
    "x column-strided": (0, _strided),
    "x every other row": (0, _rows_sliced),
    "W1 transposed": (1, _transposed),
    "W1 strided": (1, _strided),
    "b1 strided": (2, _strided),
    "W2 transposed": (3, _transposed),
    "W2 every other row": (3, _rows_sliced),
    "b2 strided": (4, _strided),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["probs", "logits", "loss-mean", "loss-none"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_non_contiguous_inputs_match_the_twin(layout, path, device):
    x, target, params = make_problem(9, D, H, C, device=device, seed=13)
    inputs = [x, *params]
    index, relayout = LAYOUTS[layout]
    inputs[index] = relayout(inputs[index])
    assert not inputs[index].is_contiguous() and torch.equal(inputs[index], [x, *params][index])
    manual, twin = pair(path, target)
    grad_out = upstream(path, 9, C, device=device)
    assert_close_to_twin(
        grads_keeping_layout(manual, inputs, grad_out),
        grads_keeping_layout(twin, inputs, grad_out),
        torch.float64,
        path,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["probs", "logits", "loss-mean", "loss-none"])
def test_expanded_x_with_stride_0_rows_matches_the_twin(path, device):
    x, target, params = make_problem(7, D, H, C, device=device, seed=14)
    x = x[:1].expand(7, D)  # one row, seven times: stride (0, 1)
    before = bits(x)
    manual, twin = pair(path, target)
    grad_out = upstream(path, 7, C, device=device)
    result = grads_keeping_layout(manual, [x, *params], grad_out)
    assert_close_to_twin(result, grads_keeping_layout(twin, [x, *params], grad_out), torch.float64, path)
    assert torch.equal(bits(x), before)


def _expanded_upstream(path, N, C, device):
    """A stride-0 upstream gradient: one value broadcast over the output (a 0-dim view for scalars)."""
    base = torch.tensor([0.75], dtype=torch.float64, device=device)
    if path in ("probs", "logits"):
        return base, base.view(1, 1).expand(N, C)
    if path == "loss-none":
        return base, base.expand(N)
    return base, base.view(())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", PATHS)
def test_expanded_upstream_gradient_is_never_written(path, device):
    x, target, params = make_problem(8, D, H, C, device=device, seed=15)
    base, grad_out = _expanded_upstream(path, 8, C, device)
    assert grad_out.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
    watched = dict(zip(("upstream", "target", *NAMES), (base, target, x, *params)))
    before = {name: bits(t) for name, t in watched.items()}
    manual, twin = pair(path, target)
    result = grads_keeping_layout(manual, [x, *params], grad_out)
    for name, t in watched.items():
        assert torch.equal(bits(t), before[name]), f"{name} was written in place"
    assert_close_to_twin(result, grads_keeping_layout(twin, [x, *params], grad_out), torch.float64, path)


# ----------------------------------------------------------------------------------------
# requires_grad on some inputs only: no gradient for the others, and none computed
# ----------------------------------------------------------------------------------------

MASKS = [mask for mask in itertools.product([False, True], repeat=5) if any(mask)]
SUBSET_PATHS = ["probs", "logits", "loss-mean", "loss-none", "loss-mean-probabilities"]


def _mask_id(mask):
    return "+".join(name for name, m in zip(NAMES, mask) if m)


def _custom_node(output):
    """The autograd node of manualgrad's Function behind ``output`` (skipping views such as squeeze)."""
    node = output.grad_fn
    while node is not None and not isinstance(node, torch.autograd.function.BackwardCFunction):
        node = next((fn for fn, _ in node.next_functions if fn is not None), None)
    assert node is not None, "no custom Function in the graph"
    return node


def _subset_problem(path):
    """path: one of PATHS, or "loss-mean-probabilities" (a probability target that needs no gradient)."""
    x, target, params = make_problem(7, D, H, C, soft=path.endswith("probabilities"), seed=16)
    return x, target, params, pair(path.removesuffix("-probabilities"), target)


@pytest.mark.parametrize("mask", MASKS, ids=_mask_id)
@pytest.mark.parametrize("path", SUBSET_PATHS)
def test_requires_grad_on_some_inputs_only(path, mask):
    x, target, params, (manual, twin) = _subset_problem(path)
    leaves = [t.detach().clone().requires_grad_(m) for t, m in zip([x, *params], mask)]
    output = manual(*leaves)
    returned = []
    node = _custom_node(output)
    node.register_hook(lambda grad_inputs, grad_outputs: returned.append((grad_inputs, node.next_functions)))
    grad_out = upstream(path.removesuffix("-probabilities"), 7, C)
    output.backward(grad_out)

    # 1. what the Function's backward returned: None for every input that needs no gradient
    ((grad_inputs, edges),) = returned
    for i, (grad, (edge, _)) in enumerate(zip(grad_inputs, edges)):
        assert edge is not None or grad is None, f"backward returned a gradient for input {i}, which needs none"
    # 2. .grad: set exactly where asked, equal to the twin's
    twin_leaves = [t.detach().clone().requires_grad_(m) for t, m in zip([x, *params], mask)]
    twin(*twin_leaves).backward(grad_out)
    for name, leaf, twin_leaf in zip(NAMES, leaves, twin_leaves):
        if twin_leaf.grad is None:
            assert leaf.grad is None, f"{name}.grad was set but {name} does not require grad"
        else:
            tolerance = TOLERANCES[torch.float64]
            torch.testing.assert_close(leaf.grad, twin_leaf.grad, **tolerance, msg=lambda m, name=name: f"{name}: {m}")


def test_only_a_probability_target_requires_grad():
    x, target, params = make_problem(7, D, H, C, soft=True, seed=17)
    manual = loss_of_everything(functional.two_layer_net_loss, "mean")
    twin = loss_of_everything(reference.loss, "mean")
    requires = [False] * 5 + [True]
    (value, (grad_target,)) = grads_keeping_layout(manual, [x, *params, target], requires=requires)
    expected = grads_keeping_layout(twin, [x, *params, target], requires=requires)
    assert_close_to_twin((value, (grad_target,)), expected, torch.float64, "target only")


MATMULS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
    torch.ops.aten.mv.default,
    torch.ops.aten.addmv.default,
    torch.ops.aten.dot.default,
}


def _matmuls(path, mask, wrap=lambda fn: fn):
    """How many matrix products forward and backward run when ``mask`` says which inputs require grad."""
    x, target, params, (manual, _) = _subset_problem(path)
    leaves = [t.detach().clone().requires_grad_(m) for t, m in zip([x, *params], mask)]
    with RecordOps(watched=[]) as recorder:
        output = wrap(manual)(*leaves)
        if any(mask):
            output.backward(upstream(path, 7, C))
    return sum(op in {str(m) for m in MATMULS} for op, _ in recorder.ops)


def _skipped_gradient_violations(path, wrap=lambda fn: fn):
    """Each gradient that is not asked for must save at least one matrix product, whatever the implementation.

    Dropping dx, dW1 or dW2 from the full set saves its own product (eq. (18), (16), (14)); asking
    for one input alone must always cost less than asking for all five.
    """
    everything = _matmuls(path, (True,) * 5, wrap)
    violations = []
    for i, name in enumerate(NAMES):
        alone = _matmuls(path, tuple(j == i for j in range(5)), wrap)
        if not alone < everything:
            violations.append(f"{name} alone: {alone} matmuls, all five: {everything}")
        if name in ("x", "W1", "W2"):
            without = _matmuls(path, tuple(j != i for j in range(5)), wrap)
            if not without < everything:
                violations.append(f"all but {name}: {without} matmuls, all five: {everything}")
    return violations


@pytest.mark.parametrize("path", ["probs", "logits", "loss-mean", "loss-none"])
def test_gradients_not_asked_for_are_not_computed(path):
    assert _skipped_gradient_violations(path) == []


def _wasteful(fn):
    """fn, made to compute every gradient: inputs that need none are swapped for leaves that do."""

    def wasteful(*inputs):
        return fn(*(t if t.requires_grad else t.detach().requires_grad_() for t in inputs))

    return wasteful


@pytest.mark.parametrize("path", ["probs", "loss-mean"])
def test_negative_control_computing_every_gradient_is_caught(path):
    assert _skipped_gradient_violations(path, wrap=_wasteful) != []


# ----------------------------------------------------------------------------------------
# Backward twice, repeated runs
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", PATHS)
def test_retain_graph_then_backward_twice_is_bit_identical(path, device):
    x, target, params = make_problem(9, D, H, C, device=device, seed=18)
    manual, _ = pair(path, target)
    leaves = [t.detach().clone().requires_grad_() for t in (x, *params)]
    output = manual(*leaves)
    grad_out = upstream(path, 9, C, device=device)
    first = torch.autograd.grad(output, leaves, grad_out, retain_graph=True)
    second = torch.autograd.grad(output, leaves, grad_out, retain_graph=True)
    output.backward(grad_out, retain_graph=True)
    output.backward(grad_out)
    for name, a, b, leaf in zip(NAMES, first, second, leaves):
        assert torch.equal(bits(a), bits(b)), f"{name}: second backward differs"
        assert torch.equal(bits(leaf.grad), bits(a + a)), f"{name}: accumulated .grad is not twice the gradient"


@pytest.mark.parametrize("size", [(33, 3, 7, 5), (5000, 2, 16, 3)], ids=["small", "several-chunks"])
@pytest.mark.parametrize("path", PATHS)
def test_repeated_runs_on_the_cpu_are_bit_identical_and_match_the_twin(path, size):
    x, target, params = make_problem(*size, seed=19)
    manual, twin = pair(path, target)
    grad_out = upstream(path, size[0], size[3])
    runs = [grads_keeping_layout(manual, [x, *params], grad_out) for _ in range(3)]
    for value, grads in runs[1:]:
        for i, (a, b) in enumerate(zip((value, *grads), (runs[0][0], *runs[0][1]))):
            assert torch.equal(bits(a), bits(b)), f"output {i} differs between runs"
    assert_close_to_twin(runs[0], grads_keeping_layout(twin, [x, *params], grad_out), torch.float64, path)


# ----------------------------------------------------------------------------------------
# The catalogue, continued: F.cross_entropy's weight, ignore_index and label_smoothing
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadOption:
    """A bad loss option: ``method`` called with ``args(x, target, probs)`` -> (positional, keyword)."""

    id: str
    method: str  # "loss" or "forward"
    args: Callable[..., tuple[tuple, dict]]
    error: type[Exception]
    match: str
    surfaces: tuple[str, ...] = ("module", "functional")
    cpu_only: bool = False


class FunctionalOptionsAPI(FunctionalAPI):
    """FunctionalAPI whose loss takes the keyword options too."""

    def forward(self, x, target=None, reduction="mean", **options):
        return self.loss(x, target, reduction, **options)

    def loss(self, x, target, reduction="mean", **options):
        return functional.two_layer_net_loss(x, target, *self.params, reduction=reduction, **options)


def _kw(**options):
    return lambda x, t, p: ((x, t), options)


BAD_OPTIONS = [
    BadOption("weight is a list", "loss", _kw(weight=[1.0] * C), TypeError,
              r"weight must be a torch.Tensor, got list; convert it with torch.as_tensor\(weight"),
    BadOption("weight int64", "loss", _kw(weight=torch.ones(C, dtype=torch.int64)), TypeError,
              r"weight must be a floating-point tensor, got dtype torch.int64"),
    BadOption("weight float64, parameters float32", "forward", _kw(weight=torch.ones(C, dtype=torch.float64)),
              TypeError, r"weight has dtype torch.float64 but the parameters have dtype torch.float32; "
              r"convert it with weight.to\(torch.float32\)"),
    BadOption("weight with 5 classes, C = 4", "loss", _kw(weight=torch.ones(C + 1)), ValueError,
              r"weight must have shape \(4,\), one per class, got \(5,\)"),
    BadOption("weight of shape (C, 1)", "loss", _kw(weight=torch.ones(C, 1)), ValueError,
              r"weight must have shape \(4,\), one per class, got \(4, 1\)"),
    BadOption("weight on meta", "loss", _kw(weight=torch.ones(C, device="meta")), RuntimeError,
              "Expected all tensors to be on the same device.*weight is on meta and W1 is on {device}"),
    BadOption("weight sparse", "loss", _kw(weight=torch.ones(C).to_sparse()), TypeError,
              r"weight must be a dense \(torch.strided\) tensor, got layout torch.sparse_coo"),
    BadOption("weight requires grad, class indices", "loss", _kw(weight=torch.ones(C, requires_grad=True)),
              RuntimeError, r"weight requires grad, but the loss is not differentiable in weight .*weight.detach\(\)"),
    BadOption("label_smoothing 1.5", "loss", _kw(label_smoothing=1.5), ValueError,
              r"label_smoothing must lie in \[0, 1\], got 1.5"),
    BadOption("label_smoothing negative", "forward", _kw(label_smoothing=-0.1), ValueError,
              r"label_smoothing must lie in \[0, 1\], got -0.1"),
    BadOption("label_smoothing NaN", "loss", _kw(label_smoothing=float("nan")), ValueError,
              r"label_smoothing must lie in \[0, 1\], got nan"),
    BadOption("label_smoothing str", "loss", _kw(label_smoothing="0.1"), TypeError,
              r"label_smoothing must be a float in \[0, 1\], got str \('0.1'\)"),
    BadOption("label_smoothing tensor", "loss", _kw(label_smoothing=torch.tensor(0.1)), TypeError,
              r"label_smoothing must be a float in \[0, 1\], got Tensor"),
    BadOption("ignore_index float", "loss", _kw(ignore_index=1.5), TypeError,
              r"ignore_index must be an int, got float \(1.5\)"),
    BadOption("ignore_index bool", "forward", _kw(ignore_index=True), TypeError,
              r"ignore_index must be an int, got bool \(True\)"),
    BadOption("ignore_index beyond int64", "loss", _kw(ignore_index=2**70), ValueError,
              rf"ignore_index must fit in int64, got {2**70}"),
    BadOption("ignore_index with probabilities", "loss", lambda x, t, p: ((x, p), {"ignore_index": 2}), ValueError,
              r"ignore_index \(2\) applies to class-index targets only, not to probabilities"),
    BadOption("-100 label with another ignore_index", "loss",
              lambda x, t, p: ((x, _with(t, 4, -100)), {"ignore_index": 2}), ValueError,
              r"target holds class index -100 at position 4; class indices must lie in \[0, 4\) "
              r"or equal ignore_index \(2\)", cpu_only=True),
    BadOption("label == C with ignore_index set", "forward",
              lambda x, t, p: ((x, _with(_with(t, 0, 3), 1, C)), {"ignore_index": 3}), ValueError,
              r"target holds class index 4 at position 1; class indices must lie in \[0, 4\)", cpu_only=True),
    BadOption("weight without a target", "forward", lambda x, t, p: ((x,), {"weight": torch.ones(C)}), TypeError,
              r"weight applies to the loss only: pass a target", surfaces=MODULE),
]  # fmt: skip


def _option_cases():
    for entry in BAD_OPTIONS:
        for surface in entry.surfaces:
            yield pytest.param(entry, surface, id=f"{entry.id}-{surface}")


def test_option_catalogue_ids_are_unique_and_new():
    ids = [entry.id for entry in BAD_OPTIONS]
    assert len(ids) == len(set(ids)) and not set(ids) & {entry.id for entry in BAD_INPUTS}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("entry", "surface"), list(_option_cases()))
def test_bad_loss_option_is_refused_before_any_kernel_and_nothing_is_lost(entry, surface, device):
    if entry.cpu_only and device != "cpu":
        pytest.skip("off the CPU the class range is checked by scatter and gather in the loss")
    torch.manual_seed(0)
    model = TwoLayerNet(D, H, C, device=device)
    x, target, probs = _good_inputs(device)
    model.loss(x, target).backward()  # existing .grad that must survive the bad call
    before = {name: (p, bits(p), p.grad, bits(p.grad)) for name, p in model.named_parameters()}
    args, options = entry.args(x, target, probs)
    api = FunctionalOptionsAPI(model) if surface == "functional" else model
    match = entry.match.replace("{device}", re.escape(str(model.W1.device)))
    watched = [*model.parameters(), *(p.grad for p in model.parameters()), x]
    with RecordOps(watched=watched) as recorder:
        with pytest.raises(entry.error, match=match):
            getattr(api, entry.method)(*args, **options)
    if entry.cpu_only:  # the range check reads the target's values, and nothing else
        assert [op for op, touches in recorder.ops if touches] == [], "x, a parameter or a .grad was used"
    else:
        assert recorder.ops == [], f"kernels ran before the error: {recorder.ops}"
    for name, p in model.named_parameters():
        p0, p0_bits, grad0, grad0_bits = before[name]
        assert p is p0 and p.grad is grad0, f"{name} or its .grad was replaced"
        assert torch.equal(bits(p), p0_bits) and torch.equal(bits(p.grad), grad0_bits), f"{name} or its .grad changed"
