"""PyTorch conformance checks: does every mechanism PyTorch offers work with manualgrad?

Each check runs one mechanism (double backward, forward AD, ``torch.func``, ``torch.compile``,
autocast, module contracts, DDP) on one path (probs, logits, loss) and one device, and
compares the result with the same mechanism applied to the native-autograd twin. A check
raises an error on failure and :class:`NotApplicable` to be reported as skipped.
:func:`conformance_matrix` runs them all; ``python -m manualgrad verify`` prints the matrix
(rows: checks, columns: paths and devices).
"""

from __future__ import annotations

import copy
import functools
import io
import os
import sys
import tempfile
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import functional, reference
from .module import TwoLayerNet

PATHS = ("probs", "logits", "loss")


class NotApplicable(Exception):
    """The check does not apply to this path or device (reported as skipped)."""


def manual_and_twin(path: str, target: Tensor) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """(manualgrad, native-autograd twin) for a path, as functions of (x, W1, b1, W2, b2)."""
    if path == "probs":
        return functional.two_layer_net, reference.probs
    if path == "logits":
        return functional.two_layer_net_logits, reference.logits
    return (
        lambda x, *p: functional.two_layer_net_loss(x, target, *p),
        lambda x, *p: reference.loss(x, target, *p),
    )


def make_problem(device: str, dtype: torch.dtype = torch.float64, N: int = 6, D: int = 2, H: int = 12, C: int = 3):
    """x (N, D), class indices (N,), parameters [W1, b1, W2, b2], and weights (N, C)."""
    generator = torch.Generator().manual_seed(1234)
    params = [
        torch.randn(D, H, generator=generator, dtype=torch.float64) / D**0.5,
        torch.randn(H, generator=generator, dtype=torch.float64) * 0.1,
        torch.randn(H, C, generator=generator, dtype=torch.float64) / H**0.5,
        torch.randn(C, generator=generator, dtype=torch.float64) * 0.1,
    ]
    x = torch.randn(N, D, generator=generator, dtype=torch.float64)
    target = torch.randint(0, C, (N,), generator=generator)
    weights = torch.randn(N, C, generator=generator, dtype=torch.float64)  # to make scalars of (N, C) outputs
    move = lambda t: t.to(device, dtype) if t.is_floating_point() else t.to(device)  # noqa: E731
    return move(x), move(target), [move(p) for p in params], move(weights)


def scalar_objective(path: str, fn: Callable[..., Tensor], weights: Tensor) -> Callable[..., Tensor]:
    """A scalar function of (x, W1, b1, W2, b2): the loss itself, or <output, weights>."""
    if path == "loss":
        return fn
    return lambda x, *p: (fn(x, *p) * weights[: x.shape[0]]).sum()


def assert_all_close(a, b, what: str, rtol: float = 1e-7, atol: float = 1e-7) -> None:
    """torch.testing.assert_close over (nested) tuples, naming the failing element."""
    if isinstance(a, (tuple, list)):
        if len(a) != len(b):
            raise AssertionError(f"{what}: {len(a)} results against {len(b)}")
        for i, (u, v) in enumerate(zip(a, b)):
            assert_all_close(u, v, f"{what}[{i}]", rtol, atol)
        return
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# ----------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------


def check_double_backward(path: str, device: str) -> None:
    """gradgradcheck passes, and Hessian-vector products equal autograd's."""
    x, target, params, weights = make_problem(device)
    manual, twin = manual_and_twin(path, target)
    inputs = [t.detach().requires_grad_() for t in (x, *params)]
    if not torch.autograd.gradgradcheck(manual, inputs, check_fwd_over_rev=True):
        raise AssertionError("gradgradcheck failed")
    vectors = [torch.randn_like(t) for t in inputs]
    hvps = []
    for fn in (manual, twin):
        leaves = [t.detach().requires_grad_() for t in inputs]
        grads = torch.autograd.grad(scalar_objective(path, fn, weights)(*leaves), leaves, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vectors))
        hvps.append(torch.autograd.grad(dot, leaves, allow_unused=True, materialize_grads=True))
    assert_all_close(hvps[0], hvps[1], "Hessian-vector product")


