r"""The ``torch.autograd.Function``\ s PyTorch sees, wired to the kernels of ``kernels.py``.

The equations are in ``functional.py``'s docstring and ``docs/derivation.md``; the choices
that depend on PyTorch's mode are made by ``modes.py`` and passed to the kernels as
arguments. How each mode of PyTorch is served:

* first-order backward: the hand-derived formulas, from tensors saved in forward, no autograd;
* the loss in eager mode, from ``modes.PRECOMPUTE_MIN_ROWS`` rows, computes the parameter gradients
  during the forward, in chunks of rows, when they will be needed (the loss is a scalar, so
  its upstream gradient is only a scale) and saves only parameter-sized tensors; the chunks
  reuse one or two (chunk, H) buffers (``chunked.py``). Smaller batches, in plain eager mode,
  are served by the lean Functions of ``eager.py``; elsewhere they save a1 and log y_hat, as
  probs and logits do;
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

import torch
from torch import Tensor
from torch.autograd import Function

from . import modes
from .chunked import backward_from_logits_chunked, loss_and_gradients, network_output_chunked
from .kernels import (
    backward_from_logits,
    column_major,
    cross_entropy_of_log_probs,
    hidden_activation,
    hidden_activation_fast,
    loss_grad_logits,
    loss_grad_target,
    mean_scale,
    output_logits,
    reduce_loss,
    softmax_vjp,
)
from .modes import backward_is_differentiated, in_parameter_precision
from .tangents import add_tangents, logits_tangent, softmax_jvp

# ----------------------------------------------------------------------------------------
# The Functions. The classes without ``jvp`` are used under torch.compile; the subclasses
# with ``jvp`` everywhere else. ``in_parameter_precision`` is applied to backward and jvp by
# assignment after each, not as a decorator: the same object, but mutmut (mutation/README.md)
# mutates only undecorated bodies.
# ----------------------------------------------------------------------------------------


def _W2_for(W2: Tensor, rows: int) -> Tensor:
    """W2 (H, C) in the layout a1 (rows, H) W2 is fastest with."""
    return column_major(W2) if modes.column_major_pays(W2, rows) else W2


def _loss_forward(
    x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, *, in_place: bool
) -> tuple[Tensor, Tensor]:
    """a1 (N, H) and log y_hat (N, C), eq. (1)-(4), as the loss computes them."""
    sigmoid_form = modes.sigmoid_tanh_pays(x, W1.shape[1])
    a1 = hidden_activation_fast(x, W1, b1, sigmoid_form=sigmoid_form, in_place=in_place)  # (N, H)  eq. (1), (2)
    log_probs = torch.log_softmax(output_logits(a1, _W2_for(W2, x.shape[0]), b2), 1)  # (N, C)  eq. (3), (4)
    return a1, log_probs


def _hidden_activation_forward(x: Tensor, W1: Tensor, b1: Tensor) -> Tensor:
    """a1 (N, H), eq. (1), (2), as the probs and logits forwards keep it: in the sigmoid form where
    that pays (eager CPU), in place on z1 where nothing records."""
    return hidden_activation_fast(
        x, W1, b1, sigmoid_form=modes.sigmoid_tanh_pays(x, W1.shape[1]), in_place=not backward_is_differentiated()
    )


def _network_chunked(x, W1, b1, W2, b2, *, probabilities: bool) -> tuple[Tensor, Tensor | None]:
    """z2 or y_hat (N, C) by row chunks, and a1 (N, H) where it is kept for backward (below
    ``modes.KEEP_A1_BELOW_ROWS`` rows), else None: then nothing of size (N, H); eager mode only."""
    rows = modes.network_chunk_rows(x.device)
    a1 = x.new_empty(x.shape[0], W1.shape[1]) if modes.keeps_a1(x) else None  # (N, H)
    out = network_output_chunked(
        x,
        W1,
        b1,
        W2,
        b2,
        chunk_rows=rows,
        sigmoid_form=modes.sigmoid_tanh_pays(x, W1.shape[1]),
        column_major_W2=modes.column_major_pays(W2, min(x.shape[0], rows)),
        probabilities=probabilities,
        a1_out=a1,
        relative=probabilities and modes.relative_classes_pay(x, W2),
    )
    return out, a1


def _backward_from_logits(grad_z2, x, W1, b1, W2, a1, needs, differentiated, y_hat) -> tuple[Tensor | None, ...]:
    """Gradients (dx, dW1, db1, dW2, db2) from delta2 = grad_z2, eq. (10)-(18), for probs and logits;
    ``y_hat`` given: grad_z2 came through that softmax, eq. (6), and its rows sum to 0, eq. (19).

    ``differentiated`` (double backward, torch.func): a1 was recomputed by the caller with
    differentiable ops, and the formulas are recorded. First order: from the saved a1; after the
    chunked forward, chunk by chunk (``chunked.py``) from the a1 it kept, or recomputing it.
    """
    if differentiated:
        return backward_from_logits(grad_z2, x, W1, W2, a1, needs, in_place=False)
    chunked_forward = a1 is None or modes.network_in_chunks(x)
    if chunked_forward and modes.is_batched(grad_z2):  # vmap over the backward (batched gradcheck): no out= there
        a1 = hidden_activation(x, W1, b1) if a1 is None else a1  # (N, H)  eq. (1), (2)
    elif chunked_forward:
        return backward_from_logits_chunked(
            grad_z2,
            x,
            W1,
            b1,
            W2,
            needs,
            chunk_rows=modes.network_chunk_rows(x.device),
            sigmoid_form=modes.sigmoid_tanh_pays(x, W1.shape[1]),
            a1=a1,
            factored=modes.factored_first_layer_pays(x, W2),
            y_hat=y_hat if modes.relative_classes_pay(x, W2) else None,
        )
    return backward_from_logits(grad_z2, x, W1, W2, a1, needs, in_place=True)


def network_backward(grad_out, x, W1, b1, W2, a1, needs, *, b2=None, y_hat=None) -> tuple[Tensor | None, ...]:
    """Gradients (dx, dW1, db1, dW2, db2) from the upstream gradient of z2, or of y_hat when ``y_hat``
    is given, eq. (6), (10)-(18). A recorded backward (double backward, torch.func) recomputes a1
    and y_hat from the inputs with differentiable ops, so that its formulas are differentiated
    correctly (pytorch issue 58509). Also the general backward of ``eager.py``'s Functions."""
    differentiated = backward_is_differentiated()
    if differentiated:
        a1 = hidden_activation(x, W1, b1)  # (N, H)  eq. (1), (2), recorded
        if y_hat is not None:
            y_hat = torch.softmax(output_logits(a1, _W2_for(W2, x.shape[0]), b2), 1)  # (N, C)  eq. (3), (4), recorded
    grad_z2 = grad_out if y_hat is None else softmax_vjp(grad_out, y_hat)  # (N, C)  eq. (6)
    return _backward_from_logits(grad_z2, x, W1, b1, W2, a1, needs, differentiated, y_hat)


