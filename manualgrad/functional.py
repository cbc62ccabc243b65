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
* the loss in eager mode computes the parameter gradients during the forward, in chunks of
  rows, when they will be needed (the loss is a scalar, so its upstream gradient is only a
  scale) and saves only parameter-sized tensors;
* double backward (``create_graph=True``), ``torch.func`` transforms and forward-over-reverse:
  the backward recomputes a1 and y_hat from the saved inputs with differentiable ops, so the
  same formulas are differentiated correctly (pytorch issue 58509);
* forward-mode AD: a ``jvp`` with the tangent form of eq. (1)-(5);
* ``torch.func.vmap``: ``generate_vmap_rule = True``;
* ``torch.compile``: Dynamo refuses Functions that define ``jvp``, so under compilation the
  same Functions without ``jvp`` are used.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
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

# Rows of x per chunk when the loss computes gradients in its forward: small enough that the
# (rows, H) temporaries stay in cache, large enough that the per-chunk overhead is negligible.
LOSS_CHUNK_ROWS = 2048


# ----------------------------------------------------------------------------------------
# Forward formulas
# ----------------------------------------------------------------------------------------


def hidden_activation(x: Tensor, W1: Tensor, b1: Tensor) -> Tensor:
    z1 = torch.addmm(b1, x, W1)  # (N, H)  eq. (1)
    return torch.tanh(z1)  # (N, H)  eq. (2)


def output_logits(a1: Tensor, W2: Tensor, b2: Tensor) -> Tensor:
    return torch.addmm(b2, a1, W2)  # (N, C)  eq. (3)


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


def loss_grad_logits(log_probs: Tensor, target: Tensor, reduction: str, grad_loss: Tensor) -> Tensor:
    """delta2 = dL/dz2 (N, C), eq. (7): (y_hat * sum_c y - y) times the upstream gradient.

    For targets that sum to 1 (class indices, distributions) this is (y_hat - y) / N.
    """
    N, C = log_probs.shape
    y_hat = log_probs.exp()  # (N, C)  eq. (4)
    y = target_distribution(target, C, log_probs.dtype)  # (N, C)
    if target.is_floating_point():
        y_hat = y_hat * y.sum(1, keepdim=True)  # (N, C)  general soft targets
    if reduction == "none":
        return (y_hat - y) * grad_loss.unsqueeze(1)  # (N, C)  eq. (7), per-sample upstream
    scale = mean_scale(N) if reduction == "mean" else 1.0
    return (y_hat - y) * (grad_loss * scale)  # (N, C)  eq. (7)


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
        grad_W2 = a1.T @ grad_z2  # (H, C)  eq. (14)
    if need_b2:
        grad_b2 = grad_z2.sum(0)  # (C,)  eq. (15)
    if need_x or need_W1 or need_b1:
        grad_a1 = grad_z2 @ W2.T  # (N, H)  eq. (10)
        grad_z1 = grad_a1 - grad_a1 * (a1 * a1)  # (N, H)  eq. (11): dL/da1 * (1 - a1^2)
        if need_W1:
            grad_W1 = x.T @ grad_z1  # (D, H)  eq. (16)
        if need_b1:
            grad_b1 = grad_z1.sum(0)  # (H,)  eq. (17)
        if need_x:
            grad_x = grad_z1 @ W1.T  # (N, D)  eq. (18)
    return grad_x, grad_W1, grad_b1, grad_W2, grad_b2


