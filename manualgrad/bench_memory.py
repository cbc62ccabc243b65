"""Memory of a step: bytes saved for backward (``saved_tensors_hooks``) and the allocator's peak.

* ``saved_bytes``: ``packed`` sums numel * element_size over every packed tensor, ``distinct``
  counts each storage once (autograd packs a1 twice, for tanh and for the matmul, but holds it
  once), ``held`` leaves out x, the target and the parameters, alive anyway: what the graph keeps
  from being freed;
* ``peak_step_bytes``: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU, PyTorch has no
  allocator statistics, so the step runs once under ``torch.profiler`` with ``profile_memory=True``
  and the peak is the maximum of the running sum of its allocation and free events (tensor storage
  from PyTorch's CPU allocator; BLAS scratch space is not seen); numpy's through ``tracemalloc``,
  which numpy reports its array buffers to.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Sequence

import torch

from . import reference
from .module import TwoLayerNet

Step = Callable[[], object]


def saved_bytes(fn: Callable[[], object], inputs: Sequence[torch.Tensor] = ()) -> tuple[int, int, int]:
    """Bytes that fn() saves for backward: (packed, distinct, held).

    packed sums numel * element_size over every packed tensor; distinct counts each storage
    once; held leaves out the storages of ``inputs`` (x, target, parameters: alive anyway),
    which is the memory the graph keeps from being freed.

    Example:
        >>> x = torch.ones(1000, requires_grad=True)
        >>> saved_bytes(lambda: (x * x).sum(), [x])  # mul saves x twice: 2 x 4000 bytes, one storage, held by x
        (8000, 4000, 0)
    """
    packed = 0
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal packed
        size = tensor.numel() * tensor.element_size()
        packed += size
        key = tensor.untyped_storage().data_ptr()
        storages[key] = max(storages.get(key, 0), size)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    alive = {t.untyped_storage().data_ptr() for t in inputs}
    held = sum(size for key, size in storages.items() if key not in alive)
    return packed, sum(storages.values()), held


def network_paths(model: TwoLayerNet, x: torch.Tensor, target: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The forward of each path, manualgrad and its native-autograd twin."""
    params = (model.W1, model.b1, model.W2, model.b2)
    return {
        "manualgrad probs": lambda: model(x),
        "autograd probs": lambda: reference.probs(x, *params),
        "manualgrad logits": lambda: model.logits(x),
        "autograd logits": lambda: reference.logits(x, *params),
        "manualgrad loss": lambda: model.loss(x, target),
        "autograd loss": lambda: reference.loss(x, target, *params),
    }


def peak_step_bytes(step: Step, device: str) -> int:
    """Peak bytes allocated during one step, above what was allocated before it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU  # type: ignore[attr-defined]
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def peak_numpy_bytes(step: Step) -> int:
    tracemalloc.start()
    try:
        step()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
