r"""The network's hand-derived Functions, as a learner should first read them.

Letters: N batch, D inputs, H hidden units, C classes. Row vectors: z1 = x W1 + b1. Equation
numbers are those of docs/derivation.md: (1)-(4) forward, (5) loss, (6)-(18) backward. No speed
tricks: manualgrad.functional is the fast version, and the tests hold it equal to this file.

Double backward (``create_graph=True``, gradgradcheck, Hessian-vector products): each backward
recomputes a1 and y_hat from the saved *inputs* with ordinary torch ops. When autograd records a
backward, that record then reaches back to x, W1, b1, W2, b2, and the formulas themselves get
differentiated. Saving an intermediate such as a1 from forward (where autograd records nothing)
would cut the record: a second derivative would silently lose every term that flows through it.
The price is one extra forward per backward. The alternative, ``@once_differentiable`` on
backward, skips that pass but gives up second derivatives: a double backward raises, or for a loss
whose upstream gradient is a constant 1 it silently drops terms (examples/write_your_own_function.py,
step 4): no Hessian-vector products, no gradient penalties, no gradgradcheck.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

__all__ = ["two_layer_net", "two_layer_net_logits", "two_layer_net_loss"]


def hidden(x: Tensor, W1: Tensor, b1: Tensor) -> Tensor:
    z1 = x @ W1 + b1  # (N, D)(D, H) + (H,) = (N, H)  eq. (1)
    return torch.tanh(z1)  # a1 (N, H)  eq. (2)


def backward_from_z2(grad_z2, x, W1, W2, a1, needs):
    """Gradients (x, W1, b1, W2, b2) from delta2 = dL/dz2 (N, C), eq. (8)-(18)."""
    need_x, need_W1, need_b1, need_W2, need_b2 = needs
    grad_x = grad_W1 = grad_b1 = grad_W2 = grad_b2 = None
    if need_W2:
        grad_W2 = a1.T @ grad_z2  # (H, N)(N, C) = (H, C)  eq. (8), (14)
    if need_b2:
        grad_b2 = grad_z2.sum(0)  # 1^T delta2: (1, C), flattened to (C,)  eq. (9), (15)
    if need_x or need_W1 or need_b1:
        grad_a1 = grad_z2 @ W2.T  # (N, C)(C, H) = (N, H)  eq. (10)
        grad_z1 = grad_a1 * (1 - a1 * a1)  # delta1 (N, H), elementwise: tanh' = 1 - a1^2  eq. (11)
        if need_W1:
            grad_W1 = x.T @ grad_z1  # (D, N)(N, H) = (D, H)  eq. (12), (16)
        if need_b1:
            grad_b1 = grad_z1.sum(0)  # 1^T delta1: (1, H), flattened to (H,)  eq. (13), (17)
        if need_x:
            grad_x = grad_z1 @ W1.T  # (N, H)(H, D) = (N, D)  eq. (18)
    return grad_x, grad_W1, grad_b1, grad_W2, grad_b2


class Logits(Function):
    """z2 = tanh(x W1 + b1) W2 + b2, eq. (1)-(3); backward receives delta2 = dL/dz2."""

    @staticmethod
    def forward(x, W1, b1, W2, b2):
        return hidden(x, W1, b1) @ W2 + b2  # z2 (N, H)(H, C) + (C,) = (N, C)  eq. (3)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)  # the inputs only: backward recomputes a1 from them

    @staticmethod
    def backward(ctx, grad_z2):
        x, W1, b1, W2, b2 = ctx.saved_tensors
        a1 = hidden(x, W1, b1)  # (N, H)  eq. (1), (2), recomputed: differentiable
        return backward_from_z2(grad_z2, x, W1, W2, a1, ctx.needs_input_grad)


class Probs(Function):
    """y_hat = softmax(z2), eq. (1)-(4); backward receives g = dL/dy_hat and applies eq. (6)."""

    @staticmethod
    def forward(x, W1, b1, W2, b2):
        return torch.softmax(hidden(x, W1, b1) @ W2 + b2, 1)  # y_hat (N, C)  eq. (3), (4)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)  # the inputs only: backward recomputes a1 and y_hat

    @staticmethod
    def backward(ctx, grad_y_hat):
        x, W1, b1, W2, b2 = ctx.saved_tensors
        a1 = hidden(x, W1, b1)  # (N, H)  eq. (1), (2), recomputed
        y_hat = torch.softmax(a1 @ W2 + b2, 1)  # (N, C)  eq. (3), (4), recomputed
        inner = (grad_y_hat * y_hat).sum(1, keepdim=True)  # (N, 1)  sum_c g_c y_hat_c
        grad_z2 = y_hat * (grad_y_hat - inner)  # (N, C)  eq. (6): J^T g, J = diag(y_hat) - y_hat y_hat^T
        return backward_from_z2(grad_z2, x, W1, W2, a1, ctx.needs_input_grad)


def target_distribution(target: Tensor, C: int, dtype: torch.dtype) -> Tensor:
    """y (N, C): probability targets as given, class indices as one-hot rows."""
    return target if target.is_floating_point() else F.one_hot(target, C).to(dtype)  # (N, C)


class Loss(Function):
    """Cross-entropy of the logits, eq. (1)-(5); backward starts at the fused delta2, eq. (7)."""

    @staticmethod
    def forward(x, target, W1, b1, W2, b2, reduction):
        log_y_hat = torch.log_softmax(hidden(x, W1, b1) @ W2 + b2, 1)  # (N, C)  eq. (3), (4), as a log
        y = target_distribution(target, W2.shape[1], x.dtype)  # (N, C)
        loss = -(y * log_y_hat).sum(1)  # (N,)  eq. (5), per sample
        if reduction == "none":
            return loss  # (N,)
        return loss.sum() / x.shape[0] if reduction == "mean" else loss.sum()  # ()  eq. (5)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, target, W1, b1, W2, b2, reduction = inputs
        ctx.reduction = reduction  # a string, not a tensor: a ctx attribute
        ctx.save_for_backward(x, target, W1, b1, W2, b2)

    @staticmethod
    def backward(ctx, grad_loss):
        x, target, W1, b1, W2, b2 = ctx.saved_tensors
        a1 = hidden(x, W1, b1)  # (N, H)  eq. (1), (2), recomputed
        log_y_hat = torch.log_softmax(a1 @ W2 + b2, 1)  # (N, C)  eq. (3), (4), recomputed
        y = target_distribution(target, W2.shape[1], x.dtype)  # (N, C)
        if ctx.reduction == "none":
            upstream = grad_loss[:, None]  # (N, 1): one upstream gradient per sample
        else:
            upstream = grad_loss / x.shape[0] if ctx.reduction == "mean" else grad_loss  # (): the 1/N of the mean
        # eq. (7): y_hat * sum_c y - y, which is y_hat - y when rows of y sum to 1 (indices, distributions)
        grad_z2 = (log_y_hat.exp() * y.sum(1, keepdim=True) - y) * upstream  # delta2 (N, C)  eq. (7)
        needs = ctx.needs_input_grad
        grad_x, *grad_params = backward_from_z2(grad_z2, x, W1, W2, a1, (needs[0], *needs[2:6]))
        grad_target = -log_y_hat * upstream if needs[1] else None  # (N, C)  d(5)/dy, probability targets
        return grad_x, grad_target, *grad_params, None  # in the order of forward's inputs


def check_shapes(x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> None:
    """Minimal checks: anything that would broadcast into a wrong answer raises instead."""
    shapes = tuple(tuple(t.shape) for t in (W1, b1, W2, b2))
    if W1.dim() != 2 or W2.dim() != 2 or shapes[1:] != ((W1.shape[1],), (W1.shape[1], W2.shape[1]), (W2.shape[1],)):
        raise ValueError(f"W1, b1, W2, b2 must have shapes (D, H), (H,), (H, C), (C,), got {shapes}")
    if x.dim() != 2 or x.shape[1] != W1.shape[0]:
        raise ValueError(f"x must have shape (N, {W1.shape[0]}), got {tuple(x.shape)}")


def two_layer_net(x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> Tensor:
    """Probabilities y_hat (N, C) = softmax(tanh(x W1 + b1) W2 + b2) for x (N, D)."""
    check_shapes(x, W1, b1, W2, b2)
    return Probs.apply(x, W1, b1, W2, b2)


def two_layer_net_logits(x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> Tensor:
    """Logits z2 (N, C) = tanh(x W1 + b1) W2 + b2 for x (N, D), for any loss."""
    check_shapes(x, W1, b1, W2, b2)
    return Logits.apply(x, W1, b1, W2, b2)


def two_layer_net_loss(
    x: Tensor, target: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, reduction: str = "mean"
) -> Tensor:
    """``F.cross_entropy(z2, target, reduction=...)``: target class indices (N,) or probabilities (N, C)."""
    check_shapes(x, W1, b1, W2, b2)
    N, C = x.shape[0], W2.shape[1]
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    expected = (N, C) if target.is_floating_point() else (N,)
    if tuple(target.shape) != expected or target.dtype == torch.bool or target.is_complex():
        got = f"{tuple(target.shape)} {target.dtype}"
        raise ValueError(f"target must be class indices ({N},) or probabilities ({N}, {C}), got {got}")
    target = target if target.is_floating_point() else target.long()  # F.one_hot rejects indices outside [0, C)
    return Loss.apply(x, target, W1, b1, W2, b2, reduction)
