"""chunked.py (the loss's gradients in the forward; the row-chunked probs/logits forward and recomputing
backward) against the native-autograd twin.

The kernels are called directly, with small chunk sizes, so that a few rows reach every path: one
chunk, several with a one-row last chunk, one row per chunk, the sigmoid form of tanh, the
column-major W2, each subset of gradients, empty batches. Their memory contract (never a buffer of
more than ``chunk_rows`` rows, one chunk after another) is asserted through the calls of
``_activation``. The wiring in autograd.py is reached too, with the chunking thresholds of modes.py
lowered. Every buffer the kernels take from ``new_empty`` is filled with NaN first (an element never
written shows), no (rows, H) tensor may be made outside those buffers, and warnings are errors (an
``out=`` of the wrong shape is resized with a warning). Tolerances are relative (tests/planted/twins.py).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from planted.allocations import Allocations, assert_buffers
from planted.twins import assert_close_relative, assert_matches_twin, problem

from manualgrad import autograd, chunked, factored, functional, modes, reference, relative

pytestmark = pytest.mark.filterwarnings("error")

NEEDS = [n for n in itertools.product([False, True], repeat=5)]
NEED_IDS = ["".join("1" if b else "0" for b in n) for n in NEEDS]
# (N, chunk_rows): one chunk, chunk larger than N, several with a one-row last chunk, one row each
# (D + 1 = C = 4 rows are the stacked [W1; b1] and dW2^T: no chunk of 4 rows, see assert_buffers)
CHUNKINGS = [(7, 7), (7, 100), (7, 3), (7, 1), (1, 3), (11, 5)]
FORMS = [(False, False), (True, False), (False, True), (True, True)]
FORM_IDS = ["tanh", "sigmoid", "tanh-colmajor", "sigmoid-colmajor"]


def _spy_chunks(monkeypatch):
    """Rows of each buffer _activation writes a1 into, and whether a1 is that buffer."""
    calls = []
    original = chunked._activation

    def spy(xs_1, W1_b1, out, sigmoid_form):
        a1 = original(xs_1, W1_b1, out, sigmoid_form)
        calls.append((xs_1.shape[0], out.shape[0], a1.data_ptr() == out.data_ptr() and a1.shape == out.shape))
        return a1

    monkeypatch.setattr(chunked, "_activation", spy)
    return calls


def _assert_chunks(calls, N, rows):
    rows = max(1, min(N, rows))
    expected = [min(rows, N - start) for start in range(0, N, rows)]
    assert [c[0] for c in calls] == expected, f"rows per chunk {[c[0] for c in calls]}, expected {expected}"
    assert all(buf == n for n, buf, _ in calls), f"buffer rows {[c[1] for c in calls]}"
    assert all(in_buffer for *_, in_buffer in calls), "a1 must be written into the (rows, H) buffer"


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("chunking", CHUNKINGS, ids=lambda c: "N{}-rows{}".format(*c))
@pytest.mark.parametrize("output", ["logits", "probs", "probs-relative"])
def test_network_output_chunked_matches_twin(output, chunking, form, monkeypatch):
    N, rows = chunking
    sigmoid_form, column_major_W2 = form
    probabilities, relative = output != "logits", output == "probs-relative"
    x, _, _, params = problem(N=N, H=6)
    calls = _spy_chunks(monkeypatch)
    layouts = []
    monkeypatch.setattr(chunked, "column_major", lambda W2: layouts.append(W2) or W2.T.contiguous().T)
    with Allocations() as allocations:
        out = chunked.network_output_chunked(
            x, *params, chunk_rows=rows, sigmoid_form=sigmoid_form, column_major_W2=column_major_W2,
            probabilities=probabilities, relative=relative,
        )  # fmt: skip
    twin = reference.probs if probabilities else reference.logits
    assert_close_relative(out, twin(x, *params), "output")
    _assert_chunks(calls, N, rows)
    assert_buffers(allocations.ops, 6, min(N, rows), 1, allowed_rows=(4, 3) if relative else (4,))  # W2r^T (3, H)
    assert len(layouts) == column_major_W2, "W2 in column-major layout exactly when asked"


@pytest.mark.parametrize("output", ["logits", "probs", "probs-relative"])
def test_network_output_chunked_float32_sigmoid_form(output):
    probabilities, relative = output != "logits", output == "probs-relative"
    x, _, _, params = problem(N=9, H=64, dtype=torch.float32, scale=3.0)
    out = chunked.network_output_chunked(
        x, *params, chunk_rows=4, sigmoid_form=True, column_major_W2=True, probabilities=probabilities,
        relative=relative,
    )  # fmt: skip
    twin = reference.probs if probabilities else reference.logits
    expected = twin(x.double(), *[p.double() for p in params])
    assert out.dtype == torch.float32
    assert_close_relative(out.double(), expected, "float32 output", rtol=2e-6)


@pytest.mark.parametrize("rows", [0, 1, 5])
def test_network_output_chunked_empty_batch(rows):
    x, _, _, params = problem(N=0, H=6)
    out = chunked.network_output_chunked(
        x, *params, chunk_rows=rows, sigmoid_form=True, column_major_W2=False, probabilities=True
    )
    assert out.shape == (0, 4) and out.dtype == x.dtype


def test_chunk_rows_zero_means_one_row_per_chunk(monkeypatch):
    x, _, _, params = problem(N=3, H=6)
    calls = _spy_chunks(monkeypatch)
    out = chunked.network_output_chunked(
        x, *params, chunk_rows=0, sigmoid_form=False, column_major_W2=False, probabilities=False
    )
    assert_close_relative(out, reference.logits(x, *params), "output")
    assert [c[0] for c in calls] == [1, 1, 1]


def _backward_twin(grad_z2, x, params, needs):
    """The gradients native autograd gives for <logits, grad_z2>, None where not needed."""
    leaves = [t.detach().clone().requires_grad_(n) for t, n in zip([x, *params], needs)]
    if not any(needs):
        return [None] * 5
    out = reference.logits(*leaves)
    wanted = [t for t in leaves if t.requires_grad]
    grads = iter(torch.autograd.grad(out, wanted, grad_z2))
    return [next(grads) if n else None for n in needs]


# factored (eq. (16')-(18')): B (D C, H) and E^T P ((D + 1) C, H) are made besides the buffers;
# relative (eq. (21)): with K = C - 1 = 3 in place of C, and dW2's last column (1, H)
FACTORED_ROWS = (4, 12, 16)
RELATIVE_ROWS = (4, 3, 9, 12, 1)


def _upstream(N, seed, through_softmax):
    """An upstream gradient of z2 (N, 4) and, ``through_softmax``, the y_hat (N, 4) it came through
    (its rows then sum to 0, eq. (19)), else None."""
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(N, 4, generator=g, dtype=torch.float64)
    if not through_softmax:
        return grad, None
    y_hat = torch.softmax(torch.randn(N, 4, generator=g, dtype=torch.float64) * 2, 1)
    return y_hat * (grad - (grad * y_hat).sum(1, keepdim=True)), y_hat  # eq. (6)


@pytest.mark.parametrize("needs", NEEDS, ids=NEED_IDS)
@pytest.mark.parametrize("sigmoid_form", [False, True], ids=["tanh", "sigmoid"])
@pytest.mark.parametrize("chunking", [(7, 3), (7, 100)], ids=["N7-rows3", "N7-rows100"])
@pytest.mark.parametrize("relative", [False, True], ids=["classes", "relative"])
@pytest.mark.parametrize("factored", [False, True], ids=["delta1", "factored"])
def test_backward_from_logits_chunked_matches_twin(factored, relative, chunking, sigmoid_form, needs, monkeypatch):
    N, rows = chunking
    x, _, _, params = problem(N=N, H=6)
    grad_z2, y_hat = _upstream(N, 3, relative)
    calls = _spy_chunks(monkeypatch)
    W1, b1, W2, _ = params
    with Allocations() as allocations:
        grads = chunked.backward_from_logits_chunked(
            grad_z2, x, W1, b1, W2, needs, chunk_rows=rows, sigmoid_form=sigmoid_form, factored=factored,
            y_hat=y_hat,
        )  # fmt: skip
    assert len(grads) == 5
    for name, g, r in zip(["x", "W1", "b1", "W2", "b2"], grads, _backward_twin(grad_z2, x, params, needs)):
        assert_close_relative(g, r, f"gradient of {name}")
    if any(needs[:4]):  # factored: P = 1 - a1^2 over the recomputed a1, no second buffer
        _assert_chunks(calls, N, rows)
        buffers = 2 if any(needs[:3]) and not factored else 1
        assert_buffers(allocations.ops, 6, min(N, rows), buffers, RELATIVE_ROWS if relative else FACTORED_ROWS)
    else:
        assert calls == [], "only db2 asked: no chunk pass"


@pytest.mark.parametrize("chunking", CHUNKINGS, ids=lambda c: "N{}-rows{}".format(*c))
@pytest.mark.parametrize("sigmoid_form", [False, True], ids=["tanh", "sigmoid"])
@pytest.mark.parametrize("relative", [False, True], ids=["classes", "relative"])
@pytest.mark.parametrize("factored", [False, True], ids=["delta1", "factored"])
def test_backward_from_logits_chunked_every_gradient(factored, relative, chunking, sigmoid_form, monkeypatch):
    N, rows = chunking
    x, _, _, params = problem(N=N, H=6, scale=2.0)
    grad_z2, y_hat = _upstream(N, 4, relative)
    calls = _spy_chunks(monkeypatch)
    W1, b1, W2, _ = params
    needs = (True,) * 5
    with Allocations() as allocations:
        grads = chunked.backward_from_logits_chunked(
            grad_z2, x, W1, b1, W2, needs, chunk_rows=rows, sigmoid_form=sigmoid_form, factored=factored,
            y_hat=y_hat,
        )  # fmt: skip
    for name, g, r in zip(["x", "W1", "b1", "W2", "b2"], grads, _backward_twin(grad_z2, x, params, needs)):
        assert_close_relative(g, r, f"gradient of {name}")
    _assert_chunks(calls, N, rows)
    assert_buffers(allocations.ops, 6, min(N, rows), 1 if factored else 2, RELATIVE_ROWS if relative else FACTORED_ROWS)


@pytest.mark.parametrize("factored", [False, True], ids=["delta1", "factored"])
def test_relative_backward_is_wrong_for_rows_that_do_not_sum_to_zero(factored):
    """Negative control: the relative classes assume eq. (19); the logits' own upstream gradient breaks it."""
    x, _, _, params = problem(N=7, H=6)
    W1, b1, W2, _ = params
    grad_z2, _ = _upstream(7, 3, through_softmax=False)
    _, y_hat = _upstream(7, 3, through_softmax=True)
    kwargs = dict(chunk_rows=3, sigmoid_form=True, factored=factored)
    grads = chunked.backward_from_logits_chunked(grad_z2, x, W1, b1, W2, (True,) * 5, **kwargs, y_hat=y_hat)
    expected = _backward_twin(grad_z2, x, params, (True,) * 5)
    for name, g, r in zip(["x", "W1", "W2"], [grads[0], grads[1], grads[3]], [expected[0], expected[1], expected[3]]):
        assert not torch.allclose(g, r), f"gradient of {name} right from the wrong rows"


