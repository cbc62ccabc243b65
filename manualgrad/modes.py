"""What mode PyTorch is in, and the choices of path and precision that follow from it.

The autograd wiring (``functional.py``) asks these questions and passes the answers to the
kernels (``kernels.py``) as plain arguments, so that the kernels never ask them:

* is the backward being recorded (double backward, ``torch.func``, forward-over-reverse)?
* which size-tuned path does eager mode take (sigmoid form of tanh, W2 layout, loss gradients
  in the forward and their chunk size)?
* the precision policy: every pass computes in the parameters' dtype, even inside autocast.

The loss strategy (:func:`loss_gradients_in_forward`) is held in a ``contextvars.ContextVar``:
per thread (and per asyncio task), never a module global.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NamedTuple

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

# The lean paths of plain eager mode read PRECOMPUTE_MIN_ROWS, SIGMOID_TANH_MIN_ELEMENTS,
# COLUMN_MAJOR_MIN_ROWS and CHUNKED_NETWORK_MIN_ROWS once per combination of metadata, into the plan
# kept with the boundary checks (EagerPlan, boundary.py): a new value applies to combinations not
# seen yet (tests that set them start from an empty cache, tests/conftest.py).
#
# Rows of x per chunk when the loss computes gradients in its forward. On the CPU, small enough
# that the (rows, H) buffers stay in cache, large enough that the per-chunk Python overhead (about
# 25 ops a chunk) is small. At H=500, 1 thread, on a 2-core EPYC shared with other work: with two
# buffers (delta1 formed), 1024 rows were best of 512 to 4096, by 5-10% over 2048; with one
# (eq. (16')-(18'), FACTORED_MAX_PRODUCTS), 2048 rows take 0.97x the time of 1024 at N=4096 and
# 0.95x at N=65536 (interleaved, median of 60 and 8 rounds). On accelerators, where every op is a
# kernel launch, fewer and larger chunks (not tuned).
LOSS_CHUNK_ROWS = 1024
LOSS_CHUNK_ROWS_FACTORED = 2048
LOSS_CHUNK_ROWS_ACCELERATOR = 16384
# From this many rows the loss computes its gradients in the forward by row chunks, when they
# will be needed. Fewer (the chunk loop costs about 60 us of Python at N=1, CPU, H=500): the loss
# saves a1 and log y_hat and computes them in backward, as the probs and logits paths do; in plain
# eager mode through the lean Function of ``eager.py``.
PRECOMPUTE_MIN_ROWS = 256
# tanh z1 = 2 sigmoid(2 z1) - 1 pays on the CPU from this many elements of z1 (N * H): the
# 3 ns per element saved outweigh the two extra ops (a few microseconds).
SIGMOID_TANH_MIN_ELEMENTS = 4096
# a1 W2 with W2 in column-major layout pays on the CPU from this many rows of a1.
COLUMN_MAJOR_MIN_ROWS = 16
# Probs and logits in eager mode, from this many rows: forward and backward by row chunks
# (``chunked.py``), a1 recomputed in backward instead of saved. Below, a1 is saved: one pass fewer
# (in plain eager mode by the lean Functions of ``eager.py``).
CHUNKED_NETWORK_MIN_ROWS = 1024
# Below this many rows the chunked forward keeps a1 in one (N, H) tensor for backward instead of
# recomputing it there: one pass of eq. (1), (2) fewer, the sigmoid its costliest op (N=4096, H=500,
# 1 thread: 2.7x-3.1x autograd's speed against 2.2x-2.3x). From here it recomputes, so that the bytes held for
# backward stay a sliver of autograd's (at N=65536: 0.4% for probs, 0 B for logits).
KEEP_A1_BELOW_ROWS = 16384
# The chunked kernels take the first layer's gradients through P = 1 - a1^2 without forming delta1
# (``factored.py``, eq. (16')-(18')) while [x, 1] (x) delta2 has at most this many columns, (D + 1) C.
# At N=4096, H=500, 1 thread, against delta1: D=2, C=2 (6 columns) 0.84x the time of the loss's
# kernel without dx, 0.91x with dx, 0.83x-0.86x the backward of probs and logits; from 9 columns the
# product for dx, with D C columns, costs more than the pass it saves (1.02x-1.08x). Measured on the CPU only.
FACTORED_MAX_PRODUCTS = 8
# Behind a softmax, the chunked kernels take the classes relative to the last (``relative.py``) from
# this many rows: a step then runs about 25 small ops more (the relative W2 and b2 and their finite
# check, a rebalanced delta2, dW2's last column), which the narrower products repay only with enough
# rows. The loss's training step side by side, H=500, C=2, 1 thread: 1.11x the time at 256 rows,
# 0.94x-0.96x at 1024, 0.85x at 4096 (the probabilities: 0.96x at 1024, 0.84x-0.90x at 4096).
RELATIVE_MIN_ROWS = 1024
# Rows per chunk of those kernels: the (rows, H) buffers stay in cache on the CPU.
NETWORK_CHUNK_ROWS = 1024
NETWORK_CHUNK_ROWS_ACCELERATOR = 16384


# ----------------------------------------------------------------------------------------
# Mode queries
# ----------------------------------------------------------------------------------------


def backward_is_differentiated() -> bool:
    """True when the backward is being recorded: create_graph, forward-over-reverse, torch.func.

    Then saved intermediates (a1, y_hat, precomputed gradients) carry no history back to the
    inputs, so the backward recomputes them from the inputs with differentiable ops.
    """
    if torch.is_grad_enabled():
        return True
    if torch.compiler.is_compiling():
        return False
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


def tracing(x: Tensor | None = None) -> bool:
    """True under torch.compile, torch.export, make_fx and torch.func transforms, or for an x
    whose batch size is symbolic: then manualgrad takes its one path valid for every batch
    size, so that no choice of its own becomes a guard on N (issue 12). Eager mode: False.
    """
    if torch.compiler.is_compiling():  # Dynamo, strict export; nothing below is traced
        return True
    if torch._C._are_functorch_transforms_active():  # vmap, grad, jvp, linearize
        return True
    if x is not None and type(x.shape[0]) is not int:  # a SymInt
        return True
    modes = torch._C._TorchDispatchModeKey  # make_fx, non-strict export, AOTAutograd, FakeTensorMode
    return torch._C._get_dispatch_mode(modes.PROXY) is not None or torch._C._get_dispatch_mode(modes.FAKE) is not None


def plain_eager(x: object) -> bool:
    """True in plain eager mode for a plain CPU or CUDA tensor x: no compile, export, make_fx,
    ``torch.func`` transform, forward-mode AD level, dispatch mode (fake tensors, FlopCounterMode
    and any other ``TorchDispatchMode``) or autocast (on CPU, CUDA and most devices: one query).
    There the lean Functions of ``eager.py`` may serve. One function, cheapest question first: it
    runs on every small call."""
    return (
        type(x) is Tensor
        and (x.is_cpu or x.is_cuda)
        and not torch.compiler.is_dynamo_compiling()  # export and make_fx: fake x, a dispatch mode
        and not torch._C._are_functorch_transforms_active()
        and forward_ad._current_level < 0
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._is_any_autocast_enabled()  # not mps or maia: x is CPU or CUDA here
    )


def is_batched(grad: Tensor) -> bool:
    """Whether an upstream gradient is vmap-batched (gradcheck's batched-grad check) or a wrapper tensor."""
    functorch = torch._C._functorch
    return type(grad) is not Tensor or functorch.is_legacy_batchedtensor(grad) or functorch.is_batchedtensor(grad)


# ----------------------------------------------------------------------------------------
# Size-tuned paths of eager mode
# ----------------------------------------------------------------------------------------


def device_type(t: Tensor) -> str:
    """``t.device.type``, without building a ``torch.device`` for the common CPU tensor."""
    return "cpu" if t.is_cpu else t.device.type


def sigmoid_tanh_pays(x: Tensor, hidden: int) -> bool:
    """Whether eq. (2) is evaluated as tanh z1 = 2 sigmoid(2 z1) - 1 for this x (N, D); eager only."""
    if tracing(x):  # first: under Dynamo, comparing N would be a guard
        return False
    return sigmoid_tanh_pays_eager(x, hidden)


def sigmoid_tanh_pays_eager(x: Tensor, hidden: int) -> bool:
    """:func:`sigmoid_tanh_pays` for a caller that knows it runs in plain eager mode."""
    cpu_float = x.is_cpu and x.dtype in (torch.float32, torch.float64)
    return cpu_float and x.shape[0] * hidden >= SIGMOID_TANH_MIN_ELEMENTS


def column_major_pays(W2: Tensor, rows: int) -> bool:
    """Whether a1 (rows, H) W2 runs with W2 in column-major layout; eager only."""
    if type(rows) is not int or tracing():
        return False
    return column_major_pays_eager(W2, rows)


def column_major_pays_eager(W2: Tensor, rows: int) -> bool:
    """:func:`column_major_pays` for a caller that knows it runs in plain eager mode."""
    return W2.is_cpu and rows >= COLUMN_MAJOR_MIN_ROWS


def factored_first_layer_pays(x: Tensor, W2: Tensor) -> bool:
    """Whether the chunked kernels take eq. (16')-(18') of ``factored.py``: x (N, D), W2 (H, C), C > 0; eager only."""
    return x.is_cpu and 0 < (x.shape[1] + 1) * W2.shape[1] <= FACTORED_MAX_PRODUCTS


def relative_classes_pay(x: Tensor, W2: Tensor) -> bool:
    """Whether the chunked kernels behind a softmax (the loss; the probabilities' forward and
    backward) take the classes relative to the last (``relative.py``, eq. (19)-(21)): x (N, D),
    W2 (H, C); eager only. On the CPU, for C >= 2, from ``RELATIVE_MIN_ROWS`` rows: every product
    with W2 or delta2 has C - 1 columns, for about 25 small ops more per call. The loss's kernel at
    N=4096, D=2: 0.97x-0.92x the time for C = 3 and 10. On accelerators, where those ops are kernel
    launches and the products are not the cost: not measured, not taken."""
    return x.is_cpu and W2.shape[1] >= 2 and x.shape[0] >= RELATIVE_MIN_ROWS


class EagerPlan(NamedTuple):
    """What the lean Functions of ``eager.py`` do for one combination of metadata (kinds, dtypes,
    devices, layouts, shapes): decided with the boundary checks, once per combination
    (``boundary.py``), instead of on every call, where each question costs as much as an op."""

    lean: bool  # whether they serve these tensors at all
    sigmoid_form: bool  # eq. (2) as 2 sigmoid(2 z1) - 1 (:func:`sigmoid_tanh_pays_eager`)
    column_major_W2: bool  # a1 W2 with W2 column-major, eq. (14) as (delta2^T a1)^T (:func:`column_major_pays_eager`)
    one_row: bool  # N = 1: the sums over rows of eq. (15), (17) are the row itself, a view (an op less each)


def eager_network_plan(x: Tensor, W1: Tensor, W2: Tensor) -> EagerPlan:
    """The plan of the lean probs and logits for tensors that passed the boundary checks (kept with
    them in any mode, read in plain eager mode only): they serve x (N, D) of 1 to
    ``CHUNKED_NETWORK_MIN_ROWS - 1`` rows (from there the chunked paths pay)."""
    return _eager_plan(x.dim() == 2 and 0 < x.shape[0] < CHUNKED_NETWORK_MIN_ROWS, x, W1, W2)


def eager_loss_plan(x: Tensor, target: Tensor, W1: Tensor, W2: Tensor) -> EagerPlan:
    """The plan of the lean loss for tensors that passed the boundary checks (as
    :func:`eager_network_plan`): it serves CPU float32 or float64 tensors, x (N, D) of 1 to
    ``PRECOMPUTE_MIN_ROWS - 1`` rows, and integer class indices other than uint64 (which ``.long()``
    could wrap onto the ignore index -100)."""
    rows = x.dim() == 2 and 0 < x.shape[0] < PRECOMPUTE_MIN_ROWS
    labels = not target.is_floating_point() and target.dtype != torch.uint64
    return _eager_plan(rows and labels and x.is_cpu and W1.dtype in (torch.float32, torch.float64), x, W1, W2)


def _eager_plan(lean: bool, x: Tensor, W1: Tensor, W2: Tensor) -> EagerPlan:
    if not lean:
        return EagerPlan(False, False, False, False)
    rows = x.shape[0]
    return EagerPlan(True, sigmoid_tanh_pays_eager(x, W1.shape[1]), column_major_pays_eager(W2, rows), rows == 1)


def network_chunk_rows(device: torch.device) -> int:
    """Rows per chunk of the chunked probs and logits kernels on this device."""
    return NETWORK_CHUNK_ROWS if device.type == "cpu" else NETWORK_CHUNK_ROWS_ACCELERATOR


def network_in_chunks(x: Tensor) -> bool:
    """Whether probs and logits run by row chunks, recomputing a1 in backward: eager, from
    ``CHUNKED_NETWORK_MIN_ROWS`` rows of x (N, D)."""
    return not tracing(x) and x.shape[0] >= CHUNKED_NETWORK_MIN_ROWS


def keeps_a1(x: Tensor) -> bool:
    """Whether the chunked forward of probs and logits keeps a1 for backward; eager only."""
    return x.shape[0] < KEEP_A1_BELOW_ROWS


class LossStrategy(NamedTuple):
    """From how many rows the scalar loss computes its gradients in the forward, in chunks of how
    many rows (None: by device, ``LOSS_CHUNK_ROWS`` or ``LOSS_CHUNK_ROWS_ACCELERATOR``)."""

    precompute_min_rows: int = PRECOMPUTE_MIN_ROWS
    chunk_rows: int | None = None


_DEFAULT_STRATEGY = LossStrategy()
_loss_strategy: ContextVar[LossStrategy] = ContextVar("manualgrad_loss_strategy", default=_DEFAULT_STRATEGY)


def gradients_in_forward(
    x: Tensor, target: Tensor, params: Sequence[Tensor], reduction: str
) -> tuple[bool, ...] | None:
    """Which gradients the loss's forward should compute (x, W1, b1, W2, b2), or None to defer
    them to backward: eager only, for a scalar loss, from ``precompute_min_rows`` rows."""
    if tracing(x):  # first: Dynamo does not trace ContextVar.get
        return None
    if reduction == "none" or not torch.is_grad_enabled() or target.requires_grad:
        return None
    if x.shape[0] < _loss_strategy.get().precompute_min_rows:
        return None
    mask = (x.requires_grad, *(p.requires_grad for p in params))
    return mask if any(mask) else None


def default_loss_strategy() -> bool:
    """Whether the calling thread runs the default loss strategy (no ``loss_gradients_in_forward``)."""
    return _loss_strategy.get() is _DEFAULT_STRATEGY


def loss_strategy() -> LossStrategy:
    """The loss strategy of the calling thread (or asyncio task)."""
    return _loss_strategy.get()


def chunk_rows(device: torch.device, factored: bool) -> int:
    """Rows per chunk of the loss that computes its gradients in the forward; ``factored``: by
    eq. (16')-(18') (:func:`factored_first_layer_pays`), with one (rows, H) buffer instead of two."""
    rows = _loss_strategy.get().chunk_rows
    if rows is not None:
        return rows
    if device.type != "cpu":
        return LOSS_CHUNK_ROWS_ACCELERATOR
    return LOSS_CHUNK_ROWS_FACTORED if factored else LOSS_CHUNK_ROWS


@contextmanager
def loss_gradients_in_forward(enabled: bool, chunk_rows: int | None = None) -> Iterator[None]:
    """Make the scalar loss compute its gradients in the forward (True) or in backward (False)
    at every batch size, inside the ``with`` block (by default that depends on N,
    ``PRECOMPUTE_MIN_ROWS``), in chunks of ``chunk_rows`` rows if given. For tests and
    ``verify``, which check every way on small batches. The setting belongs to the calling
    thread (a ``contextvars.ContextVar``): other threads keep theirs.
    """
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise ValueError(f"chunk_rows must be a positive int or None, got {chunk_rows!r}")
    token = _loss_strategy.set(LossStrategy(0 if enabled else sys.maxsize, chunk_rows))
    try:
        yield
    finally:
        _loss_strategy.reset(token)


# ----------------------------------------------------------------------------------------
# Precision policy: every pass computes in the parameters' dtype, even inside autocast
# ----------------------------------------------------------------------------------------


def autocast_enabled(device_type: str) -> bool:
    """True inside ``torch.autocast`` for this device type (devices autocast does not know, e.g. meta: False)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def in_parameter_precision(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a Function's ``backward`` or ``jvp`` with autocast off for its device.

    Called inside the caller's ``torch.autocast`` region (``loss.backward()`` within the
    ``with``), its matmuls would otherwise run in bfloat16/float16 while the forward ran in the
    parameters' dtype. ``ctx.device_type`` is recorded by ``setup_context``.
    """

    @functools.wraps(method)
    def wrapper(ctx: Any, *grads: Any) -> Any:
        device_type = ctx.device_type
        if torch.compiler.is_compiling():  # traced once for whatever autocast state the caller has later
            turn_off = torch.amp.is_autocast_available(device_type)
        else:
            turn_off = autocast_enabled(device_type)
        if not turn_off:
            return method(ctx, *grads)
        with torch.autocast(device_type, enabled=False):
            return method(ctx, *grads)

    return wrapper