def loss_backward(x, target, W1, b1, W2, b2, reduction, grad_loss, needs, residuals=None) -> tuple[Tensor | None, ...]:
    """Gradients (dx, dtarget, dW1, db1, dW2, db2) of the loss, eq. (7)-(18), from the residuals
    (a1, log y_hat) when given, else recomputed from the inputs (recorded when the backward is
    differentiated). Also the general backward of ``eager.py``'s loss Function."""
    differentiated = backward_is_differentiated()
    if residuals is None or differentiated:
        a1, log_probs = _loss_forward(x, W1, b1, W2, b2, in_place=not differentiated)
    else:
        a1, log_probs = residuals
    in_place = not differentiated
    grad_z2 = loss_grad_logits(log_probs, target, reduction, grad_loss, in_place=in_place)  # (N, C)  eq. (7)
    grads = backward_from_logits(grad_z2, x, W1, W2, a1, (needs[0], *needs[2:6]), in_place=in_place)
    grad_target = loss_grad_target(log_probs, reduction, grad_loss) if needs[1] else None
    return grads[0], grad_target, *grads[1:]


class LogitsFunctionNoJvp(Function):
    """z2 = tanh(x W1 + b1) W2 + b2 with a hand-written backward; see :class:`LogitsFunction`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, W1, b1, W2, b2):
        if modes.network_in_chunks(x):  # eager, many rows: by row chunks, a1 kept or recomputed in backward
            return _network_chunked(x, W1, b1, W2, b2, probabilities=False)  # (N, C)  eq. (1)-(3), a1 or None
        a1 = _hidden_activation_forward(x, W1, b1)  # (N, H)  eq. (1), (2)
        z2 = output_logits(a1, _W2_for(W2, x.shape[0]), b2)  # (N, C)  eq. (3)
        return z2, a1

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, W1, b1, W2, b2 = inputs
        _, a1 = output
        if a1 is not None:
            ctx.mark_non_differentiable(a1)
        ctx.set_materialize_grads(False)
        ctx.device_type = modes.device_type(x)
        ctx.save_for_backward(x, W1, b1, W2, b2, a1)
        ctx.save_for_forward(x, W1, b1, W2, b2, a1)

    @staticmethod
    def backward(ctx, grad_z2, _grad_a1):
        x, W1, b1, W2, b2, a1 = ctx.saved_tensors
        if grad_z2 is None:
            return None, None, None, None, None
        return network_backward(grad_z2, x, W1, b1, W2, a1, ctx.needs_input_grad)

    backward = staticmethod(in_parameter_precision(backward.__func__))  # type: ignore[attr-defined]


class LogitsFunction(LogitsFunctionNoJvp):
    """Logits Function with forward-mode AD (``jvp``)."""

    @staticmethod
    def jvp(ctx, tx, tW1, tb1, tW2, tb2):
        x, W1, b1, W2, _, a1 = ctx.saved_tensors
        if a1 is None:  # not kept by the chunked forward
            a1 = hidden_activation(x, W1, b1)  # (N, H)  eq. (1), (2)
        tz2 = logits_tangent(x, W1, W2, a1, tx, tW1, tb1, tW2, tb2)  # (N, C)
        return tz2, None

    jvp = staticmethod(in_parameter_precision(jvp.__func__))  # type: ignore[attr-defined]


class ProbsFunctionNoJvp(Function):
    """y_hat = softmax(z2) with a hand-written backward through the softmax, eq. (6)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, W1, b1, W2, b2):
        if modes.network_in_chunks(x):  # eager, many rows: by row chunks, a1 kept or recomputed in backward
            return _network_chunked(x, W1, b1, W2, b2, probabilities=True)  # (N, C)  eq. (1)-(4), a1 or None
        a1 = _hidden_activation_forward(x, W1, b1)  # (N, H)  eq. (1), (2)
        y_hat = torch.softmax(output_logits(a1, _W2_for(W2, x.shape[0]), b2), 1)  # (N, C)  eq. (3), (4)
        return y_hat, a1

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, W1, b1, W2, b2 = inputs
        y_hat, a1 = output
        if a1 is not None:
            ctx.mark_non_differentiable(a1)
        ctx.set_materialize_grads(False)
        ctx.device_type = modes.device_type(x)
        ctx.save_for_backward(x, W1, b1, W2, b2, a1, y_hat)
        ctx.save_for_forward(x, W1, b1, W2, b2, a1, y_hat)

    @staticmethod
    def backward(ctx, grad_y_hat, _grad_a1):
        x, W1, b1, W2, b2, a1, y_hat = ctx.saved_tensors
        if grad_y_hat is None:
            return None, None, None, None, None
        return network_backward(grad_y_hat, x, W1, b1, W2, a1, ctx.needs_input_grad, b2=b2, y_hat=y_hat)

    backward = staticmethod(in_parameter_precision(backward.__func__))  # type: ignore[attr-defined]