def check_forward_ad(path: str, device: str) -> None:
    """gradcheck(check_forward_ad=True); torch.func.jvp and jacfwd equal the twin's."""
    x, target, params, _ = make_problem(device)
    manual, twin = manual_and_twin(path, target)
    inputs = tuple(t.detach().requires_grad_() for t in (x, *params))
    if not torch.autograd.gradcheck(manual, inputs, check_forward_ad=True):
        raise AssertionError("gradcheck(check_forward_ad=True) failed")
    tangents = tuple(torch.randn_like(t) for t in inputs)
    primal = tuple(t.detach() for t in inputs)
    assert_all_close(torch.func.jvp(manual, primal, tangents), torch.func.jvp(twin, primal, tangents), "jvp")
    argnums = (0, 1, 2, 3, 4)
    assert_all_close(
        torch.func.jacfwd(manual, argnums=argnums)(*primal), torch.func.jacfwd(twin, argnums=argnums)(*primal), "jacfwd"
    )


def check_vmap(path: str, device: str) -> None:
    """gradcheck(check_batched_grad=True) and vmap over a batch of inputs equal the twin's."""
    x, target, params, _ = make_problem(device)
    manual, twin = manual_and_twin(path, target)
    inputs = tuple(t.detach().requires_grad_() for t in (x, *params))
    if not torch.autograd.gradcheck(
        manual, inputs, check_batched_grad=True, check_forward_ad=True, check_batched_forward_grad=True
    ):
        raise AssertionError("batched gradcheck failed")
    stacked = torch.stack([x, x.flip(0), 2 * x])  # (3, N, D)
    in_dims = (0, None, None, None, None)
    assert_all_close(
        torch.func.vmap(manual, in_dims=in_dims)(stacked, *params),
        torch.func.vmap(twin, in_dims=in_dims)(stacked, *params),
        "vmap",
    )


def check_per_sample_gradients(path: str, device: str) -> None:
    """vmap(grad(f)) per-sample gradients equal a Python loop of autograd (index and soft targets)."""
    x, target, params, weights = make_problem(device)
    manual, twin = manual_and_twin(path, target)
    per_row_targets = (target, torch.softmax(weights, 1)) if path == "loss" else (weights,)

    def one_row(fn_loss, fn_network, p, xi, ti):
        return fn_loss(xi, ti, *p) if path == "loss" else (fn_network(xi, *p) * ti).sum()

    for per_row in per_row_targets:
        manual_row = lambda p, xi, ti: one_row(functional.two_layer_net_loss, manual, p, xi, ti)  # noqa: E731
        per_sample = torch.func.vmap(torch.func.grad(manual_row), in_dims=(None, 0, 0))(tuple(params), x, per_row)
        for n in range(x.shape[0]):
            leaves = [p.detach().requires_grad_() for p in params]
            expected = torch.autograd.grad(one_row(reference.loss, twin, leaves, x[n], per_row[n]), leaves)
            assert_all_close(tuple(g[n] for g in per_sample), expected, f"per-sample gradient of row {n}")


def check_jacrev_hessian(path: str, device: str) -> None:
    """torch.func.jacrev and hessian equal the twin's."""
    x, target, params, weights = make_problem(device)
    manual, twin = manual_and_twin(path, target)
    primal = (x, *params)
    argnums = (0, 1, 2, 3, 4)
    assert_all_close(
        torch.func.jacrev(manual, argnums=argnums)(*primal), torch.func.jacrev(twin, argnums=argnums)(*primal), "jacrev"
    )
    assert_all_close(
        torch.func.hessian(scalar_objective(path, manual, weights), argnums=argnums)(*primal),
        torch.func.hessian(scalar_objective(path, twin, weights), argnums=argnums)(*primal),
        "hessian",
    )


def run_path(model: TwoLayerNet, path: str, x: Tensor, target: Tensor) -> Tensor:
    if path == "loss":
        return model.loss(x, target)
    return model(x) if path == "probs" else model.logits(x)


