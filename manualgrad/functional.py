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

Three entry points, each backed by its own ``torch.autograd.Function`` (``autograd.py``):
:func:`two_layer_net` (probabilities), :func:`two_layer_net_logits` (z2) and
:func:`two_layer_net_loss` (cross-entropy, whose backward is the fused eq. (7)). In plain eager
mode at small batches, lean Functions with the same formulas serve them (``eager.py``).

Layers, dependencies one way: this file (public entry points, boundary checks through
``validation.py``, decided once per combination of metadata by ``boundary.py``) -> ``eager.py``
(lean Functions of plain eager mode) -> ``autograd.py`` (the Functions: backward, jvp, vmap,
compile variants) -> ``chunked.py`` (the kernels by row chunks, with ``factored.py``) -> ``kernels.py``
(pure tensor functions); ``modes.py`` answers which mode
PyTorch is in and holds the precision policy.
``textbook.py`` is the same mathematics without speed tricks.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, cast

import torch
from torch import Tensor
from torch.autograd import Function

from . import boundary, eager, kernels, modes, validation
from .autograd import (
    LogitsFunction,
    LogitsFunctionNoJvp,
    LossFunction,
    LossFunctionNoJvp,
    ProbsFunction,
    ProbsFunctionNoJvp,
    apply_function,
)
from .kernels import backward_from_logits, loss_grad_logits, softmax_vjp  # noqa: F401  building blocks, for tests
from .modes import loss_gradients_in_forward

__all__ = [
    "two_layer_net",
    "two_layer_net_logits",
    "two_layer_net_loss",
    "loss_gradients_in_forward",
    "ProbsFunction",
    "LogitsFunction",
    "LossFunction",
]


def _pick(with_jvp: type[Function], without_jvp: type[Function]) -> type[Function]:
    return without_jvp if torch.compiler.is_compiling() else with_jvp


def _network(
    lean: type[Function],
    general: tuple[type[Function], type[Function]],
    x: Any,
    W1: Tensor,
    b1: Tensor,
    W2: Tensor,
    b2: Tensor,
) -> Tensor:
    """The network's output through ``lean`` (a Function of ``eager.py``) where the plan says so
    (``modes.eager_network_plan``), else through ``general`` (with and without jvp, :func:`_pick`).
    In plain eager mode (``modes.plain_eager``) the boundary checks and the plan are decided once per
    combination of metadata, one lookup for any N; elsewhere the checks are those of
    ``boundary.prepare_network``. As few Python steps as it can: at N=1 a training step is about
    200 us, and the whole preamble was 20 us of it."""
    if modes.plain_eager(x):
        plan = boundary.network_plan(x, W1, b1, W2, b2)
        if plan.lean:
            return eager.apply_network(lean, x, W1, b1, W2, b2, plan)
        return _apply_network(_pick(*general), x, W1, b1, W2, b2, False)  # plain eager: autocast off
    x, autocast = boundary.prepare_network(x, W1, b1, W2, b2)
    return _apply_network(_pick(*general), x, W1, b1, W2, b2, autocast)


_SCALAR_REDUCTIONS = ("mean", "sum")


def _lean_loss(
    x: Any,
    target: Any,
    W1: Tensor,
    b1: Tensor,
    W2: Tensor,
    b2: Tensor,
    reduction: object,
    weight: object,
    ignore_index: object,
    label_smoothing: object,
) -> Tensor | None:
    """The loss through ``eager.py``'s lean Function, or None where it does not serve: it takes the
    default options and a scalar reduction, under the default loss strategy, in plain eager mode,
    for the tensors ``modes.eager_loss_plan`` says (CPU, float32 or float64, class indices, fewer
    than ``modes.PRECOMPUTE_MIN_ROWS`` rows, asked before the lookup, so that the general path's lookup
    is the only one of a larger call).
    nll_loss checks the labels' range as it reads them; for a label outside [0, C),
    ``validation.check_class_indices`` then says which, as on the general path."""
    defaults = validation.default_loss_options(weight, ignore_index, label_smoothing)
    if not defaults or reduction not in _SCALAR_REDUCTIONS:
        return None  # look-alikes of the defaults (-100.0, a tensor 0) are refused by the general path
    if type(target) is not Tensor or not modes.plain_eager(x) or not modes.default_loss_strategy():
        return None
    if x.dim() > 0 and x.shape[0] >= modes.PRECOMPUTE_MIN_ROWS:
        return None
    plan = boundary.loss_plan(x, target, W1, b1, W2, b2)  # the boundary checks, cached with the plan
    if not plan.lean:
        return None
    try:
        labels = target if target.dtype == torch.int64 else target.long()  # (N,)  .long(): an op even on int64
        return eager.apply_loss(x, labels, W1, b1, W2, b2, reduction, plan)
    except IndexError as error:  # nll_loss: "Target 7 is out of bounds."
        refused = error
    validation.check_class_indices(target, W2.shape[1], eager.IGNORE_INDEX)  # the general path's ValueError
    raise refused


