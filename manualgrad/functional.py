r"""The two-layer network as custom ``torch.autograd.Function``\ s with hand-derived gradients.

Letters: N batch, D inputs, H hidden units, C classes. Row-vector convention, as in the
article; equation numbers are the article's (1)-(17), corrected, plus (18) for dx. The
derivation, with every step and every correction, is in ``docs/derivation.md``.

Forward::

    z1    = x W1 + b1                  (N, H)   eq. (1)
    a1    = tanh(z1)                   (N, H)   eq. (2)
    z2    = a1 W2 + b2                 (N, C)   eq. (3)
    y_hat = softmax(z2)                (N, C)   eq. (4)
    L     = -(1/N) sum_n sum_c y log y_hat       eq. (5)   (mean reduction)

Backward (delta2 = dL/dz2, delta1 = dL/dz1; g an upstream gradient)::

    dy_hat/dz2 applied to g: y_hat * (g - sum_c g y_hat)   (N, C)   eq. (6)  softmax VJP
    delta2 = (y_hat - y) / N                               (N, C)   eq. (7)
    dW2    = a1^T delta2                                   (H, C)   eq. (8), (14)
    db2    = sum_n delta2                                  (C,)     eq. (9), (15)
    dL/da1 = delta2 W2^T                                   (N, H)   eq. (10)
    delta1 = dL/da1 * (1 - a1^2)                           (N, H)   eq. (11)
    dW1    = x^T delta1                                    (D, H)   eq. (12), (16)
    db1    = sum_n delta1                                  (H,)     eq. (13), (17)
    dx     = delta1 W1^T                                   (N, D)   eq. (18)

Three entry points, each backed by its own Function: :func:`two_layer_net` (probabilities),
:func:`two_layer_net_logits` (z2) and :func:`two_layer_net_loss` (cross-entropy, whose
backward is the fused eq. (7)). How each mode of PyTorch is served:

* first-order backward: the formulas above, from tensors saved in forward, no autograd;
* the loss in eager mode, from ``PRECOMPUTE_MIN_ROWS`` rows, computes the parameter gradients
  during the forward, in chunks of rows, when they will be needed (the loss is a scalar, so
  its upstream gradient is only a scale) and saves only parameter-sized tensors; the chunks
  reuse two (chunk, H) buffers. Smaller batches save a1 and log y_hat, as probs and logits do;
* double backward (``create_graph=True``), ``torch.func`` transforms and forward-over-reverse:
  the backward recomputes a1 and y_hat from the saved inputs with differentiable ops, so the
  same formulas are differentiated correctly (pytorch issue 58509);
* forward-mode AD: a ``jvp`` with the tangent form of eq. (1)-(5);
* ``torch.func.vmap``: ``generate_vmap_rule = True``;
* ``torch.compile``: Dynamo refuses Functions that define ``jvp``, so under compilation the
  same Functions without ``jvp`` are used.

Speed (``python -m manualgrad bench``): on the CPU eq. (2) is evaluated as
tanh z1 = 2 sigmoid(2 z1) - 1, seven times cheaper there than ``torch.tanh``; products with
W2 run in the layout BLAS is fastest at for few classes; eager calls skip the Python preamble
of ``Function.apply``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
import torch._functorch.utils as _functorch_utils
import torch.autograd.forward_ad as forward_ad
from torch import Tensor
from torch.autograd import Function

from . import validation

__all__ = [
    "two_layer_net",
    "two_layer_net_logits",
    "two_layer_net_loss",
    "ProbsFunction",
    "LogitsFunction",
    "LossFunction",
]

# Rows of x per chunk when the loss computes gradients in its forward. On the CPU, small enough
# that the two (rows, H) buffers stay in cache, large enough that the per-chunk Python overhead
# is negligible (at H=500, 2048 rows was best of 256 to 8192). On accelerators, where every op
# is a kernel launch, fewer and larger chunks (not tuned).
LOSS_CHUNK_ROWS = 2048
LOSS_CHUNK_ROWS_ACCELERATOR = 16384
# Fewer rows than this: the loss saves a1 and log y_hat and computes gradients in backward, as
# the probs and logits paths do. Computing them in the forward pays for itself only when (N, H)
# temporaries are large; at N=1 its extra Python ops cost about 60 us (CPU, H=500).
PRECOMPUTE_MIN_ROWS = 256


# ----------------------------------------------------------------------------------------
# Forward formulas
# ----------------------------------------------------------------------------------------


def hidden_activation(x: Tensor, W1: Tensor, b1: Tensor) -> Tensor:
    z1 = torch.addmm(b1, x, W1)  # (N, H)  eq. (1)
    return torch.tanh(z1)  # (N, H)  eq. (2)


def hidden_activation_fast(
    x: Tensor, W1: Tensor, b1: Tensor, out: Tensor | None = None, *, doubled: bool = False
) -> Tensor:
    """a1 = tanh(x W1 + b1) (N, H), eq. (1), (2), for the loss, whose a1 never leaves its Function.

    On the CPU ``torch.tanh`` (MKL's vsTanh) costs about 3.5 ns per float32 against 0.5 ns for
    ``torch.sigmoid``, so there tanh z1 = 2 sigmoid(2 z1) - 1: the same function, within 2e-7
    absolute in float32 (torch.tanh: 3e-8). The factor 2 is exact and folded into the matmul;
    ``doubled``: W1 and b1 are given already doubled (cheaper for many chunks). ``out``: a
    buffer to write into, without history. (Probs and logits return values computed from a1,
    so they keep :func:`hidden_activation`, the very ops of the native-autograd twin.)
    """
    recorded = out is None and backward_is_differentiated()  # any autograd mode records these ops
    if not doubled and not _sigmoid_tanh(x, W1.shape[1]):  # doubled W1, b1 always need the sigmoid form
        z1 = torch.addmm(b1, x, W1, out=out)  # (N, H)  eq. (1)
        return torch.tanh(z1) if recorded else z1.tanh_()  # (N, H)  eq. (2)
    scale = 1 if doubled else 2
    z1_twice = torch.addmm(b1, x, W1, beta=scale, alpha=scale, out=out)  # (N, H)  2 z1, eq. (1)
    if recorded:
        return torch.sigmoid(z1_twice) * 2.0 - 1.0  # (N, H)  eq. (2): tanh z1 = 2 sigmoid(2 z1) - 1
    s = z1_twice.sigmoid_()  # (N, H)  sigmoid(2 z1), in place on our own tensor
    return torch.add(s.new_full((), -1.0), s, alpha=2, out=s)  # (N, H)  eq. (2): 2 sigmoid(2 z1) - 1


def _sigmoid_tanh(x: Tensor, hidden: int) -> bool:
    """Whether tanh z1 = 2 sigmoid(2 z1) - 1 pays: on the CPU, for (N, H) large enough that 3 ns
    per element saved outweigh the two extra ops (a few microseconds)."""
    if torch.compiler.is_compiling():  # one path for every batch size under compile and export
        return False
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.shape[0] * hidden >= 4096


def output_logits(a1: Tensor, W2: Tensor, b2: Tensor) -> Tensor:
    return torch.addmm(b2, a1, column_major(W2, a1.shape[0]))  # (N, C)  eq. (3)


def column_major(W2: Tensor, rows: int) -> Tensor:
    """W2 (H, C) stored column by column when a1 has many rows, on the CPU.

    a1 W2 with few columns C is about 5x faster with W2 in this layout (another BLAS kernel);
    the copy is (H, C), so it pays from about 16 rows.
    """
    if torch.compiler.is_compiling() or W2.device.type != "cpu" or rows < 16 or W2.stride(0) == 1:
        return W2
    return W2.T.contiguous().T  # (H, C)  same values, strides (1, H)


def target_distribution(target: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """y (N, C): the target as a distribution over classes (one-hot for class indices)."""
    if target.is_floating_point():
        return target  # (N, C)
    classes = torch.arange(num_classes, device=target.device)  # (C,)
    return (target.unsqueeze(1) == classes).to(dtype)  # (N, C)  one-hot, vmap-safe


def per_sample_loss(log_probs: Tensor, target: Tensor) -> Tensor:
    """-sum_c y log y_hat for each row: (N,)  eq. (5)."""
    if target.is_floating_point():
        return -(target * log_probs).sum(1)  # (N,)
    # gather checks the class range (device-side on CUDA) and never multiplies 0 by -inf.
    return -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)  # (N,)


def reduce_loss(loss_per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss_per_sample  # (N,)
    total = loss_per_sample.sum()  # ()
    return total * mean_scale(loss_per_sample.shape[0]) if reduction == "mean" else total


def mean_scale(N: int) -> float:
    """The 1/N of the mean; NaN for an empty batch, as F.cross_entropy's 0/0."""
    return 1.0 / N if N > 0 else float("nan")


# ----------------------------------------------------------------------------------------
# Backward formulas (first order, reused by every path)
# ----------------------------------------------------------------------------------------


def softmax_vjp(grad_y_hat: Tensor, y_hat: Tensor) -> Tensor:
    inner = (grad_y_hat * y_hat).sum(1, keepdim=True)  # (N, 1)  sum_c g y_hat
    return y_hat * (grad_y_hat - inner)  # (N, C)  eq. (6)


def loss_grad_logits(log_probs: Tensor, target: Tensor, reduction: str, grad_loss: Tensor | None) -> Tensor:
    """delta2 = dL/dz2 (N, C), eq. (7): (y_hat * sum_c y - y) times the upstream gradient.

    For targets that sum to 1 (class indices, distributions) this is (y_hat - y) / N.
    ``grad_loss`` None: the unit upstream gradient of the summed loss, y_hat * sum_c y - y.
    """
    N, C = log_probs.shape
    y_hat = log_probs.exp()  # (N, C)  eq. (4)
    if target.is_floating_point():
        delta2 = y_hat * target.sum(1, keepdim=True) - target  # (N, C)  eq. (7), general soft targets
    elif backward_is_differentiated():
        delta2 = y_hat - target_distribution(target, C, log_probs.dtype)  # (N, C)  eq. (7), recorded
    else:  # y_hat is ours: subtract the one-hot y in place
        delta2 = y_hat.scatter_(1, target.unsqueeze(1), -1.0, reduce="add")  # (N, C)  eq. (7): y_hat - y
    if grad_loss is None:
        return delta2  # (N, C)
    upstream = grad_loss.unsqueeze(1) if reduction == "none" else grad_loss  # (N, 1) or ()
    scale = mean_scale(N) if reduction == "mean" else 1.0  # the 1/N of the mean
    # out of place: the upstream gradient may be batched (gradcheck's batched-grad vmap) or a subclass
    return delta2 * (upstream if scale == 1.0 else upstream * scale)  # (N, C)  eq. (7): (y_hat - y) / N


def loss_grad_target(log_probs: Tensor, reduction: str, grad_loss: Tensor) -> Tensor:
    """dL/dy (N, C) for probability targets: -log y_hat times the upstream gradient."""
    if reduction == "none":
        return -log_probs * grad_loss.unsqueeze(1)  # (N, C)
    scale = mean_scale(log_probs.shape[0]) if reduction == "mean" else 1.0
    return -log_probs * (grad_loss * scale)  # (N, C)


def backward_from_logits(
    grad_z2: Tensor, x: Tensor, W1: Tensor, W2: Tensor, a1: Tensor, needs: Sequence[bool]
) -> tuple[Tensor | None, ...]:
    """Gradients (dx, dW1, db1, dW2, db2) from delta2 = grad_z2, for those ``needs`` asks."""
    need_x, need_W1, need_b1, need_W2, need_b2 = needs
    grad_x = grad_W1 = grad_b1 = grad_W2 = grad_b2 = None
    if need_W2:
        grad_W2 = (grad_z2.t() @ a1).t()  # (H, C)  eq. (14), as (delta2^T a1)^T: a faster BLAS kernel
    if need_b2:
        grad_b2 = grad_z2.sum(0)  # (C,)  eq. (15)
    if need_x or need_W1 or need_b1:
        grad_a1 = grad_z2 @ W2.t()  # (N, H)  eq. (10)
        if backward_is_differentiated():
            grad_z1 = grad_a1 - grad_a1 * (a1 * a1)  # (N, H)  eq. (11): dL/da1 * (1 - a1^2)
        else:  # grad_a1 is ours: one op fewer
            grad_z1 = grad_a1.addcmul_(grad_a1, a1 * a1, value=-1)  # (N, H)  eq. (11): dL/da1 * (1 - a1^2)
        if need_W1:
            grad_W1 = x.t() @ grad_z1  # (D, H)  eq. (16)
        if need_b1:
            grad_b1 = grad_z1.sum(0)  # (H,)  eq. (17)
        if need_x:
            grad_x = grad_z1 @ W1.t()  # (N, D)  eq. (18)
    return grad_x, grad_W1, grad_b1, grad_W2, grad_b2


def loss_and_gradients(
    x: Tensor, target: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, needs: Sequence[bool]
) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """The summed loss and its gradients (dx, dW1, db1, dW2, db2), in one pass over row chunks.

    Used by the loss's forward when gradients will be needed: the upstream gradient of a
    scalar loss is only a scale, so backward multiplies these by it (and by the 1/N of the
    mean). Two (chunk, H) buffers serve every chunk; nothing of size (N, H) is allocated.
    """
    need_x, need_W1, need_b1, need_W2, need_b2 = needs
    need_delta1 = need_x or need_W1 or need_b1
    N, H = x.shape[0], W1.shape[1]
    if N == 0:  # empty batch: the sum is 0, and so is every gradient
        zero_grads = tuple(torch.zeros_like(t) if n else None for t, n in zip((x, W1, b1, W2, b2), needs))
        return x.new_zeros(()), zero_grads
    rows = min(N, LOSS_CHUNK_ROWS if x.device.type == "cpu" else LOSS_CHUNK_ROWS_ACCELERATOR)
    chunked = rows < N  # one chunk: no slices, no buffers, the fresh tensors are updated in place
    hidden = x.new_empty(rows, H) if chunked else None  # (rows, H)  z1, then a1, then a1^2
    grad_hidden = x.new_empty(rows, H) if chunked and need_delta1 else None  # (rows, H)  dL/da1, then delta1
    grad_x = x.new_empty(x.shape) if need_x and chunked else None  # (N, D)
    W2_cols = column_major(W2, rows)  # (H, C)
    doubled = chunked and _sigmoid_tanh(x, H)  # tanh z1 = 2 sigmoid(2 z1) - 1: double W1, b1 once
    W1_a, b1_a = (W1 * 2, b1 * 2) if doubled else (W1, b1)  # (D, H), (H,)
    loss = grad_W1 = grad_b1 = grad_W2_T = grad_b2 = None
    for start in range(0, N, rows):
        xs, ts = (x[start : start + rows], target[start : start + rows]) if chunked else (x, target)
        n = xs.shape[0]  # xs (n, D), ts (n,) or (n, C)
        buffer = hidden[:n] if chunked else None  # (n, H)
        a1 = hidden_activation_fast(xs, W1_a, b1_a, buffer, doubled=doubled)  # (n, H)  eq. (1), (2)
        log_probs = torch.log_softmax(torch.addmm(b2, a1, W2_cols), 1)  # (n, C)  eq. (3), (4)
        loss = _accumulate(loss, per_sample_loss(log_probs, ts).sum())  # ()  eq. (5), summed over rows
        delta2 = loss_grad_logits(log_probs, ts, "sum", None)  # (n, C)  eq. (7), summed loss
        if need_W2:
            grad_W2_T = _accumulate_mm(grad_W2_T, delta2.t(), a1)  # (C, H)  eq. (14), transposed
        if need_b2:
            grad_b2 = _accumulate(grad_b2, delta2.sum(0))  # (C,)  eq. (15)
        if need_delta1:
            grad_a1 = torch.mm(delta2, W2.t(), out=grad_hidden[:n] if chunked else None)  # (n, H)  eq. (10)
            delta1 = grad_a1.addcmul_(grad_a1, a1.square_(), value=-1)  # (n, H)  eq. (11): dL/da1 (1 - a1^2)
            if need_W1:
                grad_W1 = _accumulate_mm(grad_W1, xs.t(), delta1)  # (D, H)  eq. (16)
            if need_b1:
                grad_b1 = _accumulate(grad_b1, delta1.sum(0))  # (H,)  eq. (17)
            if need_x and chunked:
                torch.mm(delta1, W1.t(), out=grad_x[start : start + n])  # (n, D)  eq. (18)
            elif need_x:
                grad_x = torch.mm(delta1, W1.t())  # (N, D)  eq. (18)
    grad_W2 = None if grad_W2_T is None else grad_W2_T.t()  # (H, C)  eq. (14)
    return loss, (grad_x, grad_W1, grad_b1, grad_W2, grad_b2)


def _accumulate(total: Tensor | None, term: Tensor) -> Tensor:
    return term if total is None else total.add_(term)


def _accumulate_mm(total: Tensor | None, a: Tensor, b: Tensor) -> Tensor:
    return torch.mm(a, b) if total is None else total.addmm_(a, b)


# ----------------------------------------------------------------------------------------
# Forward-mode formulas: the tangent form of eq. (1)-(5)
# ----------------------------------------------------------------------------------------


def _add_tangents(*terms: Tensor | None) -> Tensor | None:
    present = [t for t in terms if t is not None]
    if not present:
        return None
    total = present[0]
    for term in present[1:]:
        total = total + term
    return total


def logits_tangent(x, W1, W2, a1, tx, tW1, tb1, tW2, tb2) -> Tensor | None:
    tz1 = _add_tangents(  # (N, H)  tangent of eq. (1)
        None if tx is None else tx @ W1,
        None if tW1 is None else x @ tW1,
        tb1,
    )
    ta1 = None if tz1 is None else tz1 * (1 - a1 * a1)  # (N, H)  tangent of eq. (2), cf. eq. (11)
    tz2 = _add_tangents(  # (N, C), or (C,) when only b2 has a tangent  tangent of eq. (3)
        None if ta1 is None else ta1 @ W2,
        None if tW2 is None else a1 @ tW2,
        tb2,
    )
    return None if tz2 is None else tz2.expand(a1.shape[0], W2.shape[1])  # (N, C)


def softmax_jvp(tz2: Tensor, y_hat: Tensor) -> Tensor:
    return y_hat * (tz2 - (tz2 * y_hat).sum(1, keepdim=True))  # (N, C)  eq. (6), forward form


# ----------------------------------------------------------------------------------------
# When the backward must itself stay differentiable
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


def _functorch_active() -> bool:
    if torch.compiler.is_compiling():
        return False
    return torch._C._are_functorch_transforms_active()


# ----------------------------------------------------------------------------------------
# Precision policy: every pass computes in the parameters' dtype, even inside autocast
# ----------------------------------------------------------------------------------------


def autocast_enabled(device_type: str) -> bool:
    """True inside ``torch.autocast`` for this device type (devices autocast does not know, e.g. meta: False)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def in_parameter_precision(method: Callable) -> Callable:
    """Run a Function's ``backward`` or ``jvp`` with autocast off for its device.

    Called inside the caller's ``torch.autocast`` region (``loss.backward()`` within the
    ``with``), its matmuls would otherwise run in bfloat16/float16 while the forward ran in the
    parameters' dtype. ``ctx.device_type`` is recorded by ``setup_context``.
    """

    @functools.wraps(method)
    def wrapper(ctx, *grads):
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


# ----------------------------------------------------------------------------------------
# The Functions. The classes without ``jvp`` are used under torch.compile; the subclasses
# with ``jvp`` everywhere else.
# ----------------------------------------------------------------------------------------


class LogitsFunctionNoJvp(Function):
    """z2 = tanh(x W1 + b1) W2 + b2 with a hand-written backward; see :class:`LogitsFunction`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, W1, b1, W2, b2):
        a1 = hidden_activation(x, W1, b1)  # (N, H)  eq. (1), (2)
        z2 = output_logits(a1, W2, b2)  # (N, C)  eq. (3)
        return z2, a1

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, W1, b1, W2, b2 = inputs
        _, a1 = output
        ctx.mark_non_differentiable(a1)
        ctx.set_materialize_grads(False)
        ctx.device_type = x.device.type
        ctx.save_for_backward(x, W1, b1, W2, b2, a1)
        ctx.save_for_forward(x, W1, b1, W2, b2, a1)

    @staticmethod
    @in_parameter_precision
    def backward(ctx, grad_z2, _grad_a1):
        x, W1, b1, W2, b2, a1 = ctx.saved_tensors
        if grad_z2 is None:
            return None, None, None, None, None
        if backward_is_differentiated():
            a1 = hidden_activation(x, W1, b1)  # (N, H)  eq. (1), (2), recorded
        return backward_from_logits(grad_z2, x, W1, W2, a1, ctx.needs_input_grad)


