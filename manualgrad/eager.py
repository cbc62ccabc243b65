r"""Lean ``torch.autograd.Function``\ s for plain eager mode at small batches.

At a few rows an ATen op costs a few microseconds, and so does every line of Python around it:
a training step of native autograd at N=1 is about fifteen ops and 200 us on the CPU. The
Functions of ``autograd.py`` serve every mode of PyTorch (double backward, forward-mode AD,
``torch.func``, compile, autocast), and asking which mode is in force costs more than the
arithmetic there. These Functions are the same formulas for the one mode most training runs
in, with as few ops and lines as the formulas allow:

* the classic ``forward(ctx, ...)`` form: no ``setup_context`` call, one output, only the tensors
  backward reads are saved;
* eq. (11) as one ``tanh_backward`` op, eq. (6) as one ``_softmax_backward_data`` op, the
  products with a transposed weight of eq. (10), (18) as one ``F.linear`` call each; where the
  plan multiplies a1 by a column-major copy of W2 (``modes.column_major_pays_eager``), eq. (14) is
  (delta2^T a1)^T, a faster BLAS kernel there, else a1^T delta2 in W2's own layout, which
  AccumulateGrad keeps without a copy; at one row the sums over rows of eq. (15), (17) are that
  row, a view of a tensor the backward made (``modes.EagerPlan.one_row``);
* each Function's forward and backward written out in full, the plan's forms chosen in the line
  itself, in PyTorch's skeleton (saved tensors, ``needs_input_grad`` guards, gradients in the
  order of forward's arguments): the three backwards repeat eq. (10)-(18) rather than call one
  helper, because at N=1 every Python call in a step shows (helpers for the forms, the
  first-order formulas and the dead-wrapper test made a logits step 2-3% slower, side by side);
* the loss's eq. (5) and (7) with PyTorch's nll_loss, its backward and the log-softmax backward
  (autograd's own formulas for ``F.cross_entropy``): one op for the loss, two for delta2; rows
  labelled -100 (F.cross_entropy's default ``ignore_index``) count for nothing, and nll_loss
  refuses a label outside [0, C) as it reads them (``functional.py`` then names it, as the general
  path does on the CPU);
* :func:`apply_network` and :func:`apply_loss` call them without ``Function.apply``'s Python
  preamble, and autograd's engine calls their ``backward`` without ``BackwardCFunction.apply``'s
  (:func:`_call_backward_directly`); a tensor left over from a finished ``torch.func`` transform,
  and a vmap-batched upstream gradient, are told by what they lack: storage.

``functional.py`` takes them only when ``modes.plain_eager`` holds (no compile, export, make_fx,
``torch.func``, forward-mode AD, dispatch mode or autocast on CPU, CUDA and most devices) and below the row counts
where the chunked paths of ``autograd.py`` take over. A backward that is recorded
(``create_graph=True``), gets a vmap-batched upstream gradient (gradcheck's batched-grad check;
there ``F.linear`` would run per sample) or runs inside autocast takes the general formulas of
``autograd.py`` instead (:func:`autograd.network_backward`, :func:`autograd.loss_backward`),
which recompute what they need from the saved inputs. Under compiled autograd, dynamo traces these
backwards as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

from . import modes
from .autograd import loss_backward, network_backward, unwrap_if_dead
from .kernels import (
    column_major,
    effective_target,
    hidden_activation_fast,
    loss_grad_logits_fused,
    nll_loss_and_total_weight,
    softmax_vjp_fused,
    tanh_backward,
)
from .modes import EagerPlan

IGNORE_INDEX = -100  # F.cross_entropy's default: rows with this label count for nothing


def _general(backward: Callable[..., tuple[Tensor | None, ...]], x: Tensor, *args: Any) -> tuple[Tensor | None, ...]:
    """``backward(x, *args)``, the general formulas of ``autograd.py``, with autocast off for x's
    device: every pass computes in the parameters' dtype (``modes.in_parameter_precision``)."""
    with torch.autocast(modes.device_type(x), enabled=False):
        return backward(x, *args)


