"""Train :class:`~manualgrad.TwoLayerNet` on two moons, in lockstep with a native-autograd twin.

The classic setting of the article's network: 200 points of two moons with noise 0.20,
2 inputs -> 500 tanh units -> 2 softmax outputs, mean cross-entropy, full-batch SGD.

Two copies of the network start from the same weights (the twin is loaded from the
model's ``state_dict``) and take the same optimizer steps:

* the *manual* model, whose gradients come from the hand-derived backward,
  ``TwoLayerNet.loss`` (eq. (5)-(18) of docs/derivation.md);
* the *autograd* twin, whose gradients come from PyTorch's own autograd through
  :func:`manualgrad.reference.loss` (``F.cross_entropy`` of native ops).

If the derivation is right, the two loss curves agree to floating-point rounding for the
whole run; :attr:`TrainResult.max_loss_difference` says by how much they differ.

As a library: ``result = train_moons()``. As a command:
``python -m manualgrad train [--epochs N] [--lr LR] [--out DIR] [--no-plot] [--quiet]``,
which writes ``moons_decision_boundary.png`` and ``moons_loss.png`` into ``--out DIR`` (no
files without it).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import reference
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
from .data import make_moons
from .module import TwoLayerNet

if TYPE_CHECKING:  # matplotlib is optional: imported when a plot is drawn
    from matplotlib.figure import Figure

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

# Full-batch SGD on the classic setting (200 points, noise 0.20, 500 hidden units): with
# seed 0 the training accuracy reaches 97.5% (195 of 200 points) by epoch 1000 and stays
# there; both models together take about 2 s of 2-core CPU time for 1500 epochs. The loss
# curves then agree to 2e-6 in float32 and 3e-16 in float64. Much larger learning rates
# (lr 0.5 or 1.0 without momentum) make the first epochs unstable, and that chaos amplifies
# rounding until the two loss curves part, even in float64.
DEFAULT_EPOCHS = 1500
DEFAULT_LR = 0.2
DEFAULT_MOMENTUM = 0.9

BOUNDARY_PNG = "moons_decision_boundary.png"
LOSS_PNG = "moons_loss.png"
MATPLOTLIB_MISSING = (
    "matplotlib is not installed, so no plots were written; "
    "install it with `pip install manualgrad[examples]` (or `pip install matplotlib`)"
)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class TrainResult:
    """Everything a training run produced: both loss curves, their gap, and the final accuracy.

    ``manual_losses[t]`` and ``autograd_losses[t]`` are the mean cross-entropy of the two
    copies at epoch ``t``, before that epoch's step. ``first_gradient_difference`` compares the
    gradients of the first epoch, where both copies still have the same weights (max absolute
    difference over all parameters, divided by the largest autograd gradient): it separates a
    wrong gradient from training dynamics that amplify rounding.
    """

    manual_losses: list[float]
    autograd_losses: list[float]
    max_loss_difference: float
    accuracy: float
    autograd_accuracy: float
    max_parameter_difference: float
    first_gradient_difference: float
    model: TwoLayerNet = field(repr=False)
    x: Tensor = field(repr=False)
    y: Tensor = field(repr=False)
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """The manual model's loss before the last step (nan when no epoch ran)."""
        return self.manual_losses[-1] if self.manual_losses else math.nan


def loss_tolerance(dtype: torch.dtype) -> float:
    """Largest relative gap between the two loss curves still put down to rounding.

    Example:
        >>> loss_tolerance(torch.float32), loss_tolerance(torch.float64)
        (0.0001, 1e-10)

    The two copies round differently (fused vs unfused formulas, different summation orders),
    and SGD carries those differences forward; with the default settings they stay below
    2e-6 in float32 and 1e-15 in float64 over 1500 epochs. A derivation error is orders larger.
    """
    return 1e-4 if dtype == torch.float32 else 1e-10


def _check_positive_int(name: str, value: object, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else 'positive'}, got {value}")
    return value


def _check_real(name: str, value: object, *, minimum: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum}, got {value}")
    return float(value)


def _epochs_with_progress(epochs: int, enabled: bool) -> Iterable[int]:
    """range(epochs), wrapped in a tqdm bar when asked for, tqdm is installed and stderr is a terminal.

    The bar appears only once a run has lasted a second (tqdm's ``delay``), so short runs stay quiet;
    in a redirected log there is no bar at all.
    """
    if not enabled:
        return range(epochs)
    try:
        from tqdm import tqdm
    except ImportError:
        return range(epochs)
    # disable=None: tqdm draws only when stderr is a terminal, and writes nothing into a log
    bar: Iterable[int] = tqdm(
        range(epochs), desc="train", unit="epoch", delay=1.0, leave=False, file=sys.stderr, disable=None
    )
    return bar


