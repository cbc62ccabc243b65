"""Checks of PyTorch's transforms and modes: vmap, per-sample gradients, torch.compile,
torch.export, autocast, memory saved for backward, CUDA.

Like :mod:`.checks_autograd`: each check takes a Case and returns ``(passed, message)`` or
raises Skip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .case import (
    ATOL,
    RTOL,
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
from .checks_autograd import require_gradients, run_with_gradients

# torch.compile's backend for the value/gradient check: Dynamo and AOTAutograd trace the
# Function exactly as with inductor (that is where a Function is refused), without the C++
# code generation that would cost seconds per graph on a small CPU.
COMPILE_BACKEND = "aot_eager"
PER_SAMPLE_LIMIT = 16  # samples compared one by one against the reference
SAVED_BYTES_RATIO, SAVED_BYTES_SLACK = 2.0, 256


def require_batch(case: Case) -> list[bool]:
    batched = case.batched
    if case.batch_size is None or not any(batched):
        raise Skip(f"no input has a batch dimension {case.batch_dim}")
    return batched


def one_sample_function(
    fn: Callable[..., Any], case: Case, batched: list[bool]
) -> tuple[Callable[..., Any], tuple[int | None, ...]]:
    """fn of one sample (batch dimension removed), calling fn on a batch of one; its vmap in_dims."""
    dim = case.batch_dim or 0

    def one(*args: Any) -> Any:
        return fn(*(a.unsqueeze(dim) if b else a for a, b in zip(args, batched)))

    return one, tuple(dim if b else None for b in batched)


def sample(inputs: Sequence[Any], batched: list[bool], dim: int, n: int) -> list[Any]:
    return [t.detach().select(dim, n) if b else t.detach() for t, b in zip(inputs, batched)]


def check_vmap(case: Case) -> tuple[bool, str]:
    """torch.func.vmap over the batch dimension, against the reference sample by sample."""
    batched = require_batch(case)
    one, in_dims = one_sample_function(case.fn, case, batched)
    inputs = [t.detach() if isinstance(t, Tensor) else t for t in case.inputs]
    mapped = outputs(torch.func.vmap(one, in_dims=in_dims)(*inputs))
    reference_one, _ = one_sample_function(case.reference, case, batched)
    actual: list[Tensor] = []
    expected: list[Tensor] = []
    dim = case.batch_dim or 0
    for n in range(min(case.batch_size or 0, PER_SAMPLE_LIMIT)):
        with torch.no_grad():
            expected += outputs(reference_one(*sample(inputs, batched, dim, n)))
        actual += [m[n] for m in mapped]
    names = [f"sample {n} {o}" for n in range(len(actual) // len(mapped)) for o in output_names(len(mapped))]
    return compare_all("vmap", actual, expected, names, case, max_parts=3)


def check_per_sample_grad(case: Case) -> tuple[bool, str]:
    """vmap(grad(...)) per-sample gradients, against autograd on the reference one sample at a time."""
    positions = require_gradients(case)
    batched = require_batch(case)
    dim = case.batch_dim or 0
    generator = case.generator()
    inputs = [t.detach() if isinstance(t, Tensor) else t for t in case.inputs]
    with torch.no_grad():
        first = differentiable_outputs(
            one_sample_function(case.reference, case, batched)[0](*sample(inputs, batched, dim, 0))
        )
    weights = [random_like(o, generator) for o in first]

    def objective(fn: Callable[..., Any]) -> tuple[Callable[..., Tensor], tuple[int | None, ...]]:
        one, in_dims = one_sample_function(fn, case, batched)

        def weighted(*args: Any) -> Tensor:
            return weighted_sum(differentiable_outputs(one(*args)), weights)

        return weighted, in_dims

    manual_objective, in_dims = objective(case.fn)
    per_sample = torch.func.vmap(torch.func.grad(manual_objective, argnums=tuple(positions)), in_dims=in_dims)(*inputs)
    reference_objective, _ = objective(case.reference)
    actual: list[Tensor] = []
    expected: list[Tensor] = []
    names: list[str] = []
    for n in range(min(case.batch_size or 0, PER_SAMPLE_LIMIT)):
        args: list[Any] = sample(inputs, batched, dim, n)
        leaves = [args[i].requires_grad_() for i in positions]
        expected += torch.autograd.grad(reference_objective(*args), leaves, allow_unused=True, materialize_grads=True)
        actual += [g[n] for g in per_sample]
        names += [f"sample {n} {name}" for name in input_names(case, positions)]
    return compare_all("grad", actual, expected, names, case, max_parts=3)


def check_compile(case: Case) -> tuple[bool, str]:
    """torch.compile(fullgraph=True): values and gradients against the reference (eager)."""
    torch._dynamo.reset()
    try:
        compiled = torch.compile(case.fn, fullgraph=True, backend=COMPILE_BACKEND)
        if not case.differentiable:
            with torch.no_grad():
                actual, expected = outputs(compiled(*copy_inputs(case.inputs))), outputs(case.reference(*case.inputs))
            return compare_all("", actual, expected, output_names(len(expected)), case)
        actual, grads, upstream = run_with_gradients(compiled, case, copy_inputs(case.inputs))
    finally:
        torch._dynamo.reset()
    expected, expected_grads, _ = run_with_gradients(case.reference, case, copy_inputs(case.inputs), upstream)
    names = [*output_names(len(expected)), *(f"grad {n}" for n in input_names(case, case.differentiable))]
    return compare_all("", [*actual, *grads], [*expected, *expected_grads], names, case)


def resize_batch(case: Case, batched: list[bool], size: int) -> tuple[object, ...]:
    """The inputs with ``size`` samples (the example's samples repeated cyclically)."""
    dim, n = case.batch_dim or 0, case.batch_size or 1
    rows = torch.arange(size) % n
    resized = [
        t.detach().index_select(dim, rows.to(t.device)).requires_grad_(t.requires_grad) if b else t
        for t, b in zip(copy_inputs(case.inputs), batched)
    ]
    return tuple(resized)


def batch_sizes(case: Case) -> tuple[int, int, int]:
    n = max(case.batch_size or 2, 2)  # sizes 0 and 1 are always specialized
    return n, n + 3, 2 * n + 5


def check_compile_dynamic(case: Case) -> tuple[bool, str]:
    """torch.compile(dynamic=True, fullgraph=True) over three batch sizes compiles one graph."""
    batched = require_batch(case)
    graphs: list[torch.fx.GraphModule] = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Callable[..., Any]:
        graphs.append(gm)
        return gm.forward

    sizes = batch_sizes(case)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(case.fn, dynamic=True, fullgraph=True, backend=counting_backend)
        for size in sizes:
            inputs = resize_batch(case, batched, size)
            outs = differentiable_outputs(compiled(*inputs))
            if case.differentiable and any(o.requires_grad for o in outs):
                torch.autograd.backward(
                    [o for o in outs if o.requires_grad], [torch.ones_like(o) for o in outs if o.requires_grad]
                )
    finally:
        torch._dynamo.reset()
    message = f"{len(graphs)} graph(s) for batch sizes {', '.join(map(str, sizes))}"
    return len(graphs) == 1, message + ("" if len(graphs) == 1 else ": recompiled for a new batch size")


def check_export(case: Case) -> tuple[bool, str]:
    """torch.export with a dynamic batch dimension, then run at another batch size against the reference."""
    batched = require_batch(case)
    fn = case.fn

    class Wrapper(torch.nn.Module):
        def forward(self, *args: Any) -> Any:
            return fn(*args)

    batch = torch.export.Dim("batch", min=2)
    dynamic_shapes = tuple({case.batch_dim: batch} if b else None for b in batched)
    example = tuple(t.detach() if isinstance(t, Tensor) else t for t in case.inputs)
    program = torch.export.export(Wrapper(), example, dynamic_shapes=(dynamic_shapes,))
    size = batch_sizes(case)[1]
    inputs = tuple(t.detach() if isinstance(t, Tensor) else t for t in resize_batch(case, batched, size))
    with torch.no_grad():
        actual, expected = outputs(program.module()(*inputs)), outputs(case.reference(*inputs))
    ok, message = compare_all("", actual, expected, output_names(len(expected)), case)
    return ok, f"exported with a dynamic batch, run at batch {size}: {message}"


def autocast_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if device == "cpu" else torch.float16


def first_device(case: Case) -> str:
    return next(t.device.type for t in case.inputs if isinstance(t, Tensor))


def run_autocast(
    fn: Callable[..., Any], case: Case, device: str, dtype: torch.dtype, upstream: Sequence[Tensor] | None = None
) -> tuple[tuple[Tensor, ...], tuple[Tensor | None, ...], Sequence[Tensor]]:
    inputs = copy_inputs(case.inputs, dtype=torch.float32)
    with torch.autocast(device, dtype=dtype):
        value = outputs(fn(*inputs))
    outs = [o for o in value if o.is_floating_point()]
    if upstream is None:
        generator = case.generator()
        upstream = [random_like(o, generator) for o in outs]
    grads: tuple[Tensor | None, ...] = ()
    if case.differentiable:  # backward outside autocast, as the AMP recipe does
        leaves = [inputs[i] for i in case.differentiable]
        grads = torch.autograd.grad(outs, leaves, [u.to(o.dtype) for u, o in zip(upstream, outs)], allow_unused=True)
    return value, grads, upstream


def check_autocast(case: Case) -> tuple[bool, str]:
    """Autocast (CPU bfloat16, CUDA float16): output dtype and error against the reference under it.

    float32 inputs; the output must be no narrower than the reference's under the same autocast,
    values and gradients within the autocast dtype's tolerance of the reference's.
    """
    device = first_device(case)
    if device not in ("cpu", "cuda"):
        raise Skip(f"no autocast check for device {device}")
    dtype = autocast_dtype(device)
    actual, grads, upstream = run_autocast(case.fn, case, device, dtype)
    expected, expected_grads, _ = run_autocast(case.reference, case, device, dtype, upstream)
    for i, (a, b) in enumerate(zip(actual, expected)):
        if a.is_floating_point() and a.dtype.itemsize < b.dtype.itemsize:
            return False, f"output {i} is {a.dtype} under autocast, reference {b.dtype} (precision lost)"
    names = [*output_names(len(expected)), *(f"grad {n}" for n in input_names(case, case.differentiable))]
    ok, message = compare_all(
        "", [*actual, *grads], [*expected, *expected_grads], names, case, tolerance=(RTOL[dtype], ATOL[dtype])
    )
    dtypes = ", ".join(str(o.dtype).removeprefix("torch.") for o in actual)
    return ok, f"{str(dtype).removeprefix('torch.')} autocast, output {dtypes}: {message}"


def saved_bytes(fn: Callable[..., Any], inputs: Sequence[Any]) -> int:
    """Bytes of the storages autograd saves for backward while fn runs (saved_tensors_hooks)."""
    storages: dict[tuple[int, str], int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        storages[(storage.data_ptr(), str(t.device))] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return sum(storages.values())


def check_saved_memory(case: Case) -> tuple[bool, str]:
    """Bytes saved for backward, against the reference's: at most SAVED_BYTES_RATIO times as many."""
    require_gradients(case)
    actual = saved_bytes(case.fn, copy_inputs(case.inputs))
    expected = saved_bytes(case.reference, copy_inputs(case.inputs))
    limit = SAVED_BYTES_RATIO * expected + SAVED_BYTES_SLACK
    message = f"saves {actual / 1024:.1f} KiB for backward, reference {expected / 1024:.1f} KiB"
    return actual <= limit, message + ("" if actual <= limit else f" (more than {SAVED_BYTES_RATIO:g}x)")


def check_cuda(case: Case) -> tuple[bool, str]:
    """fn on CUDA against the reference on the CPU: values and gradients."""
    if not torch.cuda.is_available():
        raise Skip("no CUDA device")
    cuda = copy_inputs(case.inputs, device="cuda")
    cpu = copy_inputs(case.inputs, device="cpu")
    if not case.differentiable:
        with torch.no_grad():
            actual, expected = outputs(case.fn(*cuda)), outputs(case.reference(*cpu))
        return compare_all("", actual, expected, output_names(len(expected)), case)
    actual, grads, upstream = run_with_gradients(case.fn, case, cuda)
    expected, expected_grads, _ = run_with_gradients(case.reference, case, cpu, [u.cpu() for u in upstream])
    names = [*output_names(len(expected)), *(f"grad {n}" for n in input_names(case, case.differentiable))]
    return compare_all("", [*actual, *grads], [*expected, *expected_grads], names, case)
