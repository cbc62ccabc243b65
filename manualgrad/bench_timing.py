r"""Interleaved timing for the benchmark: blocks as ``torch.utils.benchmark`` makes them, at the
process's own thread settings, gathered into ``torch.utils.benchmark.Measurement``\ s."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils import benchmark

Step = Callable[[], object]


def blocked_autorange(step: Step, device: str, min_run_time: float) -> tuple[int, list[float]]:
    """(number per block, seconds per block): blocks of at least 10 ms, for at least min_run_time.

    The same scheme as ``torch.utils.benchmark.Timer.blocked_autorange``, which cannot be used
    itself: it calls ``torch.set_num_threads`` around every measurement, and after that call
    MKL's vectorised math (``torch.tanh``, ``exp``) spreads even 500-element tensors over all
    threads, which slows autograd's small steps several-fold (and on a loaded machine makes
    each such op wait for a time slice, milliseconds). Here threads stay as the process has them.
    """

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def block(number: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(number):
            step()
        sync()
        return time.perf_counter() - start

    number, block_time = 1, min(0.01, min_run_time)
    while (elapsed := block(number)) < block_time:
        number *= 10 if elapsed < block_time / 10 else 2
    times, total = [elapsed], elapsed
    while total < min_run_time:
        times.append(block(number))
        total += times[-1]
    return number, times


def time_steps(
    steps: dict[str, Step], N: int, hidden: int, device: str, repeats: int, min_run_time: float
) -> list[benchmark.Measurement]:
    """Interleaved timing of every step, ``repeats`` rounds; one Measurement per step (all blocks)."""
    blocks: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            number, times = blocked_autorange(step, device, min_run_time)
            blocks[name] += [t / number for t in times]
    return [
        benchmark.Measurement(
            number_per_run=1,
            raw_times=times,
            task_spec=benchmark.utils.common.TaskSpec(
                stmt=f"{name} step",
                setup="",
                label=f"one training step, float32, H={hidden}",
                sub_label=f"{device} N={N}",
                description=name,
                num_threads=torch.get_num_threads(),
            ),
        )
        for name, times in blocks.items()
    ]
