"""manualgrad: a two-layer tanh/softmax network with hand-derived gradients, checked against autograd."""

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
