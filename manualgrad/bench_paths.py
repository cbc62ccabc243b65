"""Benchmark every way PyTorch code trains the network, manualgrad against eager autograd.

A step is one forward, a loss on top, and every parameter gradient (``.backward()``), float32,
D=2, H=500, C=2, class-index targets. Four paths, each written once with manualgrad's module
and once, the same code, with its native-autograd twin ``manualgrad.reference.AutogradNet`` (an
``nn.Module`` called as ``TwoLayerNet`` is, so that both sides pay the same module call):

* ``loss``: ``model.loss(x, t)`` (the fused loss);
* ``cross_entropy``: ``F.cross_entropy(model.logits(x), t)``;
* ``nll_log_probs``: ``F.nll_loss(model(x).log(), t)``;
* ``square_mean``: ``model.logits(x).square().mean()``;

and a whole training step of the ``loss`` path with an optimizer (``sgd``, ``adam``: zero_grad,
loss, backward, ``optimizer.step()``) beside the bare step. Timing is interleaved: in each
round, manualgrad and autograd of one path run back to back, ``SUBBLOCKS`` blocks each of the same
number of steps in the order A B B A, and the round gives one ratio (autograd time /
manualgrad time). The table shows the
median ratio over rounds and its spread (min-max); a ratio whose spread exceeds ``NOISY``
of its median is flagged ``?``: the machine was too noisy for that figure to be trusted.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from . import reference
from .bench_loss import make_problem  # the loss benchmark's problem: same seed, same data

PATHS = ("loss", "cross_entropy", "nll_log_probs", "square_mean")
OPTIMIZERS = ("sgd", "adam")
OPTIMIZER_SIZES = (32, 4096)
NOISY = 0.25  # spread (max - min) / median above which a ratio is flagged
SUBBLOCKS = 2  # blocks of each side per round, in the order A B B A (:func:`_abba_round`), each of min_block

# the targets (issue 13): path -> [(N, the ratio it must reach at that N)]
TARGETS = {
    "loss": [(1, 0.85), (32, 1.0), (4096, 4.0), (65536, 8.0)],
    "cross_entropy": [(1, 0.85), (32, 1.0), (4096, 3.0), (65536, 3.0)],
    "nll_log_probs": [(1, 0.85), (32, 1.0), (4096, 3.0), (65536, 3.0)],
    "square_mean": [(1, 0.85), (32, 1.0), (4096, 3.0), (65536, 3.0)],
}

Step = Callable[[], object]


@dataclass
class PathResult:
    device: str
    path: str
    N: int
    manualgrad: float  # median seconds per step
    autograd: float
    ratios: list[float] = field(default_factory=list)  # one per round

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios) if self.ratios else math.nan

    @property
    def spread(self) -> tuple[float, float]:
        return (min(self.ratios), max(self.ratios)) if self.ratios else (math.nan, math.nan)

    @property
    def noisy(self) -> bool:
        low, high = self.spread
        return not (high - low) <= NOISY * self.ratio


def _loss(path: str) -> Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss of one path as a function of (model, x, t): the same code for manualgrad's
    ``TwoLayerNet`` and for its twin ``reference.AutogradNet``."""
    if path == "loss":
        return lambda m, x, t: m.loss(x, t)
    if path == "cross_entropy":
        return lambda m, x, t: F.cross_entropy(m.logits(x), t)
    if path == "nll_log_probs":
        return lambda m, x, t: F.nll_loss(m(x).log(), t)
    if path == "square_mean":
        return lambda m, x, t: m.logits(x).square().mean()
    raise ValueError(f"unknown path {path!r}")


def make_steps(path: str, N: int, hidden: int, device: str, optimizer: str | None = None) -> tuple[Step, Step]:
    """(manualgrad step, autograd step) of one path, each on its own copy of the same model."""
    model, x, target = make_problem(N, hidden, device)
    twin = reference.AutogradNet(*make_problem(N, hidden, device)[0].parameters())  # the same values, its own
    path_loss = _loss("loss" if optimizer else path)

    def stepper(loss: Callable[[], torch.Tensor], params: Sequence[torch.Tensor]) -> Step:
        opt: torch.optim.Optimizer | None = None
        if optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        elif optimizer == "adam":
            opt = torch.optim.Adam(params, lr=1e-4)

        def step() -> None:
            for p in params:
                p.grad = None
            loss().backward()
            if opt is not None:
                opt.step()

        return step

    return (
        stepper(lambda: path_loss(model, x, target), list(model.parameters())),
        stepper(lambda: path_loss(twin, x, target), list(twin.parameters())),
    )