def check_compile(path: str, device: str, backend: str = "inductor") -> None:
    """torch.compile(fullgraph=True) of the forward and of a training step equals eager."""
    torch.manual_seed(0)
    model = TwoLayerNet(2, 16, 3, device=device)
    x = torch.randn(8, 2, device=device)
    target = torch.randint(0, 3, (8,), device=device)
    weights = torch.randn(8, 3, device=device)

    def forward(x):
        return run_path(model, path, x, target)

    def step(x):
        value = scalar_objective(path, forward, weights)(x)
        value.backward()
        return value.detach()

    torch._dynamo.reset()
    try:
        compiled = torch.compile(forward, fullgraph=True, backend=backend)(x)
        assert_all_close(compiled, forward(x), "compiled forward", rtol=1e-5, atol=1e-6)
        model.zero_grad()
        eager = step(x)
        eager_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            compiled = torch.compile(step, fullgraph=True, backend=backend)(x)
        assert_all_close(compiled, eager, "compiled step value", rtol=1e-5, atol=1e-6)
        assert_all_close([p.grad for p in model.parameters()], eager_grads, "compiled step grads", 1e-5, 1e-6)
    finally:
        torch._dynamo.reset()


def autocast_dtypes(device: str) -> list[torch.dtype]:
    return [torch.bfloat16] if device == "cpu" else [torch.float16, torch.bfloat16]


def check_autocast(path: str, device: str) -> None:
    """Under autocast: runs, finite, close to float32, gradients in the parameters' dtype."""
    torch.manual_seed(0)
    model = TwoLayerNet(2, 32, 3, device=device)
    x = torch.randn(16, 2, device=device)
    target = torch.randint(0, 3, (16,), device=device)
    weights = torch.randn(16, 3, device=device)

    def run(inputs: Tensor) -> tuple[Tensor, list[Tensor]]:
        model.zero_grad()
        out = run_path(model, path, inputs, target)
        (out if path == "loss" else (out.float() * weights).sum()).backward()
        return out.detach().float(), [p.grad.clone() for p in model.parameters()]

    reference_out, reference_grads = run(x)
    for dtype in autocast_dtypes(device):
        with torch.autocast(device, dtype=dtype):
            out, grads = run(x.to(dtype))  # x as an earlier autocast layer hands it over
        if not torch.isfinite(out).all():
            raise AssertionError(f"non-finite output under autocast {dtype}")
        for g, p in zip(grads, model.parameters()):
            if g.dtype != p.dtype or not torch.isfinite(g).all():
                raise AssertionError(f"gradient of dtype {g.dtype} (parameter {p.dtype}), finite: {g.isfinite().all()}")
        assert_all_close(out, reference_out, f"output under autocast {dtype}", rtol=2e-2, atol=2e-2)
        assert_all_close(grads, reference_grads, f"gradients under autocast {dtype}", rtol=5e-2, atol=5e-3)


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
    """state_dict, deepcopy, torch.save/load, .to(), .double(), optimizers, accumulation, no_grad."""
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
    sum(_weighted_sum(run_path(whole, path, x[h], target[h]), path) for h in halves).backward()
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


# ----------------------------------------------------------------------------------------
# DistributedDataParallel
# ----------------------------------------------------------------------------------------


def training_objective(model: torch.nn.Module, path: str, x: Tensor, target: Tensor) -> Tensor:
    """What a user trains: the loss, or cross-entropy of the probs or logits path."""
    if path == "loss":
        return model(x, target)  # TwoLayerNet.forward(x, target) returns the loss: DDP only sees forward
    out = model.logits(x) if path == "logits" else model(x).log()
    return F.cross_entropy(out, target)


class _Objective(torch.nn.Module):
    """The probs or logits path and a loss in one forward, as DDP needs."""

    def __init__(self, model: TwoLayerNet, path: str) -> None:
        super().__init__()
        self.model, self.path = model, path

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        return training_objective(self.model, self.path, x, target)