@pytest.mark.parametrize("needs", [(True,) * 5, (False, False, False, False, True), (True, False, True, False, False)])
def test_backward_from_logits_chunked_empty_batch(needs):
    x, _, _, params = problem(N=0, H=6)
    W1, b1, W2, b2 = params
    grads = chunked.backward_from_logits_chunked(
        x.new_zeros(0, 4), x, W1, b1, W2, needs, chunk_rows=3, sigmoid_form=True, factored=True
    )
    for name, g, t, n in zip(["x", "W1", "b1", "W2", "b2"], grads, [x, W1, b1, W2, b2], needs):
        if not n:
            assert g is None, f"gradient of {name} not asked for"
        else:
            assert g.shape == t.shape and g.dtype == t.dtype and (g == 0).all(), f"gradient of {name}"


@pytest.mark.parametrize("factored", [False, True], ids=["delta1", "factored"])
def test_backward_from_logits_chunked_float32_sigmoid_form(factored):
    x, _, _, params = problem(N=9, H=64, dtype=torch.float32, scale=3.0)
    grad_z2 = torch.randn(9, 4, generator=torch.Generator().manual_seed(5))
    W1, b1, W2, _ = params
    grads = chunked.backward_from_logits_chunked(
        grad_z2, x, W1, b1, W2, (True,) * 5, chunk_rows=4, sigmoid_form=True, factored=factored
    )
    ref = _backward_twin(grad_z2.double(), x.double(), [p.double() for p in params], (True,) * 5)
    for name, g, r in zip(["x", "W1", "b1", "W2", "b2"], grads, ref):
        assert g.dtype == torch.float32
        assert_close_relative(g.double(), r, f"float32 gradient of {name}", rtol=1e-5)