def _apply_network(
    function: type[Function], x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, autocast: bool
) -> Tensor:
    unbatched = x.dim() == 1
    x2 = x.unsqueeze(0) if unbatched else x  # (N, D)
    if autocast:  # precision policy: manualgrad computes in the parameters' dtype
        with torch.autocast(modes.device_type(x), enabled=False):
            out, _ = apply_function(function, x2.to(W1.dtype), W1, b1, W2, b2)
    else:
        out, _ = apply_function(function, x2, W1, b1, W2, b2)
    return cast(Tensor, out.squeeze(0) if unbatched else out)


def two_layer_net(x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> Tensor:
    """Probabilities y_hat = softmax(tanh(x W1 + b1) W2 + b2), eq. (1)-(4), hand-written backward.

    Args:
        x: input, :math:`(N, D)` or one unbatched sample :math:`(D,)`, in the parameters' dtype
            (any floating dtype inside ``torch.autocast``: manualgrad computes in the parameters').
        W1: :math:`(D, H)`. b1: :math:`(H,)`. W2: :math:`(H, C)`. b2: :math:`(C,)`; floating, one
            dtype and device.

    Shape:
        - x: :math:`(N, D)` or :math:`(D,)`. Output: :math:`(N, C)` or :math:`(C,)`.

    Returns:
        y_hat, each row a distribution over the C classes; differentiable in every argument
        (backward eq. (6)-(18), double backward, forward-mode AD, ``torch.func``, ``torch.compile``).

    Example::

        >>> import torch
        >>> from manualgrad import functional
        >>> _ = torch.manual_seed(0)
        >>> W1, b1, W2, b2 = torch.randn(2, 16), torch.zeros(16), torch.randn(16, 3), torch.zeros(3)
        >>> y_hat = functional.two_layer_net(torch.randn(8, 2), W1, b1, W2, b2)
        >>> y_hat.shape, bool(torch.allclose(y_hat.sum(1), torch.ones(8)))
        (torch.Size([8, 3]), True)
    """
    return _network(eager.EagerProbsFunction, (ProbsFunction, ProbsFunctionNoJvp), x, W1, b1, W2, b2)


def two_layer_net_logits(x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> Tensor:
    """Logits z2 = tanh(x W1 + b1) W2 + b2, eq. (1)-(3), with a hand-written backward; for any loss.

    Args:
        x: input, :math:`(N, D)` or one unbatched sample :math:`(D,)`, in the parameters' dtype
            (any floating dtype inside ``torch.autocast``: manualgrad computes in the parameters').
        W1: :math:`(D, H)`. b1: :math:`(H,)`. W2: :math:`(H, C)`. b2: :math:`(C,)`; floating, one
            dtype and device.

    Shape:
        - x: :math:`(N, D)` or :math:`(D,)`. Output: :math:`(N, C)` or :math:`(C,)`.

    Returns:
        z2, differentiable in every argument (backward eq. (10)-(18)).

    Example::

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from manualgrad import functional
        >>> _ = torch.manual_seed(0)
        >>> W1, b1, W2, b2 = torch.randn(2, 16), torch.zeros(16), torch.randn(16, 3), torch.zeros(3)
        >>> z2 = functional.two_layer_net_logits(torch.randn(8, 2), W1, b1, W2, b2)
        >>> F.nll_loss(F.log_softmax(z2, 1), torch.randint(0, 3, (8,))).shape
        torch.Size([])
    """
    return _network(eager.EagerLogitsFunction, (LogitsFunction, LogitsFunctionNoJvp), x, W1, b1, W2, b2)


def two_layer_net_loss(
    x: Tensor,
    target: Tensor,
    W1: Tensor,
    b1: Tensor,
    W2: Tensor,
    b2: Tensor,
    reduction: str = "mean",
    *,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0,  # 0, not 0.0: under compile(dynamic=True) a float default becomes a symbol and a guard
) -> Tensor:
    """Cross-entropy of the network's logits: ``F.cross_entropy(two_layer_net_logits(...), target, ...)``.

    Takes ``F.cross_entropy``'s arguments and gives its values and gradients. Its backward is
    the fused eq. (7): dL/dz2 = (y_hat - y) / N for "mean"; with ``weight``, ``ignore_index`` or
    ``label_smoothing``, the target becomes an effective target q and dL/dz2 = (y_hat sum_c q - q) / d,
    eq. (7') of docs/derivation.md. In eager mode, from ``modes.PRECOMPUTE_MIN_ROWS`` rows, the
    gradients are computed during the forward, in chunks of rows (see :func:`loss_gradients_in_forward`);
    below, plain eager calls with the default options and CPU class indices (rows labelled -100 left out)
    take ``eager.py``'s lean Function.

    Args:
        x: input, :math:`(N, D)` or one unbatched sample :math:`(D,)`, in the parameters' dtype
            (any floating dtype inside ``torch.autocast``: manualgrad computes in the parameters').
        W1: :math:`(D, H)`. b1: :math:`(H,)`. W2: :math:`(H, C)`. b2: :math:`(C,)`; floating, one
            dtype and device.
        target: class indices in [0, C) of an integer dtype, or probabilities (soft labels) in
            the parameters' dtype.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``, as for ``F.cross_entropy``. Default: ``"mean"``
        weight: a rescaling weight per class, :math:`(C,)`, in the parameters' dtype; the mean
            divides by the summed weights of the rows that count (by N for probabilities). For
            class indices it must not require grad (nor does F.cross_entropy differentiate it);
            for probabilities it is differentiated. Default: ``None``
        ignore_index: class-index rows with this label count for nothing, neither in the loss
            nor in the mean's denominator; every row ignored gives NaN for ``"mean"`` (0/0),
            as F.cross_entropy. Only the default with probability targets. Default: -100
        label_smoothing: eps in [0, 1]: the target becomes (1 - eps) y + eps / C. Default: 0.0

    Shape:
        - x: :math:`(N, D)` or :math:`(D,)`. target: :math:`(N,)` or :math:`(N, C)`; :math:`()`
          or :math:`(C,)` for an unbatched x.
        - Output: a scalar, or :math:`(N,)` (:math:`()` unbatched) with ``reduction="none"``.

    Returns:
        The loss, differentiable in x, the parameters and a probability target.

    Example::

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from manualgrad import functional
        >>> _ = torch.manual_seed(0)
        >>> x, target = torch.randn(8, 2), torch.randint(0, 3, (8,))
        >>> W1, b1, W2, b2 = torch.randn(2, 16), torch.zeros(16), torch.randn(16, 3), torch.zeros(3)
        >>> loss = functional.two_layer_net_loss(x, target, W1, b1, W2, b2)
        >>> z2 = functional.two_layer_net_logits(x, W1, b1, W2, b2)
        >>> bool(torch.allclose(loss, F.cross_entropy(z2, target)))
        True
    """
    lean = _lean_loss(x, target, W1, b1, W2, b2, reduction, weight, ignore_index, label_smoothing)
    if lean is not None:
        return lean
    x, target, autocast = boundary.prepare_loss(x, target, W1, b1, W2, b2)
    reduction = validation.check_reduction(reduction)
    check_values = x.is_cpu and not modes.tracing(x)  # else gather checks the range
    weight, label_smoothing = validation.check_loss_options(
        weight, ignore_index, label_smoothing, target, W1, W2, autocast=autocast
    )
    every_row_counts = (  # the labels, read in eager CPU only: else the effective target's gather checks
        check_values
        and not target.is_floating_point()
        and validation.check_class_indices(target, W2.shape[1], ignore_index)
    )
    if not target.is_floating_point():
        target = target.long()
    unbatched = x.dim() == 1
    if unbatched:
        x, target = x.unsqueeze(0), target.unsqueeze(0)  # (1, D), (1,) or (1, C)
    if autocast:  # precision policy: manualgrad computes in the parameters' dtype
        x = x.to(W1.dtype)
        target = target.to(W1.dtype) if target.is_floating_point() else target
    add_to_loss = counted = None
    if not (every_row_counts and weight is None and label_smoothing == 0.0):  # else the labels as they are
        if reduction == "none" and not target.is_floating_point():
            counted = target != ignore_index  # (N,)  the rows whose loss the mask below keeps
        target, reduction_of_q, add_to_loss = kernels.effective_target(
            target, W2.shape[1], W1.dtype, reduction,
            weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
        )  # fmt: skip
    else:
        reduction_of_q = reduction
    function = _pick(LossFunction, LossFunctionNoJvp)
    precompute = modes.gradients_in_forward(x, target, (W1, b1, W2, b2), reduction_of_q)
    with torch.autocast(modes.device_type(x), enabled=False) if autocast else nullcontext():
        loss = apply_function(function, x, target, W1, b1, W2, b2, reduction_of_q, precompute)[0]
    if counted is not None:  # an ignored row: its loss is 0 (q = 0 there), and its gradient exactly 0 whatever
        # flows back to it (an inf from a count of 0 would make (y_hat sum q - q) g NaN): nll_loss never reads it
        loss = torch.where(counted, loss, 0.0)  # (N,)
    if add_to_loss is not None:  # NaN, as F.cross_entropy's 0/0, when no row counts (the mean) or no class
        loss = loss + add_to_loss  # () or (N,)  (label smoothing), ignored rows included
    return cast(Tensor, loss.squeeze(0) if unbatched and reduction == "none" else loss)
