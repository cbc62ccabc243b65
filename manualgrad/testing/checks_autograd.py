"""Checks of reverse and forward mode: values, gradients, gradcheck, double backward, jvp.

Every check takes a :class:`~manualgrad.testing.case.Case` and returns ``(passed, message)``,
or raises :class:`~manualgrad.testing.case.Skip`; any other exception is the check's failure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from .case import (
    Case,
    Skip,
    compare_all,
    copy_inputs,
    differentiable_outputs,
    input_names,
    output_names,
    outputs,
    random_like,
    weighted_sum,
)


def require_gradients(case: Case) -> list[int]:
    if not case.differentiable:
        raise Skip("no input requires grad")
    return case.differentiable


def run_with_gradients(
    fn: Callable[..., Any], case: Case, inputs: Sequence[Any], grad_outputs: Sequence[Tensor] | None = None
) -> tuple[tuple[Tensor, ...], tuple[Tensor | None, ...], Sequence[Tensor]]:
    """(outputs, gradients w.r.t. the differentiable inputs (None: unused), upstream gradients used)."""
    value = fn(*inputs)
    outs = differentiable_outputs(value)
    generator = case.generator()
    if grad_outputs is None:
        grad_outputs = [random_like(o, generator) for o in outs]
    leaves = [inputs[i] for i in case.differentiable]
    grads = torch.autograd.grad(outs, leaves, grad_outputs, allow_unused=True)
    return outputs(value), grads, grad_outputs


def check_values(case: Case) -> tuple[bool, str]:
    """fn's outputs against the reference's: shape, dtype and values."""
    with torch.no_grad():
        actual = outputs(case.fn(*copy_inputs(case.inputs)))
        expected = outputs(case.reference(*copy_inputs(case.inputs)))
    if len(actual) != len(expected):
        return False, f"{len(actual)} outputs, reference {len(expected)}"
    dtypes = [(a.dtype, b.dtype) for a, b in zip(actual, expected) if a.dtype != b.dtype]
    if dtypes:
        return False, f"dtype {dtypes[0][0]}, reference {dtypes[0][1]}"
    return compare_all("", actual, expected, output_names(len(actual)), case)


def check_gradients(case: Case) -> tuple[bool, str]:
    """Gradients for random upstream gradients, against the reference's, per input (and the
    outputs computed with grad enabled, which may take another path than under no_grad)."""
    positions = require_gradients(case)
    outs, grads, upstream = run_with_gradients(case.fn, case, copy_inputs(case.inputs))
    expected_outs, expected, _ = run_with_gradients(case.reference, case, copy_inputs(case.inputs), upstream)
    names = [*output_names(len(expected_outs)), *(f"grad {n}" for n in input_names(case, positions))]
    return compare_all("", [*outs, *grads], [*expected_outs, *expected], names, case)


def as_float64(case: Case) -> tuple[Any, ...]:
    return copy_inputs(case.inputs, dtype=torch.float64)


def check_gradcheck(case: Case) -> tuple[bool, str]:
    """torch.autograd.gradcheck in float64 (finite differences; no reference needed)."""
    require_gradients(case)
    torch.autograd.gradcheck(case.fn, as_float64(case), fast_mode=case.fast_gradcheck)
    return True, "analytical and numerical Jacobians agree (float64)"


def check_gradgradcheck(case: Case) -> tuple[bool, str]:
    """torch.autograd.gradgradcheck in float64: the backward itself differentiated."""
    require_gradients(case)
    torch.autograd.gradgradcheck(case.fn, as_float64(case), fast_mode=case.fast_gradcheck)
    return True, "second derivatives agree with finite differences (float64)"


def hessian_vector_products(
    fn: Callable[..., Any], case: Case, inputs: Sequence[Any], weights: Sequence[Tensor], vectors: Sequence[Tensor]
) -> Sequence[Tensor]:
    """grad(<grad(<fn(inputs), weights>), vectors>): one Hessian-vector product per input."""
    leaves = [inputs[i] for i in case.differentiable]
    outs = differentiable_outputs(fn(*inputs))
    objective = weighted_sum(outs, weights)
    grads = torch.autograd.grad(objective, leaves, create_graph=True, allow_unused=True, materialize_grads=True)
    dot = sum((g * v).sum() for g, v in zip(grads, vectors) if g.requires_grad)
    if not isinstance(dot, Tensor) or not dot.requires_grad:
        return [torch.zeros_like(t) for t in leaves]
    return torch.autograd.grad(dot, leaves, allow_unused=True, materialize_grads=True)


def check_hvp(case: Case) -> tuple[bool, str]:
    """Hessian-vector products of a random projection of the outputs, against the reference's."""
    positions = require_gradients(case)
    inputs, twin_inputs = copy_inputs(case.inputs), copy_inputs(case.inputs)
    generator = case.generator()
    with torch.no_grad():
        weights = [random_like(o, generator) for o in differentiable_outputs(case.reference(*inputs))]
    vectors = [random_like(inputs[i], generator) for i in positions]
    actual = hessian_vector_products(case.fn, case, inputs, weights, vectors)
    expected = hessian_vector_products(case.reference, case, twin_inputs, weights, vectors)
    return compare_all("hvp", actual, expected, input_names(case, positions), case)


