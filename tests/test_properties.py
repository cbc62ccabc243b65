"""Property-based tests: any sizes, dtype, target kind, reduction and memory layout match the twin.

Hypothesis draws N (0-300), D (1-8), H (1-64, or 65-600 so that N*H reaches the sigmoid form of
tanh from 4096 elements), C (2-6), float32 or float64, class indices or probabilities (with or
without a gradient: without one, the scalar loss can compute its gradients in the forward), the
reduction, where the loss computes its gradients and in chunks of how many rows (none given, any,
or a size that leaves a one-row last chunk), the memory layout of x and of every parameter
(contiguous, transposed, strided, every other row), an input scale (up to saturating the tanh)
and a seed for the values. The value and every gradient must equal the native-autograd twin's
within a tolerance relative to the largest entry compared (RELATIVE), and no input may be
written. Second derivatives (Hessian-vector products) are drawn past the sigmoid-form switch too.

The examples are derandomized (the same ones on every run, no example database), so CI
is deterministic; ``max_examples`` (2300 first-order, 60 second-order examples) keeps the file to
about 45 s of CPU time (measured on the 2-core machine; wall time grows when it is shared).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import LOSS_STRATEGIES
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from manualgrad import functional, reference

REDUCTIONS = ["mean", "sum", "none"]
LAYOUTS = ["contiguous", "transposed", "strided", "every other row"]
NAMES = ("x", "W1", "b1", "W2", "b2", "target")
# max |actual - expected| <= RELATIVE * max |expected| (+ float32's allowance, see assert_matches):
# relative to what is compared, so that a 1e-4 relative slip in a gradient of size 1e-3 fails.
RELATIVE = {torch.float64: 1e-9, torch.float32: 1e-5}
TINY = {torch.float64: 1e-14, torch.float32: 1e-7}  # a floor for tensors that are all (nearly) zero

DETERMINISTIC = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(autouse=True, scope="module")
def one_intra_op_thread():
    """The problems are tiny: with one thread, no matmul waits for a second core that is busy elsewhere.

    On a loaded 2-core machine each parallel region can cost a scheduler time slice (~8 ms),
    which would make this file's runtime depend on the machine's other work.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout (1-D tensors have no transpose: strided instead)."""
    if layout == "contiguous":
        return t
    if layout == "transposed" and t.dim() == 2:
        return t.T.contiguous().T
    if layout == "every other row":
        buffer = torch.zeros(2 * t.shape[0], *t.shape[1:], dtype=t.dtype)
        buffer[::2] = t
        return buffer[::2]
    buffer = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    buffer[..., ::2] = t
    return buffer[..., ::2]


@dataclass(frozen=True)
class Problem:
    N: int
    D: int
    H: int
    C: int
    dtype: torch.dtype
    soft: bool
    reduction: str
    layouts: tuple[str, ...]  # for x, W1, b1, W2, b2
    scale: float
    seed: int
    loss_strategy: str  # where the scalar loss computes its gradients (conftest.LOSS_STRATEGIES)
    chunk_rows: int | None = None  # rows per chunk when the gradients are computed in the forward
    target_grad: bool = True  # whether a probability target requires grad (then no gradients in forward)

    def strategy(self):
        """The context in which the loss computes its gradients where, and in chunks of how many rows."""
        in_forward = self.loss_strategy == "gradients-in-forward"
        return functional.loss_gradients_in_forward(in_forward, chunk_rows=self.chunk_rows if in_forward else None)

    def tensors(self):
        """x, [W1, b1, W2, b2] in the drawn layouts, the target, and upstream gradients of each output shape."""
        generator = torch.Generator().manual_seed(self.seed)

        def randn(*shape, scale=1.0):
            return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(self.dtype)

        N, D, H, C = self.N, self.D, self.H, self.C
        x = randn(N, D, scale=self.scale)
        params = [randn(D, H, scale=D**-0.5), randn(H, scale=0.5), randn(H, C, scale=H**-0.5 * 2), randn(C)]
        if self.soft:
            target = torch.softmax(randn(N, C, scale=2.0), 1)
        else:
            target = torch.randint(0, C, (N,), generator=generator)
        x, *params = (with_layout(t, layout) for t, layout in zip([x, *params], self.layouts))
        upstream = {  # random: ones would cancel in the softmax
            "scalar": torch.rand((), generator=generator, dtype=torch.float64).to(self.dtype) + 0.5,
            "none": torch.rand(N, generator=generator, dtype=torch.float64).to(self.dtype) + 0.5,
            "network": randn(N, C),
        }
        return x, params, target, upstream


def chunk_sizes(N: int):
    """None (the default, one chunk here), any size, or one that leaves a one-row last chunk."""
    one_row_last = [k for k in range(1, N - 1) if (N - 1) % k == 0]  # N = m k + 1: m chunks of k, then 1 row
    options = [st.none(), st.integers(1, max(N, 1))]
    if one_row_last:
        options.append(st.sampled_from(one_row_last))
    return st.one_of(*options)


@st.composite
def problems(draw, max_N: int = 300) -> Problem:
    N = draw(st.integers(0, max_N))
    return Problem(
        N=N,
        D=draw(st.integers(1, 8)),
        H=draw(st.one_of(st.integers(1, 64), st.integers(65, 600))),
        C=draw(st.integers(2, 6)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        soft=draw(st.booleans()),
        reduction=draw(st.sampled_from(REDUCTIONS)),
        layouts=tuple(draw(st.sampled_from(LAYOUTS)) for _ in range(5)),
        scale=draw(st.sampled_from([0.1, 1.0, 4.0])),
        seed=draw(st.integers(0, 2**32 - 1)),
        loss_strategy=draw(st.sampled_from(LOSS_STRATEGIES)),
        chunk_rows=draw(chunk_sizes(N)),
        target_grad=draw(st.booleans()),
    )


def grads(fn, inputs, grad_out):
    """fn(*inputs) and the gradients of every floating input; leaves keep the inputs' strides."""
    leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, [t for t in leaves if t.requires_grad], grad_out)


