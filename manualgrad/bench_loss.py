"""The loss step, manualgrad against eager autograd, torch.compile and numpy, at one batch size.

A step is the loss and the gradient of every parameter, float32, for x (N, D=2), hidden
H=500, C=2 classes, class-index targets. Four ways of computing it:

* ``manualgrad``: ``TwoLayerNet.loss(x, target)`` and ``.backward()``;
* ``autograd``: the same network in native autograd, ``manualgrad.reference.AutogradNet.loss``
  (an ``nn.Module`` sharing the model's parameters, called as ``TwoLayerNet.loss`` is);
* ``compile``: that network under ``torch.compile`` (one compilation per N, not timed);
* ``numpy``: ``manualgrad.reference.numpy_loss_and_gradients`` (CPU only).

``time_size`` checks manualgrad's gradients against autograd's, then times every path
interleaved (``bench_timing``); ``measure_memory`` fills in the bytes of ``bench_memory``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils import benchmark

from . import reference
from .bench_memory import network_paths, peak_numpy_bytes, peak_step_bytes, saved_bytes
from .bench_timing import Step, time_steps
from .module import TwoLayerNet

HIDDEN, IN_FEATURES, CLASSES = 500, 2, 2


@dataclass
class SizeResult:
    """Everything measured at one batch size N on one device."""

    device: str
    N: int
    times: dict[str, float] = field(default_factory=dict)  # path -> median seconds per step
    peak_bytes: dict[str, int] = field(default_factory=dict)  # path -> peak bytes of one step
    saved_packed: dict[str, int] = field(default_factory=dict)  # "manualgrad loss" -> bytes
    saved_distinct: dict[str, int] = field(default_factory=dict)
    saved_held: dict[str, int] = field(default_factory=dict)
    max_grad_error: float = 0.0  # manualgrad against autograd, relative to the largest gradient

    def ratio(self, slower: str, faster: str = "manualgrad") -> float:
        if slower not in self.times or faster not in self.times:
            return math.nan
        return self.times[slower] / self.times[faster]


def make_problem(N: int, hidden: int, device: str, seed: int = 0) -> tuple[TwoLayerNet, torch.Tensor, torch.Tensor]:
    """A float32 TwoLayerNet(2, hidden, 2), x (N, 2) and class indices (N,) on ``device``.

    Example:
        >>> model, x, target = make_problem(8, 16, "cpu")
        >>> x.shape, target.shape, model.W1.shape
        (torch.Size([8, 2]), torch.Size([8]), torch.Size([2, 16]))
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TwoLayerNet(IN_FEATURES, hidden, CLASSES, device=device)
    x = torch.randn(N, IN_FEATURES, generator=generator).to(device)
    target = torch.randint(0, CLASSES, (N,), generator=generator).to(device)
    return model, x, target


def torch_steps(
    model: TwoLayerNet,
    x: torch.Tensor,
    target: torch.Tensor,
    compiled_loss: Callable[..., torch.Tensor] | None = None,
) -> dict[str, Step]:
    """The timed statements: set the gradients to None, compute the loss, backward."""
    params = (model.W1, model.b1, model.W2, model.b2)
    twin = reference.AutogradNet(*params)  # the same parameters

    def manual() -> None:
        for p in params:
            p.grad = None
        model.loss(x, target).backward()

    def autograd() -> None:
        for p in params:
            p.grad = None
        twin.loss(x, target).backward()

    steps: dict[str, Step] = {"manualgrad": manual, "autograd": autograd}
    if compiled_loss is not None:

        def compiled() -> None:
            for p in params:
                p.grad = None
            compiled_loss(x, target, *params).backward()

        steps["compile"] = compiled
    return steps


def numpy_step(model: TwoLayerNet, x: torch.Tensor, target: torch.Tensor) -> Step:
    arrays = [t.detach().cpu().numpy() for t in model.parameters()]
    x_np = x.cpu().numpy()
    y_np = np.eye(CLASSES, dtype=np.float32)[target.cpu().numpy()]  # (N, C) one-hot
    return lambda: reference.numpy_loss_and_gradients(x_np, y_np, *arrays)


def gradients(step: Step, model: TwoLayerNet) -> list[torch.Tensor]:
    step()
    grads = [p.grad for p in model.parameters()]
    if any(g is None for g in grads):
        raise RuntimeError("a parameter got no gradient from the step")
    return [g.detach().clone() for g in grads if g is not None]


def max_relative_error(grads: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    return max(float((g - e).abs().max() / e.abs().max().clamp_min(1e-30)) for g, e in zip(grads, expected))


def time_size(
    N: int, hidden: int, device: str, *, compile_: bool, repeats: int, min_run_time: float
) -> tuple[SizeResult, list[benchmark.Measurement]]:
    """Check manualgrad's gradients against autograd's, then time every path at one N."""
    model, x, target = make_problem(N, hidden, device)
    if compile_:
        torch._dynamo.reset()  # one compilation per size and device, specialised to N; no recompile limit
    steps = torch_steps(model, x, target, torch.compile(reference.loss, dynamic=False) if compile_ else None)
    if device == "cpu":
        steps["numpy"] = numpy_step(model, x, target)
    result = SizeResult(device, N)
    expected = gradients(steps["autograd"], model)
    result.max_grad_error = max_relative_error(gradients(steps["manualgrad"], model), expected)
    for step in steps.values():  # warm-up, and compilation
        step()
    measurements = time_steps(steps, N, hidden, device, repeats, min_run_time)
    result.times = {str(m.task_spec.description): m.median for m in measurements}
    return result, measurements


def measure_memory(result: SizeResult, hidden: int, *, compile_: bool) -> None:
    """Bytes saved for backward by each path, and the peak memory of a step of each.

    Run after all timing: a torch.profiler session leaves the process slower afterwards.
    """
    model, x, target = make_problem(result.N, hidden, result.device)
    inputs = [x, target, *model.parameters()]
    for name, fn in network_paths(model, x, target).items():
        result.saved_packed[name], result.saved_distinct[name], result.saved_held[name] = saved_bytes(fn, inputs)
    if compile_:
        torch._dynamo.reset()
    steps = torch_steps(model, x, target, torch.compile(reference.loss, dynamic=False) if compile_ else None)
    for name, step in steps.items():
        step()  # warm-up (and compilation), then free the gradients outside the measurement
        model.zero_grad(set_to_none=True)
        result.peak_bytes[name] = peak_step_bytes(step, result.device)
    if result.device == "cpu":
        result.peak_bytes["numpy"] = peak_numpy_bytes(numpy_step(model, x, target))
