r"""Lean ``torch.autograd.Function``\ s for plain eager mode at small batches.

At a few rows an ATen op costs a few microseconds, and so does every line of Python around it:
a training step of native autograd at N=1 is about fifteen ops and 200 us on the CPU. The
Functions of ``autograd.py`` serve every mode of PyTorch (double backward, forward-mode AD,
``torch.func``, compile, autocast), and asking which mode is in force costs more than the
arithmetic there. These Functions are the same formulas for the one mode most training runs
in, with as few ops and lines as the formulas allow:

* the classic ``forward(ctx, ...)`` form: no ``setup_context`` call, one output, only the tensors
  backward reads are saved;
* eq. (11) as one ``tanh_backward`` op, eq. (6) as one ``_softmax_backward_data`` op; where the
  plan multiplies a1 by a column-major copy of W2 (``modes.column_major_pays_eager``), eq. (14) is
  (delta2^T a1)^T, a faster BLAS kernel there, else a1^T delta2 in W2's own layout, which
  AccumulateGrad keeps without a copy; at one row the sums over rows of eq. (15), (17) are that
  row, a view of a tensor the backward made (``modes.EagerPlan.one_row``);
* the loss's eq. (5) and (7) with PyTorch's nll_loss, its backward and the log-softmax backward
  (autograd's own formulas for ``F.cross_entropy``): one op for the loss, two for delta2; rows
  labelled -100 (F.cross_entropy's default ``ignore_index``) count for nothing, and nll_loss
  refuses a label outside [0, C) as it reads them (``functional.py`` then names it, as the general
  path does on the CPU);
* :func:`apply_network` and :func:`apply_loss` call them without ``Function.apply``'s Python preamble.

``functional.py`` takes them only when ``modes.plain_eager`` holds (no compile, export, make_fx,
``torch.func``, forward-mode AD, dispatch mode or autocast) and below the row counts where the
chunked paths of ``autograd.py`` take over. A backward that is recorded (``create_graph=True``),
gets a vmap-batched upstream gradient (gradcheck's batched-grad check) or runs inside autocast
takes the general formulas of ``autograd.py`` instead (:func:`autograd.network_backward`,
:func:`autograd.loss_backward`), which recompute what they need from the saved inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function

from . import modes
from .autograd import loss_backward, network_backward, unwrap_if_dead
from .kernels import (
    backward_from_logits,
    column_major,
    effective_target,
    hidden_activation_fast,
    loss_grad_logits_fused,
    nll_loss_and_total_weight,
    softmax_vjp_fused,
)
from .modes import EagerPlan

IGNORE_INDEX = -100  # F.cross_entropy's default: rows with this label count for nothing


def _general(backward: Callable[..., tuple[Tensor | None, ...]], x: Tensor, *args: Any) -> tuple[Tensor | None, ...]:
    """``backward(x, *args)``, the general formulas of ``autograd.py``, with autocast off for x's
    device: every pass computes in the parameters' dtype (``modes.in_parameter_precision``)."""
    with torch.autocast(modes.device_type(x), enabled=False):
        return backward(x, *args)


def _fast_backward(grad: Tensor, x: Tensor) -> bool:
    """Whether the first-order formulas may run as they are: not recorded, a plain upstream gradient
    and autocast off (a ``loss.backward()`` inside an autocast region would cast the matmuls)."""
    return not (torch.is_grad_enabled() or modes.is_batched(grad) or torch.is_autocast_enabled(modes.device_type(x)))


def _W2_layout(W2: Tensor, plan: EagerPlan) -> Tensor:
    return column_major(W2) if plan.column_major_W2 else W2  # (H, C)


def _first_order(grad_z2, x, W1, W2, a1, needs, plan: EagerPlan, *, own_grad_z2: bool) -> tuple[Tensor | None, ...]:
    """eq. (10)-(18) from delta2 = grad_z2, first order, in the plan's forms (``modes.EagerPlan``);
    ``own_grad_z2``: grad_z2 was made by this backward, so that at one row db2 may be a view of it
    (never of the caller's upstream gradient, which the caller may still write to)."""
    transposed, one_row = plan.column_major_W2, plan.one_row
    return backward_from_logits(
        grad_z2, x, W1, W2, a1, needs, in_place=True, transposed_W2_product=transposed, one_row=one_row,
        own_grad_z2=own_grad_z2,
    )  # fmt: skip


class EagerLogitsFunction(Function):
    """z2 = tanh(x W1 + b1) W2 + b2, eq. (1)-(3); backward eq. (10)-(18). ``plan``: ``modes.EagerPlan``."""

    @staticmethod
    def forward(ctx, x, W1, b1, W2, b2, plan):
        a1 = hidden_activation_fast(x, W1, b1, sigmoid_form=plan.sigmoid_form, in_place=True)  # (N, H)  eq. (1)-(2)
        ctx.plan = plan
        ctx.save_for_backward(x, W1, b1, W2, a1)
        return torch.addmm(b2, a1, _W2_layout(W2, plan))  # (N, C)  eq. (3)

    @staticmethod
    def backward(ctx, grad_z2):
        x, W1, b1, W2, a1 = ctx.saved_tensors
        needs = ctx.needs_input_grad[:5]
        if not _fast_backward(grad_z2, x):
            return *_general(partial(network_backward, grad_z2), x, W1, b1, W2, a1, needs), None
        grads = _first_order(grad_z2, x, W1, W2, a1, needs, ctx.plan, own_grad_z2=False)  # eq. (10)-(18)
        return *grads, None


