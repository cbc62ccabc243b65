"""Exercise: write the backward of GELU, y = x Phi(x), elementwise (the exact erf form).

Phi is the standard normal CDF, Phi(x) = (1 + erf(x / sqrt 2)) / 2. forward and setup_context
are written; write ``backward`` (the TODO below), then check your attempt, side by side with
autograd (values, gradients, gradcheck, gradgradcheck)::

    python -m manualgrad check exercises/gelu.py        # or: python exercises/gelu.py

Hints: the product rule; Phi'(x) is the normal density phi(x) = exp(-x^2 / 2) / sqrt(2 pi);
each y depends on its own x only. Compute from the saved *input* x with ordinary torch ops,
so that double backward works too. The solution is in exercises/solutions/gelu.py.
"""

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd import Function

# Every check of manualgrad.testing (the library's own Functions pass the same ones) but forward_ad:
# this Function defines no jvp (writing one is the next exercise). cuda skips without a GPU.
CHECKS = [
    "values", "gradients", "gradcheck", "gradgradcheck", "hvp", "vmap", "per_sample_grad", "compile",
    "compile_dynamic", "export", "autocast", "non_contiguous", "saved_memory", "cuda", "grad_output_unmodified",
]  # fmt: skip


class GELU(Function):
    generate_vmap_rule = True  # torch.func.vmap derives the batching rule from forward and backward

    @staticmethod
    def forward(x):
        return x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))  # y = x Phi(x), same shape as x

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)  # the input: why not the output y? (see the solution's docstring)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        raise NotImplementedError(
            "TODO: write GELU's backward in exercises/gelu.py: return grad_output * dy/dx, where "
            "dy/dx = d/dx [x Phi(x)] by the product rule, and Phi'(x) = exp(-x^2/2) / sqrt(2 pi)"
        )


def function(x):
    return GELU.apply(x)


def reference(x):
    return F.gelu(x)  # approximate="none": the exact erf form


def make_inputs():
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(4, 5, generator=generator, dtype=torch.float64).mul(2).requires_grad_(),)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import selfcheck

    selfcheck.main(function, reference, make_inputs, CHECKS)