class LogitsFunction(LogitsFunctionNoJvp):
    """Logits Function with forward-mode AD (``jvp``)."""

    @staticmethod
    @in_parameter_precision
    def jvp(ctx, tx, tW1, tb1, tW2, tb2):
        x, W1, _, W2, _, a1 = ctx.saved_tensors
        tz2 = logits_tangent(x, W1, W2, a1, tx, tW1, tb1, tW2, tb2)  # (N, C)
        return tz2, None


class ProbsFunctionNoJvp(Function):
    """y_hat = softmax(z2) with a hand-written backward through the softmax, eq. (6)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, W1, b1, W2, b2):
        a1 = hidden_activation(x, W1, b1)  # (N, H)  eq. (1), (2)
        y_hat = torch.softmax(output_logits(a1, W2, b2), 1)  # (N, C)  eq. (3), (4)
        return y_hat, a1

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, W1, b1, W2, b2 = inputs
        y_hat, a1 = output
        ctx.mark_non_differentiable(a1)
        ctx.set_materialize_grads(False)
        ctx.device_type = x.device.type
        ctx.save_for_backward(x, W1, b1, W2, b2, a1, y_hat)
        ctx.save_for_forward(x, W1, b1, W2, b2, a1, y_hat)

    @staticmethod
    @in_parameter_precision
    def backward(ctx, grad_y_hat, _grad_a1):
        x, W1, b1, W2, b2, a1, y_hat = ctx.saved_tensors
        if grad_y_hat is None:
            return None, None, None, None, None
        if backward_is_differentiated():
            a1 = hidden_activation(x, W1, b1)  # (N, H)  eq. (1), (2), recorded
            y_hat = torch.softmax(output_logits(a1, W2, b2), 1)  # (N, C)  eq. (3), (4), recorded
        grad_z2 = softmax_vjp(grad_y_hat, y_hat)  # (N, C)  eq. (6)
        return backward_from_logits(grad_z2, x, W1, W2, a1, ctx.needs_input_grad)


class ProbsFunction(ProbsFunctionNoJvp):
    """Probabilities Function with forward-mode AD (``jvp``)."""

    @staticmethod
    @in_parameter_precision
    def jvp(ctx, tx, tW1, tb1, tW2, tb2):
        x, W1, _, W2, _, a1, y_hat = ctx.saved_tensors
        tz2 = logits_tangent(x, W1, W2, a1, tx, tW1, tb1, tW2, tb2)  # (N, C)
        return (None if tz2 is None else softmax_jvp(tz2, y_hat)), None


class LossFunctionNoJvp(Function):
    """Cross-entropy of the network's logits with the fused backward delta2 = (y_hat - y)/N, eq. (7).

    ``precompute`` is a tuple of five bools (x, W1, b1, W2, b2) or None. When given (scalar
    reductions only), forward also returns those gradients, computed chunk by chunk, and
    backward scales them; otherwise forward returns the residuals a1 and log y_hat.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, target, W1, b1, W2, b2, reduction, precompute):
        if precompute is not None:
            loss_sum, grads = loss_and_gradients(x, target, W1, b1, W2, b2, precompute)
            loss = loss_sum * mean_scale(x.shape[0]) if reduction == "mean" else loss_sum  # ()  eq. (5)
            return (loss, *grads)
        a1 = hidden_activation_fast(x, W1, b1)  # (N, H)  eq. (1), (2)
        log_probs = torch.log_softmax(output_logits(a1, W2, b2), 1)  # (N, C)  eq. (3), (4)
        loss = reduce_loss(per_sample_loss(log_probs, target), reduction)  # () or (N,)  eq. (5)
        return loss, a1, log_probs

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, target, W1, b1, W2, b2, reduction, precompute = inputs
        residuals = [t for t in output[1:] if t is not None]
        ctx.mark_non_differentiable(*residuals)
        ctx.set_materialize_grads(False)
        ctx.device_type = x.device.type
        ctx.reduction = reduction
        ctx.precomputed = precompute is not None
        ctx.num_residuals = len(output) - 1
        ctx.save_for_backward(x, target, W1, b1, W2, b2, *output[1:])
        ctx.save_for_forward(x, target, W1, b1, W2, b2)

    @staticmethod
    @in_parameter_precision
    def backward(ctx, grad_loss, *_grad_residuals):
        x, target, W1, b1, W2, b2, *residuals = ctx.saved_tensors
        if grad_loss is None:
            return (None,) * 8
        needs = ctx.needs_input_grad
        param_needs = (needs[0], *needs[2:6])
        if ctx.precomputed and not backward_is_differentiated():
            N = x.shape[0]
            scale = grad_loss * (1.0 / N) if ctx.reduction == "mean" and N > 0 else grad_loss  # ()  dL/dL_sum
            scaled = [None if g is None or not n else g * scale for g, n in zip(residuals, param_needs)]
            return scaled[0], None, *scaled[1:], None, None
        if ctx.precomputed or backward_is_differentiated():
            a1 = hidden_activation_fast(x, W1, b1)  # (N, H)  eq. (1), (2), recorded
            log_probs = torch.log_softmax(output_logits(a1, W2, b2), 1)  # (N, C)  eq. (3), (4)
        else:
            a1, log_probs = residuals
        grad_z2 = loss_grad_logits(log_probs, target, ctx.reduction, grad_loss)  # (N, C)  eq. (7)
        grads = backward_from_logits(grad_z2, x, W1, W2, a1, param_needs)
        grad_target = loss_grad_target(log_probs, ctx.reduction, grad_loss) if needs[1] else None
        return grads[0], grad_target, *grads[1:], None, None