class ProbsFunction(ProbsFunctionNoJvp):
    """Probabilities Function with forward-mode AD (``jvp``)."""

    @staticmethod
    def jvp(ctx, tx, tW1, tb1, tW2, tb2):
        x, W1, b1, W2, _, a1, y_hat = ctx.saved_tensors
        if a1 is None:  # not kept by the chunked forward
            a1 = hidden_activation(x, W1, b1)  # (N, H)  eq. (1), (2)
        tz2 = logits_tangent(x, W1, W2, a1, tx, tW1, tb1, tW2, tb2)  # (N, C)
        return (None if tz2 is None else softmax_jvp(tz2, y_hat)), None

    jvp = staticmethod(in_parameter_precision(jvp.__func__))  # type: ignore[attr-defined]


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
            factored = modes.factored_first_layer_pays(x, W2)
            rows = modes.chunk_rows(x.device, factored)
            loss_sum, grads = loss_and_gradients(
                x,
                target,
                W1,
                b1,
                W2,
                b2,
                precompute,
                chunk_rows=rows,
                sigmoid_form=modes.sigmoid_tanh_pays(x, W1.shape[1]),
                column_major_W2=modes.column_major_pays(W2, min(x.shape[0], rows)),
                factored=factored,
                relative=modes.relative_classes_pay(x, W2),
            )
            loss = loss_sum * mean_scale(x.shape[0], W2.shape[1]) if reduction == "mean" else loss_sum  # ()  eq. (5)
            return (loss, *grads)
        a1, log_probs = _loss_forward(x, W1, b1, W2, b2, in_place=not backward_is_differentiated())
        loss = cross_entropy_of_log_probs(log_probs, target, reduction)  # () or (N,)  eq. (5)
        return loss, a1, log_probs

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, target, W1, b1, W2, b2, reduction, precompute = inputs
        residuals = [t for t in output[1:] if t is not None]
        ctx.mark_non_differentiable(*residuals)
        ctx.set_materialize_grads(False)
        ctx.device_type = modes.device_type(x)
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
        if ctx.precomputed and not backward_is_differentiated() and _finite(grad_loss):
            N = x.shape[0]
            scale = grad_loss * (1.0 / N) if ctx.reduction == "mean" and N > 0 else grad_loss  # ()  dL/dL_sum
            param_needs = (needs[0], *needs[2:6])
            scaled = [None if g is None or not n else g * scale for g, n in zip(residuals, param_needs)]
            return scaled[0], None, *scaled[1:], None, None
        saved = None if ctx.precomputed else residuals  # else recomputed
        return (*loss_backward(x, target, W1, b1, W2, b2, ctx.reduction, grad_loss, needs, saved), None, None)

    backward = staticmethod(in_parameter_precision(backward.__func__))  # type: ignore[attr-defined]


