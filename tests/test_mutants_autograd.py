"""The autograd wiring (autograd.py, modes.py, functional.py): which path eager mode takes, and the rare inputs.

The size-tuned choices of eager mode (sigmoid form of tanh from N*H >= 4096 on the CPU, column-major W2
from 16 rows, the chunked probs/logits from CHUNKED_NETWORK_MIN_ROWS rows, in-place kernels where
autograd does not record) change no value beyond rounding, so they are asserted where they are made:
the arguments the wiring passes to the kernels. Then the inputs the other tests never give: vmap-batched
upstream gradients (gradcheck's batched grad) on the chunked and precomputed paths, non-finite upstream
gradients, devices other than the CPU, the Functions picked under compilation.
"""

from __future__ import annotations

import pytest
import torch
from planted.twins import assert_close_relative, assert_matches_twin, problem

from manualgrad import autograd, functional, modes, reference


@pytest.fixture(autouse=True)
def general_functions(monkeypatch):
    """These tests kill mutants of autograd.py, so its Functions serve every call here; the lean
    Functions of eager.py, which serve plain eager calls at small batches, have test_eager.py."""
    monkeypatch.setattr(modes, "eager_network_plan", lambda *args: modes.EagerPlan(False, False, False, False))
    monkeypatch.setattr(functional, "_lean_loss", lambda *args: None)


def _spy(monkeypatch, module, name):
    """Replace module.name by a wrapper that records each call's keyword arguments."""
    calls, original = [], getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


def _layouts(monkeypatch):
    calls, original = [], autograd.column_major
    monkeypatch.setattr(autograd, "column_major", lambda W2: calls.append(W2.shape) or original(W2))
    return calls


@pytest.mark.parametrize("N, H", [(7, 5), (40, 120)], ids=["small", "sigmoid-form"])
@pytest.mark.parametrize("differentiated", [False, True], ids=["first-order", "create_graph"])
def test_loss_forward_chooses_form_layout_and_in_place(N, H, differentiated, monkeypatch):
    activations = _spy(monkeypatch, autograd, "hidden_activation_fast")
    layouts = _layouts(monkeypatch)
    x, indices, _, params = problem(N=N, H=H)
    leaves = [p.clone().requires_grad_() for p in params]
    with functional.loss_gradients_in_forward(False):
        loss = functional.two_layer_net_loss(x, indices, *leaves)
        torch.autograd.grad(loss, leaves, create_graph=differentiated)
    forward = activations[0]
    assert forward["sigmoid_form"] is (N * H >= modes.SIGMOID_TANH_MIN_ELEMENTS)
    assert forward["in_place"] is True, "inside Function.forward nothing is recorded: in place"
    assert len(layouts) >= 1 if N >= modes.COLUMN_MAJOR_MIN_ROWS else layouts == []
    if differentiated:
        assert activations[1:] and all(c["in_place"] is False for c in activations[1:]), "recorded: out of place"


def test_loss_forward_in_place_without_grad(monkeypatch):
    activations = _spy(monkeypatch, autograd, "hidden_activation_fast")
    x, indices, _, params = problem(N=40, H=120)
    with torch.no_grad():
        loss = functional.two_layer_net_loss(x, indices, *params)
    assert_close_relative(loss, reference.loss(x, indices, *params), "loss")
    assert activations[0]["in_place"] is True and activations[0]["sigmoid_form"] is True


@pytest.mark.parametrize("entry", ["probs", "logits"])
@pytest.mark.parametrize("N", [7, 40])
def test_network_forward_layout_by_rows(entry, N, monkeypatch):
    layouts = _layouts(monkeypatch)
    x, _, _, params = problem(N=N, H=120)
    manual = functional.two_layer_net if entry == "probs" else functional.two_layer_net_logits
    assert_matches_twin(manual, reference.probs if entry == "probs" else reference.logits, [x, *params])
    assert (len(layouts) > 0) == (N >= modes.COLUMN_MAJOR_MIN_ROWS)


