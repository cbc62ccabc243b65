"""``TwoLayerNet``: the hand-differentiated network as an ``nn.Module``.

Parameters keep the article's row-vector convention, z1 = x W1 + b1:
W1 (in, hidden), b1 (hidden,), W2 (hidden, out), b2 (out,).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import functional, validation


class TwoLayerNet(nn.Module):
    r"""A two-layer network x -> tanh hidden -> softmax output, with hand-derived gradients.

    .. math::
        \hat{y} = \operatorname{softmax}(\tanh(x W_1 + b_1) W_2 + b_2)

    Row-vector convention, as in the article: ``z1 = x W1 + b1``. The backward of every
    method is the hand-derived one of ``docs/derivation.md``, checked against autograd.

    * ``model(x)`` returns the probabilities y_hat, eq. (1)-(4);
    * ``model.logits(x)`` returns z2, for any PyTorch loss;
    * ``model.loss(x, target, reduction="mean", *, weight=None, ignore_index=-100,
      label_smoothing=0.0)`` returns ``F.cross_entropy``'s value with the fused backward
      dL/dz2 = (y_hat - y) / N, eq. (7) (eq. (7') with the options); ``model(x, target, ...)``
      is the same;
    * ``model.predict(x)`` returns class indices.

    Args:
        in_features: size D of each input sample. Default: 2
        hidden_features: number H of tanh hidden units. Default: 500
        out_features: number C of classes. Default: 2
        device: device of the parameters. Default: the current default device
        dtype: floating dtype of the parameters. Default: the current default dtype

    Shape:
        - Input: :math:`(N, D)` or :math:`(D,)` for one unbatched sample.
        - Target: class indices :math:`(N,)` of an integer dtype, or probabilities
          :math:`(N, C)` in the parameters' dtype (:math:`()` or :math:`(C,)` unbatched),
          as for ``F.cross_entropy``.
        - Output: :math:`(N, C)`, or :math:`(C,)` unbatched; the loss is a scalar, or
          :math:`(N,)` with ``reduction="none"``.

    Attributes:
        W1: :math:`(D, H)`, b1: :math:`(H,)`, W2: :math:`(H, C)`, b2: :math:`(C,)`,
            initialised as ``nn.Linear`` does, uniform in :math:`\pm 1/\sqrt{\text{fan\_in}}`.

    Example::

        >>> import torch
        >>> from manualgrad import TwoLayerNet
        >>> _ = torch.manual_seed(0)
        >>> model = TwoLayerNet(2, 16, 3)
        >>> x, target = torch.randn(8, 2), torch.randint(0, 3, (8,))
        >>> model(x).shape
        torch.Size([8, 3])
        >>> loss = model.loss(x, target)
        >>> loss.backward()
        >>> model.W1.grad.shape
        torch.Size([2, 16])
        >>> model.predict(x).shape
        torch.Size([8])
    """

    def __init__(
        self,
        in_features: int = 2,
        hidden_features: int = 500,
        out_features: int = 2,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Create W1, b1, W2, b2 for the sizes given (see the class docstring)."""
        validation.check_sizes(in_features, hidden_features, out_features)
        super().__init__()
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.out_features = out_features
        self.W1 = nn.Parameter(torch.empty(in_features, hidden_features, device=device, dtype=dtype))
        self.b1 = nn.Parameter(torch.empty(hidden_features, device=device, dtype=dtype))
        self.W2 = nn.Parameter(torch.empty(hidden_features, out_features, device=device, dtype=dtype))
        self.b2 = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in +-1/sqrt(fan_in), as ``nn.Linear`` initialises weight and bias."""
        with torch.no_grad():
            for weight, bias in ((self.W1, self.b1), (self.W2, self.b2)):
                bound = 1.0 / math.sqrt(weight.shape[0])
                weight.uniform_(-bound, bound)
                bias.uniform_(-bound, bound)

    def _parameters_tuple(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # One dict read each instead of nn.Module.__getattr__ (about 1.5 us each, a step at N=1 is
        # 200 us); a parametrization (torch.nn.utils.parametrize) or FSDP moves a parameter out of
        # _parameters, and then the attribute is read as usual.
        params = self._parameters
        try:
            return params["W1"], params["b1"], params["W2"], params["b2"]  # type: ignore[return-value]
        except KeyError:
            return self.W1, self.b1, self.W2, self.b2

    def forward(
        self,
        x: Tensor,
        target: Tensor | None = None,
        reduction: str | None = None,
        *,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        label_smoothing: float = 0,  # not 0.0: compile(dynamic=True) makes a float default a symbol, a guard
    ) -> Tensor:
        """y_hat = softmax(tanh(x W1 + b1) W2 + b2): (N, out), or (out,) for unbatched x.

        With a ``target``, returns ``self.loss(x, target, reduction, ...)`` instead (``reduction``
        defaults to ``"mean"``), so that wrappers that only call ``forward``
        (DistributedDataParallel, FSDP) get the fused loss. Without one, the loss's arguments do
        not apply: giving any of them is a ``TypeError``.
        """
        if target is not None:
            return self.loss(
                x,
                target,
                "mean" if reduction is None else reduction,
                weight=weight,
                ignore_index=ignore_index,
                label_smoothing=label_smoothing,
            )
        if reduction is not None or weight is not None or ignore_index != -100 or label_smoothing != 0.0:
            given = {
                f"reduction={reduction!r}": reduction is not None,
                "weight": weight is not None,
                "ignore_index": ignore_index != -100,
                "label_smoothing": label_smoothing != 0.0,
            }
            names = ", ".join(name for name, is_given in given.items() if is_given)
            raise TypeError(f"{names} applies to the loss only: pass a target, model(x, target, ...), or leave it out")
        W1, b1, W2, b2 = self._parameters_tuple()  # positional below: a star-call costs more at N=1
        return functional.two_layer_net(x, W1, b1, W2, b2)

    def logits(self, x: Tensor) -> Tensor:
        """z2 = tanh(x W1 + b1) W2 + b2: (N, out), or (out,) for unbatched x."""
        W1, b1, W2, b2 = self._parameters_tuple()
        return functional.two_layer_net_logits(x, W1, b1, W2, b2)

    def loss(
        self,
        x: Tensor,
        target: Tensor,
        reduction: str = "mean",
        *,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        label_smoothing: float = 0,  # not 0.0: compile(dynamic=True) makes a float default a symbol, a guard
    ) -> Tensor:
        """Cross-entropy: ``F.cross_entropy(self.logits(x), target, weight=..., ignore_index=...,
        reduction=..., label_smoothing=...)``, its values and gradients, with the fused backward
        (see :func:`manualgrad.functional.two_layer_net_loss` for the arguments)."""
        W1, b1, W2, b2 = self._parameters_tuple()
        return functional.two_layer_net_loss(
            x,
            target,
            W1,
            b1,
            W2,
            b2,
            reduction=reduction,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
        )

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Class indices argmax_c z2: (N,) int64, or a 0-dim tensor for unbatched x."""
        return self.logits(x).argmax(-1)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, hidden_features={self.hidden_features}, out_features={self.out_features}"
        )
