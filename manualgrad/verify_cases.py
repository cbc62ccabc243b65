"""manualgrad's entry points as manualgrad.testing cases, and the numpy-twin comparison, for verify."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import functional, reference
from .testing import Case, CheckResult
from .testing.case import compare
from .testing.engine import exception_message

__all__ = ["PARAMETER_NAMES", "Problem", "loss_case", "network_case", "numpy_results"]

PARAMETER_NAMES = ("W1", "b1", "W2", "b2")
"""The parameters' names, in the order of the entry points' arguments."""


@dataclass
class Problem:
    """Parameters, input, class-index and probability targets, float64 on the CPU.

    Args:
        params: ``(W1, b1, W2, b2)``, shapes (D, H), (H,), (H, C), (C,).
        x: the input, (N, D) (or (D,) for one unbatched sample).
        target: class indices, (N,) int64.
        soft_target: probability targets, (N, C), rows summing to 1.

    Example:
        >>> from manualgrad.verify_cases import Problem
        >>> problem = Problem.make(batch=4, hidden=3, seed=0)
        >>> [tuple(p.shape) for p in problem.params], tuple(problem.x.shape), tuple(problem.soft_target.shape)
        ([(2, 3), (3,), (3, 2), (2,)], (4, 2), (4, 2))
        >>> tuple(problem.row(0).x.shape)
        (2,)
    """

    params: tuple[Tensor, ...]
    x: Tensor
    target: Tensor
    soft_target: Tensor

    @classmethod
    def make(cls, batch: int, hidden: int, seed: int, in_features: int = 2, out_features: int = 2) -> Problem:
        """A problem of N=``batch`` rows: a :class:`~manualgrad.TwoLayerNet`'s initial parameters
        (seeded with ``seed``), Gaussian inputs, random class indices and softmax targets."""
        from .module import TwoLayerNet

        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        net = TwoLayerNet(in_features, hidden, out_features, dtype=torch.float64)
        params = tuple(p.detach() for p in (net.W1, net.b1, net.W2, net.b2))
        x = torch.randn(batch, in_features, dtype=torch.float64, generator=generator)
        target = torch.randint(0, out_features, (batch,), generator=generator)
        logits = torch.randn(batch, out_features, dtype=torch.float64, generator=generator)
        return cls(params, x, target, torch.softmax(logits, 1))

    def row(self, n: int) -> Problem:
        """One unbatched sample: x (D,), target () and (C,)."""
        return Problem(self.params, self.x[n], self.target[n], self.soft_target[n])


def _leaf(t: Tensor, device: str, dtype: torch.dtype, grad: bool = True) -> Tensor:
    t = t.to(device, dtype) if t.is_floating_point() else t.to(device)
    return t.detach().clone().requires_grad_(grad)


def network_case(path: str, problem: Problem, device: str, dtype: torch.dtype) -> Case:
    """probs or logits, as a function of (x, W1, b1, W2, b2), against the native-autograd twin.

    Args:
        path: ``"probs"`` or ``"logits"``.
        problem: the parameters and input (copied to ``device`` and ``dtype``, requiring grad).
        device: where the case's tensors live.
        dtype: their floating dtype.

    Returns:
        A :class:`~manualgrad.testing.Case` with the inputs named x, W1, b1, W2, b2.

    Example:
        >>> import torch
        >>> from manualgrad.testing import run_checks
        >>> from manualgrad.verify_cases import Problem, network_case
        >>> case = network_case("logits", Problem.make(4, 3, 0), "cpu", torch.float64)
        >>> [r.status for r in run_checks(case, ["values", "gradients"])]
        ['pass', 'pass']
    """
    fn, twin = {
        "probs": (functional.two_layer_net, reference.probs),
        "logits": (functional.two_layer_net_logits, reference.logits),
    }[path]
    inputs = tuple(_leaf(t, device, dtype) for t in (problem.x, *problem.params))
    return Case(fn, twin, inputs, batch_dim=0 if problem.x.dim() == 2 else None, names=("x", *PARAMETER_NAMES))


def loss_case(
    problem: Problem,
    device: str,
    dtype: torch.dtype,
    reduction: str = "mean",
    soft: bool = False,
    target_grad: bool = False,
    in_forward: bool | None = None,
    chunk_rows: int | None = None,
) -> Case:
    """The loss as a function of (x, target, W1, b1, W2, b2), against the native-autograd twin.

    Args:
        problem: the parameters, input and targets.
        device: where the case's tensors live.
        dtype: their floating dtype (class indices stay int64).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        soft: probability targets instead of class indices.
        target_grad: the probability targets require grad (their gradient is checked too).
        in_forward: force the gradients into the forward (True) or the backward (False);
            None: the default for the batch size.
        chunk_rows: rows per chunk of the gradients-in-forward path (implies ``in_forward``).

    Returns:
        A :class:`~manualgrad.testing.Case` with the inputs named x, target, W1, b1, W2, b2.

    Example:
        >>> import torch
        >>> from manualgrad.testing import run_checks
        >>> from manualgrad.verify_cases import Problem, loss_case
        >>> case = loss_case(Problem.make(6, 3, 0), "cpu", torch.float64, "sum", chunk_rows=4)
        >>> [r.status for r in run_checks(case, ["values", "gradients"])]
        ['pass', 'pass']
    """
    if chunk_rows is not None:
        in_forward = True

    def manual(x: Tensor, target: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> Tensor:
        mode = (
            contextlib.nullcontext()
            if in_forward is None
            else functional.loss_gradients_in_forward(in_forward, chunk_rows)
        )
        with mode:
            return functional.two_layer_net_loss(x, target, W1, b1, W2, b2, reduction=reduction)

    def twin(x: Tensor, target: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> Tensor:
        return reference.loss(x, target, W1, b1, W2, b2, reduction=reduction)

    target = (
        _leaf(problem.soft_target, device, dtype, target_grad) if soft else _leaf(problem.target, device, dtype, False)
    )
    inputs = (_leaf(problem.x, device, dtype), target, *(_leaf(p, device, dtype) for p in problem.params))
    batch_dim = 0 if problem.x.dim() == 2 else None
    return Case(manual, twin, inputs, batch_dim=batch_dim, names=("x", "target", *PARAMETER_NAMES))


def _against_numpy(problem: Problem, soft: bool, mode: dict[str, Any]) -> tuple[str, str]:
    case = loss_case(problem, "cpu", torch.float64, soft=soft, **mode)
    x, target, *params = case.inputs
    value = case.fn(x, target, *params)
    grads = torch.autograd.grad(value, [x, *params])
    y = problem.soft_target if soft else torch.nn.functional.one_hot(problem.target, problem.params[2].shape[1])
    np_value, np_grads = reference.numpy_loss_and_gradients(
        problem.x.numpy(), y.to(torch.float64).numpy(), *(p.numpy() for p in problem.params)
    )
    witnesses = [torch.tensor(np_value), *(torch.from_numpy(np_grads[k]) for k in ("x", *PARAMETER_NAMES))]
    names = ("value", "grad x", *(f"grad {k}" for k in PARAMETER_NAMES))
    rows = [
        compare(name, a, b, *case.tolerances(torch.float64)) for name, a, b in zip(names, (value, *grads), witnesses)
    ]
    return ("pass" if all(ok for ok, _, _ in rows) else "fail"), "; ".join(line for _, line, _ in rows)


def numpy_results(*problems: Problem) -> list[CheckResult]:
    """The mean loss and its gradients against the plain-numpy twin: gradients in backward on the
    first problem, in the forward in three chunks on the others.

    Args:
        *problems: the problems, each with class indices and with probability targets.

    Returns:
        Two :class:`~manualgrad.testing.CheckResult` named ``numpy`` per problem.

    Example:
        >>> from manualgrad.verify_cases import Problem, numpy_results
        >>> for r in numpy_results(Problem.make(4, 3, 0)):
        ...     print(r.case, r.status)
        loss N=4 in backward pass
        soft N=4 in backward pass
    """
    results = []
    for i, problem in enumerate(problems):
        n = problem.x.shape[0]
        mode: dict[str, Any] = {"in_forward": False} if i == 0 else {"chunk_rows": n // 3 + 1}
        label = "in backward" if i == 0 else f"in forward, chunks of {n // 3 + 1}"
        for soft in (False, True):
            case_label = f"{'soft' if soft else 'loss'} N={n} {label}"
            try:
                status, message = _against_numpy(problem, soft, mode)
            except Exception as error:  # a Function that raises is a failing line, not a crash
                status, message = "fail", exception_message(error)
            results.append(CheckResult("numpy", status, message, case_label))
    return results