# ---- loss_and_gradients (the loss's gradients in the forward) called directly ------------------------

NEEDS_SOME = [(True,) * 5, (True, False, False, False, False), (False, True, True, False, False),
              (False, False, False, True, False), (False, False, False, False, True),
              (False, True, False, True, True)]  # fmt: skip


@pytest.mark.parametrize("needs", NEEDS_SOME, ids=lambda n: "".join("1" if b else "0" for b in n))
@pytest.mark.parametrize("form", [(False, False), (True, True)], ids=["tanh", "sigmoid-colmajor"])
@pytest.mark.parametrize("rows", [7, 100, 5, 2, 1])
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
@pytest.mark.parametrize("relative", [False, True], ids=["classes", "relative"])
@pytest.mark.parametrize("factored", [False, True], ids=["delta1", "factored"])
@pytest.mark.filterwarnings("error")
def test_loss_and_gradients_matches_twin_and_its_buffers(factored, relative, soft, rows, form, needs, monkeypatch):
    """Values against the twin; the chunks through two (rows, H) buffers (one when factored: P is
    written over a1), W1 and b1 doubled once, a1 in place. Soft targets whose rows sum to 1.5:
    delta2's rows still sum to 0, as the relative classes need (eq. (19))."""
    sigmoid_form, column_major_W2 = form
    N, D, H = 7, 3, 6
    x, indices, probabilities, params = problem(N=N, D=D, H=H)
    target = probabilities * 1.5 if soft else indices
    calls, layouts, deltas = [], [], []
    original, original_delta2 = chunked.hidden_activation_fast, chunked.loss_grad_logits

    def spy(xs, W1, b1, out=None, **kw):
        calls.append((out is not None, kw["sigmoid_form"], bool(kw.get("doubled")), kw["in_place"]))
        return original(xs, W1, b1, out, **kw)

    def spy_delta2(*args, **kw):
        deltas.append(kw.get("in_place"))
        return original_delta2(*args, **kw)

    monkeypatch.setattr(chunked, "hidden_activation_fast", spy)
    monkeypatch.setattr(chunked, "loss_grad_logits", spy_delta2)
    monkeypatch.setattr(chunked, "column_major", lambda W2: layouts.append(W2) or W2.T.contiguous().T)
    with Allocations() as allocations:
        loss, grads = chunked.loss_and_gradients(
            x,
            target,
            *params,
            needs,
            chunk_rows=rows,
            sigmoid_form=sigmoid_form,
            column_major_W2=column_major_W2,
            factored=factored,
            relative=relative,
        )
    twin = [t.clone().requires_grad_(n) for t, n in zip([x, *params], needs)]
    ref_loss = reference.loss(twin[0], target, *twin[1:], reduction="sum")
    ref_grads = iter(torch.autograd.grad(ref_loss, [t for t in twin if t.requires_grad]))
    assert_close_relative(loss, ref_loss.detach(), "summed loss")
    for name, g, n in zip(["x", "W1", "b1", "W2", "b2"], grads, needs):
        assert_close_relative(g, next(ref_grads) if n else None, f"gradient of {name}")
    several = rows < N
    n_chunks = -(-N // rows) if several else 1
    assert calls == [(several, sigmoid_form, several and sigmoid_form, True)] * n_chunks
    assert deltas == [True] * n_chunks, "delta2 = y_hat - y in place on the fresh y_hat"
    assert len(layouts) == column_major_W2
    made = [shape for name, shape in allocations.ops if name == "new_empty.default"]
    grad_hidden = any(needs[:3]) and not factored
    expected = [(rows, H)] * (several + (several and grad_hidden)) + [(N, D)] * ((several or factored) and needs[0])
    assert made == expected, f"new_empty {made}, expected {expected}"
    with_ones = ("cat.default", (N, D + 1)) in allocations.ops
    assert with_ones == (factored and (needs[1] or needs[2])), "[x, 1] only for factored dW1, db1"
    if several:  # factored: also B (D K, H) and E^T P ((D + 1) K, H), K = C = 4, or C - 1 = 3 relative
        K = 3 if relative else 4
        allowed = (D, 4, K, D * K, (D + 1) * K, *((1,) if relative else ()))  # (1, H): dW2's last column
        assert_buffers(allocations.ops, H, rows, 1 + grad_hidden, allowed_rows=allowed)


@pytest.mark.parametrize("needs", NEEDS_SOME[:3], ids=lambda n: "".join("1" if b else "0" for b in n))
@pytest.mark.parametrize("relative", [False, True], ids=["classes", "relative"])
def test_loss_and_gradients_empty_batch(relative, needs):
    x, indices, _, params = problem(N=0)
    loss, grads = chunked.loss_and_gradients(
        x, indices, *params, needs, chunk_rows=3, sigmoid_form=True, column_major_W2=True, factored=True,
        relative=relative,
    )  # fmt: skip
    assert loss.shape == () and loss == 0
    for name, g, t, n in zip(["x", "W1", "b1", "W2", "b2"], grads, [x, *params], needs):
        assert (g is None) if not n else (g.shape == t.shape and (g == 0).all()), f"gradient of {name}"


# ---- the wiring (autograd.py) with the chunking thresholds of modes.py lowered ----------------------


@pytest.mark.parametrize("entry", ["probs", "logits"])
@pytest.mark.parametrize("N, H", [(7, 5), (40, 120)], ids=["tanh", "sigmoid-form"])
@pytest.mark.parametrize("needs", [(True,) * 5, (False, True, False, True, False), (True, False, True, False, True)])
@pytest.mark.parametrize("keep_a1", [False, True], ids=["recompute-a1", "keep-a1"])
@pytest.mark.parametrize("factored", [False, True], ids=["delta1", "factored"])
def test_functional_chunked_path_matches_twin(entry, N, H, needs, keep_a1, factored, monkeypatch):
    monkeypatch.setattr(modes, "CHUNKED_NETWORK_MIN_ROWS", 4)
    monkeypatch.setattr(modes, "NETWORK_CHUNK_ROWS", 3)
    monkeypatch.setattr(modes, "KEEP_A1_BELOW_ROWS", N + 1 if keep_a1 else N)
    monkeypatch.setattr(modes, "FACTORED_MAX_PRODUCTS", 16 if factored else 15)  # (D + 1) C = 16
    monkeypatch.setattr(modes, "RELATIVE_MIN_ROWS", N)
    calls, kinds, outputs = _spy_chunks(monkeypatch), [], []
    original, original_forward = autograd.backward_from_logits_chunked, autograd.network_output_chunked
    monkeypatch.setattr(
        autograd,
        "backward_from_logits_chunked",
        lambda *a, **k: kinds.append((k["factored"], k["y_hat"] is not None)) or original(*a, **k),
    )
    monkeypatch.setattr(
        autograd, "network_output_chunked", lambda *a, **k: outputs.append(k["relative"]) or original_forward(*a, **k)
    )
    x, _, _, params = problem(N=N, H=H)
    manual = functional.two_layer_net if entry == "probs" else functional.two_layer_net_logits
    twin = reference.probs if entry == "probs" else reference.logits
    assert_matches_twin(manual, twin, [x, *params], list(needs))
    chunks = math.ceil(N / 3)
    assert len(calls) == (1 if keep_a1 else 2) * chunks, "a1 by chunks of 3 rows in forward, in backward unless kept"
    relative = entry == "probs"  # through the softmax only: the logits' upstream gradient is anything
    assert kinds and set(kinds) == {(factored, relative)}, f"factored per modes.FACTORED_MAX_PRODUCTS: {kinds}"
    assert outputs and set(outputs) == {relative}, "the relative logits for the probabilities only"


@pytest.mark.parametrize("entry", ["probs", "logits"])
def test_factored_backward_leaves_the_kept_a1_for_a_second_backward(entry, monkeypatch):
    """P = 1 - a1^2 goes into a buffer, not over the a1 the forward kept: retain_graph gives the same twice."""
    monkeypatch.setattr(modes, "CHUNKED_NETWORK_MIN_ROWS", 4)
    monkeypatch.setattr(modes, "NETWORK_CHUNK_ROWS", 3)
    monkeypatch.setattr(modes, "FACTORED_MAX_PRODUCTS", 16)
    kinds, original = [], autograd.backward_from_logits_chunked
    monkeypatch.setattr(
        autograd,
        "backward_from_logits_chunked",
        lambda *a, **k: kinds.append((k["a1"] is not None, k["factored"])) or original(*a, **k),
    )
    x, _, _, params = problem(N=7, H=5)
    leaves = [p.clone().requires_grad_() for p in params]
    manual = functional.two_layer_net if entry == "probs" else functional.two_layer_net_logits
    out = manual(x, *leaves)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(6), dtype=out.dtype)
    first = torch.autograd.grad(out, leaves, grad_out, retain_graph=True)
    second = torch.autograd.grad(out, leaves, grad_out)
    assert kinds == [(True, True)] * 2, "both backwards from the kept a1, factored"
    for name, a, b in zip(["W1", "b1", "W2", "b2"], first, second):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=lambda m, name=name: f"second backward, {name}: {m}")


