"""``python -m manualgrad train``: two moons, the hand-derived gradients beside autograd's.

``python -m manualgrad train [--epochs N] [--lr LR] [--out DIR] [--no-plot] [--quiet]`` runs
:func:`~manualgrad.moons.train_moons`, prints both loss curves' summary and their largest
difference, and writes ``moons_decision_boundary.png`` and ``moons_loss.png`` into ``--out DIR``
(no files without it) with :mod:`manualgrad.moons_plots`. The names of both are re-exported
here, so ``from manualgrad.train import train_moons`` keeps working.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from .arguments import (
    Parser,
    check_output_names,
    memory_error,
    non_negative_float,
    non_negative_int,
    output_dir,
    positive_float,
    seed,
    size,
    staged_output,
)
from .moons import DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_MOMENTUM, TrainResult, loss_tolerance, train_moons
from .moons_plots import MATPLOTLIB_MISSING, plot_decision_boundary, plot_losses

__all__ = [
    "BOUNDARY_PNG",
    "DEFAULT_EPOCHS",
    "DEFAULT_LR",
    "DEFAULT_MOMENTUM",
    "LOSS_PNG",
    "TrainResult",
    "loss_tolerance",
    "main",
    "plot_decision_boundary",
    "plot_losses",
    "train_moons",
]

BOUNDARY_PNG = "moons_decision_boundary.png"
LOSS_PNG = "moons_loss.png"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


DESCRIPTION = (
    "Train TwoLayerNet on two moons with its hand-derived gradients and, in lockstep, "
    "a native-autograd twin from the same initial weights; report both loss curves, their "
    "largest difference and the training accuracy; with --out, plot the decision boundary and the loss curves. "
    "Exits 1 when the loss curves differ by more than rounding (a wrong gradient, or a learning rate so "
    "large that training turns chaotic and amplifies rounding), 2 on a bad option."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``manualgrad train``; ``run_command`` runs the parsed arguments."""
    parser.add_argument("--samples", type=size, default=200, help="points (default 200)")
    parser.add_argument("--noise", type=non_negative_float, default=0.2, help="noise std (default 0.2)")
    parser.add_argument("--hidden", type=size, default=500, help="hidden units (default 500)")
    parser.add_argument(
        "--epochs", type=non_negative_int, default=DEFAULT_EPOCHS, help=f"full-batch steps (default {DEFAULT_EPOCHS})"
    )
    parser.add_argument("--lr", type=positive_float, default=DEFAULT_LR, help=f"learning rate (default {DEFAULT_LR})")
    parser.add_argument(
        "--momentum",
        type=non_negative_float,
        default=DEFAULT_MOMENTUM,
        help=f"SGD momentum (default {DEFAULT_MOMENTUM})",
    )
    parser.add_argument("--seed", type=seed, default=0, help="seed of the data and weights (default 0)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="default: float32")
    parser.add_argument(
        "--out",
        type=output_dir,
        default=None,
        metavar="DIR",
        help=f"write {BOUNDARY_PNG} and {LOSS_PNG} into DIR, created if missing (default: write no files)",
    )
    parser.add_argument("--no-plot", action="store_true", help="write no PNGs, even with --out")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar; print only the summary and the files written"
    )
    parser.set_defaults(run=run_command, validate=validate)


def build_parser(prog: str = "manualgrad train") -> Parser:
    """The stand-alone parser of ``python -m manualgrad.train`` and ``examples/train_moons.py``."""
    parser = Parser(prog=prog, description=DESCRIPTION)
    add_arguments(parser)
    return parser


def validate(args: argparse.Namespace) -> str | None:
    """Why these options cannot run (before any work), or None."""
    if args.samples < 2:
        return f"--samples must be at least 2 (one point per moon), got {args.samples}"
    problem = memory_error(args.samples, args.hidden, itemsize=DTYPES[args.dtype].itemsize)
    if problem is None and args.out is not None and not args.no_plot:
        problem = check_output_names(args.out, (BOUNDARY_PNG, LOSS_PNG))
    return problem


def _matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m manualgrad train``: returns 0, or 1 when the two loss curves disagree.

    Args:
        argv: the options, as on the command line (default: ``sys.argv[1:]``); see ``--help``.

    Returns:
        the exit code: 0, or 1 when the curves differ by more than rounding. A bad option
        exits (``SystemExit(2)``) with one line on stderr, before any work.

    Example:
        >>> main(["--epochs", "5", "--hidden", "4", "--samples", "10", "--quiet"])  # doctest: +ELLIPSIS
        training accuracy ...% (autograd twin ...%); max |loss_manual - loss_autograd| over 5 epochs ...
        0
    """
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    problem = validate(args)
    if problem is not None:
        parser.error(problem)  # one line on stderr, SystemExit(2), as for every other bad option
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Train with parsed (and validated) options, print the summary, write the plots under ``--out``."""
    dtype = DTYPES[args.dtype]
    plot = args.out is not None and not args.no_plot
    if plot and not _matplotlib_available():
        print(f"manualgrad train: {MATPLOTLIB_MISSING}", file=sys.stderr)
        plot = False
    result = train_moons(
        args.samples,
        args.noise,
        args.hidden,
        args.epochs,
        args.lr,
        args.momentum,
        args.seed,
        dtype=dtype,
        progress=not args.quiet,
    )
    scale = max((abs(v) for v in result.autograd_losses), default=1.0)
    agree = result.max_loss_difference <= loss_tolerance(dtype) * max(scale, 1e-30)
    if not args.quiet:
        print(
            f"two moons: {args.samples} points, noise {args.noise}, TwoLayerNet 2-{args.hidden}-2 ({args.dtype}), "
            f"SGD lr {args.lr} momentum {args.momentum}, {args.epochs} full-batch epochs, seed {args.seed}"
        )
        if result.manual_losses:
            print(
                f"loss: first {result.manual_losses[0]:.6f}  last {result.final_loss:.6f}  "
                f"(autograd twin: last {result.autograd_losses[-1]:.6f})"
            )
    print(
        f"training accuracy {100 * result.accuracy:.1f}% (autograd twin {100 * result.autograd_accuracy:.1f}%); "
        f"max |loss_manual - loss_autograd| over {len(result.manual_losses)} epochs "
        f"{result.max_loss_difference:.3e}; max final parameter difference {result.max_parameter_difference:.3e}"
    )
    if not args.quiet and result.manual_losses:
        print(f"first-epoch gradients, same weights: max relative difference {result.first_gradient_difference:.3e}")
    if plot:
        with staged_output(args.out) as stage:  # all files or none
            plot_decision_boundary(result, stage / BOUNDARY_PNG)
            plot_losses(result, stage / LOSS_PNG)
        for name in (BOUNDARY_PNG, LOSS_PNG):
            print(f"wrote {args.out / name}")
    if not agree:
        if result.first_gradient_difference <= loss_tolerance(dtype):
            cause = (
                f"the gradients agree at the first epoch (relative difference {result.first_gradient_difference:.1e}), "
                "so the training is unstable and amplifies rounding: try a smaller --lr"
            )
        else:
            cause = (
                f"the gradients differ already at the first epoch (relative difference "
                f"{result.first_gradient_difference:.1e}): the hand-derived gradients disagree with autograd"
            )
        print(
            f"manualgrad train: the loss curves differ by {result.max_loss_difference:.3e}, more than rounding "
            f"(relative tolerance {loss_tolerance(dtype):.0e}); {cause}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
