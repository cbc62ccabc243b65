"""Fast kernels: the network's formulas as plain functions of tensors, no autograd wiring.

Letters: N batch, D inputs, H hidden units, C classes; equation numbers as in
``docs/derivation.md``. Every function here is a pure tensor computation: it never asks
which mode PyTorch is in. What a kernel must know is passed by its caller, the autograd
wiring in ``functional.py``:

* ``in_place``: whether the kernel may overwrite tensors it created itself (False when the
  backward is being recorded, so that autograd sees out-of-place ops);
* ``sigmoid_form``: whether eq. (2) is evaluated as tanh z1 = 2 sigmoid(2 z1) - 1;
* a W2 given in column-major layout (:func:`column_major`) where that is faster.

The kernels that walk the batch in chunks of rows (the loss with its gradients in the forward,
the probs and logits at large N) are in ``chunked.py``.

The kernels are checked against ``textbook.py`` and against native autograd by the tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .tangents import add_tangents, logits_tangent, softmax_jvp  # noqa: F401  the forward-mode formulas, re-exported

# ----------------------------------------------------------------------------------------
# Forward formulas
# ----------------------------------------------------------------------------------------


def hidden_activation(x: Tensor, W1: Tensor, b1: Tensor) -> Tensor:
    z1 = torch.addmm(b1, x, W1)  # (N, H)  eq. (1)
    return torch.tanh(z1)  # (N, H)  eq. (2)


# -1 as a CPU scalar of the dtypes the sigmoid form runs in (made once): its 2 s - 1 in one pass,
# without the op per call that makes a -1 (at 32 rows: 3.0 us against 5.0, and 4.5 with a -1 of
# another dtype, which the op first converts).
_MINUS_ONE = {dtype: torch.tensor(-1.0, dtype=dtype, device="cpu") for dtype in (torch.float32, torch.float64)}


def minus_one_for(s: Tensor) -> Tensor:
    """-1 as a 0-dim tensor of s's dtype, for ``torch.add(minus_one_for(s), s, alpha=2, out=s)``."""
    kept = _MINUS_ONE.get(s.dtype)
    return s.new_full((), -1.0) if kept is None else kept


def hidden_activation_fast(
    x: Tensor,
    W1: Tensor,
    b1: Tensor,
    out: Tensor | None = None,
    *,
    sigmoid_form: bool,
    in_place: bool,
    doubled: bool = False,
) -> Tensor:
    """a1 = tanh(x W1 + b1) (N, H), eq. (1), (2), for the loss, whose a1 never leaves its Function.

    ``sigmoid_form``: tanh z1 = 2 sigmoid(2 z1) - 1. On the CPU ``torch.tanh`` (MKL's vsTanh)
    costs about 3.5 ns per float32 against 0.5 ns for ``torch.sigmoid``; the same function,
    within 2e-7 absolute in float32 (torch.tanh: 3e-8). The factor 2 is exact and folded into
    the matmul; ``doubled``: W1 and b1 are given already doubled (cheaper for many chunks; implies
    the sigmoid form). ``out``: a buffer to write into, without history. ``in_place``: the
    elementwise steps may overwrite z1 (always so with ``out``).
    """
    recorded = out is None and not in_place
    if not doubled and not sigmoid_form:
        z1 = torch.addmm(b1, x, W1, out=out)  # (N, H)  eq. (1)
        return torch.tanh(z1) if recorded else z1.tanh_()  # (N, H)  eq. (2)
    scale = 1 if doubled else 2
    z1_twice = torch.addmm(b1, x, W1, beta=scale, alpha=scale, out=out)  # (N, H)  2 z1, eq. (1)
    if recorded:
        return torch.sigmoid(z1_twice) * 2.0 - 1.0  # (N, H)  eq. (2): tanh z1 = 2 sigmoid(2 z1) - 1
    s = z1_twice.sigmoid_()  # (N, H)  sigmoid(2 z1), in place on our own tensor
    return torch.add(minus_one_for(s), s, alpha=2, out=s)  # (N, H)  eq. (2): 2 sigmoid(2 z1) - 1


def column_major(W2: Tensor) -> Tensor:
    """W2 (H, C) stored column by column (strides (1, H)); the same values.

    On the CPU a1 W2 with few columns C is about 5x faster in this layout (another BLAS
    kernel); the copy is (H, C), so it pays from about 16 rows of a1.
    """
    if W2.stride(0) == 1:
        return W2  # (H, C)
    H, C = W2.shape
    return W2.new_empty_strided((H, C), (1, H)).copy_(W2)  # (H, C)  two ops, where W2.T.contiguous().T takes four


