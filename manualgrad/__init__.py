"""manualgrad: a two-layer tanh/softmax network with hand-derived gradients, checked against autograd.

x (N, D) -> tanh hidden (H) -> softmax (C), trained with cross-entropy; every backward pass is a
hand-derived formula (docs/derivation.md) verified against PyTorch's own autograd.

* `TwoLayerNet`: the network as an ``nn.Module`` (``model(x)``, ``.logits(x)``, ``.loss(x, target)``);
* `manualgrad.functional`: the same as functions of explicit parameters;
* `manualgrad.textbook`: the hand-derived Functions as a learner first reads them;
* `manualgrad.testing`: check your own custom ``autograd.Function`` against a reference;
* `manualgrad.verify`: ``python -m manualgrad verify``; `manualgrad.reference`: the twins.

Example:
    >>> import torch
    >>> from manualgrad import TwoLayerNet
    >>> model = TwoLayerNet(2, 8, 3)
    >>> loss = model.loss(torch.randn(4, 2), torch.tensor([0, 2, 1, 0]))
    >>> loss.backward()
    >>> model.W1.grad.shape
    torch.Size([2, 8])
"""

from . import functional, reference
from .functional import two_layer_net, two_layer_net_logits, two_layer_net_loss
from .module import TwoLayerNet

__all__ = [
    "TwoLayerNet",
    "functional",
    "reference",
    "two_layer_net",
    "two_layer_net_logits",
    "two_layer_net_loss",
]
__version__ = "0.2.0.dev0"