def largest(t: torch.Tensor) -> float:
    """The largest finite element (0 when there is none: an empty tensor, the NaN mean of N = 0)."""
    finite = t[torch.isfinite(t)]
    return float(finite.max()) if finite.numel() else 0.0


def assert_matches(fn, twin, inputs, grad_out, dtype, what):
    """Value then every gradient of ``fn`` against the twin, within TOLERANCES[dtype].

    atol is multiplied by max(1, max |expected|): a batch sum of order-1 terms that cancel to
    nearly 0 keeps an absolute rounding error of the terms' size whatever the summation order.
    In float32 the reference is the twin in float64 on the same values, and each tensor may
    also be off by 4 times the float32 twin's own error there: where the tanh saturates,
    1 - a1^2 keeps few correct digits in any float32 implementation (a one-ulp change in z1,
    e.g. addmm against matmul + add, changes it by ~1e-4 relative), and manualgrad must be
    as accurate as PyTorch's autograd, not identical to it.
    """
    value, gradients = grads(fn, inputs, grad_out)
    assert len(gradients) == len([t for t in inputs if t.is_floating_point()]), f"{what}: a gradient is missing"
    ref_value, ref_gradients = grads(twin, inputs, grad_out)
    if dtype == torch.float32:
        widen = [t.double() if t.is_floating_point() else t for t in inputs]
        truth_value, truth_gradients = grads(twin, widen, grad_out.double())
        allowance = [
            4 * largest((r.double() - t).detach().abs())
            for r, t in zip((ref_value, *ref_gradients), (truth_value, *truth_gradients))
        ]
        ref_value, ref_gradients = truth_value, truth_gradients
    else:
        allowance = [0.0] * (1 + len(gradients))
    for i, (a, b) in enumerate(zip((value, *gradients), (ref_value, *ref_gradients))):
        name = "value" if i == 0 else f"gradient {i - 1}"
        scale = largest(b.detach().abs())
        tolerance = {"rtol": 0.0, "atol": RELATIVE[dtype] * scale + TINY[dtype] + allowance[i]}
        torch.testing.assert_close(
            a.to(b.dtype), b, **tolerance, equal_nan=True, msg=lambda m, name=name: f"{what} {name}: {m}"
        )