@pytest.mark.parametrize("factored", [False, True], ids=["delta1", "factored"])
def test_a_kept_a1_needs_no_buffer_to_recompute_it(factored):
    """Given the (N, H) a1 to keep, the forward writes each chunk there and makes no (rows, H) buffer;
    the backward reads it and makes one (rows, H) buffer (dL/da1 and delta1, or P) and an empty one."""
    x, _, _, params = problem(N=7, H=6)
    W1, b1, W2, b2 = params
    kept = x.new_empty(7, 6)
    with Allocations() as forward:
        chunked.network_output_chunked(
            x, *params, chunk_rows=3, sigmoid_form=True, column_major_W2=False, probabilities=False, a1_out=kept
        )
    assert [s for name, s in forward.ops if name == "new_empty.default" and 6 in s] == [], "no recompute buffer"
    grad_z2 = torch.randn(7, 4, generator=torch.Generator().manual_seed(8), dtype=x.dtype)
    with Allocations() as backward:
        grads = chunked.backward_from_logits_chunked(
            grad_z2, x, W1, b1, W2, (True,) * 5, chunk_rows=3, sigmoid_form=True, factored=factored, a1=kept
        )
    assert [s for name, s in backward.ops if name == "new_empty.default" and 6 in s] == [(0, 6), (3, 6)]
    for name, g, r in zip(["x", "W1", "b1", "W2", "b2"], grads, _backward_twin(grad_z2, x, params, (True,) * 5)):
        assert_close_relative(g, r, f"gradient of {name}")


