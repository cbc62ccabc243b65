"""``python -m manualgrad check FILE``: run check_function on a function defined in a file.

The file defines ``function`` (the one under test), ``reference`` (the same with native
autograd ops) and ``make_inputs`` (no arguments, returns a tuple of example tensors); other
names with ``--function``, ``--reference``, ``--inputs``. A module-level ``CHECKS`` list
selects the checks unless ``--checks`` is given. Exit status: 0 every check passed (or
skipped), 1 a check failed, 2 bad usage (one line on stderr, before any check runs).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import Tensor

from .engine import CHECK_NAMES, check_function, describe, select_checks


class UsageError(Exception):
    """Bad usage: reported as one line on stderr, exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", help="a Python file defining the function, its reference and inputs")
    parser.add_argument("--function", default="function", help="name of the function to check (default: function)")
    parser.add_argument("--reference", default="reference", help="name of the reference (default: reference)")
    parser.add_argument(
        "--inputs", default="make_inputs", help="name of a zero-argument callable returning the example inputs"
    )
    parser.add_argument("--checks", help="comma-separated check names (default: the file's CHECKS, else all)")
    parser.add_argument("--batch-dim", type=int, default=0, help="the inputs' batch dimension (default 0)")
    parser.add_argument("--list-checks", action="store_true", help="list the checks and exit")


def load_file(path: str) -> ModuleType:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"no such file: {path}")
    spec = importlib.util.spec_from_file_location(f"_manualgrad_check_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(file.parent.resolve()))  # the file may import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise UsageError(f"importing {path} failed: {type(error).__name__}: {error}") from None
    finally:
        sys.path.pop(0)
    return module


def lookup(module: ModuleType, name: str, what: str, path: str) -> Callable[..., Any]:
    value: object = getattr(module, name, None)
    if not callable(value):
        found = "not defined" if value is None else f"not callable ({type(value).__name__})"
        raise UsageError(f"{path}: {what} {name!r} {found}")
    return value


def prepare(
    args: argparse.Namespace,
) -> tuple[Callable[..., Any], Callable[..., Any], tuple[Any, ...], list[str]]:
    """(function, reference, inputs, checks), or UsageError."""
    if not args.file:
        raise UsageError("a FILE is required (or --list-checks)")
    module = load_file(args.file)
    function = lookup(module, args.function, "function", args.file)
    reference = lookup(module, args.reference, "reference", args.file)
    make_inputs = lookup(module, args.inputs, "inputs factory", args.file)
    checks = args.checks.split(",") if args.checks else getattr(module, "CHECKS", None)
    try:
        checks = select_checks(checks)
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        inputs = make_inputs()
    except Exception as error:
        raise UsageError(f"{args.inputs}() failed: {type(error).__name__}: {error}") from None
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    if not any(isinstance(t, Tensor) for t in inputs):
        raise UsageError(f"{args.inputs}() must return a tuple of tensors")
    return function, reference, inputs, checks


def run(args: argparse.Namespace) -> int:
    if args.list_checks:
        width = max(map(len, CHECK_NAMES))
        print("\n".join(f"{name:<{width}}  {describe(name)}" for name in CHECK_NAMES))
        return 0
    try:
        function, reference, inputs, checks = prepare(args)
    except UsageError as error:
        print(f"manualgrad check: error: {error}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    report = check_function(function, reference, *inputs, checks=checks, batch_dim=args.batch_dim)
    report.title = f"manualgrad check {args.file}: {args.function} against {args.reference}"
    print(report)
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0 if report.passed else 1