def output_logits(a1: Tensor, W2: Tensor, b2: Tensor) -> Tensor:
    return torch.addmm(b2, a1, W2)  # (N, C)  eq. (3)


def target_distribution(target: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """y (N, C): the target as a distribution over classes (one-hot for class indices)."""
    if target.is_floating_point():
        return target  # (N, C)
    classes = torch.arange(num_classes, device=target.device)  # (C,)
    return (target.unsqueeze(1) == classes).to(dtype)  # (N, C)  one-hot, vmap-safe


def effective_target(
    target: Tensor,
    num_classes: int,
    dtype: torch.dtype,
    reduction: str,
    *,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
) -> tuple[Tensor, str, Tensor | None]:
    """F.cross_entropy's ``weight``, ``ignore_index`` and ``label_smoothing`` as a target q (N, C).

    The loss of row n is then -sum_c q_nc log y_hat_nc, eq. (5'), and its gradient at the logits
    y_hat * sum_c q - q, eq. (7'): the soft-target formulas every loss path already has. See
    docs/derivation.md, "The whole F.cross_entropy signature". With eps = label_smoothing:

    * probabilities y: q = w * ((1 - eps) y + eps / C); the mean divides by N, as before;
    * class indices t: q_nc = m_n ((1 - eps) w_t [c = t] + eps w_c / C), m_n = 0 for a row
      with t = ignore_index, else 1; the mean divides by the denominator d = sum_n m_n w_t.

    Returns (q, the reduction to apply to -sum_c q log y_hat, a term to add to the loss or None).
    For class indices and "mean", q is divided by d here and summed ("sum"); when d = 0 (every
    row ignored, or an empty batch) the term is NaN, F.cross_entropy's 0/0, whose gradient is 0;
    so it is with label smoothing and no class (C = 0, every label ignore_index), for any reduction.
    Reads no label values: one path for every batch; scatter and gather check the class range.
    """
    eps, C = label_smoothing, num_classes
    smoothing = eps / max(C, 1)  # eps / C (with no class, C = 0, it meets only empty tensors)
    if target.is_floating_point():
        q = target if eps == 0 else target * (1 - eps) + smoothing  # (N, C)  y' = (1 - eps) y + eps / C
        return (q if weight is None else q * weight), reduction, None  # (N, C)  q = w * y'
    if C == 0:
        return _no_class_target(target, dtype, reduction, ignore_index, eps)
    counted = target != ignore_index  # (N,)  m
    index = target.masked_fill(~counted, 0).unsqueeze(1)  # (N, 1)  ignored rows point at class 0 ...
    if weight is None:
        row_weight = counted.to(dtype)  # (N,)  m_n w_t with w = 1
    else:  # ... and weigh 0 there; gather checks the range
        row_weight = torch.where(counted, weight.gather(0, index.squeeze(1)), 0.0)  # (N,)  m_n w_t
    picked = (row_weight * (1 - eps)).unsqueeze(1)  # (N, 1)  (1 - eps) m_n w_t
    q = torch.zeros(target.shape[0], C, dtype=dtype, device=target.device).scatter(1, index, picked)  # (N, C)
    if eps != 0:
        class_weight = torch.ones(C, dtype=dtype, device=target.device) if weight is None else weight  # (C,)
        q = q + torch.where(counted.unsqueeze(1), class_weight * smoothing, 0.0)  # (N, C)  + m_n eps w_c / C
    if reduction != "mean":
        return q, reduction, None
    denominator = row_weight.sum()  # ()  d = sum_n m_n w_t
    q = torch.where(counted.unsqueeze(1), q / denominator, 0.0)  # (N, C)  q / d, ignored rows exactly 0
    nan_if_no_rows = torch.where(denominator == 0, float("nan"), 0.0).to(dtype)  # ()  F's 0/0
    return q, "sum", nan_if_no_rows


def _no_class_target(
    target: Tensor, dtype: torch.dtype, reduction: str, ignore_index: int, eps: float
) -> tuple[Tensor, str, Tensor]:
    """:func:`effective_target` for class indices with no class (C = 0): every label must be
    ``ignore_index``. ``nll_loss`` checks that (on the device, and where traced) and gives 0 for each
    row; those zeros flow into the term, so that no compiler drops the check. q (N, 0); the term is
    F.cross_entropy's 0/0 (NaN) where it has one: the mean (no row counts) and eps * 0 / C."""
    N = target.shape[0]
    zeros = torch.nn.functional.nll_loss(  # (N,)  raises for a label other than ignore_index
        target.new_zeros((N, 0), dtype=dtype), target, ignore_index=ignore_index, reduction="none"
    )
    nan = float("nan") if eps != 0 or reduction == "mean" else 0.0
    term = zeros + nan if reduction == "none" else zeros.sum() + nan  # (N,) or ()
    return zeros.unsqueeze(1)[:, :0], ("sum" if reduction == "mean" else reduction), term


def per_sample_loss(log_probs: Tensor, target: Tensor) -> Tensor:
    """-sum_c y log y_hat for each row: (N,)  eq. (5)."""
    if target.is_floating_point():
        return -(target * log_probs).sum(1)  # (N,)
    # gather checks the class range (device-side on CUDA) and never multiplies 0 by -inf.
    return -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)  # (N,)