def train_moons(
    n_samples: int = 200,
    noise: float = 0.2,
    hidden: int = 500,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    momentum: float = DEFAULT_MOMENTUM,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> TrainResult:
    """Train TwoLayerNet (hand-derived gradients) and its native-autograd twin side by side.

    Both copies start from the same weights and use ``torch.optim.SGD(lr, momentum)`` on the
    full batch, one step per epoch. ``seed`` fixes the data and the initial weights; the
    global torch random state is left as it was.

    Args:
        n_samples: points of two moons N (>= 2), see :func:`manualgrad.data.make_moons`.
        noise: standard deviation of the noise on the points (>= 0).
        hidden: hidden units H of ``TwoLayerNet(2, H, 2)``.
        epochs: full-batch SGD steps (>= 0).
        lr: learning rate (> 0).
        momentum: SGD momentum (>= 0).
        seed: seed of the data and the initial weights.
        dtype: floating dtype of the data and both models.
        progress: show a tqdm bar on a terminal (nothing when stderr is not one, or without tqdm).

    Shape:
        - ``result.x``: (N, 2), ``result.y``: (N,) int64
        - ``result.manual_losses``, ``result.autograd_losses``: ``epochs`` floats each

    Returns:
        a :class:`TrainResult` with both loss curves, their max absolute difference, the
        final training accuracy of each copy and the max final parameter difference.

    Raises:
        TypeError, ValueError: an argument of the wrong type or out of range, before any work.

    Example:
        >>> result = train_moons(n_samples=40, hidden=16, epochs=20, seed=3)
        >>> len(result.manual_losses), result.max_loss_difference < 1e-5
        (20, True)
        >>> result.x.shape, result.model.W1.shape
        (torch.Size([40, 2]), torch.Size([2, 16]))
    """
    n_samples = _check_positive_int("n_samples", n_samples)
    hidden = _check_positive_int("hidden", hidden)
    epochs = _check_positive_int("epochs", epochs, allow_zero=True)
    lr = _check_real("lr", lr, minimum=0.0, strict=True)
    momentum = _check_real("momentum", momentum, minimum=0.0, strict=False)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")

    x, y = make_moons(n_samples, noise, seed, dtype=dtype)  # (N, 2), (N,)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TwoLayerNet(2, hidden, 2, dtype=dtype)
        twin = TwoLayerNet(2, hidden, 2, dtype=dtype)
    twin.load_state_dict(model.state_dict())  # the same initial weights, separate storage

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=lr, momentum=momentum)
    twin_params = (twin.W1, twin.b1, twin.W2, twin.b2)

    manual_losses: list[float] = []
    autograd_losses: list[float] = []
    first_gradient_difference = 0.0
    for epoch in _epochs_with_progress(epochs, progress):
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(x, y)  # ()  eq. (5); backward: eq. (7)-(18), by hand
        loss.backward()
        optimizer.step()

        twin_optimizer.zero_grad(set_to_none=True)
        twin_loss = reference.loss(x, y, *twin_params)  # ()  eq. (5); backward: torch autograd
        twin_loss.backward()
        if epoch == 0:  # the same weights on both sides: the gradients alone are compared
            first_gradient_difference = _relative_gradient_difference(model, twin)
        twin_optimizer.step()

        manual_losses.append(loss.item())
        autograd_losses.append(twin_loss.item())

    with torch.no_grad():
        accuracy = (model.predict(x) == y).double().mean().item()
        autograd_accuracy = (reference.logits(x, *twin_params).argmax(1) == y).double().mean().item()
        parameter_gap = max(float((p - q).abs().max()) for p, q in zip(model.parameters(), twin.parameters()))
    loss_gap = max((abs(a - b) for a, b in zip(manual_losses, autograd_losses)), default=0.0)
    settings: dict[str, object] = {
        "n_samples": n_samples,
        "noise": noise,
        "hidden": hidden,
        "epochs": epochs,
        "lr": lr,
        "momentum": momentum,
        "seed": seed,
        "dtype": str(dtype).removeprefix("torch."),
    }
    return TrainResult(
        manual_losses,
        autograd_losses,
        loss_gap,
        accuracy,
        autograd_accuracy,
        parameter_gap,
        first_gradient_difference,
        model,
        x,
        y,
        settings,
    )


