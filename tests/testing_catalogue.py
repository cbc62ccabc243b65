"""Functions for tests/test_testing*.py: correct ones, and broken ones each with the check that
must catch it. Each Function is written as a learner would, with PyTorch's skeleton."""

from __future__ import annotations

import math

import torch
from torch.autograd import Function

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _pick(with_jvp, without_jvp):
    """Dynamo refuses a Function with a jvp: under torch.compile use the same one without."""
    return without_jvp if torch.compiler.is_compiling() else with_jvp


# ---------------------------------------------------------------------------------------
# GELU (exact, erf form): y = x Phi(x), dy/dx = Phi(x) + x phi(x)
# ---------------------------------------------------------------------------------------


def gelu_derivative(x):
    cdf = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))  # Phi(x)
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)  # phi(x)
    return cdf + x * pdf


class GeluNoJvp(Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * gelu_derivative(x)  # differentiable ops: double backward works


class Gelu(GeluNoJvp):
    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def jvp(ctx, tangent_x):
        (x,) = ctx.saved_tensors
        return tangent_x * gelu_derivative(x)


def gelu(x):
    return _pick(Gelu, GeluNoJvp).apply(x)


def gelu_reference(x):
    return torch.nn.functional.gelu(x)


# ---------------------------------------------------------------------------------------
# Softmax cross-entropy, mean over rows, from logits (N, C) and class indices (N,)
# ---------------------------------------------------------------------------------------


class CrossEntropyNoJvp(Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(logits, target):
        log_probs = torch.log_softmax(logits, dim=1)  # (N, C)
        return -log_probs.gather(1, target[:, None]).sum() / logits.shape[0]

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target = inputs
        ctx.save_for_backward(logits, target)

    @staticmethod
    def backward(ctx, grad_output):
        logits, target = ctx.saved_tensors
        grad_logits = None
        if ctx.needs_input_grad[0]:
            y = torch.zeros_like(logits).scatter(1, target[:, None], 1.0)  # (N, C)
            y_hat = torch.softmax(logits, dim=1)  # recomputed with history: double backward is right
            grad_logits = grad_output * (y_hat - y) / logits.shape[0]  # (N, C)
        return grad_logits, None


class CrossEntropy(CrossEntropyNoJvp):
    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target = inputs
        ctx.save_for_backward(logits, target)
        ctx.save_for_forward(logits, target)

    @staticmethod
    def jvp(ctx, tangent_logits, tangent_target):
        logits, target = ctx.saved_tensors
        y = torch.zeros_like(logits).scatter(1, target[:, None], 1.0)
        y_hat = torch.softmax(logits, dim=1)
        return ((y_hat - y) * tangent_logits).sum() / logits.shape[0]


def cross_entropy(logits, target):
    return _pick(CrossEntropy, CrossEntropyNoJvp).apply(logits, target)


def cross_entropy_reference(logits, target):
    return torch.nn.functional.cross_entropy(logits, target)


# ---------------------------------------------------------------------------------------
# The broken ones
# ---------------------------------------------------------------------------------------


class WrongDerivative(GeluNoJvp):
    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        cdf = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
        return grad_output * cdf  # forgets the x phi(x) term


class MissingMean(CrossEntropyNoJvp):
    @staticmethod
    def backward(ctx, grad_output):
        logits, target = ctx.saved_tensors
        y = torch.zeros_like(logits).scatter(1, target[:, None], 1.0)
        return grad_output * (torch.softmax(logits, dim=1) - y), None  # no 1/N


class SoftmaxSavedWithoutHistory(CrossEntropyNoJvp):
    """First order right; double backward silently wrong: y_hat saved from setup_context has no
    history back to the logits, so differentiating backward misses d y_hat / d logits."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target = inputs
        ctx.save_for_backward(torch.softmax(logits.detach(), dim=1), target)

    @staticmethod
    def backward(ctx, grad_output):
        y_hat, target = ctx.saved_tensors
        y = torch.zeros_like(y_hat).scatter(1, target[:, None], 1.0)
        return grad_output * (y_hat - y) / y_hat.shape[0], None


class WrongJvp(Gelu):
    @staticmethod
    def jvp(ctx, tangent_x):
        (x,) = ctx.saved_tensors
        return tangent_x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))  # Phi only


class ModifiesGradOutput(GeluNoJvp):
    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output.mul_(gelu_derivative(x))  # writes into the caller's gradient


class BranchOnBatchSize(GeluNoJvp):
    """Right values and gradients, but a Python branch on the batch size (a 'fast path')."""

    @staticmethod
    def forward(x):
        if x.shape[0] % 2 == 0:
            return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
        return x * 0.5 * torch.erfc(-x / math.sqrt(2.0))


class SavesOuterProduct(GeluNoJvp):
    """Right gradients, but saves an (N, N) tensor it does not need."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x, x @ x.T)

    @staticmethod
    def backward(ctx, grad_output):
        x, _ = ctx.saved_tensors
        return grad_output * gelu_derivative(x)


def applying(function):
    def fn(*args):
        return function.apply(*args)

    fn.__name__ = function.__name__
    return fn