def reduce_loss(loss_per_sample: Tensor, reduction: str, num_classes: int = 1) -> Tensor:
    if reduction == "none":
        return loss_per_sample  # (N,)
    total = loss_per_sample.sum()  # ()
    return total * mean_scale(loss_per_sample.shape[0], num_classes) if reduction == "mean" else total


# Reductions in the order of aten's enum (torch.nn._reduction.get_enum); no label equals this index.
_REDUCTION_ENUM = {"none": 0, "mean": 1, "sum": 2}
_NO_LABEL = -(1 << 63)


def cross_entropy_of_log_probs(log_probs: Tensor, target: Tensor, reduction: str) -> Tensor:
    """-sum_c y log y_hat per row, reduced: () or (N,), eq. (5); ``reduce_loss(per_sample_loss(...))``.

    Class indices: one ``nll_loss`` op in place of five (gather, squeeze, neg, sum, scale), which at
    small N cost more than their arithmetic; no label is ignored, and nll_loss checks the range."""
    if target.is_floating_point() or log_probs.shape[1] == 0:
        return reduce_loss(per_sample_loss(log_probs, target), reduction, log_probs.shape[1])
    return torch._C._nn.nll_loss(  # type: ignore[attr-defined]  # not in torch._C stubs
        log_probs, target, None, _REDUCTION_ENUM[reduction], _NO_LABEL
    )


_nll_loss_forward = torch.ops.aten.nll_loss_forward.default  # -> (loss, total weight)
_nll_loss_backward = torch.ops.aten.nll_loss_backward.default


def nll_loss_and_total_weight(
    log_probs: Tensor, target: Tensor, reduction: str, ignore_index: int
) -> tuple[Tensor, Tensor]:
    """The loss, eq. (5), ``reduction`` "mean" or "sum", of class indices (rows labelled
    ``ignore_index`` count for nothing), and the count its mean divides by (the rows that count),
    for :func:`loss_grad_logits_fused`. nll_loss refuses a label outside [0, C) with an IndexError."""
    return _nll_loss_forward(log_probs, target, None, _REDUCTION_ENUM[reduction], ignore_index)  # (), ()


def loss_grad_logits_fused(
    grad_loss: Tensor, log_probs: Tensor, target: Tensor, reduction: str, ignore_index: int, total_weight: Tensor
) -> Tensor:
    """delta2 = dL/dz2 (N, C), eq. (7), times the upstream gradient, for the loss of
    :func:`nll_loss_and_total_weight`: two ops with PyTorch's nll_loss and log_softmax backward
    kernels (autograd's own formulas for ``F.cross_entropy``), the upstream gradient applied first
    as autograd applies it; written out, eq. (7) takes four. Never where autograd records."""
    grad_log_probs = _nll_loss_backward(  # (N, C)  dL/dlog y_hat = -g y / N ("mean") or -g y ("sum")
        grad_loss, log_probs, target, None, _REDUCTION_ENUM[reduction], ignore_index, total_weight
    )
    return torch._log_softmax_backward_data(grad_log_probs, log_probs, 1, log_probs.dtype)  # (N, C)  eq. (7)


def mean_scale(N: int, num_classes: int = 1) -> float:
    """The 1/N of the mean; NaN for an empty batch or no classes, as F.cross_entropy's 0/0."""
    return 1.0 / N if N > 0 and num_classes > 0 else float("nan")


# ----------------------------------------------------------------------------------------
# Backward formulas (first order, reused by every path)
# ----------------------------------------------------------------------------------------


def softmax_vjp(grad_y_hat: Tensor, y_hat: Tensor) -> Tensor:
    inner = (grad_y_hat * y_hat).sum(1, keepdim=True)  # (N, 1)  sum_c g y_hat
    return y_hat * (grad_y_hat - inner)  # (N, C)  eq. (6)