# ---- factored (eq. (16')-(18')) on index grids that are not square, and with no hidden unit ---------

# (D, H, C): D + 1 != C, so the (d, c) and (c, d) orders of the products differ; H = 0: no hidden unit
GRIDS = [(2, 6, 4), (3, 6, 3), (1, 6, 2), (4, 6, 1), (2, 0, 2)]
FACTORED_NEEDS = [(True,) * 5, (True, False, False, False, False), (False, False, True, False, False)]


def _loss_twin(x, indices, params, needs):
    leaves = [t.clone().requires_grad_(n) for t, n in zip([x, *params], needs)]
    wanted = [t for t in leaves if t.requires_grad]
    grads = iter(torch.autograd.grad(reference.loss(leaves[0], indices, *leaves[1:], reduction="sum"), wanted))
    return [next(grads) if n else None for n in needs]


@pytest.mark.parametrize("needs", FACTORED_NEEDS, ids=lambda n: "".join("1" if b else "0" for b in n))
@pytest.mark.parametrize("kernel", ["loss", "loss-relative", "recompute-a1", "kept-a1"])
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: "D{}-H{}-C{}".format(*g))
def test_factored_kernels_on_grids_that_are_not_square(grid, kernel, needs):
    D, H, C = grid
    if kernel == "loss-relative" and C < 2:
        pytest.skip("the classes relative to the last need two of them")
    x, indices, _, params = problem(N=8, D=D, H=H, C=C)
    W1, b1, W2, _ = params
    if kernel.startswith("loss"):
        _, grads = chunked.loss_and_gradients(
            x, indices, *params, needs, chunk_rows=3, sigmoid_form=True, column_major_W2=True, factored=True,
            relative=kernel == "loss-relative",
        )  # fmt: skip
        expected = _loss_twin(x, indices, params, needs)
    else:
        grad_z2 = torch.randn(8, C, generator=torch.Generator().manual_seed(7), dtype=x.dtype)
        a1 = torch.tanh(x @ W1 + b1) if kernel == "kept-a1" else None  # (N, H)
        grads = chunked.backward_from_logits_chunked(
            grad_z2, x, W1, b1, W2, needs, chunk_rows=3, sigmoid_form=True, a1=a1, factored=True
        )
        expected = _backward_twin(grad_z2, x, params, needs)
    for name, g, r in zip(["x", "W1", "b1", "W2", "b2"], grads, expected):
        assert_close_relative(g, r, f"gradient of {name}, D={D}, H={H}, C={C}")


