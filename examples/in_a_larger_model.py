"""TwoLayerNet as one layer of a larger model: gradients flow through x, trained with Adam.

What it shows: the hand-derived module composes with the rest of PyTorch. Here it sits in the
middle of an ``nn.Sequential``::

    nn.Linear(2, 8) -> nn.Tanh() -> TwoLayerNet(8, 64, 4) -> nn.Linear(4, 2)

so its backward must produce dL/dx (eq. (18) of docs/derivation.md, the gradient the article
leaves out) for the layers before it, and must accept an arbitrary upstream gradient dL/dy_hat
from the layer after it (the softmax VJP, eq. (6)), not only the (y_hat - y)/N of its own loss.

It checks one backward against a twin in which TwoLayerNet is replaced by the same network in
native autograd (``manualgrad.reference.probs``), with the same weights: every parameter
gradient of every layer must agree. Then it trains the whole model with ``torch.optim.Adam`` on
two moons and checks that the loss goes down (below 3/4 of its first value). Exits 1 if either check fails.

Run::

    python examples/in_a_larger_model.py             # 300 Adam steps, a few seconds
    python examples/in_a_larger_model.py --steps 50
"""

import argparse
import copy
import sys

import torch
import torch.nn.functional as F
from torch import nn

from manualgrad import TwoLayerNet, reference
from manualgrad.data import make_moons


class NativeTwoLayerNet(nn.Module):
    """The same parameters as a TwoLayerNet, with the forward in native ops (autograd's backward)."""

    def __init__(self, net: TwoLayerNet):
        super().__init__()
        self.net = net

    def forward(self, x):
        return reference.probs(x, self.net.W1, self.net.b1, self.net.W2, self.net.b2)  # (N, C)  eq. (1)-(4)


def build_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(2, 8),  # (N, 8)
        nn.Tanh(),
        TwoLayerNet(8, 64, 4),  # (N, 4): probabilities y_hat, hand-derived backward
        nn.Linear(4, 2),  # (N, 2): logits of the two moons
    )


def report(name, a, b) -> bool:
    """Print one gradient pair and return whether it agrees to float64 rounding."""
    agree = torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    difference = (a - b).abs().max().item()
    verdict = "ok" if agree else "FAIL"
    print(f"  grad {name:<8} {tuple(a.shape)!s:<8} max |TwoLayerNet - native| {difference:.1e}  {verdict}")
    return agree


def check_against_native_twin(model: nn.Sequential, x, target) -> bool:
    """One backward through both models, float64: every parameter gradient, and dL/dx of the input."""
    model64 = copy.deepcopy(model).double()
    twin = copy.deepcopy(model64)
    twin[2] = NativeTwoLayerNet(twin[2])  # same weights, native autograd inside
    input_grads = []
    for net in (model64, twin):
        x64 = x.double().requires_grad_()
        F.cross_entropy(net(x64), target).backward()
        input_grads.append(x64.grad)  # (N, 2): reaches x only through TwoLayerNet's dL/dx, eq. (18)
    results = [report(name, p.grad, q.grad) for (name, p), q in zip(model64.named_parameters(), twin.parameters())]
    results.append(report("input", *input_grads))
    return all(results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="Adam steps (default 300)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (default 0.01)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be positive, got {args.steps}")

    torch.manual_seed(args.seed)
    x, target = make_moons(200, noise=0.2, seed=args.seed)  # (N, 2), (N,)
    model = build_model()
    print(model)

    print("one backward, TwoLayerNet against its native-autograd twin (float64, same weights):")
    twin_ok = check_against_native_twin(model, x, target)

    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    losses = []
    for _ in range(args.steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), target)
        loss.backward()  # through nn.Linear, TwoLayerNet's hand-written backward, nn.Tanh, nn.Linear
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == target).float().mean().item()
    decreased = losses[-1] < 0.75 * losses[0]
    print(
        f"Adam, {args.steps} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}, training accuracy {100 * accuracy:.1f}%"
    )
    if not twin_ok:
        print("FAIL: TwoLayerNet's gradients differ from the native-autograd twin")
    if not decreased:
        print("FAIL: the loss did not fall below 3/4 of its first value")
    return 0 if twin_ok and decreased else 1


if __name__ == "__main__":
    sys.exit(main())
