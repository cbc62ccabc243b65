"""The memory contract of the chunked kernels, observed through the aten ops they dispatch.

A chunked kernel makes its (rows, H) buffers with ``new_empty`` and writes every chunk into them
(``out=``, in-place ops, views); it never makes another (n, H) tensor. :class:`Allocations` records
each op and its output shape and fills every ``new_empty`` tensor with NaN, so that an element a
kernel forgets to write shows in its result.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class Allocations(TorchDispatchMode):
    """Records each aten op and its output shape; every ``new_empty`` tensor comes filled with NaN."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.new_empty.default:
            out.fill_(float("nan"))
        self.ops.append((func.__name__, tuple(out.shape) if isinstance(out, torch.Tensor) else None))
        return out


# ops that may produce a (n, H) tensor: views (of a buffer or of b1), or writes into a buffer
INTO_BUFFERS = {"slice.Tensor", "unsqueeze.default", "t.default", "mm.out", "addmm.out", "add.out",
                "sigmoid_.default", "tanh_.default", "tanh_backward.grad_input", "addcmul.out"}  # fmt: skip


def assert_buffers(ops, H, rows, buffers, allowed_rows=(4,)):
    """``buffers`` (rows, H) new_empty buffers, and no other (n, H) tensor made (n not in ``allowed_rows``:
    the tests use D + 1 = C = 4, the rows of the stacked [W1; b1] and of dW2^T)."""
    made = [shape for name, shape in ops if name == "new_empty.default" and shape is not None and H in shape]
    assert made == [(rows, H)] * buffers, f"(rows, H) buffers made: {made}, expected {buffers} of {(rows, H)}"
    fresh = [(name, shape) for name, shape in ops if shape is not None and len(shape) == 2 and shape[1] == H
             and shape[0] not in allowed_rows and name not in INTO_BUFFERS | {"new_empty.default"}]  # fmt: skip
    assert not fresh, f"(n, H) tensors made outside the buffers: {fresh}"