def _lower_chunking(monkeypatch, rows=20):
    monkeypatch.setattr(modes, "CHUNKED_NETWORK_MIN_ROWS", 4)
    monkeypatch.setattr(modes, "NETWORK_CHUNK_ROWS", rows)


@pytest.mark.parametrize("entry", ["probs", "logits"])
@pytest.mark.parametrize("N, H", [(7, 5), (40, 120)], ids=["small", "sigmoid-form"])
def test_chunked_network_form_and_layout(entry, N, H, monkeypatch):
    _lower_chunking(monkeypatch)
    monkeypatch.setattr(modes, "RELATIVE_MIN_ROWS", 4)
    forwards = _spy(monkeypatch, autograd, "network_output_chunked")
    backwards = _spy(monkeypatch, autograd, "backward_from_logits_chunked")
    x, _, _, params = problem(N=N, H=H)
    manual = functional.two_layer_net if entry == "probs" else functional.two_layer_net_logits
    assert_matches_twin(manual, reference.probs if entry == "probs" else reference.logits, [x, *params])
    sigmoid = N * H >= modes.SIGMOID_TANH_MIN_ELEMENTS
    kept = forwards[0].pop("a1_out")  # below KEEP_A1_BELOW_ROWS the forward keeps a1 (N, H) for backward
    assert kept.shape == (N, H) and backwards[0].pop("a1") is kept
    y_hat = backwards[0].pop("y_hat")  # the softmax the upstream gradient came through: the probabilities only
    assert (y_hat is not None) == (entry == "probs") and (y_hat is None or y_hat.shape == (N, 4))
    relative = entry == "probs"  # C = 4 classes behind the softmax; the logits' upstream gradient is anything
    assert forwards == [dict(chunk_rows=20, sigmoid_form=sigmoid, column_major_W2=min(N, 20) >= 16,
                             probabilities=entry == "probs", relative=relative)]  # fmt: skip
    expected = dict(chunk_rows=20, sigmoid_form=sigmoid, factored=False)
    assert backwards == [expected], "(D + 1) C = 16 columns: delta1"


@pytest.mark.parametrize("entry", ["probs", "logits"])
@pytest.mark.parametrize("chunked", [False, True], ids=["a1-saved", "chunked"])
def test_backward_in_place_only_where_not_recorded(entry, chunked, monkeypatch):
    if chunked:
        _lower_chunking(monkeypatch)
    calls = _spy(monkeypatch, autograd, "backward_from_logits")
    x, _, _, params = problem(N=40, H=120)
    manual = functional.two_layer_net if entry == "probs" else functional.two_layer_net_logits
    leaves = [t.clone().requires_grad_() for t in [x, *params]]
    out = manual(*leaves)
    torch.autograd.grad(out.sum(), leaves)
    assert calls == ([] if chunked else [dict(in_place=True)])
    calls.clear()
    grads = torch.autograd.grad((manual(*leaves) ** 2).sum(), leaves, create_graph=True)
    assert calls == [dict(in_place=False)]
    twin = reference.probs if entry == "probs" else reference.logits
    ref = torch.autograd.grad((twin(*leaves) ** 2).sum(), leaves, create_graph=True)
    for i, (g, r) in enumerate(zip(grads, ref)):
        assert_close_relative(g, r, f"gradient {i}")


