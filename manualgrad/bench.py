"""Benchmark one training step: manualgrad against eager autograd, torch.compile and numpy.

A step is the loss and the gradient of every parameter, float32, for x (N, D=2), hidden
H=500, C=2 classes, class-index targets. Four ways of computing it, timed side by side in
one run, interleaved (every path once per round), medians over all blocks of every round,
blocks as torch.utils.benchmark's ``blocked_autorange`` makes them (CUDA synchronised), at
the process's own thread settings; ``torch.utils.benchmark.Compare`` prints them:

* ``manualgrad``: ``TwoLayerNet.loss(x, target)`` and ``.backward()``;
* ``autograd``: the same network in native autograd, ``manualgrad.reference.loss``;
* ``compile``: that network under ``torch.compile`` (one compilation per N, not timed);
* ``numpy``: ``manualgrad.reference.numpy_loss_and_gradients`` (CPU only).

Memory, deterministic and so also checked by the tests:

* bytes saved for backward, through ``torch.autograd.graph.saved_tensors_hooks``, for the
  probs, logits and loss paths of manualgrad and of autograd: ``packed`` sums numel *
  element_size over every packed tensor, ``distinct`` counts each storage once (autograd
  packs a1 twice, for tanh and for the matmul, but holds it once), ``held`` leaves out x,
  the target and the parameters, alive anyway: what the graph keeps from being freed;
* peak memory of a step above what was allocated before it: on CUDA
  ``torch.cuda.max_memory_allocated``; on the CPU, PyTorch has no allocator statistics, so
  the step runs once under ``torch.profiler`` with ``profile_memory=True`` and the peak is
  the maximum of the running sum of its allocation and free events (tensor storage from
  PyTorch's CPU allocator; BLAS scratch space is not seen); numpy's through ``tracemalloc``,
  which numpy reports its array buffers to.

``python -m manualgrad bench`` and ``benchmarks/bench_step.py`` run :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.utils import benchmark

from . import bench_paths, reference
from .arguments import (
    Parser,
    check_output_names,
    memory_error,
    output_dir,
    positive_float,
    positive_int,
    size,
    staged_output,
)
from .module import TwoLayerNet

SIZES = (1, 32, 256, 4096, 65536)
QUICK_SIZES = (1, 256)
HIDDEN, IN_FEATURES, CLASSES = 500, 2, 2
PATHS = ("manualgrad", "autograd", "compile", "numpy")
NETWORK_PATHS = ("probs", "logits", "loss")

Step = Callable[[], object]


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


# ----------------------------------------------------------------------------------------
# The problem and the steps
# ----------------------------------------------------------------------------------------


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

    def manual() -> None:
        for p in params:
            p.grad = None
        model.loss(x, target).backward()

    def autograd() -> None:
        for p in params:
            p.grad = None
        reference.loss(x, target, *params).backward()

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


# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------
# One size, all sizes
# ----------------------------------------------------------------------------------------


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


def run(
    sizes: Sequence[int],
    hidden: int,
    devices: Sequence[str],
    *,
    compile_: bool,
    repeats: int,
    min_run_time: float,
    log: Callable[[str], None] = print,
) -> tuple[list[SizeResult], list[benchmark.Measurement]]:
    """Time every size on every device, then measure memory."""
    results, measurements = [], []
    for device in devices:
        for N in sizes:
            log(f"  timing {device} N={N} ...")
            result, ms = time_size(N, hidden, device, compile_=compile_, repeats=repeats, min_run_time=min_run_time)
            results.append(result)
            measurements.extend(ms)
    for result in results:
        log(f"  memory {result.device} N={result.N} ...")
        measure_memory(result, hidden, compile_=compile_)
    return results, measurements


# ----------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------


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


def _load() -> str:
    """The machine's 1-minute load average with its core count: a loaded machine moves every time."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return "load unknown"
    return f"load {load:.1f} on {os.cpu_count()} cores"


def _share(mine: int, theirs: int) -> str:
    return f"{mine / theirs:.1%}" if theirs else "-"


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


def _title(device: str, hidden: int) -> str:
    machine = _machine() if device == "cpu" else torch.cuda.get_device_name()
    return (
        f"training step, float32, D={IN_FEATURES} H={hidden} C={CLASSES}; {machine}, {torch.get_num_threads()} threads"
    )


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


JSON_NAME, PLOT_NAME = "bench_step.json", "bench_step.png"

