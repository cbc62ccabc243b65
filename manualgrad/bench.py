"""``python -m manualgrad bench``: every way of computing a training step, timed side by side.

Two benchmarks in one run, at the process's own thread settings:

* the loss step (``bench_loss``): ``TwoLayerNet.loss`` against eager autograd, ``torch.compile``
  and numpy, interleaved (every path once per round), medians over all blocks of every round
  (``bench_timing``), printed by ``torch.utils.benchmark.Compare`` and ``bench_report``, with the
  bytes each path saves for backward and its peak memory (``bench_memory``);
* the four ways PyTorch code calls the network and the optimizer steps (``bench_paths``): ratios
  to eager autograd with their spread over rounds, and the performance targets.

``benchmarks/bench_step.py`` runs :func:`main` too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict

import torch
from torch.utils import benchmark

from . import bench_paths
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
from .bench_loss import CLASSES, HIDDEN, IN_FEATURES, SizeResult, measure_memory, time_size
from .bench_report import format_memory, format_times, machine_load, plot_title, threads

SIZES = (1, 32, 256, 4096, 65536)
QUICK_SIZES = (1, 256)


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


def load_average() -> tuple[float | None, int | None]:
    """(1-minute load average, cores), None where the platform does not say."""
    try:
        return os.getloadavg()[0], os.cpu_count()
    except (AttributeError, OSError):
        return None, os.cpu_count()


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
        f"manualgrad bench: torch {torch.__version__}, {threads()}, float32, "
        f"D={IN_FEATURES} H={args.hidden} C={CLASSES}, N in {list(sizes)}, devices {devices}, "
        f"{repeats} x {min_run_time} s per path and size{'' if compile_ else ', no compile'}, {machine_load()}",
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
    held = {
        path: (r.saved_held[f"manualgrad {path}"], r.saved_held[f"autograd {path}"])
        for r in results
        if r.device == "cpu" and r.N == bench_paths.MEMORY_TARGET_N
        for path in bench_paths.MEMORY_PATHS
    }
    cpu_paths = [r for r in path_results if r.device == "cpu"]
    print(bench_paths.format_targets(cpu_paths, held, load_average()))

    if args.out is not None:
        with staged_output(args.out) as stage:  # all files or none
            with open(stage / JSON_NAME, "w") as file:
                paths = [{**asdict(r), "ratio": r.ratio, "noisy": r.noisy} for r in path_results]
                summary = {
                    "hidden": args.hidden,
                    "machine": machine_load(),
                    "results": [asdict(r) for r in results],
                    "paths": paths,
                }
                json.dump(summary, file, indent=1)
            plotted = None
            if not args.no_plot:
                cpu_paths = [r for r in path_results if r.device == devices[0]]
                title = f"{plot_title(devices[0], args.hidden)}, {machine_load()}"
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