def test_few_products_are_padded_with_zero_rows():
    """E^T P with 3 rows takes MKL's row-by-row path, with about 3x the rounding error of the blocked
    kernel that 4 rows take (factored.MIN_PRODUCT_ROWS): 3 products come back in 4 rows, the last 0."""
    x, _, _, params = problem(N=7, D=2, H=6, C=2)
    xs_1 = torch.cat((x, x.new_ones(7, 1)), 1)  # (N, D + 1)
    delta2 = torch.randn(7, 1, generator=torch.Generator().manual_seed(9), dtype=x.dtype)  # one relative class
    P = torch.rand(7, 6, generator=torch.Generator().manual_seed(10), dtype=x.dtype)
    products = factored.accumulate_products(None, xs_1, delta2, P)
    assert products.shape == (factored.MIN_PRODUCT_ROWS, 6)
    torch.testing.assert_close(products[:3], (xs_1 * delta2).T @ P)
    assert bool((products[3:] == 0).all())
    again = factored.accumulate_products(products.clone(), xs_1, delta2, P)  # the next chunk adds in place
    torch.testing.assert_close(again, 2 * products)
    W2 = params[2][:, :1]  # (H, 1)
    torch.testing.assert_close(factored.first_layer_gradients(products, W2, 3), W2.T * products[:3])


