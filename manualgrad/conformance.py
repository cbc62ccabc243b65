"""manualgrad as a module: checks that only make sense for the library itself, reported through
:class:`manualgrad.testing.CheckResult` like every other check of ``verify``.

Everything that applies to any custom Function (double backward, forward AD, vmap, compile,
export, autocast against the twin, memory, CUDA) runs in :mod:`manualgrad.testing`. Here:

* ``autocast_policy``: under autocast manualgrad computes in the parameters' dtype, so its
  output and gradients equal the native-autograd twin computed in float32, to float32 tolerance,
  with ``backward()`` called outside the autocast region and inside it (a backward left in
  bfloat16 fails);
* ``module_contracts``: state_dict, deepcopy, torch.save/load, .to(), .double(), optimizers,
  gradient accumulation, no_grad and inference_mode;
* ``ddp``: DistributedDataParallel (gloo, 2 processes) against the twin's gradients on the
  concatenated batch (the processes and their gradients: :mod:`manualgrad.conformance_ddp`).

A check raises an error on failure and :class:`manualgrad.testing.Skip` when it does not apply;
:func:`results` runs them all.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import reference
from .module import TwoLayerNet
from .testing import CheckResult, Skip
from .testing.engine import exception_message

__all__ = ["CHECKS", "PATHS", "check_autocast_policy", "check_ddp", "check_module_contracts", "results"]

PATHS = ("probs", "logits", "loss")
"""manualgrad's entry points, as the checks name them: ``TwoLayerNet.__call__``, ``.logits``, ``.loss``."""


def assert_all_close(a: object, b: object, what: str, rtol: float = 1e-7, atol: float = 1e-7) -> None:
    """torch.testing.assert_close over (nested) tuples, naming the failing element."""
    if isinstance(a, (tuple, list)):
        if not isinstance(b, (tuple, list)):
            raise AssertionError(f"{what}: {len(a)} results against a {type(b).__name__}")
        if len(a) != len(b):
            raise AssertionError(f"{what}: {len(a)} results against {len(b)}")
        for i, (u, v) in enumerate(zip(a, b)):
            assert_all_close(u, v, f"{what}[{i}]", rtol, atol)
        return
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def parameter_grads(model: torch.nn.Module) -> list[Tensor]:
    """Copies of the parameters' gradients; AssertionError naming a parameter that got none."""
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    if missing:
        raise AssertionError(f"no gradient for {', '.join(missing)}")
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def twin_path(model: TwoLayerNet, path: str, x: Tensor, target: Tensor) -> Tensor:
    """The native-autograd twin of run_path, on the model's own parameters."""
    params = (model.W1, model.b1, model.W2, model.b2)
    if path == "loss":
        return reference.loss(x, target, *params)
    return reference.probs(x, *params) if path == "probs" else reference.logits(x, *params)


def check_autocast_policy(path: str, device: str) -> None:
    """Under autocast, output and gradients equal the twin's float32 computation (float32 tolerance).

    Autocast CPU bfloat16 (CUDA: float16 and bfloat16) around a 2-32-3 :class:`TwoLayerNet`.

    Args:
        path: one of :data:`PATHS`.
        device: ``"cpu"`` or ``"cuda"``.

    Raises:
        AssertionError: an output that is not float32, or values or gradients off the twin's.
    """
    torch.manual_seed(0)
    model = TwoLayerNet(2, 32, 3, device=device)
    x = torch.randn(16, 2, device=device)
    target = torch.randint(0, 3, (16,), device=device)
    weights = torch.randn(16, 3, device=device)

    def run(
        forward: Callable[[TwoLayerNet, str, Tensor, Tensor], Tensor],
        autocast_dtype: torch.dtype | None,
        backward_inside: bool = False,
    ) -> tuple[Tensor, list[Tensor]]:
        model.zero_grad()
        with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = forward(model, path, x, target)
            objective = out if path == "loss" else (out.float() * weights).sum()
            if backward_inside:  # the backward then runs with autocast on: it must compute in float32 all the same
                objective.backward()
        if not backward_inside:
            objective.backward()
        return out.detach(), parameter_grads(model)

    twin_out, twin_grads = run(twin_path, None)
    for dtype in [torch.bfloat16] if device == "cpu" else [torch.float16, torch.bfloat16]:
        for backward_inside in (False, True):
            where = f"autocast {dtype}, backward {'inside' if backward_inside else 'outside'} it"
            out, grads = run(run_path, dtype, backward_inside)
            if out.dtype != torch.float32:
                raise AssertionError(f"output is {out.dtype} under autocast {dtype}, the policy says float32")
            assert_all_close(out, twin_out, f"output under {where} vs the twin in float32", 1e-5, 1e-6)
            assert_all_close(grads, twin_grads, f"gradients under {where} vs the twin in float32", 1e-5, 1e-6)


