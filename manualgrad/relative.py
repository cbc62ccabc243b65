"""Classes relative to the last, eq. (19)-(21): behind a softmax, the output layer needs C - 1 columns.

A softmax does not change when the same number is added to every logit of a row, so the loss and
the probabilities depend on z2 only through z2 - z2[:, C-1]; the other face of the same fact is
that every row of delta2 = dL/dz2 sums to 0 (eq. (19), docs/derivation.md, "Classes relative to
the last"). On the CPU a product with W2 or with delta2 costs about in proportion to its C
columns, and for the default network (C = 2) these products shrink to one column:

* (20): z2 - z2[:, C-1] = [a1 W2r + b2r, 0] with W2r = W2[:, :C-1] - W2[:, C-1] (H, C - 1) and
  b2r = b2[:C-1] - b2[C-1] (C - 1,): the softmax of these is y_hat, eq. (4);
* (21): delta2 W2^T = delta2r W2r^T with delta2r = delta2[:, :C-1] (n, C - 1), so eq. (10) and
  (16')-(18') take W2r and delta2r in place of W2 and delta2; and the last column of
  dW2 = a1^T delta2, eq. (14), is minus the sum of the others.

Only where delta2 comes through a softmax (the loss, the probabilities), never for the logits,
whose upstream gradient is anything. Used by the row-chunked kernels of ``chunked.py`` on the CPU
(``modes.relative_classes_pay``). Pure tensor functions, like ``kernels.py``; eager mode only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def relative_weights(W2: Tensor) -> Tensor:
    """W2r (H, C - 1): every class's weights minus the last class's, eq. (20)."""
    return W2[:, :-1] - W2[:, -1:]  # (H, C - 1)


def relative_bias(b2: Tensor) -> Tensor:
    """b2r (C - 1,): every class's bias minus the last class's, eq. (20)."""
    return b2[:-1] - b2[-1:]  # (C - 1,)


def relative_output_layer(W2: Tensor, b2: Tensor) -> tuple[Tensor, Tensor] | None:
    """(W2r, b2r), eq. (20), or None where z2 or z2 - z2[:, C-1] could leave the finite numbers: an
    infinite weight or bias, a difference that overflows, or a product a1 W2r + b2r that does (each
    relative logit can be twice a plain one) would give NaN or inf where the softmax of z2 is finite,
    and the other way round. Since |a1| <= 1, |z2_c| <= sum_h |W2_hc| + |b2_c|, and so for the
    relative logits: where both bounds are finite neither form overflows; else the caller takes
    the C classes as they are, with F.cross_entropy's values."""
    W2r, b2r = relative_weights(W2), relative_bias(b2)  # (H, C - 1), (C - 1,)
    bounds = W2r.abs().sum(0) + b2r.abs(), W2.abs().sum(0) + b2.abs()  # (C - 1,), (C,)  |z2r|, |z2| at most
    return (W2r, b2r) if _all_finite(*bounds) else None


def finite_targets(target: Tensor) -> bool:
    """Whether the loss's (effective) targets are finite: class indices are; probabilities with inf or
    NaN give rows of delta2 that do not sum to 0 (eq. (19)), and the loss takes the C classes."""
    return not target.is_floating_point() or _all_finite(target)


def relative_backward(delta2: Tensor, W2: Tensor, y_hat: Tensor) -> tuple[Tensor, Tensor] | None:
    """(delta2 balanced by :func:`balanced_delta` (N, C), W2r (H, C - 1)), eq. (19)-(21), for a delta2
    that came through the softmax y_hat (N, C); or None where delta2 or W2r has a value that is not
    finite (a row with inf or NaN does not sum to 0)."""
    W2r = relative_weights(W2)  # (H, C - 1)
    return (balanced_delta(delta2, y_hat), W2r) if _all_finite(delta2, W2r) else None


def balanced_delta(delta2: Tensor, probabilities: Tensor) -> Tensor:
    """delta2 (n, C) with each row's entry at its most probable class (``probabilities`` or their
    logarithms, (n, C)) made minus the sum of the others, eq. (19). That entry is the one formed with
    cancellation: y_hat - 1 is 0 where y_hat rounds to 1 (a saturated row), and the row's gradient
    survives only in the other entries, which the relative form drops for every class but the last.
    Rebalanced, every entry has digits of its own: a saturated row keeps its gradient (more than
    autograd's float32 does); elsewhere the rebalanced entry carries the rounding of the row's sum,
    an error of the order of the other entries' own."""
    most = probabilities.argmax(1, keepdim=True)  # (n, 1)
    return delta2.scatter_add(1, most, delta2.sum(1, keepdim=True).neg_())  # (n, C)  rows sum to 0


def relative_delta(delta2: Tensor) -> Tensor:
    """delta2r = delta2[:, :C-1] (n, C - 1), eq. (21), contiguous: a product with a strided column
    takes BLAS's slow path (at 2048 rows, H = 500: 2x the time of the whole (n, 2) delta2)."""
    return delta2[:, :-1].contiguous()  # (n, C - 1)


def relative_logits(a1: Tensor, W2r: Tensor, b2r: Tensor, out: Tensor) -> Tensor:
    """z2 - z2[:, C-1] (n, C), eq. (20), into ``out``, whose last column holds 0 and is not written."""
    torch.addmm(b2r, a1, W2r, out=out[:, :-1])  # (n, C - 1)  a1 W2r + b2r
    return out  # (n, C)


def output_weight_gradient(grad_W2r_T: Tensor) -> Tensor:
    """dW2 (H, C) from its first C - 1 columns, transposed, (C - 1, H) = delta2r^T a1: the last
    column is minus the sum of the others, eq. (21)."""
    last = grad_W2r_T.sum(0, keepdim=True).neg_()  # (1, H)  -sum_c<C-1 dW2[:, c]
    return torch.cat((grad_W2r_T, last)).t()  # (H, C)  eq. (14), (21)


def _all_finite(*tensors: Tensor) -> bool:
    """Whether every value is finite, from the tensors' sums (fewer ops than ``isfinite``): a sum of
    finite values that overflows says no too, and the caller takes the C classes, never a wrong value."""
    return math.isfinite(sum(float(t.sum()) for t in tensors))