def _fast_backward(grad: Tensor) -> bool:
    """Whether the first-order formulas may run as they are: not recorded, autocast off (for CPU,
    CUDA and most devices: a ``loss.backward()`` inside an autocast region would cast the matmuls)
    and a plain upstream gradient. A vmap-batched one (gradcheck's batched-grad check) is a wrapper
    without storage: one query, cheaper than functorch's two (``modes.is_batched``)."""
    return not (
        torch.is_grad_enabled()
        or type(grad) is not Tensor
        or torch._C._is_any_autocast_enabled()
        or not torch._C._has_storage(grad)
    )


def _sigmoid_hidden(x: Tensor, W1: Tensor, b1: Tensor) -> Tensor:
    return hidden_activation_fast(x, W1, b1, sigmoid_form=True, in_place=True)  # (N, H)  eq. (1)-(2)


# The forwards below pick the plan's forms in the line itself: at N=1 a call costs as much as an op's
# bookkeeping (the forms in a helper each, and the two helpers called: 0.5-1% slower at N=1).


class EagerLogitsFunction(Function):
    """z2 = tanh(x W1 + b1) W2 + b2, eq. (1)-(3); backward eq. (10)-(18). ``plan``: ``modes.EagerPlan``."""

    @staticmethod
    def forward(ctx, x, W1, b1, W2, b2, plan):
        a1 = _sigmoid_hidden(x, W1, b1) if plan.sigmoid_form else torch.addmm(b1, x, W1).tanh_()  # (N, H)  eq. (1)-(2)
        ctx.plan = plan
        ctx.save_for_backward(x, W1, b1, W2, a1)
        return torch.addmm(b2, a1, column_major(W2) if plan.column_major_W2 else W2)  # (N, C)  eq. (3)

    @staticmethod
    def backward(ctx, grad_z2):
        x, W1, b1, W2, a1 = ctx.saved_tensors
        need_x, need_W1, need_b1, need_W2, need_b2, _ = ctx.needs_input_grad
        if not _fast_backward(grad_z2):
            general = _general(partial(network_backward, grad_z2), x, W1, b1, W2, a1, ctx.needs_input_grad[:5])
            return *general, None
        plan = ctx.plan
        grad_x = grad_W1 = grad_b1 = grad_W2 = grad_b2 = None
        if need_W2 and plan.column_major_W2:
            grad_W2 = torch.mm(grad_z2.mT, a1).mT  # (H, C)  eq. (14), as (delta2^T a1)^T: W2's column-major copy
        elif need_W2:
            grad_W2 = torch.mm(a1.mT, grad_z2)  # (H, C)  eq. (14), in W2's own layout
        if need_b2:
            grad_b2 = grad_z2.sum(0)  # (C,)  eq. (15); not a view of the caller's grad_z2: it may still write to it
        if need_x or need_W1 or need_b1:
            grad_z1 = tanh_backward(F.linear(grad_z2, W2), a1)  # (N, H)  eq. (10), (11): (delta2 W2^T) * (1 - a1^2)
            if need_W1:
                grad_W1 = torch.mm(x.mT, grad_z1)  # (D, H)  eq. (16)
            if need_b1:
                grad_b1 = grad_z1[0] if plan.one_row else grad_z1.sum(0)  # (H,)  eq. (17)
            if need_x:
                grad_x = F.linear(grad_z1, W1)  # (N, D)  eq. (18): delta1 W1^T
        return grad_x, grad_W1, grad_b1, grad_W2, grad_b2, None