def jvp(fn: Callable[..., Any], case: Case, tangents: Sequence[Tensor]) -> list[Tensor]:
    """Forward-mode derivatives of fn's outputs along ``tangents`` (one per differentiable input)."""
    inputs = list(copy_inputs(case.inputs))
    with fwAD.dual_level():
        for i, tangent in zip(case.differentiable, tangents):
            inputs[i] = fwAD.make_dual(inputs[i].detach(), tangent)
        outs = differentiable_outputs(fn(*inputs))
        unpacked = [fwAD.unpack_dual(o).tangent for o in outs]
    return [torch.zeros_like(o) if t is None else t for o, t in zip(outs, unpacked)]


def check_forward_ad(case: Case) -> tuple[bool, str]:
    """Forward-mode AD (the Function's jvp) along random tangents of every input, against the reference's."""
    positions = require_gradients(case)
    generator = case.generator()
    tangents = [random_like(case.inputs[i], generator) for i in positions]
    actual, expected = jvp(case.fn, case, tangents), jvp(case.reference, case, tangents)
    return compare_all("jvp", actual, expected, output_names(len(expected)), case)


def make_non_contiguous(t: object) -> object:
    """The same values in a tensor with every other element of a wider buffer (not contiguous)."""
    if not isinstance(t, Tensor) or t.dim() == 0:
        return t
    wide = torch.zeros((*t.shape[:-1], 2 * t.shape[-1]), dtype=t.dtype, device=t.device)
    strided = wide[..., ::2]
    strided.copy_(t.detach())
    return strided.requires_grad_(t.requires_grad)


def check_non_contiguous(case: Case) -> tuple[bool, str]:
    """Values and gradients with non-contiguous inputs, against the reference on contiguous ones."""
    inputs = tuple(make_non_contiguous(t) for t in copy_inputs(case.inputs))
    if not any(isinstance(t, Tensor) and not t.is_contiguous() for t in inputs):
        raise Skip("no input with a dimension to make non-contiguous")
    if not case.differentiable:
        with torch.no_grad():
            actual, expected = outputs(case.fn(*inputs)), outputs(case.reference(*copy_inputs(case.inputs)))
        return compare_all("", actual, expected, output_names(len(expected)), case)
    actual, grads, upstream = run_with_gradients(case.fn, case, inputs)
    expected, expected_grads, _ = run_with_gradients(case.reference, case, copy_inputs(case.inputs), upstream)
    names = [*output_names(len(expected)), *(f"grad {n}" for n in input_names(case, case.differentiable))]
    return compare_all("", [*actual, *grads], [*expected, *expected_grads], names, case)


def check_grad_output_unmodified(case: Case) -> tuple[bool, str]:
    """backward must not write into the upstream gradient it receives."""
    require_gradients(case)
    inputs = copy_inputs(case.inputs)
    outs = differentiable_outputs(case.fn(*inputs))
    generator = case.generator()
    upstream = [random_like(o, generator) for o in outs]
    kept = [u.clone() for u in upstream]
    leaves = [inputs[i] for i in case.differentiable]
    torch.autograd.grad(outs, leaves, upstream, allow_unused=True)
    changed = [i for i, (u, k) in enumerate(zip(upstream, kept)) if not torch.equal(u, k)]
    if changed:
        return False, f"backward modified grad_output in place (output {changed[0]})"
    return True, "grad_output unchanged by backward"
