"""Command line: ``python -m manualgrad {verify,check,train,bench}`` (also the ``manualgrad`` script)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import torch

from . import __version__, bench, train
from . import verify as verify_lib

# argparse types shared by every subcommand live in manualgrad.arguments; re-exported here.
from .arguments import (
    Parser,
    SubcommandParser,
    memory_error,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    seed,
    size,
)

__all__ = [
    "build_parser",
    "main",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "seed",
    "size",
]


def _add_verify_parser(commands: argparse._SubParsersAction[SubcommandParser]) -> None:
    parser = commands.add_parser(
        "verify",
        help="compare the hand-derived gradients with autograd, numpy and gradcheck",
        description="Side-by-side report: every path and gradient, manual vs autograd vs numpy, gradcheck "
        "and gradgradcheck in float64, CPU vs CUDA when present. Exits 1 when anything fails.",
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all", help="default: all available")
    parser.add_argument("--dtype", choices=("float64", "float32", "all"), default="all", help="default: all")
    parser.add_argument("--batch", type=size, default=64, help="rows of x (default 64)")
    parser.add_argument("--hidden", type=size, default=500, help="hidden units (default 500)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the problem, in [0, 2**63 - 1] (default 0)")
    parser.add_argument("--no-gradcheck", action="store_true", help="skip gradcheck and gradgradcheck")
    parser.add_argument(
        "--no-conformance",
        action="store_true",
        help="skip the PyTorch conformance matrix (torch.func, compile, DDP, ...)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.set_defaults(run=_run_verify, validate=_validate_verify)


def _validate_verify(args: argparse.Namespace) -> str | None:
    return memory_error(args.batch, args.hidden)


def _run_verify(args: argparse.Namespace) -> int:
    try:
        devices = verify_lib.available_devices(args.device)
    except RuntimeError as error:
        print(f"manualgrad verify: {error}", file=sys.stderr)
        return 2
    dtypes = list(verify_lib.DTYPES.values()) if args.dtype == "all" else [verify_lib.DTYPES[args.dtype]]
    start = time.perf_counter()
    report = verify_lib.verify(
        devices,
        dtypes,
        args.batch,
        args.hidden,
        args.seed,
        gradcheck=not args.no_gradcheck,
        conformance=not args.no_conformance,
        progress=verify_lib.progress_printer(tables=not args.json),
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"verify: {report.summary()} ({time.perf_counter() - start:.1f} s)")
    return 0 if report.passed else 1


def _add_check_parser(commands: argparse._SubParsersAction[SubcommandParser]) -> None:
    from .testing import command

    parser = commands.add_parser(
        "check",
        help="check your own autograd.Function against a reference (manualgrad.testing)",
        description="Run manualgrad.testing.check_function on FILE's function, reference and inputs. "
        "Exits 0 when every check passes or skips, 1 when one fails, 2 on bad usage.",
    )
    command.add_arguments(parser)
    parser.set_defaults(run=command.run)


def build_parser() -> Parser:
    """The ``manualgrad`` parser: ``verify``, ``check``, ``train`` and ``bench`` as argparse subcommands."""
    parser = Parser(prog="manualgrad", description="A two-layer network with hand-derived gradients.")
    parser.add_argument("--version", action="version", version=f"manualgrad {__version__} (torch {torch.__version__})")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{verify,check,train,bench}", parser_class=SubcommandParser
    )
    _add_verify_parser(commands)
    _add_check_parser(commands)
    train.add_arguments(
        commands.add_parser(
            "train", help="train on two moons, manual and autograd in lockstep", description=train.DESCRIPTION
        )
    )
    bench.add_arguments(
        commands.add_parser(
            "bench", help="time a training step against autograd, compile and numpy", description=bench.DESCRIPTION
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``manualgrad <command> [options]``; returns the exit code (2: bad option, 1: a check failed)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    validate = getattr(args, "validate", None)  # a subcommand's checks that need several options at once
    problem = validate(args) if validate is not None else None
    if problem is not None:
        print(f"manualgrad {args.command}: error: {problem}", file=sys.stderr)
        return 2
    code: int = args.run(args)
    return code