def _relative_gradient_difference(model: TwoLayerNet, twin: TwoLayerNet) -> float:
    pairs = [(_grad(p), _grad(q)) for p, q in zip(model.parameters(), twin.parameters())]
    difference = max(float((g - h).abs().max()) for g, h in pairs)
    scale = max(float(h.abs().max()) for _, h in pairs)
    return difference / scale if scale > 0 else difference


def _grad(parameter: Tensor) -> Tensor:
    if parameter.grad is None:
        raise RuntimeError("a parameter got no gradient from backward")
    return parameter.grad


# ----------------------------------------------------------------------------------------
# Plots (matplotlib is optional: imported here, only when a plot is asked for)
# ----------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(MATPLOTLIB_MISSING) from error
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)  # the Agg backend, without touching pyplot's global state
    return figure


@torch.no_grad()
def _probability_grid(model: TwoLayerNet, x: Tensor, steps: int = 300) -> tuple[Tensor, Tensor, Tensor]:
    """P(class 1) on a steps x steps grid around the data, computed in row chunks."""
    low = x.min(0).values - 0.5  # (2,)
    high = x.max(0).values + 0.5  # (2,)
    grid_x = torch.linspace(float(low[0]), float(high[0]), steps, dtype=x.dtype)
    grid_y = torch.linspace(float(low[1]), float(high[1]), steps, dtype=x.dtype)
    mesh_x, mesh_y = torch.meshgrid(grid_x, grid_y, indexing="xy")  # (steps, steps) each
    points = torch.stack([mesh_x.reshape(-1), mesh_y.reshape(-1)], 1)  # (steps^2, 2)
    probs = torch.cat([model(chunk)[:, 1] for chunk in points.split(8192)])  # (steps^2,)  eq. (1)-(4)
    return mesh_x, mesh_y, probs.reshape(steps, steps)


def plot_decision_boundary(result: TrainResult, path: str | Path) -> Path:
    """Write a PNG of the data and the trained model's decision boundary; returns the path.

    Raises ImportError with an install hint when matplotlib is missing.
    """
    figure = _new_figure(6.4, 5.2)
    axes = figure.add_subplot()
    mesh_x, mesh_y, probs = _probability_grid(result.model, result.x)
    filled = axes.contourf(mesh_x.numpy(), mesh_y.numpy(), probs.numpy(), levels=20, cmap="RdBu_r", alpha=0.6)
    axes.contour(mesh_x.numpy(), mesh_y.numpy(), probs.numpy(), levels=[0.5], colors="k", linewidths=1.5)
    x, y = result.x.numpy(), result.y.numpy()
    for label, color, marker in ((0, "tab:blue", "o"), (1, "tab:red", "s")):
        rows = y == label
        axes.scatter(
            x[rows, 0], x[rows, 1], c=color, marker=marker, s=18, edgecolors="k", linewidths=0.4, label=f"class {label}"
        )
    figure.colorbar(filled, ax=axes, label="P(class 1) = y_hat[:, 1]")
    s = result.settings
    axes.set_title(
        f"TwoLayerNet 2-{s.get('hidden')}-2, hand-derived gradients\n"
        f"training accuracy {100 * result.accuracy:.1f}% after {s.get('epochs')} epochs"
    )
    axes.set_xlabel("x[:, 0]")
    axes.set_ylabel("x[:, 1]")
    axes.legend(loc="upper right")
    path = Path(path)
    figure.savefig(path, bbox_inches="tight")
    return path


def plot_losses(result: TrainResult, path: str | Path) -> Path:
    """Write a PNG of both loss curves and their absolute difference; returns the path.

    Raises ImportError with an install hint when matplotlib is missing.
    """
    figure = _new_figure(9.6, 4.0)
    curves, gap = figure.subplots(1, 2)
    epochs = range(len(result.manual_losses))
    curves.plot(epochs, result.manual_losses, label="hand-derived backward", linewidth=2.5)
    curves.plot(epochs, result.autograd_losses, "--", label="native autograd twin", linewidth=1.5)
    curves.set_yscale("log")
    curves.set_xlabel("epoch")
    curves.set_ylabel("mean cross-entropy, eq. (5)")
    curves.set_title("loss curves")
    curves.legend()
    difference = [abs(a - b) for a, b in zip(result.manual_losses, result.autograd_losses)]
    gap.plot(epochs, difference, color="tab:gray", linewidth=1)
    if any(d > 0 for d in difference):
        gap.set_yscale("log")
    gap.set_xlabel("epoch")
    gap.set_ylabel("|manual - autograd|")
    gap.set_title(f"difference (max {result.max_loss_difference:.2e})")
    path = Path(path)
    figure.savefig(path, bbox_inches="tight")
    return path


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


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