def _ddp_data() -> tuple[TwoLayerNet, Tensor, Tensor]:
    torch.manual_seed(0)
    model = TwoLayerNet(2, 16, 3)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(2))
    return model, x, target


def _ddp_rank_gradients(path: str, rank: int) -> list[Tensor]:
    """One DDP step of ``path`` on this rank's 4 rows; the all-reduced parameter gradients."""
    from torch.nn.parallel import DistributedDataParallel

    model, x, target = _ddp_data()
    rows = slice(rank * 4, rank * 4 + 4)
    wrapped = DistributedDataParallel(model if path == "loss" else _Objective(model, path))
    wrapped(x[rows], target[rows]).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def _ddp_worker(rank: int, world_size: int, folder: str) -> None:
    import torch.distributed as dist

    # rendezvous through a file, not a TCP port chosen in advance (which another process may take
    # before the workers bind it); gloo itself then connects the two ranks over loopback
    if sys.platform.startswith("linux"):  # elsewhere gloo finds the interface from the host name
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    store = f"file://{os.path.join(folder, 'rendezvous')}"
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world_size)
    try:
        results = {path: _ddp_rank_gradients(path, rank) for path in PATHS}  # the DDP wrappers are gone
        if rank == 0:
            torch.save(results, os.path.join(folder, "grads.pt"))
        dist.barrier()  # neither rank tears down while the other still talks
    finally:
        dist.destroy_process_group()
    # Leave without interpreter finalisation: gloo's threads can still be winding down then, and
    # their destructors abort the process now and then ("terminate called without an active
    # exception", SIGABRT), failing a run whose gradients were already written.
    os._exit(0)


@functools.lru_cache(maxsize=1)
def ddp_gradients() -> dict[str, list[Tensor]]:
    """Gradients on rank 0 after DDP training of every path, 2 gloo processes on loopback (one launch)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(_ddp_worker, args=(2, folder), nprocs=2, start_method="spawn")
        return torch.load(os.path.join(folder, "grads.pt"), weights_only=True)


def check_ddp(path: str, device: str) -> None:
    """DDP (gloo, 2 processes on loopback): all-reduced gradients equal the single-process
    gradients of the concatenated batch."""
    if device != "cpu":
        raise NotApplicable("the DDP check runs gloo on the CPU")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        raise NotApplicable("torch.distributed with gloo is not available")
    model, x, target = _ddp_data()
    training_objective(model, path, x, target).backward()  # the mean over 8 rows == the average of two means over 4
    expected = [p.grad for p in model.parameters()]
    assert_all_close(ddp_gradients()[path], expected, "DDP vs concatenated batch", 1e-5, 1e-6)


CHECKS: dict[str, Callable[[str, str], None]] = {
    "double backward, HVP": check_double_backward,
    "forward AD, jvp, jacfwd": check_forward_ad,
    "vmap, batched gradcheck": check_vmap,
    "vmap(grad) per-sample": check_per_sample_gradients,
    "jacrev, hessian": check_jacrev_hessian,
    "torch.compile fullgraph": check_compile,
    "autocast": check_autocast,
    "module contracts": check_module_contracts,
    "DDP (gloo, 2 procs)": check_ddp,
}


def conformance_matrix(
    devices: Sequence[str] = ("cpu",), paths: Sequence[str] = PATHS, checks: Sequence[str] | None = None
) -> list[tuple[str, str, str, str, str]]:
    """(check, path, device, status, detail) for every cell; status is pass, fail or skipped."""
    cells = []
    for name in checks or CHECKS:
        for device in devices:
            for path in paths:
                try:
                    CHECKS[name](path, device)
                except NotApplicable as reason:
                    cells.append((name, path, device, "skipped", str(reason)))
                except Exception as error:  # a failing check is a cell of the matrix, not a crash
                    lines = str(error).strip().splitlines()
                    cells.append((name, path, device, "fail", f"{type(error).__name__}: {lines[0] if lines else ''}"))
                else:
                    cells.append((name, path, device, "pass", ""))
    return cells
