"""What every ``python -m manualgrad`` subcommand shares: argparse types, checks, and output.

The command line's contract: every bad value is one line on stderr and exit code 2, found
before any work starts; exit code 1 means only that a check failed; a command writes files
only under its ``--out DIR``, all of them or none.

* :class:`Parser`: an ``argparse.ArgumentParser`` whose errors are one line (the message
  and the subcommand's own usage), exit code 2;
* argparse types: :func:`positive_int`, :func:`non_negative_int`, :func:`seed`,
  :func:`size`, :func:`positive_float`, :func:`non_negative_float`, :func:`output_dir`;
* :func:`memory_error`: refuses sizes whose tensors cannot be allocated on this machine;
* :func:`check_output_names`, :func:`staged_output`: outputs checked before the work and
  written through a temporary folder, so that a failure halfway leaves no partial output.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, TypeVar

__all__ = [
    "MAX_INT",
    "MAX_SIZE",
    "Parser",
    "SubcommandParser",
    "check_output_names",
    "memory_error",
    "non_negative_float",
    "non_negative_int",
    "output_dir",
    "physical_memory",
    "positive_float",
    "positive_int",
    "seed",
    "size",
    "staged_output",
]

MAX_INT = 2**63 - 1  # torch's int64: the largest seed or count any option takes
MAX_SIZE = 2**31 - 1  # the largest batch, hidden or sample count: far beyond any machine's memory at H, N >= 2

T = TypeVar("T", int, float)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose error is one line on stderr, with the (sub)command's usage, exit 2."""

    def error(self, message: str) -> NoReturn:
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        self.exit(2, f"{self.prog}: error: {message}; usage: {usage}\n")


class SubcommandParser(Parser):
    """The parser of one subcommand: an unknown option is its own error, shown with its own usage.

    (argparse otherwise hands a subcommand's unknown options up to the top-level parser, whose
    usage does not show the subcommand's options.)
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _parse(text: str, kind: Callable[[str], T], expected: str) -> T:
    try:
        return kind(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None


def _bounded_int(text: str, low: int, high: int, expected: str) -> int:
    value = _parse(text, int, expected)
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {expected}, got {value}")
    if value > high:
        raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer in [1, 2**63 - 1] (a count: epochs, repeats)."""
    return _bounded_int(text, 1, MAX_INT, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer in [0, 2**63 - 1]."""
    return _bounded_int(text, 0, MAX_INT, "an integer >= 0")


def seed(text: str) -> int:
    """A random seed in [0, 2**63 - 1]: what ``torch.manual_seed`` and numpy's ``default_rng`` both take.

    Example:
        >>> seed("42")
        42
        >>> seed("99999999999999999999")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: must be at most 9223372036854775807, got 99999999999999999999
    """
    return _bounded_int(text, 0, MAX_INT, "an integer >= 0")


def size(text: str) -> int:
    """A tensor size (batch, hidden units, samples) in [1, 2**31 - 1]; see also :func:`memory_error`.

    Example:
        >>> size("64")
        64
        >>> size("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: must be a positive integer, got 0
    """
    return _bounded_int(text, 1, MAX_SIZE, "a positive integer")


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _parse(text, float, "a finite number >= 0")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _parse(text, float, "a positive number")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _probe_writable(folder: Path) -> None:
    """Create and remove a temporary folder in ``folder``: the one test of writability that root cannot skip."""
    try:
        probe = tempfile.mkdtemp(prefix=".manualgrad-probe-", dir=folder)
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write into {str(folder)!r}: {error.strerror}") from None
    os.rmdir(probe)


def output_dir(text: str) -> Path:
    """A folder the command may write into: an existing writable folder, or one that can be created.

    Nothing is created here: the check creates and removes a temporary folder in the nearest
    existing ancestor, the only test of writability that holds for root too.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     output_dir(folder + "/plots").name
        'plots'
    """
    if not text:
        raise argparse.ArgumentTypeError("must be a folder, got ''")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    existing = path
    while not existing.exists():  # the nearest existing ancestor, where the folder will be created
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {text!r}: {str(existing)!r} is not a folder")
    _probe_writable(existing)
    return path


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def memory_error(rows: int, hidden: int, *, itemsize: int = 8, copies: int = 4) -> str | None:
    """Why ``copies`` tensors of shape (rows, hidden) cannot be allocated here, or None when they can.

    A command holds at least a few (N, H) tensors at once (z1 or a1, its gradient, the twin's
    copies); asking for more than the machine's memory would end in an out-of-memory kill
    halfway, so the command refuses such sizes before it starts.

    Example:
        >>> memory_error(64, 500) is None
        True
        >>> print(memory_error(2**31 - 1, 2**31 - 1))  # doctest: +ELLIPSIS
        N=2147483647 rows x H=2147483647 hidden units need at least 1.48e+11 GB (4 (N, H) tensors ...
    """
    needed = rows * hidden * itemsize * copies
    available = physical_memory()
    if available is None or needed <= available:
        return None
    return (
        f"N={rows} rows x H={hidden} hidden units need at least {needed / 1e9:.3g} GB "
        f"({copies} (N, H) tensors of {itemsize} bytes per element), more than this machine's "
        f"{available / 1e9:.3g} GB of memory"
    )


def check_output_names(out: Path, names: Iterable[str]) -> str | None:
    """Why one of the files ``names`` cannot be written into ``out`` (e.g. a folder in the way), or None."""
    for name in names:
        target = out / name
        if target.is_dir() or (target.exists() and not target.is_file()):
            return f"cannot write {str(target)!r}: a folder or special file is in the way"
    return None


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield a temporary folder inside ``out``; on success move every file in it into ``out``.

    If the body raises, nothing is moved, the temporary folder is removed, and ``out`` is
    removed again with any parent this call created: no partial output.
    """
    created = next((p for p in (*reversed(out.parents), out) if not p.exists()), None)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".manualgrad-", dir=out))
    try:
        yield stage
        for file in sorted(stage.iterdir()):
            os.replace(file, out / file.name)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
