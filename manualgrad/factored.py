"""Eq. (16)-(18) without delta1, for networks with few inputs and classes: fewer passes over (n, H).

The row-chunked kernels (``chunked.loss_and_gradients``, ``chunked.backward_from_logits_chunked``)
spend their time in passes over (rows, H) tensors. The first layer's gradients, written as the
derivation writes them, take four: dL/da1 = delta2 W2^T (10), delta1 = dL/da1 (1 - a1^2) (11),
[x, 1]^T delta1 (16), (17), and delta1 W1^T (18). With P = 1 - a1^2 (N, H) and delta1 = (delta2 W2^T) P
elementwise, the sums over rows can be taken before the sum over classes (docs/derivation.md,
"Few inputs and classes"):

* (16'), (17'): [dW1; db1]_dh = sum_c W2_hc (E^T P)_(d,c),h with E = [x, 1] (x) delta2
  (N, (D + 1) C), the products x~_nd delta2_nc: one product over P, and a small contraction;
* (18'): dx_nd = sum_c delta2_nc (P B)_n,(d,c) with B_h,(d,c) = W1_dh W2_hc (H, D C).

P is one pass (in place on a1 where a1 is the kernel's own buffer), E^T P one read, P B one read:
no (N, H) write of dL/da1 and no tanh_backward pass. The products have (D + 1) C and D C columns,
so this pays only while those are few (``modes.factored_first_layer_pays``); the default network
(D = 2, C = 2) has 6 and 4. In the loss's chunk loop, where dW1 and db1 were two reads of delta1,
two passes fewer; in the backward of probs and logits, where [x, 1]^T delta1 was one, one pass fewer.
Pure tensor functions, like ``kernels.py``; eager mode only.
"""

from __future__ import annotations

import torch
from torch import Tensor

# E^T P with fewer rows than this takes MKL's row-by-row path (one float32 sum of n terms per value):
# at n = 2048, H = 500, 1 thread, 3 rows 158 us and 1.1e-6 relative error, 4 rows 142 us and 4.1e-7.
# Fewer products (the relative classes' 3 by default) are padded with zero rows up to it.
MIN_PRODUCT_ROWS = 4


def tanh_derivative(a1: Tensor, out: Tensor) -> Tensor:
    """P = 1 - a1^2 (n, H) into ``out`` (which may be a1 itself), one pass: eq. (11)'s factor."""
    return torch.addcmul(a1.new_ones(()), a1, a1, value=-1, out=out)  # (n, H)  1 - a1 * a1


def class_products(xs_1: Tensor, delta2: Tensor) -> Tensor:
    """E = [x, 1] (x) delta2 (n, (D + 1) C): column (d, c) holds x~_nd delta2_nc, eq. (16'), (17')."""
    (n, D_1), C = xs_1.shape, delta2.shape[1]
    return (xs_1.unsqueeze(2) * delta2.unsqueeze(1)).reshape(n, D_1 * C)  # (n, (D + 1) C)


def accumulate_products(total: Tensor | None, xs_1: Tensor, delta2: Tensor, P: Tensor) -> Tensor:
    """total + E^T P ((D + 1) C, H) for one chunk of rows: the row sums of eq. (16'), (17'); below
    ``MIN_PRODUCT_ROWS`` products, zero rows follow them."""
    E = class_products(xs_1, delta2)  # (n, (D + 1) C)
    missing = MIN_PRODUCT_ROWS - E.shape[1]
    if missing > 0:  # zero columns: MKL's blocked product, with less rounding error
        E = torch.cat((E, E.new_zeros(E.shape[0], missing)), 1)  # (n, MIN_PRODUCT_ROWS)
    E_T = E.t()  # ((D + 1) C, n), or (MIN_PRODUCT_ROWS, n) padded
    return torch.mm(E_T, P) if total is None else total.addmm_(E_T, P)  # ((D + 1) C, H)


def first_layer_gradients(products: Tensor, W2: Tensor, inputs: int) -> Tensor:
    """[dW1; db1] (D + 1, H) from the summed E^T P ((D + 1) C, H), ``inputs`` = D + 1 (zero rows
    after them are not read): the sum over classes, eq. (16'), (17')."""
    H, C = W2.shape
    return (products[: inputs * C].view(inputs, C, H) * W2.t()).sum(1)  # (D + 1, H)  sum_c W2_hc (E^T P)_(d,c),h


def input_weights(W1: Tensor, W2: Tensor) -> Tensor:
    """B (H, D C): B_h,(d,c) = W1_dh W2_hc, eq. (18'), stored column by column (P B with few
    columns is several times faster in that layout on the CPU, as a1 W2 is: ``kernels.column_major``)."""
    (D, H), C = W1.shape, W2.shape[1]
    return (W1.unsqueeze(1) * W2.t().unsqueeze(0)).reshape(D * C, H).t()  # (H, D C), strides (1, H)


def input_gradient(P: Tensor, delta2: Tensor, B: Tensor, out: Tensor) -> Tensor:
    """dx (n, D) into ``out``: sum_c delta2_nc (P B)_n,(d,c), eq. (18')."""
    n, C = delta2.shape
    PB = torch.mm(P, B).view(n, out.shape[1], C)  # (n, D, C)
    return torch.sum(PB * delta2.unsqueeze(1), 2, out=out)  # (n, D)