DESCRIPTION = (
    "Time one training step (loss + all parameter gradients) of manualgrad against eager "
    "autograd, torch.compile and numpy, side by side; report the bytes saved for backward and peak memory. "
    f"With --out DIR, write {JSON_NAME} and {PLOT_NAME} there. Exits 1 when manualgrad's gradients "
    "differ from autograd's, 2 on a bad option."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``manualgrad bench``; ``run_command`` runs the parsed arguments."""
    parser.add_argument("--sizes", type=size, nargs="+", default=None, help=f"batch sizes N (default {SIZES})")
    parser.add_argument("--hidden", type=size, default=HIDDEN, help=f"hidden units (default {HIDDEN})")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all", help="default: all available")
    parser.add_argument("--repeats", type=positive_int, default=5, help="interleaved rounds of timing (default 5)")
    parser.add_argument(
        "--min-run-time", type=positive_float, default=0.2, help="seconds per path, size and round (default 0.2)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile path")
    parser.add_argument("--no-plot", action="store_true", help=f"do not write {PLOT_NAME}")
    parser.add_argument(
        "--out",
        type=output_dir,
        default=None,
        metavar="DIR",
        help=f"write {JSON_NAME} and {PLOT_NAME} into DIR, created if missing (default: write no files)",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"N in {QUICK_SIZES}, short timing, no compile: a few seconds (CI)"
    )
    parser.set_defaults(run=run_command, validate=validate)


def build_parser() -> Parser:
    """The stand-alone parser of ``python -m manualgrad.bench`` and ``benchmarks/bench_step.py``."""
    parser = Parser(prog="manualgrad bench", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def validate(args: argparse.Namespace) -> str | None:
    """Why these options cannot run (before any work), or None."""
    try:
        devices_for(args.device)
    except RuntimeError as error:
        return str(error)
    problem = memory_error(max(args.sizes or SIZES), args.hidden, itemsize=4, copies=8)
    if problem is None and args.out is not None:
        problem = check_output_names(args.out, (JSON_NAME, PLOT_NAME))
    return problem


def devices_for(choice: str) -> list[str]:
    """cpu, cuda, or all available."""
    if choice == "all":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: CUDA is not available")
    return [choice]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m manualgrad bench``: print the tables; write ``--out DIR``'s files.

    Args:
        argv: the options, as on the command line (default: ``sys.argv[1:]``); see ``--help``.

    Returns:
        the exit code: 0; 1 when manualgrad's gradients differ from autograd's; 2 for a bad
        option (one line on stderr, before any work; argparse's own errors exit with 2).

    Example:
        >>> main(["--sizes", "2000000000", "--hidden", "2000000000"])  # refused before any work: no memory
        2
    """
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    problem = validate(args)
    if problem is not None:
        print(f"manualgrad bench: error: {problem}", file=sys.stderr)
        return 2
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Benchmark with parsed (and validated) options; print the tables; write the files under ``--out``."""
    if args.quick:
        sizes, repeats, min_run_time, compile_ = args.sizes or QUICK_SIZES, 1, 0.02, False
    else:
        sizes, repeats, min_run_time, compile_ = args.sizes or SIZES, args.repeats, args.min_run_time, True
    compile_ = compile_ and not args.no_compile
    devices = devices_for(args.device)
    print(
        f"manualgrad bench: torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
        f"D={IN_FEATURES} H={args.hidden} C={CLASSES}, N in {list(sizes)}, devices {devices}, "
        f"{repeats} x {min_run_time} s per path and size{'' if compile_ else ', no compile'}, {_load()}",
        flush=True,
    )
    results, measurements = run(
        sizes,
        args.hidden,
        devices,
        compile_=compile_,
        repeats=repeats,
        min_run_time=min_run_time,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    compare = benchmark.Compare(measurements)
    print()
    compare.print()
    print(format_times(results))
    print()
    print(format_memory(results))
    path_results = []
    for device in devices:
        path_results += bench_paths.run(
            sizes,
            args.hidden,
            device,
            rounds=max(repeats, 3),
            min_block=min_run_time,
            optimizer_sizes=sizes[:1] if args.quick else bench_paths.OPTIMIZER_SIZES,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
        print()
        print(bench_paths.format_table([r for r in path_results if r.device == device], device))
    print()
    print(bench_paths.format_targets([r for r in path_results if r.device == "cpu"]))

    if args.out is not None:
        with staged_output(args.out) as stage:  # all files or none
            with open(stage / JSON_NAME, "w") as file:
                paths = [{**asdict(r), "ratio": r.ratio, "noisy": r.noisy} for r in path_results]
                summary = {
                    "hidden": args.hidden,
                    "machine": _load(),
                    "results": [asdict(r) for r in results],
                    "paths": paths,
                }
                json.dump(summary, file, indent=1)
            plotted = None
            if not args.no_plot:
                cpu_paths = [r for r in path_results if r.device == devices[0]]
                title = f"{_title(devices[0], args.hidden)}, {_load()}"
                plotted = bench_paths.write_plot(cpu_paths, args.hidden, str(stage / PLOT_NAME), title)
        print(f"\nwrote {args.out / JSON_NAME}")
        if plotted:
            print(f"wrote {args.out / PLOT_NAME}")
        elif not args.no_plot:
            print("plot: matplotlib is not installed, no PNG written")
    bad = [r for r in results if not r.max_grad_error < 1e-3]
    if bad:
        print(f"manualgrad bench: gradients differ from autograd at N={[r.N for r in bad]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
