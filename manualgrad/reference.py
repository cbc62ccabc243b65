"""Independent twins of the network, used as witnesses by the tests and by ``verify``.

* The ``torch`` twins use only native PyTorch ops and autograd (``torch.tanh``,
  ``torch.softmax``, ``F.cross_entropy``): no code shared with ``functional.py``.
* :class:`AutogradNet` is those twins as an ``nn.Module``, called as ``TwoLayerNet`` is: the
  benchmarks' autograd side.
* The ``numpy`` twin writes the forward and the hand-derived backward in plain numpy
  (float64), a third witness that does not use torch at all.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def logits(x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> Tensor:
    """z2 with native autograd ops."""
    return torch.tanh(x @ W1 + b1) @ W2 + b2


def probs(x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> Tensor:
    """y_hat = softmax(z2) with native autograd ops."""
    return torch.softmax(logits(x, W1, b1, W2, b2), dim=-1)


def loss(
    x: Tensor,
    target: Tensor,
    W1: Tensor,
    b1: Tensor,
    W2: Tensor,
    b2: Tensor,
    reduction: str = "mean",
    *,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy with ``F.cross_entropy`` (every argument passed on) and native autograd."""
    return F.cross_entropy(
        logits(x, W1, b1, W2, b2),
        target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )


class AutogradNet(nn.Module):
    """The network in native autograd as an ``nn.Module``, called as ``TwoLayerNet`` is: ``net(x)``
    (probabilities), ``net.logits(x)``, ``net.loss(x, target)``. The benchmarks time it against
    ``TwoLayerNet``, so that both sides pay the same module call and parameter reads (one dict read
    each, as ``TwoLayerNet`` does) and a ratio measures the Functions and their checks against autograd.

    Args:
        W1, b1, W2, b2: the parameters, :math:`(D, H)`, :math:`(H,)`, :math:`(H, C)`, :math:`(C,)`;
            held as they are (shared with their owner, not copied).

    Example::

        >>> from manualgrad import TwoLayerNet
        >>> model = TwoLayerNet(2, 16, 3)
        >>> twin = AutogradNet(model.W1, model.b1, model.W2, model.b2)
        >>> x = torch.randn(4, 2)
        >>> torch.testing.assert_close(twin.logits(x), model.logits(x))
    """

    def __init__(self, W1: nn.Parameter, b1: nn.Parameter, W2: nn.Parameter, b2: nn.Parameter) -> None:
        super().__init__()
        for name, parameter in zip(("W1", "b1", "W2", "b2"), (W1, b1, W2, b2)):
            if not isinstance(parameter, nn.Parameter):
                raise TypeError(
                    f"AutogradNet: {name} must be an nn.Parameter (held, not copied), got {type(parameter).__name__}"
                )
        self.W1, self.b1, self.W2, self.b2 = W1, b1, W2, b2

    def _parameters_tuple(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        params = self._parameters
        return params["W1"], params["b1"], params["W2"], params["b2"]  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        """y_hat, :func:`probs`."""
        W1, b1, W2, b2 = self._parameters_tuple()  # positional below, as TwoLayerNet calls
        return probs(x, W1, b1, W2, b2)

    def logits(self, x: Tensor) -> Tensor:
        """z2, :func:`logits`."""
        W1, b1, W2, b2 = self._parameters_tuple()
        return logits(x, W1, b1, W2, b2)

    def loss(self, x: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        """Cross-entropy, :func:`loss`."""
        W1, b1, W2, b2 = self._parameters_tuple()
        return loss(x, target, W1, b1, W2, b2, reduction)


def numpy_loss_and_gradients(
    x: np.ndarray, y: np.ndarray, W1: np.ndarray, b1: np.ndarray, W2: np.ndarray, b2: np.ndarray
) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy and its gradients in plain numpy; y is (N, C) one-hot or probabilities."""
    N = x.shape[0]
    a1 = np.tanh(x @ W1 + b1)  # (N, H)  eq. (1), (2)
    z2 = a1 @ W2 + b2  # (N, C)  eq. (3)
    shifted = z2 - z2.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # (N, C)  eq. (4)
    loss_value = float(-(y * log_probs).sum() / N)  # ()  eq. (5)
    y_hat = np.exp(log_probs)
    delta2 = (y_hat * y.sum(axis=1, keepdims=True) - y) / N  # (N, C)  eq. (7)
    delta1 = (delta2 @ W2.T) * (1.0 - a1**2)  # (N, H)  eq. (10), (11)
    grads = {
        "x": delta1 @ W1.T,  # (N, D)  eq. (18)
        "W1": x.T @ delta1,  # (D, H)  eq. (16)
        "b1": delta1.sum(axis=0),  # (H,)  eq. (17)
        "W2": a1.T @ delta2,  # (H, C)  eq. (14)
        "b2": delta2.sum(axis=0),  # (C,)  eq. (15)
    }
    return loss_value, grads