def raw_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).clone(memory_format=torch.contiguous_format).view(torch.uint8)


def snapshot(tensors):
    return [raw_bytes(t) for t in tensors]


def assert_unchanged(tensors, before):
    for name, t, b in zip(NAMES, tensors, before):
        assert torch.equal(raw_bytes(t), b), f"{name} was written in place"


@settings(DETERMINISTIC, max_examples=1500)
@given(problems())
def test_loss_value_and_every_gradient_match_the_twin(problem):
    x, params, target, upstream = problem.tensors()
    reduction = problem.reduction
    grad_out = upstream["none"] if reduction == "none" else upstream["scalar"]
    fixed_target = problem.soft and not problem.target_grad  # then the loss may compute gradients in the forward

    def manual(x, W1, b1, W2, b2, target=target):
        return functional.two_layer_net_loss(x, target, W1, b1, W2, b2, reduction=reduction)

    def twin(x, W1, b1, W2, b2, target=target):
        return reference.loss(x, target, W1, b1, W2, b2, reduction=reduction)

    inputs = [x, *params] if fixed_target else [x, *params, target]  # a probability target gets a gradient
    before = snapshot(inputs)
    with problem.strategy():
        assert_matches(manual, twin, inputs, grad_out, problem.dtype, f"{problem}")
    assert_unchanged(inputs, before)


NETWORK_STRATEGIES = (problems(), st.sampled_from(["probs", "logits"]))


@settings(DETERMINISTIC, max_examples=800)
@given(*NETWORK_STRATEGIES)
def test_network_value_and_every_gradient_match_the_twin(problem, path):
    x, params, _, upstream = problem.tensors()
    manual, twin = {
        "probs": (functional.two_layer_net, reference.probs),
        "logits": (functional.two_layer_net_logits, reference.logits),
    }[path]
    inputs = [x, *params]
    before = snapshot(inputs)
    assert_matches(manual, twin, inputs, upstream["network"], problem.dtype, f"{path} {problem}")
    assert_unchanged(inputs, before)


@pytest.mark.parametrize(
    "path",
    ["several chunks, one-row last", "gradients in forward, fixed probabilities", "sigmoid form, chunked", "N = 0"],
)
def test_the_draws_reach_every_path(path):
    """Each path of the loss is among what problems() draws (hypothesis.find searches the same strategy)."""
    in_forward = lambda p: p.loss_strategy == "gradients-in-forward" and p.reduction != "none"  # noqa: E731
    chunked = lambda p: p.chunk_rows is not None and p.chunk_rows < p.N  # noqa: E731
    condition = {
        "several chunks, one-row last": lambda p: (
            in_forward(p) and chunked(p) and p.N % p.chunk_rows == 1 and p.N > 2 * p.chunk_rows
        ),
        "gradients in forward, fixed probabilities": lambda p: in_forward(p) and p.soft and not p.target_grad,
        "sigmoid form, chunked": lambda p: in_forward(p) and chunked(p) and p.N * p.H >= 4096,
        "N = 0": lambda p: p.N == 0,
    }[path]
    find(problems(), condition, settings=settings(DETERMINISTIC, max_examples=5000, phases=[Phase.generate]))


