"""The benchmark's tables of the loss step: times with their ratios, bytes saved for backward, peaks."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from .bench_loss import CLASSES, IN_FEATURES, SizeResult

PATHS = ("manualgrad", "autograd", "compile", "numpy")
NETWORK_PATHS = ("probs", "logits", "loss")


def _time(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def format_times(results: Sequence[SizeResult]) -> str:
    head = f"{'device':6s} {'N':>6s} " + " ".join(f"{p:>11s}" for p in PATHS)
    head += f" {'autograd/mg':>12s} {'compile/mg':>11s} {'numpy/mg':>9s} {'grad err':>9s}"
    lines = ["Time per training step (median; ratio = other path's time / manualgrad's)", head, "-" * len(head)]
    for r in results:
        times = " ".join(f"{_time(r.times.get(p)):>11s}" for p in PATHS)
        ratios = f" {_ratio(r.ratio('autograd')):>12s} {_ratio(r.ratio('compile')):>11s} {_ratio(r.ratio('numpy')):>9s}"
        lines.append(f"{r.device:6s} {r.N:>6d} {times}{ratios} {r.max_grad_error:>9.1e}")
    return "\n".join(lines)


def format_memory(results: Sequence[SizeResult]) -> str:
    kinds = (("packed", "saved_packed"), ("distinct", "saved_distinct"), ("held", "saved_held"))
    head = f"{'device':6s} {'N':>6s} {'path':6s}" + "".join(
        f" | {kind + ': mg':>13s} {'autograd':>9s} {'ratio':>6s}" for kind, _ in kinds
    )
    lines = [
        "Bytes saved for backward, manualgrad (mg) against autograd: packed = every packed tensor,",
        "distinct = each storage once, held = distinct less x, target and the parameters (alive anyway)",
        head,
        "-" * len(head),
    ]
    for r in results:
        for path in NETWORK_PATHS:
            cells = ""
            for _, attribute in kinds:
                table = getattr(r, attribute)
                mine, theirs = table[f"manualgrad {path}"], table[f"autograd {path}"]
                cells += f" | {_bytes(mine):>13s} {_bytes(theirs):>9s} {_share(mine, theirs):>6s}"
            lines.append(f"{r.device:6s} {r.N:>6d} {path:6s}{cells}")
    head = f"{'device':6s} {'N':>6s} " + " ".join(f"{p:>11s}" for p in PATHS) + f" {'mg/autograd':>12s}"
    lines += ["", "Peak memory of one step, above what was allocated before it", head, "-" * len(head)]
    for r in results:
        peaks = " ".join(f"{_bytes(r.peak_bytes.get(p)):>11s}" for p in PATHS)
        lines.append(
            f"{r.device:6s} {r.N:>6d} {peaks} {_share(r.peak_bytes['manualgrad'], r.peak_bytes['autograd']):>12s}"
        )
    return "\n".join(lines)


def machine_load() -> str:
    """The machine's 1-minute load average with its core count: a loaded machine moves every time."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return "load unknown"
    return f"load {load:.1f} on {os.cpu_count()} cores"


def _share(mine: int, theirs: int) -> str:
    return f"{mine / theirs:.1%}" if theirs else "-"


# ----------------------------------------------------------------------------------------


def threads() -> str:
    """The process's intra-op thread count, as a phrase: "1 thread", "2 threads"."""
    count = torch.get_num_threads()
    return f"{count} thread{'' if count == 1 else 's'}"


def plot_title(device: str, hidden: int) -> str:
    machine = _machine() if device == "cpu" else torch.cuda.get_device_name()
    return f"training step, float32, D={IN_FEATURES} H={hidden} C={CLASSES}; {machine}, {threads()}"


def _machine() -> str:
    """The CPU's model name (lscpu's), or the platform's processor."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