class LossFunction(LossFunctionNoJvp):
    """Loss Function with forward-mode AD (``jvp``)."""

    @staticmethod
    @in_parameter_precision
    def jvp(ctx, tx, ttarget, tW1, tb1, tW2, tb2, _treduction, _tprecompute):
        x, target, W1, b1, W2, b2 = ctx.saved_tensors
        a1 = hidden_activation_fast(x, W1, b1)  # (N, H)  eq. (1), (2)
        log_probs = torch.log_softmax(output_logits(a1, W2, b2), 1)  # (N, C)  eq. (3), (4)
        tz2 = logits_tangent(x, W1, W2, a1, tx, tW1, tb1, tW2, tb2)  # (N, C)
        terms = []
        if tz2 is not None:
            ones = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
            delta2 = loss_grad_logits(log_probs, target, "none", ones)  # (N, C)  eq. (7) per sample
            terms.append((delta2 * tz2).sum(1))  # (N,)
        if ttarget is not None:
            terms.append(-(ttarget * log_probs).sum(1))  # (N,)  tangent of eq. (5) in y
        tloss = _add_tangents(*terms)
        if tloss is not None:
            tloss = reduce_loss(tloss, ctx.reduction)
        return (tloss,) + (None,) * ctx.num_residuals


# ----------------------------------------------------------------------------------------
# Public functional API
# ----------------------------------------------------------------------------------------


