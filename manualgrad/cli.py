"""Command line: ``python -m manualgrad {verify,train,bench}`` (also the ``manualgrad`` script)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from . import verify as verify_lib

# argparse types, shared by every subcommand (verify here, train and bench in their modules)


def _parse(text: str, kind: type, expected: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _parse(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _parse(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = _parse(text, float, "a finite number >= 0")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _parse(text, float, "a positive number")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _add_verify_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "verify",
        help="compare the hand-derived gradients with autograd, numpy and gradcheck",
        description="Side-by-side report: every path and gradient, manual vs autograd vs numpy, gradcheck "
        "and gradgradcheck in float64, CPU vs CUDA when present. Exits 1 when anything fails.",
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all", help="default: all available")
    parser.add_argument("--dtype", choices=("float64", "float32", "all"), default="all", help="default: all")
    parser.add_argument("--batch", type=positive_int, default=64, help="rows of x (default 64)")
    parser.add_argument("--hidden", type=positive_int, default=500, help="hidden units (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-gradcheck", action="store_true", help="skip gradcheck and gradgradcheck")
    parser.add_argument(
        "--no-conformance",
        action="store_true",
        help="skip the PyTorch conformance matrix (torch.func, compile, DDP, ...)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.set_defaults(run=_run_verify)


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


def _add_check_parser(commands: argparse._SubParsersAction) -> None:
    from .testing import command

    parser = commands.add_parser(
        "check",
        help="check your own autograd.Function against a reference (manualgrad.testing)",
        description="Run manualgrad.testing.check_function on FILE's function, reference and inputs. "
        "Exits 0 when every check passes or skips, 1 when one fails, 2 on bad usage.",
    )
    command.add_arguments(parser)
    parser.set_defaults(run=command.run)


def _add_forwarding_parser(commands: argparse._SubParsersAction, name: str, help_text: str, module: str) -> None:
    parser = commands.add_parser(name, help=help_text, add_help=False)
    parser.set_defaults(forward_to=module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manualgrad", description="A two-layer network with hand-derived gradients.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_verify_parser(commands)
    _add_check_parser(commands)
    _add_forwarding_parser(commands, "train", "train on two moons, manual and autograd in lockstep", "train")
    _add_forwarding_parser(commands, "bench", "time a training step against autograd, compile and numpy", "bench")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, rest = build_parser().parse_known_args(argv)
    if getattr(args, "forward_to", None):
        from importlib import import_module

        return import_module(f"manualgrad.{args.forward_to}").main(rest)
    if rest:
        build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
    return args.run(args)