def softmax_vjp_fused(grad_y_hat: Tensor, y_hat: Tensor) -> Tensor:
    """:func:`softmax_vjp` as one op (PyTorch's softmax backward kernel); never where autograd records."""
    return torch._softmax_backward_data(grad_y_hat, y_hat, 1, y_hat.dtype)  # (N, C)  eq. (6)


def loss_grad_logits(
    log_probs: Tensor, target: Tensor, reduction: str, grad_loss: Tensor | None, *, in_place: bool = False
) -> Tensor:
    """delta2 = dL/dz2 (N, C), eq. (7): (y_hat * sum_c y - y) times the upstream gradient.

    For targets that sum to 1 (class indices, distributions) this is (y_hat - y) / N.
    ``grad_loss`` None: the unit upstream gradient of the summed loss, y_hat * sum_c y - y.
    ``in_place``: subtract the one-hot y from the fresh y_hat in place.
    """
    N, C = log_probs.shape
    y_hat = log_probs.exp()  # (N, C)  eq. (4)
    if target.is_floating_point():
        delta2 = y_hat * target.sum(1, keepdim=True) - target  # (N, C)  eq. (7), general soft targets
    elif not in_place:
        delta2 = y_hat - target_distribution(target, C, log_probs.dtype)  # (N, C)  eq. (7), recorded
    else:  # y_hat is ours: subtract the one-hot y in place
        delta2 = y_hat.scatter_(1, target.unsqueeze(1), -1.0, reduce="add")  # (N, C)  eq. (7): y_hat - y
    if grad_loss is None:
        return delta2  # (N, C)
    upstream = grad_loss.unsqueeze(1) if reduction == "none" else grad_loss  # (N, 1) or ()
    if reduction == "mean":  # the 1/N of the mean
        upstream = upstream * mean_scale(N)  # ()
    # out of place: the upstream gradient may be batched (gradcheck's batched-grad vmap) or a subclass
    return delta2 * upstream  # (N, C)  eq. (7): (y_hat - y) / N


def loss_grad_target(log_probs: Tensor, reduction: str, grad_loss: Tensor) -> Tensor:
    """dL/dy (N, C) for probability targets: -log y_hat times the upstream gradient."""
    if reduction == "none":
        return -log_probs * grad_loss.unsqueeze(1)  # (N, C)
    scale = mean_scale(log_probs.shape[0]) if reduction == "mean" else 1.0
    return -log_probs * (grad_loss * scale)  # (N, C)


def backward_from_logits(
    grad_z2: Tensor,
    x: Tensor,
    W1: Tensor,
    W2: Tensor,
    a1: Tensor,
    needs: Sequence[bool],
    *,
    in_place: bool = False,
) -> tuple[Tensor | None, ...]:
    """Gradients (dx, dW1, db1, dW2, db2) from delta2 = grad_z2, for those ``needs`` asks.

    ``in_place``: not recorded, so eq. (11) may run as one fused ``tanh_backward`` op.
    Eq. (14) as (delta2^T a1)^T, a faster BLAS kernel from a few dozen rows. (The lean Functions of
    ``eager.py`` write these formulas out for plain eager mode, and choose eq. (14)'s form per plan.)
    """
    need_x, need_W1, need_b1, need_W2, need_b2 = needs
    grad_x = grad_W1 = grad_b1 = grad_W2 = grad_b2 = None
    if need_W2:
        grad_W2 = torch.mm(grad_z2.t(), a1).t()  # (H, C)  eq. (14), as (delta2^T a1)^T: a faster BLAS kernel
    if need_b2:
        grad_b2 = grad_z2.sum(0)  # (C,)  eq. (15)
    if need_x or need_W1 or need_b1:
        grad_a1 = torch.mm(grad_z2, W2.t())  # (N, H)  eq. (10)
        if in_place:
            grad_z1 = tanh_backward(grad_a1, a1)  # (N, H)  eq. (11): dL/da1 * (1 - a1^2), one op
        else:
            grad_z1 = grad_a1 - grad_a1 * (a1 * a1)  # (N, H)  eq. (11): dL/da1 * (1 - a1^2)
        if need_W1:
            grad_W1 = torch.mm(x.t(), grad_z1)  # (D, H)  eq. (16)
        if need_b1:
            grad_b1 = grad_z1.sum(0)  # (H,)  eq. (17)
        if need_x:
            grad_x = torch.mm(grad_z1, W1.t())  # (N, D)  eq. (18)
    return grad_x, grad_W1, grad_b1, grad_W2, grad_b2


tanh_backward = torch.ops.aten.tanh_backward.default  # (g, a) -> g * (1 - a^2), one pass
