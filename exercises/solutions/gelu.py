"""Solution: GELU, y = x Phi(x), elementwise, with Phi the standard normal CDF (the exact erf form).

Check it: ``python -m manualgrad check exercises/solutions/gelu.py``.

Derivation, by the product rule::

    Phi(x)  = (1 + erf(x / sqrt 2)) / 2
    phi(x)  = Phi'(x) = exp(-x^2 / 2) / sqrt(2 pi)
    dy/dx   = Phi(x) + x phi(x)

Each y depends on its own x only (a diagonal Jacobian), so backward multiplies elementwise.
Why save the input x and not the output y: dy/dx needs x, and x cannot be recovered from y
(GELU is not one-to-one: y = -0.1 has two preimages). Recomputing Phi and phi from x with
ordinary torch ops in backward also makes double backward (gradgradcheck, HVPs) right.
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
        ctx.save_for_backward(x)  # the input: dy/dx needs x, which y does not determine

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))  # Phi(x)
            pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # phi(x) = Phi'(x)
            grad_x = grad_output * (cdf + x * pdf)  # dy/dx = Phi(x) + x phi(x), elementwise
        return grad_x


def function(x):
    return GELU.apply(x)


def reference(x):
    return F.gelu(x)  # approximate="none": the exact erf form


def make_inputs():
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(4, 5, generator=generator, dtype=torch.float64).mul(2).requires_grad_(),)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import selfcheck

    selfcheck.main(function, reference, make_inputs, CHECKS)
