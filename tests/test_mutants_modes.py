"""modes.py's questions answered directly, and the cached input checks of boundary.py.

Each size-tuned choice of eager mode at its threshold, on the CPU and elsewhere (the meta device and
a CUDA torch.device need no GPU), in each dtype, and under each kind of tracing: torch.func, make_fx
(real and symbolic), forward AD, a pretended compilation. Then the input checks that functional caches
per metadata: a call that differs from an accepted one in any tensor is checked again.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from planted.twins import assert_close_relative, problem
from torch.fx.experimental.proxy_tensor import make_fx

from manualgrad import autograd, boundary, functional, modes, reference


def _under(kind, question):
    """question() asked inside torch.func.vmap, make_fx (real or symbolic) or forward AD."""
    seen = []
    x = torch.zeros(3, 2)
    if kind == "vmap":
        torch.func.vmap(lambda r: seen.append(question(r.expand(3, 2))) or r)(x)
    elif kind.startswith("make_fx"):
        make_fx(lambda t: seen.append(question(t)) or t * 1, tracing_mode=kind[8:])(x)
    else:
        with fwAD.dual_level():
            seen.append(question(fwAD.make_dual(x, torch.ones_like(x))))
    return seen


@pytest.mark.parametrize("kind", ["vmap", "make_fx-real", "make_fx-symbolic"])
def test_tracing_is_seen_under_every_transform(kind):
    assert _under(kind, modes.tracing) == [True]
    assert _under(kind, lambda t: modes.tracing()) == [True]
    assert not modes.tracing(torch.zeros(3, 2)) and not modes.tracing()


def test_tracing_and_differentiated_while_compiling(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert modes.tracing() and modes.tracing(torch.zeros(1, 2))
    with torch.no_grad():
        assert not modes.backward_is_differentiated(), "compiled backward: the graph decides, not this query"


def test_backward_is_differentiated():
    assert modes.backward_is_differentiated()  # grad enabled
    with torch.no_grad():
        assert not modes.backward_is_differentiated()
        assert _under("forward-ad", lambda t: modes.backward_is_differentiated()) == [True]
        assert _under("vmap", lambda t: modes.backward_is_differentiated()) == [True]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_sigmoid_tanh_pays_from_its_threshold_on_cpu_floats(dtype):
    limit = modes.SIGMOID_TANH_MIN_ELEMENTS
    x = torch.zeros(64, 3, dtype=dtype)
    expected = dtype in (torch.float32, torch.float64)
    assert modes.sigmoid_tanh_pays(x, limit // 64) is expected
    assert modes.sigmoid_tanh_pays(x, limit // 64 - 1) is False
    assert modes.sigmoid_tanh_pays(torch.zeros(64, 3, dtype=dtype, device="meta"), limit) is False
    assert _under("vmap", lambda t: modes.sigmoid_tanh_pays(t, limit)) == [False]


def test_column_major_pays_from_its_threshold_on_the_cpu():
    rows = modes.COLUMN_MAJOR_MIN_ROWS
    W2 = torch.zeros(5, 2)
    assert modes.column_major_pays(W2, rows) and not modes.column_major_pays(W2, rows - 1)
    assert not modes.column_major_pays(W2.to("meta"), rows * 4)
    assert not modes.column_major_pays(W2, torch.tensor(rows * 4)), "rows not an int (symbolic): no"
    assert _under("vmap", lambda t: modes.column_major_pays(W2, rows)) == [False]


# (D, C, pays); (0, 1): one product column, the bias alone
FACTORED = [(2, 2, True), (3, 2, True), (1, 4, True), (2, 3, False), (7, 1, True), (2, 0, False), (0, 1, True)]


@pytest.mark.parametrize("D, C, expected", FACTORED)
def test_factored_first_layer_pays_for_few_products_on_the_cpu(D, C, expected):
    """(D + 1) C columns of [x, 1] (x) delta2, at most modes.FACTORED_MAX_PRODUCTS = 8."""
    x, W2 = torch.zeros(5, D), torch.zeros(4, C)
    assert modes.factored_first_layer_pays(x, W2) is expected
    assert modes.factored_first_layer_pays(x.to("meta"), W2.to("meta")) is False


@pytest.mark.parametrize("C, expected", [(2, True), (3, True), (10, True), (1, False), (0, False)])
def test_relative_classes_pay_from_two_classes_on_the_cpu(C, expected):
    """C - 1 relative columns: none to gain below two classes (and C - 1 = 0 has no products); from
    modes.RELATIVE_MIN_ROWS rows."""
    rows = modes.RELATIVE_MIN_ROWS
    x, W2 = torch.zeros(rows, 2), torch.zeros(4, C)
    assert modes.relative_classes_pay(x, W2) is expected
    assert modes.relative_classes_pay(x[: rows - 1], W2) is False
    assert modes.relative_classes_pay(x.to("meta"), W2.to("meta")) is False


def _plan_tensors(N, dtype=torch.float32, device="cpu", labels=torch.int64, rank=2, H=256):
    x = torch.zeros((N, 2) if rank == 2 else (2,), dtype=dtype, device=device)
    W1, W2 = torch.zeros(2, H, dtype=dtype, device=device), torch.zeros(H, 3, dtype=dtype, device=device)
    target = torch.zeros((N,) if rank == 2 else (), dtype=labels, device=device)
    return x, target, W1, W2


PLANS = {  # case: (tensors, network plan, loss plan); H = 256, so the sigmoid form from 16 rows; one row at N=1
    "N=1": (_plan_tensors(1), (True, False, False, True), (True, False, False, True)),
    "N=15": (_plan_tensors(15), (True, False, False, False), (True, False, False, False)),
    "N=16": (_plan_tensors(16), (True, True, True, False), (True, True, True, False)),
    "N=255": (_plan_tensors(255), (True, True, True, False), (True, True, True, False)),
    "N=256": (_plan_tensors(256), (True, True, True, False), (False, False, False, False)),
    "N=1023": (_plan_tensors(1023), (True, True, True, False), (False, False, False, False)),
    "N=1024": (_plan_tensors(1024), (False, False, False, False), (False, False, False, False)),
    "N=0": (_plan_tensors(0), (False, False, False, False), (False, False, False, False)),
    "unbatched": (_plan_tensors(1, rank=1), (False, False, False, False), (False, False, False, False)),
    "float64": (_plan_tensors(16, torch.float64), (True, True, True, False), (True, True, True, False)),
    "bfloat16": (_plan_tensors(16, torch.bfloat16), (True, False, True, False), (False, False, False, False)),
    "meta": (_plan_tensors(16, device="meta"), (True, False, False, False), (False, False, False, False)),
    "int32-labels": (_plan_tensors(16, labels=torch.int32), (True, True, True, False), (True, True, True, False)),
    "uint64-labels": (_plan_tensors(16, labels=torch.uint64), (True, True, True, False), (False, False, False, False)),
    "soft-labels": (_plan_tensors(16, labels=torch.float32), (True, True, True, False), (False, False, False, False)),
}


@pytest.mark.parametrize("case", PLANS)
def test_eager_plans(case):
    """Which tensors the lean Functions serve, in which form of tanh and W2 layout, whether the sums over
    rows are the one row (decided once per metadata)."""
    (x, target, W1, W2), network, loss = PLANS[case]
    assert modes.eager_network_plan(x, W1, W2) == modes.EagerPlan(*network)
    assert modes.eager_loss_plan(x, target, W1, W2) == modes.EagerPlan(*loss)


def test_autocast_enabled_only_inside_autocast():
    assert not modes.autocast_enabled("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert modes.autocast_enabled("cpu")


def test_input_of_another_dtype_is_refused_outside_autocast():
    x, _, _, params = problem(N=4, H=5, dtype=torch.float32)
    with pytest.raises(TypeError, match=r"x has dtype torch.float64"):
        functional.two_layer_net(x.double(), *params)


@pytest.fixture()
def _fresh_check_cache():
    boundary._checked.clear()
    yield
    boundary._checked.clear()


@pytest.mark.usefixtures("_fresh_check_cache")
@pytest.mark.parametrize("changed", [0, 1, 2, 3, 4], ids=["x", "W1", "b1", "W2", "b2"])
def test_prepare_checks_again_when_any_tensor_differs(changed):
    x, _, _, params = problem(N=4, H=5)
    tensors = [x, *params]
    functional.two_layer_net(*tensors)
    other = [t.float() if i == changed else t for i, t in enumerate(tensors)]
    with pytest.raises(TypeError, match=r"dtype"):
        functional.two_layer_net(*other)


@pytest.mark.usefixtures("_fresh_check_cache")
def test_prepare_names_x_and_checks_the_first_call():
    x, _, _, params = problem(N=4, H=5)
    with pytest.raises(TypeError, match=r"^x must be a torch.Tensor"):
        functional.two_layer_net([[0.0, 1.0, 2.0]], *params)
    with pytest.raises(ValueError, match=r"x must have"):
        functional.two_layer_net(x[:, :2], *params)


def test_precomputed_loss_form_and_layout(monkeypatch):
    monkeypatch.setattr(modes, "RELATIVE_MIN_ROWS", 36)
    calls = []
    original = autograd.loss_and_gradients
    monkeypatch.setattr(autograd, "loss_and_gradients", lambda *a, **k: calls.append(k) or original(*a, **k))
    x, indices, _, params = problem(N=40, H=120)
    leaves = [p.clone().requires_grad_() for p in params]
    with functional.loss_gradients_in_forward(True, chunk_rows=30):
        loss = functional.two_layer_net_loss(x, indices, *leaves)
    assert_close_relative(loss.detach(), reference.loss(x, indices, *params), "loss")
    expected = dict(chunk_rows=30, sigmoid_form=True, column_major_W2=True, factored=False, relative=True)
    assert calls == [expected], "(D + 1) C = 16; C = 4 relative classes"
    calls.clear()
    monkeypatch.setattr(modes, "FACTORED_MAX_PRODUCTS", 16)
    with functional.loss_gradients_in_forward(True, chunk_rows=10):
        functional.two_layer_net_loss(x[:36], indices[:36], *leaves)
    expected = dict(chunk_rows=10, sigmoid_form=True, column_major_W2=False, factored=True, relative=True)
    assert calls == [expected], "factored"
    calls.clear()
    with functional.loss_gradients_in_forward(True):  # the chunk rows by device and by factored
        functional.two_layer_net_loss(x, indices, *leaves)
    monkeypatch.setattr(modes, "FACTORED_MAX_PRODUCTS", 15)
    with functional.loss_gradients_in_forward(True):
        functional.two_layer_net_loss(x, indices, *leaves)
    rows = [(call["chunk_rows"], call["factored"]) for call in calls]
    assert rows == [(modes.LOSS_CHUNK_ROWS_FACTORED, True), (modes.LOSS_CHUNK_ROWS, False)]


NO_CLASS_TARGETS = {  # C = 0: probabilities (N, 0), or class indices all ignore_index
    "probabilities": (lambda: torch.zeros(4, 0, dtype=torch.float64), {}),
    "indices": (lambda: torch.full((4,), -100), {}),
    "indices, weight": (lambda: torch.full((4,), 3), {"weight": torch.ones(0, dtype=torch.float64), "ignore_index": 3}),
}  # fmt: skip


@pytest.mark.parametrize("in_forward", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("kind", NO_CLASS_TARGETS)
def test_no_classes_gives_cross_entropys_values(kind, in_forward, reduction, label_smoothing):
    """F.cross_entropy's values with no class: 0/0 (NaN) for the mean, and, with label smoothing and
    class indices, for every reduction (eps * 0 / C); the gradient in W1 is 0 either way."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    W1, b1 = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    W2, b2 = torch.zeros(5, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    make_target, options = NO_CLASS_TARGETS[kind]
    results = []
    for loss_fn in (functional.two_layer_net_loss, reference.loss):
        W1_leaf = W1.clone().requires_grad_()
        with functional.loss_gradients_in_forward(in_forward):
            loss = loss_fn(x, make_target(), W1_leaf, b1, W2, b2, reduction, label_smoothing=label_smoothing, **options)
        results.append((loss.detach(), torch.autograd.grad(loss.sum(), W1_leaf)[0]))
    (loss, grad), (expected, expected_grad) = results
    torch.testing.assert_close(loss, expected, equal_nan=True)
    torch.testing.assert_close(grad, expected_grad, equal_nan=True)