@st.composite
def second_order_problems(draw) -> Problem:
    """Float64 problems for Hessian-vector products, half of them past the sigmoid-form switch (N*H >= 4096)."""
    N = draw(st.integers(1, 24))
    switch = -(-4096 // N)  # the fewest hidden units with N*H >= 4096
    H = draw(st.one_of(st.integers(1, 32), st.integers(switch, switch + 200)))
    return Problem(
        N=N, D=draw(st.integers(1, 4)), H=H, C=draw(st.integers(2, 4)), dtype=torch.float64,
        soft=draw(st.booleans()), reduction=draw(st.sampled_from(REDUCTIONS)), layouts=("contiguous",) * 5,
        scale=draw(st.sampled_from([0.1, 1.0, 4.0])), seed=draw(st.integers(0, 2**32 - 1)),
        loss_strategy=draw(st.sampled_from(LOSS_STRATEGIES)), target_grad=draw(st.booleans()),
    )  # fmt: skip


def hessian_vector_products(fn, inputs, grad_out):
    leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
    wanted = [t for t in leaves if t.requires_grad]
    grads = torch.autograd.grad(fn(*leaves), wanted, grad_out, create_graph=True)
    generator = torch.Generator().manual_seed(7)
    vectors = [torch.randn(g.shape, generator=generator, dtype=g.dtype) for g in grads]
    inner = sum((g * v).sum() for g, v in zip(grads, vectors))
    return torch.autograd.grad(inner, wanted, allow_unused=True, materialize_grads=True)


@settings(DETERMINISTIC, max_examples=60)
@given(second_order_problems(), st.sampled_from(["loss", "probs", "logits"]))
def test_second_derivatives_match_the_twin(problem, path):
    """Double backward (the backward recomputes a1 with differentiable ops) against the twin's."""
    x, params, target, upstream = problem.tensors()
    if path == "loss":
        reduction = problem.reduction
        grad_out = upstream["none"] if reduction == "none" else upstream["scalar"]
        inputs = [x, *params, target] if problem.soft and problem.target_grad else [x, *params]

        def manual(x, W1, b1, W2, b2, target=target):
            return functional.two_layer_net_loss(x, target, W1, b1, W2, b2, reduction=reduction)

        def twin(x, W1, b1, W2, b2, target=target):
            return reference.loss(x, target, W1, b1, W2, b2, reduction=reduction)
    else:
        manual, twin = {"probs": (functional.two_layer_net, reference.probs),
                        "logits": (functional.two_layer_net_logits, reference.logits)}[path]  # fmt: skip
        inputs, grad_out = [x, *params], upstream["network"]
    with problem.strategy():
        actual = hessian_vector_products(manual, inputs, grad_out)
    expected = hessian_vector_products(twin, inputs, grad_out)
    for name, a, b in zip(NAMES, actual, expected):
        tolerance = RELATIVE[torch.float64] * largest(b.abs()) + TINY[torch.float64]
        torch.testing.assert_close(a, b, rtol=0.0, atol=tolerance, msg=lambda m, n=name: f"{path} {problem} {n}: {m}")


# ----------------------------------------------------------------------------------------
# Negative controls: the same properties, against a twin with a classic slip, must fail.
# ----------------------------------------------------------------------------------------


def _logits_without_tanh_slope(x, W1, b1, W2, b2):
    """z2 whose backward forgets (1 - a1^2), eq. (11): forward tanh, backward as if tanh' were 1."""
    z1 = x @ W1 + b1
    return (z1 + (torch.tanh(z1) - z1).detach()) @ W2 + b2


def _loss_without_mean(x, target, W1, b1, W2, b2, reduction="mean"):
    """The loss with the 1/N of the mean dropped."""
    return TWIN_LOSS(x, target, W1, b1, W2, b2, reduction="sum" if reduction == "mean" else reduction)


TWIN_LOSS = reference.loss
SLIPS = {
    "tanh slope dropped": ("logits", _logits_without_tanh_slope),
    "1/N dropped": ("loss", _loss_without_mean),
}


NEGATIVE_CONTROLS = {
    "loss, tanh slope dropped": (test_loss_value_and_every_gradient_match_the_twin, "tanh slope dropped"),
    "loss, 1/N dropped": (test_loss_value_and_every_gradient_match_the_twin, "1/N dropped"),
    "network, tanh slope dropped": (test_network_value_and_every_gradient_match_the_twin, "tanh slope dropped"),
}


@pytest.mark.parametrize("case", NEGATIVE_CONTROLS)
def test_negative_control_a_slip_in_the_twin_is_caught(monkeypatch, case):
    test, slip = NEGATIVE_CONTROLS[case]
    name, faulty = SLIPS[slip]
    monkeypatch.setattr(reference, name, faulty)  # reference.probs and .loss call reference.logits
    strategies = (problems(),) if test is test_loss_value_and_every_gradient_match_the_twin else NETWORK_STRATEGIES
    quick = settings(DETERMINISTIC, max_examples=40, phases=[Phase.generate], report_multiple_bugs=False)
    with pytest.raises(AssertionError, match="not close"):
        quick(given(*strategies)(test.hypothesis.inner_test))()