@pytest.mark.parametrize("entry", ["probs", "logits"])
@pytest.mark.parametrize("chunked", [False, True], ids=["a1-saved", "chunked"])
def test_batched_upstream_gradients_match_twin(entry, chunked, monkeypatch):
    """autograd.grad(is_grads_batched=True) vmaps the backward: the chunked kernels (out=) cannot run there."""
    if chunked:
        _lower_chunking(monkeypatch, rows=3)
    x, _, _, params = problem(N=7, H=5)
    manual = functional.two_layer_net if entry == "probs" else functional.two_layer_net_logits
    twin = reference.probs if entry == "probs" else reference.logits
    g = torch.randn(3, 7, 4, dtype=x.dtype, generator=torch.Generator().manual_seed(9))
    leaves = [t.clone().requires_grad_() for t in [x, *params]]
    grads = torch.autograd.grad(manual(*leaves), leaves, g, is_grads_batched=True)
    ref = torch.autograd.grad(twin(*leaves), leaves, g, is_grads_batched=True)
    for i, (m, r) in enumerate(zip(grads, ref)):
        assert_close_relative(m, r, f"batched gradient {i}")


@pytest.mark.parametrize("upstream", [float("inf"), float("-inf"), float("nan"), 2.5])
def test_precomputed_loss_with_non_finite_upstream_gradient(upstream, monkeypatch):
    """A finite upstream gradient scales the gradients of the forward; a non-finite one recomputes them."""
    x, indices, _, params = problem(N=9, H=512)
    leaves = [p.clone().requires_grad_() for p in params]
    with functional.loss_gradients_in_forward(True, chunk_rows=4):
        loss = functional.two_layer_net_loss(x, indices, *leaves)
    recomputed = _spy(monkeypatch, autograd, "_loss_forward")
    grads = torch.autograd.grad(loss, leaves, torch.tensor(upstream, dtype=x.dtype))
    assert len(recomputed) == (upstream != 2.5)
    ref = torch.autograd.grad(reference.loss(x, indices, *leaves), leaves, torch.tensor(upstream, dtype=x.dtype))
    for i, (m, r) in enumerate(zip(grads, ref)):
        torch.testing.assert_close(m, r, rtol=1e-10, atol=0, equal_nan=True, msg=lambda s, i=i: f"gradient {i}: {s}")


def test_precomputed_loss_with_batched_upstream_gradient(monkeypatch):
    """A vmap-batched upstream gradient has no single value to read: the forward's gradients are scaled."""
    x, indices, _, params = problem(N=9, H=512)
    leaves = [p.clone().requires_grad_() for p in params]
    g = torch.tensor([1.0, -2.0, 0.5], dtype=x.dtype)
    with functional.loss_gradients_in_forward(True, chunk_rows=4):
        loss = functional.two_layer_net_loss(x, indices, *leaves)
    recomputed = _spy(monkeypatch, autograd, "_loss_forward")
    grads = torch.autograd.grad(loss, leaves, g, is_grads_batched=True)
    assert recomputed == [], "no recomputation"
    ref = torch.autograd.grad(reference.loss(x, indices, *leaves), leaves, g, is_grads_batched=True)
    for i, (m, r) in enumerate(zip(grads, ref)):
        assert_close_relative(m, r, f"batched gradient {i}")


def test_finite_reads_the_upstream_gradient_on_the_cpu_only():
    assert autograd._finite(torch.tensor(1.0)) and not autograd._finite(torch.tensor(float("inf")))
    assert autograd._finite(torch.tensor(float("nan"), device="meta")), "off the CPU: never read (no sync)"


def test_chunk_rows_by_device_and_strategy():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert modes.chunk_rows(cpu, False) == modes.LOSS_CHUNK_ROWS
    assert modes.chunk_rows(cpu, True) == modes.LOSS_CHUNK_ROWS_FACTORED != modes.LOSS_CHUNK_ROWS
    assert modes.chunk_rows(cuda, False) == modes.chunk_rows(cuda, True) == modes.LOSS_CHUNK_ROWS_ACCELERATOR
    with functional.loss_gradients_in_forward(True, chunk_rows=3):
        assert modes.chunk_rows(cpu, True) == 3 and modes.chunk_rows(cuda, False) == 3
    assert modes.network_chunk_rows(cpu) == modes.NETWORK_CHUNK_ROWS
    assert modes.network_chunk_rows(cuda) == modes.NETWORK_CHUNK_ROWS_ACCELERATOR