def loss_and_gradients(
    x: Tensor, target: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, reduction: str, needs: Sequence[bool]
) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """The scalar loss and its gradients (dx, dW1, db1, dW2, db2) in one pass over row chunks.

    Used by the loss's forward when gradients will be needed: the upstream gradient of a
    scalar loss is only a scale, so backward multiplies these by it. Only (chunk, H)
    temporaries exist at any time.
    """
    N = x.shape[0]
    scale = mean_scale(N) if reduction == "mean" else 1.0
    scaled_one = torch.full((), scale, dtype=x.dtype, device=x.device)
    total = torch.zeros((), dtype=x.dtype, device=x.device)
    sums: list[Tensor | None] = [None] * 5
    grad_x_chunks: list[Tensor] = []
    for start in range(0, N, LOSS_CHUNK_ROWS):
        rows = slice(start, start + LOSS_CHUNK_ROWS)
        xs, ts = x[rows], target[rows]  # (n, D), (n,) or (n, C)
        a1 = hidden_activation(xs, W1, b1)  # (n, H)  eq. (1), (2)
        log_probs = torch.log_softmax(output_logits(a1, W2, b2), 1)  # (n, C)  eq. (3), (4)
        total = total + per_sample_loss(log_probs, ts).sum()  # ()  eq. (5)
        delta2 = loss_grad_logits(log_probs, ts, "sum", scaled_one)  # (n, C)  eq. (7)
        grads = backward_from_logits(delta2, xs, W1, W2, a1, needs)
        if grads[0] is not None:
            grad_x_chunks.append(grads[0])  # (n, D)  eq. (18)
        for i in range(1, 5):
            if grads[i] is not None:
                sums[i] = grads[i] if sums[i] is None else sums[i] + grads[i]
    loss = total * scale  # ()  eq. (5)
    sums[0] = torch.cat(grad_x_chunks) if grad_x_chunks else None
    parameters = (x, W1, b1, W2, b2)
    for i, need in enumerate(needs):
        if need and sums[i] is None:  # empty batch: the gradient is zero
            sums[i] = torch.zeros_like(parameters[i])
    return loss, tuple(sums)


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
        ctx.save_for_backward(x, W1, b1, W2, b2, a1)
        ctx.save_for_forward(x, W1, b1, W2, b2, a1)

    @staticmethod
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
        ctx.save_for_backward(x, W1, b1, W2, b2, a1, y_hat)
        ctx.save_for_forward(x, W1, b1, W2, b2, a1, y_hat)

    @staticmethod
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
            loss, grads = loss_and_gradients(x, target, W1, b1, W2, b2, reduction, precompute)
            return (loss, *grads)
        a1 = hidden_activation(x, W1, b1)  # (N, H)  eq. (1), (2)
        log_probs = torch.log_softmax(output_logits(a1, W2, b2), 1)  # (N, C)  eq. (3), (4)
        loss = reduce_loss(per_sample_loss(log_probs, target), reduction)  # () or (N,)  eq. (5)
        return loss, a1, log_probs

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, target, W1, b1, W2, b2, reduction, precompute = inputs
        residuals = [t for t in output[1:] if t is not None]
        ctx.mark_non_differentiable(*residuals)
        ctx.set_materialize_grads(False)
        ctx.reduction = reduction
        ctx.precomputed = precompute is not None
        ctx.num_residuals = len(output) - 1
        ctx.save_for_backward(x, target, W1, b1, W2, b2, *output[1:])
        ctx.save_for_forward(x, target, W1, b1, W2, b2)

    @staticmethod
    def backward(ctx, grad_loss, *_grad_residuals):
        x, target, W1, b1, W2, b2, *residuals = ctx.saved_tensors
        if grad_loss is None:
            return (None,) * 8
        needs = ctx.needs_input_grad
        param_needs = (needs[0], *needs[2:6])
        if ctx.precomputed and not backward_is_differentiated():
            scaled = tuple(None if g is None or not n else g * grad_loss for g, n in zip(residuals, param_needs))
            return scaled[0], None, *scaled[1:], None, None
        if ctx.precomputed or backward_is_differentiated():
            a1 = hidden_activation(x, W1, b1)  # (N, H)  eq. (1), (2), recorded
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
    def jvp(ctx, tx, ttarget, tW1, tb1, tW2, tb2, _treduction, _tprecompute):
        x, target, W1, b1, W2, b2 = ctx.saved_tensors
        a1 = hidden_activation(x, W1, b1)  # (N, H)  eq. (1), (2)
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


def _autocast_active(x: Tensor) -> bool:
    return torch.is_autocast_enabled(x.device.type)


def _prepare(x: object, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> tuple[Tensor, bool]:
    validation.check_parameters(W1, b1, W2, b2)
    x = validation.require_tensor("x", x)
    autocast = _autocast_active(x)
    x = validation.check_input(x, W1, autocast=autocast)
    return x, autocast


def _apply_network(function: type[Function], x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, autocast: bool):
    unbatched = x.dim() == 1
    x2 = x.unsqueeze(0) if unbatched else x  # (N, D)
    if autocast:  # precision policy: manualgrad computes in the parameters' dtype
        with torch.autocast(x.device.type, enabled=False):
            out, _ = function.apply(x2.to(W1.dtype), W1, b1, W2, b2)
    else:
        out, _ = function.apply(x2, W1, b1, W2, b2)
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


def _precompute_mask(x: Tensor, target: Tensor, params: Sequence[Tensor], reduction: str) -> tuple[bool, ...] | None:
    """Which gradients the loss's forward should compute now, or None to defer to backward."""
    if reduction == "none" or not torch.is_grad_enabled() or target.requires_grad:
        return None
    if torch.compiler.is_compiling() or _functorch_active():
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
        loss = function.apply(x, target, W1, b1, W2, b2, reduction, precompute)[0]
    return loss.squeeze(0) if unbatched and reduction == "none" else loss