class EagerProbsFunction(Function):
    """y_hat = softmax(z2), eq. (1)-(4); backward eq. (6), then eq. (10)-(18)."""

    @staticmethod
    def forward(ctx, x, W1, b1, W2, b2, plan):
        a1 = hidden_activation_fast(x, W1, b1, sigmoid_form=plan.sigmoid_form, in_place=True)  # (N, H)  eq. (1)-(2)
        y_hat = torch.softmax(torch.addmm(b2, a1, _W2_layout(W2, plan)), 1)  # (N, C)  eq. (3), (4)
        ctx.plan = plan
        ctx.save_for_backward(x, W1, b1, W2, b2, a1, y_hat)
        return y_hat

    @staticmethod
    def backward(ctx, grad_y_hat):
        x, W1, b1, W2, b2, a1, y_hat = ctx.saved_tensors
        needs = ctx.needs_input_grad[:5]
        if not _fast_backward(grad_y_hat, x):
            general = partial(network_backward, grad_y_hat, b2=b2, y_hat=y_hat)
            return *_general(general, x, W1, b1, W2, a1, needs), None
        grad_z2 = softmax_vjp_fused(grad_y_hat, y_hat)  # (N, C)  eq. (6)
        grads = _first_order(grad_z2, x, W1, W2, a1, needs, ctx.plan, own_grad_z2=True)  # eq. (10)-(18)
        return *grads, None


def _general_loss_backward(grad_loss, x, target, W1, b1, W2, b2, reduction, needs, residuals):
    """The loss's general backward (:func:`autograd.loss_backward`) with the labels as the effective
    target q of eq. (7'), in which the ignored rows count for nothing (docs/derivation.md)."""
    q, reduction_of_q, _ = effective_target(  # (N, C)
        target, W2.shape[1], W1.dtype, reduction, weight=None, ignore_index=IGNORE_INDEX, label_smoothing=0.0
    )
    return _general(loss_backward, x, q, W1, b1, W2, b2, reduction_of_q, grad_loss, needs, residuals)


class EagerLossFunction(Function):
    """Mean or summed cross-entropy of class indices, eq. (1)-(5), rows labelled ``IGNORE_INDEX``
    left out (the mean divides by the rows that count); backward eq. (7)-(18) from the saved a1 and
    log y_hat, the upstream gradient applied first, as autograd applies it (so that a scaled loss
    in low precision overflows and underflows as autograd's does)."""

    @staticmethod
    def forward(ctx, x, target, W1, b1, W2, b2, reduction, plan):
        a1 = hidden_activation_fast(x, W1, b1, sigmoid_form=plan.sigmoid_form, in_place=True)  # (N, H)  eq. (1)-(2)
        log_probs = torch.log_softmax(torch.addmm(b2, a1, _W2_layout(W2, plan)), 1)  # (N, C)  eq. (3), (4)
        loss, total_weight = nll_loss_and_total_weight(log_probs, target, reduction, IGNORE_INDEX)  # (), ()  eq. (5)
        ctx.reduction, ctx.plan = reduction, plan
        ctx.save_for_backward(x, target, W1, b1, W2, b2, a1, log_probs, total_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        x, target, W1, b1, W2, b2, a1, log_probs, total_weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if not _fast_backward(grad_loss, x):  # from a1 and log y_hat; recomputed and recorded if create_graph
            residuals = (a1, log_probs)
            grads = _general_loss_backward(grad_loss, x, target, W1, b1, W2, b2, ctx.reduction, needs, residuals)
            return *grads, None, None
        delta2 = loss_grad_logits_fused(  # (N, C)  eq. (7)
            grad_loss, log_probs, target, ctx.reduction, IGNORE_INDEX, total_weight
        )
        grad_x, grad_W1, grad_b1, grad_W2, grad_b2 = _first_order(  # eq. (10)-(18)
            delta2, x, W1, W2, a1, (needs[0], *needs[2:6]), ctx.plan, own_grad_z2=True
        )
        return grad_x, None, grad_W1, grad_b1, grad_W2, grad_b2, None, None


_RAW_APPLY: dict[type[Function], Callable[..., Tensor]] = {  # Function.apply without its preamble, looked up once
    function: super(Function, function).apply  # type: ignore[misc]
    for function in (EagerLogitsFunction, EagerProbsFunction, EagerLossFunction)
}


def apply_network(
    function: type[Function], x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, plan: EagerPlan
) -> Tensor:
    """``function.apply(x, W1, b1, W2, b2, plan)`` for ``EagerLogitsFunction`` or ``EagerProbsFunction``,
    in plain eager mode: without ``Function.apply``'s Python preamble, which at a few rows costs as
    much as an op; a tensor left over from a finished ``torch.func`` transform is unwrapped, as it
    does. ``plan``: ``modes.eager_network_plan`` of these tensors."""
    return _RAW_APPLY[function](
        unwrap_if_dead(x), unwrap_if_dead(W1), unwrap_if_dead(b1), unwrap_if_dead(W2), unwrap_if_dead(b2), plan
    )


def apply_loss(
    x: Tensor, target: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, reduction: object, plan: EagerPlan
) -> Tensor:
    """``EagerLossFunction.apply(...)`` in plain eager mode, as :func:`apply_network`; ``plan``:
    ``modes.eager_loss_plan`` of these tensors."""
    apply = _RAW_APPLY[EagerLossFunction]
    return apply(
        unwrap_if_dead(x),
        unwrap_if_dead(target),
        unwrap_if_dead(W1),
        unwrap_if_dead(b1),
        unwrap_if_dead(W2),
        unwrap_if_dead(b2),
        reduction,
        plan,
    )