def run_path(model: TwoLayerNet, path: str, x: Tensor, target: Tensor) -> Tensor:
    if path == "loss":
        return model.loss(x, target)
    return model(x) if path == "probs" else model.logits(x)


def count_saved_tensors(fn: Callable[[], Tensor]) -> tuple[Tensor, int]:
    """fn() and how many tensors it saved for backward (saved_tensors_hooks)."""
    saved: list[Tensor] = []

    def pack(tensor: Tensor) -> Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return out, len(saved)


def _weighted_sum(out: Tensor, path: str) -> Tensor:
    return out if path == "loss" else (out * torch.arange(1, out.shape[1] + 1, device=out.device)).sum()


def check_module_contracts(path: str, device: str) -> None:
    """state_dict, deepcopy, torch.save/load, .to(), .double(), optimizers, accumulation, no_grad.

    Args:
        path: one of :data:`PATHS`.
        device: ``"cpu"`` or ``"cuda"``.

    Raises:
        AssertionError: the first contract broken, named in the message.
    """
    torch.manual_seed(0)
    model = TwoLayerNet(2, 16, 3, device=device)
    x = torch.randn(8, 2, device=device)
    target = torch.randint(0, 3, (8,), device=device)
    expected = run_path(model, path, x, target).detach()

    clone = TwoLayerNet(2, 16, 3, device=device)
    clone.load_state_dict(model.state_dict())
    assert_all_close(run_path(clone, path, x, target), expected, "after load_state_dict", 0, 0)
    assert_all_close(run_path(copy.deepcopy(model), path, x, target), expected, "after deepcopy", 0, 0)
    for whole_module in (False, True):
        buffer = io.BytesIO()
        torch.save(model if whole_module else model.state_dict(), buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=not whole_module)
        restored = loaded if whole_module else TwoLayerNet(2, 16, 3, device=device)
        if not whole_module:
            restored.load_state_dict(loaded)
        assert_all_close(run_path(restored, path, x, target), expected, "after torch.save/load", 0, 0)
    double = copy.deepcopy(model).double()
    if any(p.dtype != torch.float64 for p in double.parameters()):
        raise AssertionError(".double() left a parameter in another dtype")
    assert_all_close(run_path(double, path, x.double(), target).float(), expected, "after .double()", 1e-5, 1e-6)
    moved = copy.deepcopy(model).to("cpu", torch.float64)
    if any(p.device.type != "cpu" or p.dtype != torch.float64 for p in moved.parameters()):
        raise AssertionError(".to('cpu', torch.float64) did not move every parameter")

    # gradient accumulation: backward on each half == one backward of the sum
    halves = (slice(0, 4), slice(4, 8))
    accumulated, whole = copy.deepcopy(model), copy.deepcopy(model)
    for half in halves:
        _weighted_sum(run_path(accumulated, path, x[half], target[half]), path).backward()
    first, second = (_weighted_sum(run_path(whole, path, x[h], target[h]), path) for h in halves)
    (first + second).backward()
    assert_all_close(
        [p.grad for p in accumulated.parameters()], [p.grad for p in whole.parameters()], "accumulation", 1e-5, 1e-6
    )

    # any optimizer with a scheduler: a few steps decrease the loss
    for make in (
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: torch.optim.Adam(ps, lr=1e-2),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2),
        lambda ps: torch.optim.RMSprop(ps, lr=1e-3),
    ):
        trained = copy.deepcopy(model)
        optimizer = make(trained.parameters())
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
        before = training_objective(trained, path, x, target).item()
        for _ in range(10):
            optimizer.zero_grad()
            training_objective(trained, path, x, target).backward()
            optimizer.step()
            scheduler.step()
        after = training_objective(trained, path, x, target).item()
        if not after < before:
            raise AssertionError(f"{type(optimizer).__name__}: loss {before} -> {after}")

    # no_grad / inference_mode: computes the same value, saves nothing for backward
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            out, saved = count_saved_tensors(lambda: run_path(model, path, x, target))
        if out.requires_grad or out.grad_fn is not None or saved:
            raise AssertionError(f"{mode.__name__}: graph {out.grad_fn}, {saved} tensors saved for backward")
        assert_all_close(out, expected, f"{mode.__name__} value", 0, 0)