@pytest.mark.parametrize("C, relative", [(2, True), (3, True), (1, False)])
def test_the_loss_takes_the_relative_classes_from_two_of_them(C, relative, monkeypatch):
    monkeypatch.setattr(modes, "RELATIVE_MIN_ROWS", 9)
    calls, original = [], autograd.loss_and_gradients
    monkeypatch.setattr(
        autograd, "loss_and_gradients", lambda *a, **k: calls.append(k["relative"]) or original(*a, **k)
    )
    x, indices, _, params = problem(N=9, H=5, C=C)
    leaves = [p.clone().requires_grad_() for p in params]
    with functional.loss_gradients_in_forward(True, chunk_rows=4):
        loss = functional.two_layer_net_loss(x, indices, *leaves)
    assert_close_relative(loss.detach(), reference.loss(x, indices, *params), "loss")
    assert calls == [relative]


@pytest.mark.parametrize("where", ["finite", "last-W2", "last-b2", "first-W2", "overflow"])
def test_the_relative_layer_only_where_its_values_are_finite(where):
    """W2r and b2r, eq. (20), or None where one of their values is not finite: then the C classes."""
    W2 = torch.randn(5, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    b2 = torch.tensor([0.5, -0.25, 1.0], dtype=torch.float64)
    if where == "last-W2":
        W2[2, -1] = math.inf
    elif where == "last-b2":
        b2[-1] = -math.inf
    elif where == "first-W2":
        W2[1, 0] = math.nan
    elif where == "overflow":  # each finite, their difference not
        b2 = torch.tensor([1e308, 0.0, -1e308], dtype=torch.float64)
    layer = relative.relative_output_layer(W2, b2)
    if where != "finite":
        assert layer is None
        return
    torch.testing.assert_close(layer[0], W2[:, :2] - W2[:, 2:])
    torch.testing.assert_close(layer[1], b2[:2] - b2[2])


def test_the_relative_probabilities_multiply_by_C_minus_1_columns():
    """The forward's product a1 W2r + b2r writes C - 1 = 3 columns (the speed of eq. (20)), not C."""
    x, _, _, params = problem(N=7, H=6)
    with Allocations() as allocations:
        out = chunked.network_output_chunked(
            x, *params, chunk_rows=3, sigmoid_form=True, column_major_W2=False, probabilities=True, relative=True
        )
    assert_close_relative(out, reference.probs(x, *params), "probabilities")
    products = [shape for name, shape in allocations.ops if name == "addmm.out"]
    assert products == [(3, 3), (3, 3), (1, 3)], products


@pytest.mark.parametrize("where", ["finite", "delta2-inf", "delta2-nan", "last-W2"])
def test_the_relative_backward_only_where_its_values_are_finite(where):
    """(delta2 rebalanced, W2r), eq. (19)-(21), or None: a row of delta2 with inf or NaN does not sum
    to 0, and an infinite W2 makes W2r so; the backward then takes the C classes, the same values as
    without y_hat."""
    grad_z2, y_hat = _upstream(7, 5, through_softmax=True)
    x, _, _, params = problem(N=7, H=6)
    W1, b1, W2, _ = params
    if where == "delta2-inf":
        grad_z2[3, 1] = math.inf
    elif where == "delta2-nan":
        grad_z2[2, 0] = math.nan
    elif where == "last-W2":
        W2 = W2.clone()
        W2[4, -1] = math.inf
    pair = relative.relative_backward(grad_z2, W2, y_hat)
    kwargs = dict(chunk_rows=3, sigmoid_form=True, factored=True)
    with_y_hat = chunked.backward_from_logits_chunked(grad_z2, x, W1, b1, W2, (True,) * 5, **kwargs, y_hat=y_hat)
    if where == "finite":
        torch.testing.assert_close(pair[0].sum(1), torch.zeros(7, dtype=x.dtype))
        torch.testing.assert_close(pair[1], W2[:, :-1] - W2[:, -1:])
        return
    assert pair is None
    without = chunked.backward_from_logits_chunked(grad_z2, x, W1, b1, W2, (True,) * 5, **kwargs)
    for name, a, b in zip(["x", "W1", "b1", "W2", "b2"], with_y_hat, without):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=lambda m, n=name: f"{n}: {m}")
