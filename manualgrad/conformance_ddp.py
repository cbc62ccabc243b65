"""The DDP check of :mod:`manualgrad.conformance`: DistributedDataParallel (gloo, 2 processes
on loopback) against the native-autograd twin's gradients on the concatenated batch."""

from __future__ import annotations

import functools
import os
import sys
import tempfile

import torch
import torch.nn.functional as F
from torch import Tensor

from .conformance import PATHS, assert_all_close, parameter_grads, training_objective, twin_path
from .module import TwoLayerNet

__all__ = ["compare_ddp_with_twin", "ddp_gradients"]


def twin_objective(model: TwoLayerNet, path: str, x: Tensor, target: Tensor) -> Tensor:
    """training_objective with the native-autograd twin on the model's parameters."""
    out = twin_path(model, path, x, target)
    if path == "loss":
        return out
    return F.cross_entropy(out if path == "logits" else out.log(), target)


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
    return parameter_grads(model)


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
    from torch.multiprocessing.spawn import start_processes

    with tempfile.TemporaryDirectory() as folder:
        start_processes(_ddp_worker, args=(2, folder), nprocs=2, start_method="spawn")
        gradients: dict[str, list[Tensor]] = torch.load(os.path.join(folder, "grads.pt"), weights_only=True)
        return gradients


def compare_ddp_with_twin(path: str) -> None:
    """DDP's all-reduced gradients of ``path`` against the twin's on the concatenated batch.

    Raises:
        AssertionError: gradients off the twin's.
    """
    model, x, target = _ddp_data()
    twin_objective(model, path, x, target).backward()  # the mean over 8 rows == the average of two means over 4
    expected = [p.grad for p in model.parameters()]
    assert_all_close(ddp_gradients()[path], expected, "DDP vs concatenated batch", 1e-5, 1e-6)
