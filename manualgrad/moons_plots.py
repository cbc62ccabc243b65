"""Pictures of a two-moons run: the decision boundary over the data, and both loss curves.

matplotlib is optional (``pip install manualgrad[examples]``): it is imported when a plot is
drawn, on the Agg backend, without touching pyplot's global state.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .module import TwoLayerNet
from .moons import TrainResult

if TYPE_CHECKING:  # matplotlib is optional: imported when a plot is drawn
    from matplotlib.figure import Figure

__all__ = ["MATPLOTLIB_MISSING", "plot_decision_boundary", "plot_losses"]

MATPLOTLIB_MISSING = (
    "matplotlib is not installed, so no plots were written; "
    "install it with `pip install manualgrad[examples]` (or `pip install matplotlib`)"
)


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