def _pick(with_jvp: type[Function], without_jvp: type[Function]) -> type[Function]:
    return without_jvp if torch.compiler.is_compiling() else with_jvp


def _apply(function: type[Function], *args):
    """``function.apply(*args)``, without its Python preamble in plain eager mode.

    ``Function.apply`` binds the arguments to ``forward``'s signature with ``inspect`` (about
    20 us, a fifth of a whole training step at N=1) only to fill in default arguments, which
    these forwards do not have; the C++ ``apply`` underneath is the same. Under torch.compile
    and torch.func transforms the public ``apply`` is used.
    """
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return function.apply(*args)
    return super(Function, function).apply(*_functorch_utils.unwrap_dead_wrappers(args))


def _prepare(x: object, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> tuple[Tensor, bool]:
    validation.check_parameters(W1, b1, W2, b2)
    x = validation.require_tensor("x", x)
    autocast = autocast_enabled(x.device.type)
    x = validation.check_input(x, W1, autocast=autocast)
    return x, autocast


def _apply_network(function: type[Function], x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, autocast: bool):
    unbatched = x.dim() == 1
    x2 = x.unsqueeze(0) if unbatched else x  # (N, D)
    if autocast:  # precision policy: manualgrad computes in the parameters' dtype
        with torch.autocast(x.device.type, enabled=False):
            out, _ = _apply(function, x2.to(W1.dtype), W1, b1, W2, b2)
    else:
        out, _ = _apply(function, x2, W1, b1, W2, b2)
    return out.squeeze(0) if unbatched else out


def two_layer_net(x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> Tensor:
    """y_hat = softmax(tanh(x W1 + b1) W2 + b2), eq. (1)-(4), with a hand-written backward.

    x is (N, D) or one unbatched sample (D,); returns (N, C) or (C,).
    """
    x, autocast = _prepare(x, W1, b1, W2, b2)
    return _apply_network(_pick(ProbsFunction, ProbsFunctionNoJvp), x, W1, b1, W2, b2, autocast)


def two_layer_net_logits(x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> Tensor:
    """z2 = tanh(x W1 + b1) W2 + b2, eq. (1)-(3), with a hand-written backward; for any loss."""
    x, autocast = _prepare(x, W1, b1, W2, b2)
    return _apply_network(_pick(LogitsFunction, LogitsFunctionNoJvp), x, W1, b1, W2, b2, autocast)


@contextmanager
def loss_gradients_in_forward(enabled: bool, chunk_rows: int | None = None) -> Iterator[None]:
    """Make the scalar loss compute its gradients in the forward (True) or in backward (False)
    at every batch size, inside the ``with`` block (by default that depends on N,
    ``PRECOMPUTE_MIN_ROWS``), in chunks of ``chunk_rows`` rows if given. For tests and
    ``verify``, which check every way on small batches; not thread-safe.
    """
    global PRECOMPUTE_MIN_ROWS, LOSS_CHUNK_ROWS, LOSS_CHUNK_ROWS_ACCELERATOR
    saved = PRECOMPUTE_MIN_ROWS, LOSS_CHUNK_ROWS, LOSS_CHUNK_ROWS_ACCELERATOR
    PRECOMPUTE_MIN_ROWS = 0 if enabled else sys.maxsize
    if chunk_rows is not None:
        LOSS_CHUNK_ROWS = LOSS_CHUNK_ROWS_ACCELERATOR = chunk_rows
    try:
        yield
    finally:
        PRECOMPUTE_MIN_ROWS, LOSS_CHUNK_ROWS, LOSS_CHUNK_ROWS_ACCELERATOR = saved


def _precompute_mask(x: Tensor, target: Tensor, params: Sequence[Tensor], reduction: str) -> tuple[bool, ...] | None:
    """Which gradients the loss's forward should compute now, or None to defer to backward."""
    if torch.compiler.is_compiling() or _functorch_active():  # first: no guard on the batch size
        return None
    if reduction == "none" or x.shape[0] < PRECOMPUTE_MIN_ROWS or not torch.is_grad_enabled() or target.requires_grad:
        return None
    mask = (x.requires_grad, *(p.requires_grad for p in params))
    return mask if any(mask) else None


def two_layer_net_loss(
    x: Tensor, target: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy of the network's logits, as ``F.cross_entropy(logits, target, reduction=...)``.

    ``target`` is class indices (N,) of an integer dtype, or probabilities (N, C) (soft
    labels). Its backward is the fused eq. (7): dL/dz2 = (y_hat - y) / N for "mean".
    """
    x, autocast = _prepare(x, W1, b1, W2, b2)
    reduction = validation.check_reduction(reduction)
    check_values = x.device.type == "cpu" and not torch.compiler.is_compiling() and not _functorch_active()
    target = validation.check_target(target, x, W1, W2, autocast=autocast, check_values=check_values)
    if not target.is_floating_point():
        target = target.long()
    unbatched = x.dim() == 1
    if unbatched:
        x, target = x.unsqueeze(0), target.unsqueeze(0)  # (1, D), (1,) or (1, C)
    if autocast:  # precision policy: manualgrad computes in the parameters' dtype
        x = x.to(W1.dtype)
        target = target.to(W1.dtype) if target.is_floating_point() else target
    function = _pick(LossFunction, LossFunctionNoJvp)
    precompute = _precompute_mask(x, target, (W1, b1, W2, b2), reduction)
    with torch.autocast(x.device.type, enabled=False) if autocast else nullcontext():
        loss = _apply(function, x, target, W1, b1, W2, b2, reduction, precompute)[0]
    return loss.squeeze(0) if unbatched and reduction == "none" else loss