def training_objective(model: TwoLayerNet, path: str, x: Tensor, target: Tensor) -> Tensor:
    """What a user trains: the loss, or cross-entropy of the probs or logits path."""
    if path == "loss":
        loss: Tensor = model(x, target)  # TwoLayerNet.forward(x, target) returns the loss: DDP only sees forward
        return loss
    out = model.logits(x) if path == "logits" else model(x).log()
    return F.cross_entropy(out, target)


def check_ddp(path: str, device: str) -> None:
    """DDP (gloo, 2 processes on loopback): all-reduced gradients equal the single-process
    gradients of the concatenated batch.

    The two processes start once per Python process (spawn, a few seconds) and train every
    path; later calls reuse their gradients.

    Args:
        path: one of :data:`PATHS`.
        device: ``"cpu"`` (the only device the check runs on).

    Raises:
        Skip: another device, or no gloo backend in this build of torch.
        AssertionError: gradients off the twin's.
    """
    if device != "cpu":
        raise Skip("the DDP check runs gloo on the CPU")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        raise Skip("torch.distributed with gloo is not available")
    from .conformance_ddp import compare_ddp_with_twin  # imports this module: not at the top

    compare_ddp_with_twin(path)


CHECKS: dict[str, Callable[[str, str], None]] = {
    "autocast_policy": check_autocast_policy,
    "module_contracts": check_module_contracts,
    "ddp": check_ddp,
}
"""The module-level checks by name: ``check(path, device)`` returns None or raises."""


def results(
    devices: Sequence[str] = ("cpu",), paths: Sequence[str] = PATHS, checks: Sequence[str] | None = None
) -> list[CheckResult]:
    """Every check on every path and device; a failing check is a result, not a crash.

    Args:
        devices: devices to run on.
        paths: entry points, from :data:`PATHS`.
        checks: names from :data:`CHECKS` (default: all).

    Returns:
        One :class:`~manualgrad.testing.CheckResult` per check, device and path, its ``case``
        ``"<path> <device>"``.

    Raises:
        KeyError: an unknown check name.

    Example:
        >>> from manualgrad import conformance
        >>> for r in conformance.results(["cpu"], ["probs", "loss"], ["autocast_policy"]):
        ...     print(r.case, r.name, r.status)
        probs cpu autocast_policy pass
        loss cpu autocast_policy pass
    """
    out = []
    for name in checks or CHECKS:
        for device in devices:
            for path in paths:
                try:
                    CHECKS[name](path, device)
                except Skip as reason:
                    out.append(CheckResult(name, "skip", str(reason), f"{path} {device}"))
                except Exception as error:
                    out.append(CheckResult(name, "fail", exception_message(error), f"{path} {device}"))
                else:
                    out.append(CheckResult(name, "pass", _PASS_MESSAGES[name], f"{path} {device}"))
    return out


_PASS_MESSAGES = {
    "autocast_policy": "float32 output and gradients, equal to the twin in float32",
    "module_contracts": "state_dict, deepcopy, save/load, .to, optimizers, accumulation, no_grad",
    "ddp": "2 gloo processes: gradients equal the twin's on the concatenated batch",
}