def _block(step: Step, number: int, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(number):
        step()
    sync()
    return (time.perf_counter() - start) / number


def _abba_round(mine: Step, theirs: Step, number: int, sync: Callable[[], None]) -> tuple[float, float]:
    """(mine, theirs) seconds per step over one round: ``SUBBLOCKS`` blocks of each, in the order
    A B B A (A B B A A B B A for four), so that a drift in the machine's speed during the round (another tenant, a
    clock change) weighs on both alike instead of on whichever ran second."""
    totals = [0.0, 0.0]  # mine, theirs
    for i in range(SUBBLOCKS):
        for side in (0, 1) if i % 2 == 0 else (1, 0):
            totals[side] += _block((mine, theirs)[side], number, sync)
    return totals[0] / SUBBLOCKS, totals[1] / SUBBLOCKS


def time_pair(mine: Step, theirs: Step, device: str, rounds: int, min_block: float) -> tuple[list[float], list[float]]:
    """Seconds per step of each, ``rounds`` interleaved rounds of ``SUBBLOCKS`` blocks of each side
    (:func:`_abba_round`), every block the same number of steps, at least min_block s of autograd's.
    Not shorter: the first steps after the other side ran pay for the caches and allocations it
    left, and in a short block that cost weighs most on the faster side (with four blocks of a
    quarter of the time, the loss at N=4096 measured 3.5x-3.8x, against 3.87x-4.15x in full blocks)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    mine(), theirs()  # warm-up
    number = 1
    while _block(theirs, number, sync) * number < min_block and number < 1 << 20:
        number *= 2
    mine_times, their_times = [], []
    for _ in range(rounds):
        mine_time, their_time = _abba_round(mine, theirs, number, sync)
        mine_times.append(mine_time)
        their_times.append(their_time)
    return mine_times, their_times


def run(
    sizes: Sequence[int],
    hidden: int,
    device: str,
    *,
    rounds: int,
    min_block: float,
    optimizer_sizes: Sequence[int] = OPTIMIZER_SIZES,
    log: Callable[[str], None] = print,
) -> list[PathResult]:
    """Every path at every N, then the optimizer steps at ``optimizer_sizes``."""
    cases: list[tuple[str, int, str | None]] = [(path, N, None) for N in sizes for path in PATHS]
    cases += [(f"loss+{opt}", N, opt) for N in optimizer_sizes for opt in OPTIMIZERS]
    results = []
    for name, N, opt in cases:
        log(f"  paths {device} N={N} {name} ...")
        mine, theirs = make_steps(name, N, hidden, device, opt)
        mine_times, their_times = time_pair(mine, theirs, device, rounds, min_block)
        results.append(
            PathResult(
                device,
                name,
                N,
                statistics.median(mine_times),
                statistics.median(their_times),
                [t / m for m, t in zip(mine_times, their_times)],
            )
        )
    return results


def _cell(r: PathResult | None) -> str:
    if r is None:
        return "-"
    low, high = r.spread
    return f"{r.ratio:.2f}x [{low:.2f}-{high:.2f}]{'?' if r.noisy else ''}"


def format_table(results: Sequence[PathResult], device: str) -> str:
    """Markdown: N by path, ratio autograd/manualgrad with [min-max] over rounds, ? when noisy."""
    names = list(dict.fromkeys(r.path for r in results))
    by_key = {(r.path, r.N): r for r in results}
    sizes = sorted({r.N for r in results})
    lines = [
        f"Training step, {device}: eager autograd time / manualgrad time, median [min-max] over interleaved rounds "
        f"(? = spread above {NOISY:.0%} of the median: too noisy to trust)",
        "",
        "| N | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for N in sizes:
        lines.append(f"| {N} | " + " | ".join(_cell(by_key.get((n, N))) for n in names) + " |")
    return "\n".join(lines)


# bytes held for backward (saved storages other than x, target and parameters) <= this share of
# autograd's, for probs and logits at N = MEMORY_TARGET_N (issue 13)
MEMORY_TARGET_N, MEMORY_TARGET_SHARE = 65536, 0.10
MEMORY_PATHS = ("probs", "logits")


def busy(load: float | None, cores: int | None) -> bool:
    """Whether the machine had more runnable work than cores (1-minute load average): then every
    timing waits for time slices and a ratio can move far from run to run."""
    return load is not None and bool(cores) and load > cores  # type: ignore[operator]


def _verdict(r: PathResult, at_least: float) -> str:
    verdict = "met" if r.ratio >= at_least else "UNMET"
    if r.spread[0] < at_least <= r.spread[1]:  # some rounds say otherwise
        verdict += " (noisy)" if r.noisy else " (within spread)"
    return verdict


def format_targets(
    results: Sequence[PathResult],
    held: dict[str, tuple[int, int]] | None = None,
    load: tuple[float | None, int | None] = (None, None),
) -> str:
    """One line per target of the issue that this run measured: met, UNMET, or '(noisy)' where the
    spread [min-max] straddles the target, so that the verdict cannot be trusted.

    Args:
        results: the path results (``run``).
        held: for the memory target, path -> (manualgrad bytes held, autograd's) at MEMORY_TARGET_N.
        load: (1-minute load average, cores) of the machine during the run; a busy machine is said.
    """
    by_key = {(r.path, r.N): r for r in results}
    lines = [
        "Targets (median ratio [min-max] over rounds; when the spread straddles the target: '(noisy)' if it "
        f"exceeds {NOISY:.0%} of the median, else '(within spread)')"
    ]
    if busy(*load):
        lines.append(
            f"  machine busy during the run (load {load[0]:.1f} on {load[1]} cores): every ratio may move "
            "from run to run; trust only verdicts whose whole spread clears the target"
        )
    for path, targets in TARGETS.items():
        for N, at_least in targets:
            r = by_key.get((path, N))
            if r is None:
                continue
            low, high = r.spread
            measured = f"{r.ratio:.2f}x [{low:.2f}-{high:.2f}]"
            lines.append(f"  {path:14s} N={N:<6d} >= {at_least:.2f}x: {measured} {_verdict(r, at_least)}")
    for (path, N), r in sorted(by_key.items(), key=lambda item: (item[0][1], item[0][0])):
        if "+" not in path or (bare := by_key.get(("loss", N))) is None:
            continue
        loss_target = dict(TARGETS["loss"]).get(N)
        target = f">= {loss_target:.2f}x" if loss_target is not None else "shown"
        lines.append(
            f"  {path:14s} N={N:<6d} {target} (the loss's, optimizer step on both sides): {r.ratio:.2f}x "
            f"[{r.spread[0]:.2f}-{r.spread[1]:.2f}]{'' if loss_target is None else ' ' + _verdict(r, loss_target)}"
            f"; bare loss {bare.ratio:.2f}x"
        )
    for path, (mine, theirs) in (held or {}).items():
        share = mine / theirs if theirs else float("nan")
        verdict = "met" if share <= MEMORY_TARGET_SHARE else "UNMET"
        lines.append(
            f"  {path:14s} N={MEMORY_TARGET_N:<6d} bytes held <= {MEMORY_TARGET_SHARE:.0%} of autograd's: "
            f"{mine} B against {theirs} B ({share:.1%}) {verdict}"
        )
    return "\n".join(lines)


def write_plot(results: Sequence[PathResult], hidden: int, path: str, title: str = "") -> str | None:
    """Ratio against N, log x, one line per path, with the min-max spread as error bars."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for name in PATHS:
        rows = sorted((r for r in results if r.path == name), key=lambda r: r.N)
        if not rows:
            continue
        Ns = [r.N for r in rows]
        ratios = [r.ratio for r in rows]
        below = [r.ratio - r.spread[0] for r in rows]
        above = [r.spread[1] - r.ratio for r in rows]
        ax.errorbar(Ns, ratios, yerr=[below, above], marker="o", capsize=3, label=name)
    ax.axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("batch size N")
    ax.set_ylabel("eager autograd time / manualgrad time")
    ax.set_title(title or f"training step, float32, D=2 H={hidden} C=2 (higher is faster)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