class EagerProbsFunction(Function):
    """y_hat = softmax(z2), eq. (1)-(4); backward eq. (6), then eq. (10)-(18)."""

    @staticmethod
    def forward(ctx, x, W1, b1, W2, b2, plan):
        a1 = _sigmoid_hidden(x, W1, b1) if plan.sigmoid_form else torch.addmm(b1, x, W1).tanh_()  # (N, H)  eq. (1)-(2)
        z2 = torch.addmm(b2, a1, column_major(W2) if plan.column_major_W2 else W2)  # (N, C)  eq. (3)
        y_hat = torch.softmax(z2, 1)  # (N, C)  eq. (4)
        ctx.plan = plan
        ctx.save_for_backward(x, W1, b1, W2, b2, a1, y_hat)
        return y_hat

    @staticmethod
    def backward(ctx, grad_y_hat):
        x, W1, b1, W2, b2, a1, y_hat = ctx.saved_tensors
        need_x, need_W1, need_b1, need_W2, need_b2, _ = ctx.needs_input_grad
        if not _fast_backward(grad_y_hat):
            general = partial(network_backward, grad_y_hat, b2=b2, y_hat=y_hat)
            return *_general(general, x, W1, b1, W2, a1, ctx.needs_input_grad[:5]), None
        plan = ctx.plan
        grad_x = grad_W1 = grad_b1 = grad_W2 = grad_b2 = None
        grad_z2 = softmax_vjp_fused(grad_y_hat, y_hat)  # (N, C)  eq. (6)
        if need_W2 and plan.column_major_W2:
            grad_W2 = torch.mm(grad_z2.mT, a1).mT  # (H, C)  eq. (14), as (delta2^T a1)^T: W2's column-major copy
        elif need_W2:
            grad_W2 = torch.mm(a1.mT, grad_z2)  # (H, C)  eq. (14), in W2's own layout
        if need_b2:
            grad_b2 = grad_z2[0] if plan.one_row else grad_z2.sum(0)  # (C,)  eq. (15); grad_z2 is ours: a view may do
        if need_x or need_W1 or need_b1:
            grad_z1 = tanh_backward(F.linear(grad_z2, W2), a1)  # (N, H)  eq. (10), (11): (delta2 W2^T) * (1 - a1^2)
            if need_W1:
                grad_W1 = torch.mm(x.mT, grad_z1)  # (D, H)  eq. (16)
            if need_b1:
                grad_b1 = grad_z1[0] if plan.one_row else grad_z1.sum(0)  # (H,)  eq. (17)
            if need_x:
                grad_x = F.linear(grad_z1, W1)  # (N, D)  eq. (18): delta1 W1^T
        return grad_x, grad_W1, grad_b1, grad_W2, grad_b2, None


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
        a1 = _sigmoid_hidden(x, W1, b1) if plan.sigmoid_form else torch.addmm(b1, x, W1).tanh_()  # (N, H)  eq. (1)-(2)
        z2 = torch.addmm(b2, a1, column_major(W2) if plan.column_major_W2 else W2)  # (N, C)  eq. (3)
        log_probs = torch.log_softmax(z2, 1)  # (N, C)  eq. (4), log y_hat
        loss, total_weight = nll_loss_and_total_weight(log_probs, target, reduction, IGNORE_INDEX)  # (), ()  eq. (5)
        ctx.reduction, ctx.plan = reduction, plan
        ctx.save_for_backward(x, target, W1, b1, W2, b2, a1, log_probs, total_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        x, target, W1, b1, W2, b2, a1, log_probs, total_weight = ctx.saved_tensors
        need_x, _, need_W1, need_b1, need_W2, need_b2, _, _ = ctx.needs_input_grad
        if not _fast_backward(grad_loss):  # from a1 and log y_hat; recomputed and recorded if create_graph
            needs, residuals = ctx.needs_input_grad, (a1, log_probs)
            grads = _general_loss_backward(grad_loss, x, target, W1, b1, W2, b2, ctx.reduction, needs, residuals)
            return *grads, None, None
        plan = ctx.plan
        grad_x = grad_W1 = grad_b1 = grad_W2 = grad_b2 = None
        delta2 = loss_grad_logits_fused(  # (N, C)  eq. (7)
            grad_loss, log_probs, target, ctx.reduction, IGNORE_INDEX, total_weight
        )
        if need_W2 and plan.column_major_W2:
            grad_W2 = torch.mm(delta2.mT, a1).mT  # (H, C)  eq. (14), as (delta2^T a1)^T: W2's column-major copy
        elif need_W2:
            grad_W2 = torch.mm(a1.mT, delta2)  # (H, C)  eq. (14), in W2's own layout
        if need_b2:
            grad_b2 = delta2[0] if plan.one_row else delta2.sum(0)  # (C,)  eq. (15); delta2 is ours: a view may do
        if need_x or need_W1 or need_b1:
            grad_z1 = tanh_backward(F.linear(delta2, W2), a1)  # (N, H)  eq. (10), (11): (delta2 W2^T) * (1 - a1^2)
            if need_W1:
                grad_W1 = torch.mm(x.mT, grad_z1)  # (D, H)  eq. (16)
            if need_b1:
                grad_b1 = grad_z1[0] if plan.one_row else grad_z1.sum(0)  # (H,)  eq. (17)
            if need_x:
                grad_x = F.linear(grad_z1, W1)  # (N, D)  eq. (18): delta1 W1^T
        return grad_x, None, grad_W1, grad_b1, grad_W2, grad_b2, None, None


def _call_backward_directly(function: type[Function]) -> None:
    """Let autograd's engine call ``function.backward`` itself. By default it calls the ``apply`` of
    the context's class (``BackwardCFunction.apply``), Python that asks on every backward whether the
    Function defines ``vjp`` or takes boxed gradients, which these never do (about 1.5 us of a step
    at N=1). Set as a class attribute, ``backward`` is a method: ``ctx.apply(*grads)`` is
    ``backward(ctx, *grads)``."""
    backward_class = getattr(function, "_backward_cls", None)  # made for each Function by FunctionMeta
    if backward_class is not None and "apply" not in vars(backward_class):
        backward_class.apply = function.backward


for _function in (EagerLogitsFunction, EagerProbsFunction, EagerLossFunction):
    _call_backward_directly(_function)

_RAW_APPLY: dict[type[Function], Callable[..., Tensor]] = {  # Function.apply without its preamble, looked up once
    function: super(Function, function).apply  # type: ignore[misc]
    for function in (EagerLogitsFunction, EagerProbsFunction, EagerLossFunction)
}


def _unwrap_the_dead(*tensors: Tensor) -> tuple[Tensor, ...]:
    """The tensors, each left over from a finished ``torch.func`` transform (a dead wrapper) unwrapped,
    as ``Function.apply`` does; called where one of them lacks storage, as a wrapper does. The callers
    ask ``torch._C._has_storage`` of each first: cheaper than asking functorch of each (a step at N=1
    is about 200 us). (Not ``data_ptr``, which would copy a lazily cloned tensor.)"""
    return tuple(unwrap_if_dead(t) for t in tensors)


def apply_network(
    function: type[Function], x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, plan: EagerPlan
) -> Tensor:
    """``function.apply(x, W1, b1, W2, b2, plan)`` for ``EagerLogitsFunction`` or ``EagerProbsFunction``,
    in plain eager mode: without ``Function.apply``'s Python preamble, which at a few rows costs as
    much as an op; a tensor left over from a finished ``torch.func`` transform is unwrapped, as it
    does. ``plan``: ``modes.eager_network_plan`` of these tensors."""
    has_storage = torch._C._has_storage  # every tensor has storage: none is a dead wrapper (written out, a call less)
    if has_storage(x) and has_storage(W1) and has_storage(b1) and has_storage(W2) and has_storage(b2):
        return _RAW_APPLY[function](x, W1, b1, W2, b2, plan)
    return _RAW_APPLY[function](*_unwrap_the_dead(x, W1, b1, W2, b2), plan)


def apply_loss(
    x: Tensor, target: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, reduction: object, plan: EagerPlan
) -> Tensor:
    """``EagerLossFunction.apply(...)`` in plain eager mode, as :func:`apply_network`; ``plan``:
    ``modes.eager_loss_plan`` of these tensors."""
    has_storage = torch._C._has_storage
    if (
        has_storage(x)
        and has_storage(target)
        and has_storage(W1)
        and has_storage(b1)
        and has_storage(W2)
        and has_storage(b2)
    ):
        return _RAW_APPLY[EagerLossFunction](x, target, W1, b1, W2, b2, reduction, plan)
    return _RAW_APPLY[EagerLossFunction](*_unwrap_the_dead(x, target, W1, b1, W2, b2), reduction, plan)
