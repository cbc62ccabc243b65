r"""Exercise: write the backward of LayerNorm over the last dimension, with weight and bias.

For one row x of D entries (every other dimension is a batch)::

    mu   = mean(x)                      var = mean((x - mu)^2)   (biased, as F.layer_norm)
    rstd = 1 / sqrt(var + eps)          xhat = (x - mu) rstd
    y    = xhat * weight + bias

forward and setup_context are written; write ``backward`` (the TODO below), then check it::

    python -m manualgrad check exercises/layernorm.py   # or: python exercises/layernorm.py

Hints: every y_i depends on the whole row through mu and var, so the Jacobian mixes a row
(as softmax's does, docs/derivation.md eq. (6)). Start from g = dL/dxhat = grad_output * weight;
dmu/dx_j = 1/D and dvar/dx_j = 2 (x_j - mu) / D. The gradients of weight and bias sum over every
dimension but the last. Recompute xhat and rstd from the saved input x (``normalize``), so that
double backward works. The solution is in exercises/solutions/layernorm.py.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd import Function

EPS = 1e-5
# Every check of manualgrad.testing (the library's own Functions pass the same ones) but forward_ad:
# this Function defines no jvp (writing one is the next exercise). cuda skips without a GPU.
CHECKS = [
    "values", "gradients", "gradcheck", "gradgradcheck", "hvp", "vmap", "per_sample_grad", "compile",
    "compile_dynamic", "export", "autocast", "non_contiguous", "saved_memory", "cuda", "grad_output_unmodified",
]  # fmt: skip


def normalize(x, eps):
    mu = x.mean(-1, keepdim=True)  # (..., 1)
    rstd = torch.rsqrt(((x - mu) ** 2).mean(-1, keepdim=True) + eps)  # (..., 1)  1 / sqrt(var + eps)
    return (x - mu) * rstd, rstd  # xhat (..., D), rstd (..., 1)


class LayerNorm(Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, eps):
        xhat, _ = normalize(x, eps)  # (..., D)
        return xhat * weight + bias  # (..., D)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, eps = inputs
        ctx.eps = eps  # a float, not a tensor: a ctx attribute
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        raise NotImplementedError(
            "TODO: write LayerNorm's backward in exercises/layernorm.py: return (grad_x, grad_weight, grad_bias, "
            "None); grad_x goes through xhat, mu and var (the Jacobian mixes a row); weight and bias sum over "
            "every dim but the last"
        )


def function(x, weight, bias):
    return LayerNorm.apply(x, weight, bias, EPS)


def reference(x, weight, bias):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, EPS)


def make_inputs():
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()

    return randn(3, 4, 6), randn(6), randn(6)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import selfcheck

    selfcheck.main(function, reference, make_inputs, CHECKS)