def test_network_in_chunks_from_its_threshold_in_eager_only():
    rows = modes.CHUNKED_NETWORK_MIN_ROWS
    assert not modes.network_in_chunks(torch.zeros(rows - 1, 2)) and modes.network_in_chunks(torch.zeros(rows, 2))
    seen = []
    torch.func.vmap(lambda x: seen.append(modes.network_in_chunks(x.expand(rows, 2))) or x)(torch.zeros(2, 2))
    assert seen == [False], "under torch.func: the one path for every N"


@pytest.mark.parametrize("entry", ["probs", "logits", "loss"])
def test_functions_without_jvp_are_picked_under_compilation(entry, monkeypatch):
    """Dynamo refuses Functions that define jvp: while compiling, the NoJvp classes are applied."""
    applied = []
    for name in ["ProbsFunctionNoJvp", "LogitsFunctionNoJvp", "LossFunctionNoJvp"]:
        cls = getattr(functional, name)
        monkeypatch.setattr(functional, name, type(name, (cls,), {"apply": classmethod(
            lambda c, *a, _cls=cls: applied.append(c.__name__) or _cls.apply(*a))}))  # fmt: skip
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    x, indices, _, params = problem(N=5, H=7)
    if entry == "loss":
        out, expected = functional.two_layer_net_loss(x, indices, *params), reference.loss(x, indices, *params)
    else:
        manual = functional.two_layer_net if entry == "probs" else functional.two_layer_net_logits
        out, expected = manual(x, *params), (reference.probs if entry == "probs" else reference.logits)(x, *params)
    assert_close_relative(out, expected, "value")
    assert applied == [{"probs": "Probs", "logits": "Logits", "loss": "Loss"}[entry] + "FunctionNoJvp"]


@pytest.mark.parametrize("entry", ["probs", "logits"])
def test_forward_ad_on_the_chunked_path(entry, monkeypatch):
    """torch.autograd.forward_ad in eager mode keeps the chunked forward; its jvp recomputes a1 (b1 needed)."""
    import torch.autograd.forward_ad as fwAD

    _lower_chunking(monkeypatch, rows=3)
    forwards = _spy(monkeypatch, autograd, "network_output_chunked")
    x, _, _, params = problem(N=7, H=5)
    manual = functional.two_layer_net if entry == "probs" else functional.two_layer_net_logits
    twin = reference.probs if entry == "probs" else reference.logits
    g = torch.Generator().manual_seed(12)
    inputs = [x, *params]
    tangents = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in inputs]
    with fwAD.dual_level():
        out = fwAD.unpack_dual(manual(*[fwAD.make_dual(t, d) for t, d in zip(inputs, tangents)]))
        ref = fwAD.unpack_dual(twin(*[fwAD.make_dual(t, d) for t, d in zip(inputs, tangents)]))
    assert len(forwards) == 1, "the chunked forward was taken"
    assert_close_relative(out.primal, ref.primal, "value")
    assert_close_relative(out.tangent, ref.tangent, "tangent")


@pytest.mark.parametrize("entry", ["probs", "logits"])
def test_network_forward_form_and_in_place_then_recorded_layout(entry, monkeypatch):
    """Below the chunked size a1 takes the sigmoid form where it pays, in place; a recorded backward recomputes
    y_hat with W2 in the layout of its rows."""
    activations = _spy(monkeypatch, autograd, "hidden_activation_fast")
    x, _, _, params = problem(N=40, H=120)
    manual = functional.two_layer_net if entry == "probs" else functional.two_layer_net_logits
    leaves = [t.clone().requires_grad_() for t in [x, *params]]
    out = manual(*leaves)
    assert activations[0] == dict(sigmoid_form=True, in_place=True)
    layouts = _layouts(monkeypatch)
    torch.autograd.grad((out**2).sum(), leaves, create_graph=True)
    assert len(layouts) == (entry == "probs"), "the recorded recomputation of y_hat: W2 column-major at 40 rows"