@pytest.mark.parametrize("mode", ["eager", "torch.func.grad", "torch.compile"])
def test_no_classes_refuses_a_label_that_is_not_ignore_index(mode):
    """With C = 0 every label must be ignore_index: in eager mode the boundary says so; where it does
    not look at values (transforms, compile), nll_loss's range check raises as F.cross_entropy's does."""
    x, W1 = torch.randn(4, 3, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    b1, W2, b2 = torch.zeros(5, dtype=torch.float64), torch.zeros(5, 0, dtype=torch.float64), W1.new_zeros(0)
    target = torch.tensor([0] + [-100] * 3)  # class 0 of none

    def loss(W1):
        return functional.two_layer_net_loss(x, target, W1, b1, W2, b2, "sum", label_smoothing=0.1)

    run = {"eager": loss, "torch.func.grad": torch.func.grad(loss)}.get(mode)
    if run is None:
        torch._dynamo.reset()
        run = torch.compile(loss, backend="aot_eager", fullgraph=True)
    error, message = (ValueError, "target holds class index 0") if mode == "eager" else (IndexError, "Target 0 is out")
    with pytest.raises(error, match=message):
        run(W1)


def test_a_symbolic_batch_size_takes_the_one_path():
    """An x whose N is a SymInt (a fake tensor with a dynamic first dimension, outside any tracing mode)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    dynamic = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC, DimDynamic.STATIC])
    x = FakeTensorMode(shape_env=ShapeEnv()).from_tensor(torch.zeros(4096, 2), symbolic_context=dynamic)
    assert type(x.shape[0]) is torch.SymInt and modes.tracing(x)
    assert modes.sigmoid_tanh_pays(x, 500) is False
    assert modes.network_in_chunks(x) is False
    params = [torch.zeros(2, 5, requires_grad=True)]
    assert modes.gradients_in_forward(x, torch.zeros(4096, dtype=torch.long), params, "mean") is None


@pytest.mark.usefixtures("_fresh_check_cache")
@pytest.mark.parametrize("changed", [0, 2, 3, 4, 5], ids=["x", "W1", "b1", "W2", "b2"])
def test_prepare_loss_checks_again_when_any_tensor_differs(changed):
    x, indices, _, params = problem(N=4, H=5)
    tensors = [x, indices, *params]
    functional.two_layer_net_loss(*tensors)
    other = [t.float() if i == changed else t for i, t in enumerate(tensors)]
    with pytest.raises(TypeError, match=r"dtype"):
        functional.two_layer_net_loss(*other)


@pytest.mark.usefixtures("_fresh_check_cache")
@pytest.mark.parametrize("entry", ["logits", "loss"])
def test_an_x_accepted_under_autocast_is_checked_again_outside_it(entry):
    """The cached decision is per autocast state: a bfloat16 x that autocast accepts is refused after it."""
    x, indices, _, params = problem(N=4, H=5)
    call = (
        (lambda x: functional.two_layer_net_logits(x, *params))
        if entry == "logits"
        else (lambda x: functional.two_layer_net_loss(x, indices, *params))
    )
    x16 = x.bfloat16()  # one tensor: a key that held the tensor itself would also see it again
    with torch.autocast("cpu", dtype=torch.bfloat16):
        call(x16)
    with pytest.raises(TypeError, match=r"dtype"):
        call(x16)
