"""One code path under tracing, valid for every batch size (issue 12, item 1).

Under torch.compile, torch.export, make_fx and torch.func manualgrad's own choices (W2 layout,
the sigmoid form of tanh, gradients in the forward, the class-range check) must not guard on
N: compile builds one graph per entry point across batch sizes, export accepts a dynamic batch
dimension and its program gives eager's values and gradients at other sizes. Counted here.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TOLERANCES, make_problem
from torch._dynamo.testing import CompileCounterWithBackend
from torch.export import Dim
from torch.fx.experimental.proxy_tensor import make_fx

from manualgrad import TwoLayerNet, functional, reference

D, H, C = 2, 32, 4  # none equal to a batch size below: Dynamo would "duck size" them together
# Across every eager threshold: W2 layout (16 rows), sigmoid tanh (N*H >= 4096), gradients in
# the forward (256 rows), the chunked probs/logits (1024 rows), loss chunks of 1024 rows (2049 and
# 5000 span several, with ragged last chunks; (D + 1) C = 12 columns: not factored, as modes.chunk_rows says).
BATCHES = [3, 8, 9, 20, 100, 255, 256, 300, 2049, 5000]
DTYPE = torch.float64  # sums over 5000 rows: float32 rounding would need loose tolerances
TOL = TOLERANCES[DTYPE]


def _model(seed: int = 0) -> TwoLayerNet:
    torch.manual_seed(seed)
    return TwoLayerNet(D, H, C, dtype=DTYPE)


def _inputs(N: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + N)
    x = torch.randn(N, D, generator=generator, dtype=DTYPE)
    return x, torch.randint(0, C, (N,), generator=generator)


ENTRY_POINTS = {  # name: (model, x, target) -> output
    "probs": lambda model, x, t: model(x),
    "logits": lambda model, x, t: model.logits(x),
    "loss": lambda model, x, t: model.loss(x, t),
}
TWINS = {
    "probs": lambda x, t, *p: reference.probs(x, *p),
    "logits": lambda x, t, *p: reference.logits(x, *p),
    "loss": lambda x, t, *p: reference.loss(x, t, *p),
}


def _value_and_grads(fn, model, x, t):
    model.zero_grad()
    x = x.clone().requires_grad_()
    out = fn(model, x, t)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    return [out.detach(), x.grad, *(p.grad.clone() for p in model.parameters())]


def _assert_same(got, expected, what):
    for i, (g, e) in enumerate(zip(got, expected)):
        torch.testing.assert_close(g, e, **TOL, msg=lambda m, i=i: f"{what}, output/gradient {i}: {m}")


# ---------------------------------------------------------------------------------------
# torch.compile(dynamic=True, fullgraph=True): one graph per entry point across N
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_compile_dynamic_builds_one_graph_across_batch_sizes(name):
    torch._dynamo.reset()
    model = _model()
    counter = CompileCounterWithBackend("aot_eager")
    fn = ENTRY_POINTS[name]
    compiled = torch.compile(fn, backend=counter, dynamic=True, fullgraph=True)
    for N in BATCHES:
        x, t = _inputs(N)
        _assert_same(_value_and_grads(compiled, model, x, t), _value_and_grads(fn, model, x, t), f"N={N}")
    assert counter.frame_count == 1, f"{name}: {counter.frame_count} graphs for batch sizes {BATCHES}"


@pytest.mark.parametrize("name", ["functional loss", "functional probs"])
def test_compile_dynamic_functional_entry_points_build_one_graph(name):
    torch._dynamo.reset()
    _, _, params = make_problem(4, D, H, C, dtype=DTYPE)
    if name == "functional loss":
        fn = lambda x, t: functional.two_layer_net_loss(x, t, *params, reduction="sum")  # noqa: E731
    else:
        fn = lambda x, t: functional.two_layer_net(x, *params)  # noqa: E731
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(fn, backend=counter, dynamic=True, fullgraph=True)
    for N in BATCHES:
        x, t = _inputs(N)
        torch.testing.assert_close(compiled(x, t), fn(x, t), **TOL)
    assert counter.frame_count == 1


def test_compile_with_inductor_builds_one_graph_for_the_training_loss():
    torch._dynamo.reset()
    model = _model()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(ENTRY_POINTS["loss"], backend=counter, dynamic=True, fullgraph=True)
    for N in (3, 300, 2049):
        x, t = _inputs(N)
        expected = _value_and_grads(ENTRY_POINTS["loss"], model, x, t)
        _assert_same(_value_and_grads(compiled, model, x, t), expected, f"inductor, N={N}")
    assert counter.frame_count == 1


# ---------------------------------------------------------------------------------------
# torch.export with a dynamic batch dimension
# ---------------------------------------------------------------------------------------


class _Method(torch.nn.Module):
    """A module whose forward is one entry point of a TwoLayerNet (export takes modules)."""

    def __init__(self, model: TwoLayerNet, name: str, functional_api: bool) -> None:
        super().__init__()
        self.model, self.name, self.functional_api = model, name, functional_api

    def forward(self, x, t):
        if not self.functional_api:
            return ENTRY_POINTS[self.name](self.model, x, t)
        params = (self.model.W1, self.model.b1, self.model.W2, self.model.b2)
        if self.name == "loss":
            return functional.two_layer_net_loss(x, t, *params)
        entry = functional.two_layer_net if self.name == "probs" else functional.two_layer_net_logits
        return entry(x, *params)


@pytest.mark.parametrize("functional_api", [False, True], ids=["module", "functional"])
@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_export_with_dynamic_batch_gives_eager_values_and_gradients_at_other_sizes(name, functional_api):
    model = _model()
    N = Dim("N", min=2, max=100000)
    x, t = _inputs(8)
    exported = torch.export.export(_Method(model, name, functional_api), (x, t), dynamic_shapes=({0: N}, {0: N}))
    program = exported.module()
    for rows in (3, 20, 300, 2049):
        x, t = _inputs(rows)
        got = _value_and_grads(lambda m, x, t: program(x, t), model, x, t)
        # the program holds its own copies of the parameters: compare x's gradient and the value
        expected = _value_and_grads(lambda m, x, t: TWINS[name](x, t, *m.parameters()), model, x, t)
        _assert_same(got[:2], expected[:2], f"{name}, N={rows}")
        _assert_same(got[:2], _value_and_grads(ENTRY_POINTS[name], model, x, t)[:2], f"eager {name}, N={rows}")


def test_export_of_the_loss_with_the_batch_dimension_marked_auto_runs_at_any_size():
    model = _model()
    x, t = _inputs(8)
    exported = torch.export.export(
        _Method(model, "loss", False), (x, t), dynamic_shapes=({0: Dim.AUTO}, {0: Dim.AUTO})
    ).module()
    for rows in (20, 5000):
        x, t = _inputs(rows)
        torch.testing.assert_close(exported(x, t), model.loss(x, t), **TOL)


# ---------------------------------------------------------------------------------------
# make_fx and torch.func.linearize at any N
# ---------------------------------------------------------------------------------------


def _loss_and_grads(x, t, W1, b1, W2, b2):
    loss = functional.two_layer_net_loss(x, t, W1, b1, W2, b2)
    return (loss, *torch.autograd.grad(loss, (x, W1, b1, W2, b2)))


def _leaves(x, t, params):
    return [x.clone().requires_grad_(), t, *(p.clone().requires_grad_() for p in params)]


@pytest.mark.parametrize("tracing_mode", ["real", "symbolic"])
def test_make_fx_of_loss_and_gradients_works_above_64_rows_and_at_every_size(tracing_mode):
    x, t, params = make_problem(300, D, H, C, dtype=DTYPE)
    graph = make_fx(_loss_and_grads, tracing_mode=tracing_mode)(*_leaves(x, t, params))
    sizes = (300,) if tracing_mode == "real" else (3, 100, 300, 2049)
    for rows in sizes:
        x, t, _ = make_problem(rows, D, H, C, dtype=DTYPE, seed=rows)
        got = graph(*_leaves(x, t, params))
        expected = _loss_and_grads(*_leaves(x, t, params))
        _assert_same(got, expected, f"make_fx {tracing_mode}, N={rows}")


@pytest.mark.parametrize("N", [5, 100, 300])
def test_linearize_of_the_loss_matches_the_twins_jvp(N):
    x, t, params = make_problem(N, D, H, C, dtype=torch.float64)
    tangent = torch.randn_like(x)
    value, jvp_fn = torch.func.linearize(lambda x: functional.two_layer_net_loss(x, t, *params), x)
    twin_value, twin_tangent = torch.func.jvp(lambda x: reference.loss(x, t, *params), (x,), (tangent,))
    torch.testing.assert_close(value, twin_value)
    torch.testing.assert_close(jvp_fn(tangent), twin_tangent)


def test_eager_keeps_its_size_tuned_paths_and_tracing_is_detected():
    from manualgrad import modes

    x, t, params = make_problem(300, D, H, C, dtype=DTYPE)
    params = [p.requires_grad_() for p in params]
    assert not modes.tracing(x)
    assert modes.sigmoid_tanh_pays(x, H) and modes.column_major_pays(params[2], 300)
    assert functional.two_layer_net_loss(x, t, *params).grad_fn.precomputed  # gradients in the forward
    seen = []
    make_fx(lambda x: seen.append(modes.tracing(x)) or x * 2, tracing_mode="real")(x)
    torch.func.vmap(lambda row: seen.append(modes.tracing()) or row)(x)
    assert seen == [True, True]
    compiled = torch.compile(lambda x: x * 2 if modes.tracing(x) else x, backend="eager", fullgraph=True)
    assert torch.equal(compiled(x), x * 2)
