"""Row-chunked kernels: the loss with its gradients in the forward, and the probs and logits paths
with fused activation recomputation.

The network's outputs z2 and y_hat are (N, C) with C small, while its hidden activation a1 is
(N, H) with H large (500 by default). Native autograd keeps a1 (and more) alive from forward to
backward. Unless asked to keep a1, these kernels never allocate anything of size (N, H):

* :func:`loss_and_gradients`: the summed loss and every gradient in one pass over row chunks
  (the loss is a scalar, so its upstream gradient is only a scale that backward applies);

* :func:`network_output_chunked`: z2 (or y_hat), eq. (1)-(4), a chunk of rows at a time, through
  one (rows, H) buffer that stays in cache; only x (and y_hat for the probabilities) need be
  saved for backward. Given ``a1_out`` (N, H), each chunk's a1 is kept there instead (the wiring
  does so below ``modes.KEEP_A1_BELOW_ROWS`` rows: one pass of eq. (1), (2) fewer);
* :func:`backward_from_logits_chunked`: the gradients of eq. (10)-(18) from delta2 = dL/dz2,
  recomputing a1 chunk by chunk into the same kind of buffer (as ``torch.utils.checkpoint``
  recomputes, but fused and cache-sized), or reading the kept a1, then accumulating dW1, db1,
  dW2, db2 and writing dx.

``chunk_rows`` is the rows per chunk (``modes.chunk_rows``, ``modes.network_chunk_rows``).
Pure tensor functions like ``kernels.py``: they work in place on their own buffers, so the
autograd wiring calls them only in eager mode and where autograd does not record (first-order
backward). Under double backward, ``torch.func``, compile and export the wiring takes its one
differentiable path, valid for every N, instead.

Every pass over a (rows, H) chunk counts; these identities remove passes (the first and fourth
in the probs and logits kernels, the others in all):

* eq. (1) with the bias inside the product: z1 = [x, 1] [W1; b1], one matmul and no bias copy;
* ``sigmoid_form`` (CPU, where sigmoid is several times cheaper than tanh): eq. (2) as
  tanh z1 = 2 sigmoid(2 z1) - 1, the 2 folded into [W1; b1]. (a1 is still formed as 2 s - 1:
  rewriting eq. (14) as 2 s^T delta2 - 1^T delta2 saves a pass but cancels digits in float32);
* eq. (11) as one fused ``tanh_backward``: dL/da1 (1 - a1^2) in one pass;
* eq. (16) and (17) in one product: [x, 1]^T delta1 = [dW1; db1];
* for few inputs and classes (the default network), eq. (16')-(18') of ``factored.py``: no dL/da1,
  no delta1, only P = 1 - a1^2 and products with it (``modes.factored_first_layer_pays``).

And one identity makes the products narrower: behind a softmax (the loss, the probabilities, not
the logits), the classes relative to the last, eq. (19)-(21) of ``relative.py``: every product with
W2 or delta2 has C - 1 columns instead of C, one instead of two for the default network
(``modes.relative_classes_pay``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .factored import accumulate_products, first_layer_gradients, input_gradient, input_weights, tanh_derivative
from .kernels import column_major, hidden_activation_fast, loss_grad_logits, minus_one_for, per_sample_loss
from .relative import (
    balanced_delta,
    finite_targets,
    output_weight_gradient,
    relative_backward,
    relative_delta,
    relative_logits,
    relative_output_layer,
)


def _rows_of(N: int, chunk_rows: int) -> int:
    return max(1, min(N, chunk_rows))


def _with_ones(x: Tensor) -> Tensor:
    return torch.cat((x, x.new_ones(x.shape[0], 1)), 1)  # (N, D + 1)  [x, 1]


def _stacked_first_layer(W1: Tensor, b1: Tensor, sigmoid_form: bool) -> Tensor:
    W1_b1 = torch.cat((W1, b1.unsqueeze(0)))  # (D + 1, H)  [W1; b1]
    return W1_b1 * 2 if sigmoid_form else W1_b1  # 2 [W1; b1] in the sigmoid form: z = 2 z1


def network_output_chunked(
    x: Tensor,
    W1: Tensor,
    b1: Tensor,
    W2: Tensor,
    b2: Tensor,
    *,
    chunk_rows: int,
    sigmoid_form: bool,
    column_major_W2: bool,
    probabilities: bool,
    a1_out: Tensor | None = None,
    relative: bool = False,
) -> Tensor:
    """z2 = tanh(x W1 + b1) W2 + b2 (N, C), eq. (1)-(3), or y_hat = softmax(z2), eq. (4), by row chunks.

    One (chunk_rows, H) buffer serves every chunk; each chunk of z2 is written in place into the
    (N, C) output. ``sigmoid_form``: eq. (2) as 2 sigmoid(2 z1) - 1; ``column_major_W2``: a1 W2
    with W2 in column-major layout. ``a1_out``: an (N, H) tensor that keeps a1, each chunk in its
    rows, instead of the reused buffer (for a backward that does not recompute it). ``relative``
    (probabilities only, C >= 2): the softmax of z2 - z2[:, C-1], eq. (20) of ``relative.py``, a
    product with C - 1 columns, where neither form of the logits can overflow
    (``relative.relative_output_layer``). Never call where autograd records.
    """
    N, H, C = x.shape[0], W1.shape[1], W2.shape[1]
    layer = relative_output_layer(W2, b2) if relative else None  # (W2r, b2r), eq. (20); None: the C classes
    z2 = x.new_empty(N, C) if layer is None else x.new_zeros(N, C)  # (N, C); relative: the last column stays 0
    if N == 0:
        return z2
    rows = _rows_of(N, chunk_rows)
    hidden = x.new_empty(rows, H) if a1_out is None else a1_out  # (rows, H)  z1, then a1; or (N, H), kept
    x_1, W1_b1 = _with_ones(x), _stacked_first_layer(W1, b1, sigmoid_form)  # (N, D + 1), (D + 1, H)
    W2_k, b2_k = (W2, b2) if layer is None else layer  # (H, K), (K,): K = C, or C - 1 relative columns
    W2_cols = column_major(W2_k) if column_major_W2 else W2_k  # (H, K)
    for start in range(0, N, rows):
        xs_1 = x_1[start : start + rows]  # (n, D + 1)
        n = xs_1.shape[0]
        out = hidden[:n] if a1_out is None else a1_out[start : start + n]  # (n, H)
        a1 = _activation(xs_1, W1_b1, out, sigmoid_form)  # (n, H)  eq. (1), (2)
        if layer is None:
            torch.addmm(b2, a1, W2_cols, out=z2[start : start + n])  # (n, C)  eq. (3)
        else:  # (n, C)  eq. (3), (20): z2 - z2[:, C-1]
            relative_logits(a1, W2_cols, b2_k, out=z2[start : start + n])
    return torch.softmax(z2, 1) if probabilities else z2  # (N, C)  eq. (4)


def backward_from_logits_chunked(
    grad_z2: Tensor,
    x: Tensor,
    W1: Tensor,
    b1: Tensor,
    W2: Tensor,
    needs: Sequence[bool],
    *,
    chunk_rows: int,
    sigmoid_form: bool,
    factored: bool,
    a1: Tensor | None = None,
    y_hat: Tensor | None = None,
) -> tuple[Tensor | None, ...]:
    """Gradients (dx, dW1, db1, dW2, db2) from delta2 = grad_z2 (N, C), recomputing a1 by row chunks.

    The same results as ``kernels.backward_from_logits`` given a1, eq. (10)-(18), without a1:
    each chunk's z1 is recomputed into a (chunk_rows, H) buffer; or, given the (N, H) a1 that
    :func:`network_output_chunked` kept, its rows are read instead. ``factored``: eq. (16)-(18) as
    ``factored.py``'s (16')-(18'), without forming delta1. ``y_hat`` (N, C), given only for a grad_z2
    that came through that softmax (whose rows sum to 0), C >= 2: the classes relative to the last,
    eq. (21) of ``relative.py``, every product with W2 or delta2 of C - 1 columns, where grad_z2 and
    W2r are finite. Works in place on its own buffers: never call it where autograd records.
    """
    need_x, need_W1, need_b1, need_W2, need_b2 = needs
    need_delta1 = need_x or need_W1 or need_b1
    N, D, H = x.shape[0], x.shape[1], W1.shape[1]
    relative = None if y_hat is None else relative_backward(grad_z2, W2, y_hat)  # (delta2 rebalanced, W2r)
    grad_z2, W2_k = (grad_z2, W2) if relative is None else relative  # (N, C), (H, K): K = C, or C - 1
    grad_b2 = grad_z2.sum(0) if need_b2 else None  # (C,)  eq. (15)
    if N == 0 or not (need_delta1 or need_W2):
        zeros = [torch.zeros_like(t) if n else None for t, n in zip((x, W1, b1, W2), needs)]
        return (*zeros, grad_b2)
    rows = _rows_of(N, chunk_rows)
    hidden = x.new_empty(rows if a1 is None else 0, H)  # (rows, H)  z1, then a1, where a1 is recomputed
    in_a1 = factored and a1 is None  # P = 1 - a1^2 written over the recomputed a1
    grad_hidden = x.new_empty(rows, H) if need_delta1 and not in_a1 else None  # (rows, H)  dL/da1, then delta1; or P
    grad_x = x.new_empty(x.shape) if need_x else None  # (N, D)
    x_1, W1_b1 = _with_ones(x), _stacked_first_layer(W1, b1, sigmoid_form)  # (N, D + 1), (D + 1, H)
    grad_z2_k = grad_z2 if relative is None else relative_delta(grad_z2)  # (N, K)  eq. (21)
    W2_T = W2_k.t()  # (K, H)
    grad_W1_b1 = grad_W2_T = products = None  # (D + 1, H): [dW1; db1]; (K, H): dW2^T; ((D + 1) K, H): E^T P
    B = input_weights(W1, W2_k) if factored and need_x else None  # (H, D K)  eq. (18')
    for start in range(0, N, rows):
        xs_1, gs = x_1[start : start + rows], grad_z2_k[start : start + rows]  # (n, D + 1), (n, K)
        n = xs_1.shape[0]
        if a1 is None:
            a1s = _activation(xs_1, W1_b1, hidden[:n], sigmoid_form)  # (n, H)  eq. (1), (2), recomputed
        else:
            a1s = a1[start : start + n]  # (n, H)  kept by the forward
        if need_W2:
            grad_W2_T = _accumulate_mm(grad_W2_T, gs.t(), a1s)  # (K, H)  eq. (14), transposed: delta2^T a1
        if not need_delta1:
            continue
        if factored:  # P = 1 - a1^2: in place on a recomputed a1, into the buffer on a kept one
            P = tanh_derivative(a1s, out=a1s if in_a1 else grad_hidden[:n])  # (n, H)
            if need_W1 or need_b1:
                products = accumulate_products(products, xs_1, gs, P)  # ((D + 1) K, H)  eq. (16'), (17')
            if B is not None:  # dx asked for
                input_gradient(P, gs, B, out=grad_x[start : start + n])  # (n, D)  eq. (18')
            continue
        grad_a1 = torch.mm(gs, W2_T, out=grad_hidden[:n])  # (n, H)  eq. (10)
        # (n, H)  eq. (11): dL/da1 (1 - a1^2), one fused pass, in place
        delta1 = torch.ops.aten.tanh_backward.grad_input(grad_a1, a1s, grad_input=grad_a1)
        if need_W1 or need_b1:
            grad_W1_b1 = _accumulate_mm(grad_W1_b1, xs_1.t(), delta1)  # (D + 1, H)  eq. (16), (17)
        if need_x:
            torch.mm(delta1, W1.t(), out=grad_x[start : start + n])  # (n, D)  eq. (18)
    if products is not None:
        grad_W1_b1 = first_layer_gradients(products, W2_k, D + 1)  # (D + 1, H)  eq. (16'), (17')
    grad_W2 = None if grad_W2_T is None else _output_weight_gradient(grad_W2_T, relative is not None)  # (H, C)  (14)
    grad_W1 = grad_W1_b1[:D] if need_W1 else None  # (D, H)  eq. (16)
    grad_b1 = grad_W1_b1[D] if need_b1 else None  # (H,)  eq. (17)
    return grad_x, grad_W1, grad_b1, grad_W2, grad_b2


def loss_and_gradients(
    x: Tensor,
    target: Tensor,
    W1: Tensor,
    b1: Tensor,
    W2: Tensor,
    b2: Tensor,
    needs: Sequence[bool],
    *,
    chunk_rows: int,
    sigmoid_form: bool,
    column_major_W2: bool,
    factored: bool,
    relative: bool,
) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """The summed loss and its gradients (dx, dW1, db1, dW2, db2), in one pass over row chunks.

    Used by the loss's forward when gradients will be needed: the upstream gradient of a
    scalar loss is only a scale, so backward multiplies these by it (and by the 1/N of the
    mean). One (chunk_rows, H) buffer serves every chunk, two where delta1 is formed (not
    ``factored``); nothing of size (N, H) is allocated.
    Works in place on its own tensors: never call it where autograd records.
    ``sigmoid_form``: eq. (2) as 2 sigmoid(2 z1) - 1 when there is more than one chunk (W1 and
    b1 doubled once); ``column_major_W2``: multiply by W2 in column-major layout; ``factored``:
    eq. (16)-(18) as ``factored.py``'s (16')-(18'), without forming delta1; ``relative``: the
    classes relative to the last, ``relative.py``'s eq. (20), (21), so that every product with W2
    or delta2 has C - 1 columns (C >= 2), where neither form of the logits can overflow and the
    targets are finite.
    """
    need_x, need_W1, need_b1, need_W2, need_b2 = needs
    need_delta1 = need_x or need_W1 or need_b1
    N, H = x.shape[0], W1.shape[1]
    if N == 0:  # empty batch: the sum is 0, and so is every gradient
        zero_grads = tuple(torch.zeros_like(t) if n else None for t, n in zip((x, W1, b1, W2, b2), needs))
        return x.new_zeros(()), zero_grads
    rows = min(N, chunk_rows)
    chunked = rows < N  # one chunk: no slices, no buffers, the fresh tensors are updated in place
    hidden = x.new_empty(rows, H) if chunked else None  # (rows, H)  z1, then a1
    grad_hidden = x.new_empty(rows, H) if chunked and need_delta1 and not factored else None  # (rows, H)  delta1
    grad_x = x.new_empty(x.shape) if need_x and (chunked or factored) else None  # (N, D)
    # (W2r, b2r), eq. (20); None: the C classes
    layer = relative_output_layer(W2, b2) if relative and finite_targets(target) else None
    W2_k, b2_k = (W2, b2) if layer is None else layer  # (H, K), (K,): K = C, or C - 1 relative columns
    logits_buffer = None if layer is None else x.new_zeros(rows, W2.shape[1])  # (rows, C)  last column 0
    W2_cols = column_major(W2_k) if column_major_W2 else W2_k  # (H, K)
    doubled = chunked and sigmoid_form  # tanh z1 = 2 sigmoid(2 z1) - 1: double W1, b1 once
    W1_a, b1_a = (W1 * 2, b1 * 2) if doubled else (W1, b1)  # (D, H), (H,)
    loss = grad_W1 = grad_b1 = grad_W2_T = grad_b2 = products = None
    factored_first = factored and (need_W1 or need_b1)
    x_1 = torch.cat((x, x.new_ones(N, 1)), 1) if factored_first else None  # (N, D + 1)  [x, 1]
    B = input_weights(W1, W2_k) if factored and need_x else None  # (H, D K)  eq. (18'), (21)
    for start in range(0, N, rows):
        xs, ts = (x[start : start + rows], target[start : start + rows]) if chunked else (x, target)
        n = xs.shape[0]  # xs (n, D), ts (n,) or (n, C)
        buffer = hidden[:n] if chunked else None  # (n, H)
        a1 = hidden_activation_fast(  # (n, H)  eq. (1), (2)
            xs, W1_a, b1_a, buffer, sigmoid_form=sigmoid_form, in_place=True, doubled=doubled
        )
        if logits_buffer is None:
            z2 = torch.addmm(b2, a1, W2_cols)  # (n, C)  eq. (3)
        else:  # (n, C)  eq. (3), (20): z2 - z2[:, C-1], the same softmax
            z2 = relative_logits(a1, W2_cols, b2_k, out=logits_buffer[:n])
        log_probs = torch.log_softmax(z2, 1)  # (n, C)  eq. (4)
        loss = _accumulate(loss, per_sample_loss(log_probs, ts).sum())  # ()  eq. (5), summed over rows
        delta2 = loss_grad_logits(log_probs, ts, "sum", None, in_place=True)  # (n, C)  eq. (7), summed loss
        if layer is not None:  # (n, C)  the entry formed with cancellation rebalanced, eq. (19)
            delta2 = balanced_delta(delta2, log_probs)
        delta2_k = delta2 if layer is None else relative_delta(delta2)  # (n, K)  eq. (21)
        if need_W2:
            grad_W2_T = _accumulate_mm(grad_W2_T, delta2_k.t(), a1)  # (K, H)  eq. (14), transposed
        if need_b2:
            grad_b2 = _accumulate(grad_b2, delta2.sum(0))  # (C,)  eq. (15)
        if need_delta1 and factored:
            P = tanh_derivative(a1, out=a1)  # (n, H)  1 - a1^2, in place: a1 is not read again
            if x_1 is not None:  # dW1 or db1 asked for: ((D + 1) K, H)  eq. (16'), (17')
                products = accumulate_products(products, x_1[start : start + n], delta2_k, P)
            if B is not None:  # dx asked for
                input_gradient(P, delta2_k, B, out=grad_x[start : start + n])  # (n, D)  eq. (18')
        elif need_delta1:
            grad_a1 = torch.mm(delta2_k, W2_k.t(), out=grad_hidden[:n] if chunked else None)  # (n, H)  eq. (10)
            # (n, H)  eq. (11): dL/da1 (1 - a1^2), one fused pass in place
            delta1 = torch.ops.aten.tanh_backward.grad_input(grad_a1, a1, grad_input=grad_a1)
            if need_W1:
                grad_W1 = _accumulate_mm(grad_W1, xs.t(), delta1)  # (D, H)  eq. (16)
            if need_b1:
                grad_b1 = _accumulate(grad_b1, delta1.sum(0))  # (H,)  eq. (17)
            if need_x and chunked:
                torch.mm(delta1, W1.t(), out=grad_x[start : start + n])  # (n, D)  eq. (18)
            elif need_x:
                grad_x = torch.mm(delta1, W1.t())  # (N, D)  eq. (18)
    if products is not None:  # (D + 1, H)  [dW1; db1], eq. (16'), (17')
        grad_W1_b1 = first_layer_gradients(products, W2_k, x.shape[1] + 1)
        grad_W1, grad_b1 = (grad_W1_b1[:-1] if need_W1 else None), (grad_W1_b1[-1] if need_b1 else None)
    grad_W2 = None if grad_W2_T is None else _output_weight_gradient(grad_W2_T, layer is not None)  # (H, C)  (14)
    return loss, (grad_x, grad_W1, grad_b1, grad_W2, grad_b2)


def _output_weight_gradient(grad_W2_T: Tensor, relative: bool) -> Tensor:
    """dW2 (H, C) from delta2^T a1 (C, H), or from its first C - 1 rows, eq. (14), (21)."""
    return output_weight_gradient(grad_W2_T) if relative else grad_W2_T.t()


def _activation(xs_1: Tensor, W1_b1: Tensor, out: Tensor, sigmoid_form: bool) -> Tensor:
    """a1 = tanh([x, 1] [W1; b1]) (n, H) into ``out``, eq. (1), (2); in the sigmoid form W1_b1 is doubled."""
    z = torch.mm(xs_1, W1_b1, out=out)  # (n, H)  eq. (1): z1, or 2 z1 in the sigmoid form
    if not sigmoid_form:
        return z.tanh_()  # (n, H)  eq. (2)
    s = z.sigmoid_()  # (n, H)  sigmoid(2 z1)
    return torch.add(minus_one_for(s), s, alpha=2, out=s)  # (n, H)  eq. (2): 2 sigmoid(2 z1) - 1


def _accumulate_mm(total: Tensor | None, a: Tensor, b: Tensor) -> Tensor:
    return torch.mm(a, b) if total is None else total.addmm_(a, b)


def _accumulate(total: Tensor | None, term: Tensor) -> Tensor:
    return term if total is None else total.add_(term)