class LossFunction(LossFunctionNoJvp):
    """Loss Function with forward-mode AD (``jvp``)."""

    @staticmethod
    def jvp(ctx, tx, ttarget, tW1, tb1, tW2, tb2, _treduction, _tprecompute):
        x, target, W1, b1, W2, b2 = ctx.saved_tensors
        a1, log_probs = _loss_forward(x, W1, b1, W2, b2, in_place=not backward_is_differentiated())
        tz2 = logits_tangent(x, W1, W2, a1, tx, tW1, tb1, tW2, tb2)  # (N, C)
        terms = []
        if tz2 is not None:
            ones = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
            delta2 = loss_grad_logits(
                log_probs, target, "none", ones, in_place=not backward_is_differentiated()
            )  # (N, C)  eq. (7) per sample
            terms.append((delta2 * tz2).sum(1))  # (N,)
        if ttarget is not None:
            terms.append(-(ttarget * log_probs).sum(1))  # (N,)  tangent of eq. (5) in y
        tloss = add_tangents(*terms)
        if tloss is not None:
            tloss = reduce_loss(tloss, ctx.reduction, W2.shape[1])
        return (tloss,) + (None,) * ctx.num_residuals

    jvp = staticmethod(in_parameter_precision(jvp.__func__))  # type: ignore[attr-defined]


def _finite(grad_loss: Tensor) -> bool:
    """Whether the precomputed gradients may be scaled by the upstream gradient: a non-finite one
    (inf times gradients whose row terms cancel) would give +-inf where autograd gives NaN, so then
    the backward recomputes, as autograd does. Read on the CPU only: on accelerators the read would
    synchronise the stream, so there the scaled gradients are kept."""
    functorch = torch._C._functorch
    if functorch.is_legacy_batchedtensor(grad_loss) or functorch.is_functorch_wrapped_tensor(grad_loss):
        return True  # a batched upstream gradient (gradcheck's batched grad) has no single value to read
    if not grad_loss.is_cpu:
        return True
    return bool(torch.isfinite(grad_loss))


def apply_function(function: type[Function], *args):
    """``function.apply(*args)``, without its Python preamble in plain eager mode.

    ``Function.apply`` binds the arguments to ``forward``'s signature with ``inspect`` (about
    20 us, a fifth of a whole training step at N=1) only to fill in default arguments, which
    these forwards do not have; the C++ ``apply`` underneath is the same. Under tracing
    (``modes.tracing``: torch.compile, export, make_fx, torch.func) the public ``apply`` is used.
    """
    return function.apply(*args) if modes.tracing() else apply_eager(function, *args)


unwrap_if_dead = torch._C._functorch.unwrap_if_dead  # a tensor left over from a finished torch.func transform


def apply_eager(function: type[Function], *args: object) -> Tensor:
    """``function.apply(*args)`` without its Python preamble, for plain eager mode (``apply_function``);
    a tensor left over from a finished ``torch.func`` transform is unwrapped, as ``Function.apply`` does."""
    args = tuple(unwrap_if_dead(a) if type(a) is Tensor else a for a in args)
    return super(Function, function).apply(*args)  # type: ignore[misc]
