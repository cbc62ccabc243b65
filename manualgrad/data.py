"""Toy data sets for the examples: two interleaving half circles ("two moons").

The geometry is scikit-learn's ``make_moons`` (upper half circle of radius 1 around (0, 0)
for class 0, lower half circle around (1, 0.5) for class 1, shuffled, plus Gaussian noise),
written here in a few lines of numpy so that manualgrad does not depend on scikit-learn.
The random stream is numpy's ``default_rng(seed)``, so the points are not the same as
scikit-learn's for the same seed, only drawn from the same distribution.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import Tensor

__all__ = ["make_moons", "make_moons_numpy"]


def _check_arguments(n_samples: object, noise: object, seed: object) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral):
        raise TypeError(f"n_samples must be an int, got {type(n_samples).__name__} ({n_samples!r})")
    if n_samples < 2:
        raise ValueError(f"n_samples must be at least 2 (one point per moon), got {n_samples}")
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real):
        raise TypeError(f"noise must be a real number, got {type(noise).__name__} ({noise!r})")
    if not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0 (the standard deviation), got {noise}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (numpy's default_rng refuses negative seeds), got {seed}")


def make_moons_numpy(n_samples: int = 200, noise: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two moons as numpy arrays; the same points as :func:`make_moons` for the same arguments.

    Args:
        n_samples: total number of points N (>= 2); class 0 gets N // 2, class 1 the rest.
        noise: standard deviation of the Gaussian noise added to both coordinates (>= 0).
        seed: seed of numpy's ``default_rng``, >= 0.

    Shape:
        - x: (N, 2), float64
        - y: (N,), int64 class indices in {0, 1}

    Returns:
        the tuple ``(x, y)``.

    Example:
        >>> x, y = make_moons_numpy(6, noise=0.0, seed=1)
        >>> x.shape, x.dtype, y.tolist().count(0)
        ((6, 2), dtype('float64'), 3)
    """
    _check_arguments(n_samples, noise, seed)
    n_samples = int(n_samples)
    n_out = n_samples // 2  # class 0: the upper moon
    n_in = n_samples - n_out  # class 1: the lower moon
    angle_out = np.linspace(0.0, np.pi, n_out)
    angle_in = np.linspace(0.0, np.pi, n_in)
    x = np.concatenate(
        [
            np.stack([np.cos(angle_out), np.sin(angle_out)], axis=1),  # (n_out, 2)
            np.stack([1.0 - np.cos(angle_in), 0.5 - np.sin(angle_in)], axis=1),  # (n_in, 2)
        ]
    )
    y = np.concatenate([np.zeros(n_out, dtype=np.int64), np.ones(n_in, dtype=np.int64)])
    rng = np.random.default_rng(int(seed))
    order = rng.permutation(n_samples)
    x, y = x[order], y[order]
    if noise > 0:
        x = x + rng.normal(scale=float(noise), size=x.shape)
    return x, y


def make_moons(
    n_samples: int = 200,
    noise: float = 0.2,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Two interleaving half circles with Gaussian noise, for binary classification.

    Args:
        n_samples: total number of points N (>= 2); class 0 gets N // 2, class 1 the rest.
        noise: standard deviation of the Gaussian noise added to both coordinates (>= 0).
        seed: seed of numpy's ``default_rng``; the same seed gives the same points.
        dtype: floating dtype of ``x``.
        device: device of both tensors.

    Shape:
        - x: (N, 2), of ``dtype``
        - y: (N,), int64 class indices in {0, 1}

    Returns:
        the tuple ``(x, y)``.

    Raises:
        TypeError: an argument of the wrong type (e.g. a float ``n_samples``).
        ValueError: ``n_samples < 2``, a negative or non-finite ``noise``, a negative ``seed``.

    Example:
        >>> x, y = make_moons(200, noise=0.2, seed=0)
        >>> x.shape, y.shape, int(y.sum())
        (torch.Size([200, 2]), torch.Size([200]), 100)
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
    if device is not None and not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be None, a str or a torch.device, got {type(device).__name__} ({device!r})")
    x, y = make_moons_numpy(n_samples, noise, seed)
    return torch.from_numpy(x).to(device=device, dtype=dtype), torch.from_numpy(y).to(device=device)
