"""One batch, every intermediate quantity of the derivation: hand-derived formula vs torch autograd.

What it shows: for a batch of two-moons points and a freshly initialised TwoLayerNet, each
quantity of docs/derivation.md in its order, the forward (1)-(5), then the backward (6)-(18),
computed twice:

* *manual*: the formula written out here in a line of torch (delta2 = (y_hat - y)/N, ...);
* *autograd*: ``torch.autograd.grad`` of the same forward written with native ops, taken
  with respect to the intermediate tensor itself (z2, a1, z1) or the parameter.

Then the gradients that manualgrad itself produces (``TwoLayerNet.loss(...).backward()``) against
the same autograd values. Each row prints the shape, the max absolute difference, the max
relative difference (max |manual - autograd| / max |autograd|) and whether the two are
bit-for-bit equal (often they are not: the same math summed in another order rounds differently).
Exits 1 if any relative difference exceeds the tolerance of the dtype.

Run::

    python examples/side_by_side.py                       # float64, batch 8, 500 hidden units
    python examples/side_by_side.py --dtype float32 --batch 64
"""

import argparse
import sys

import torch
import torch.nn.functional as F

from manualgrad import TwoLayerNet
from manualgrad.data import make_moons

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}  # max relative difference that passes


def compare(rows, eq, name, manual, autograd):
    manual, autograd = manual.detach(), autograd.detach()
    if manual.shape != autograd.shape:
        raise ValueError(f"{name}: shape {tuple(manual.shape)} vs {tuple(autograd.shape)}")
    max_abs = float((manual - autograd).abs().max())
    scale = float(autograd.abs().max())
    max_rel = max_abs / scale if scale > 0 else max_abs
    rows.append((eq, name, tuple(manual.shape), max_abs, max_rel, torch.equal(manual, autograd)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="rows of x (default 8)")
    parser.add_argument("--hidden", type=int, default=500, help="hidden units (default 500)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.batch < 2 or args.hidden < 1:
        parser.error("--batch must be >= 2 and --hidden >= 1")
    dtype = getattr(torch, args.dtype)

    torch.manual_seed(args.seed)
    x, target = make_moons(args.batch, noise=0.2, seed=args.seed, dtype=dtype)  # (N, D), (N,)
    model = TwoLayerNet(2, args.hidden, 2, dtype=dtype)
    W1, b1, W2, b2 = (p.detach() for p in model.parameters())
    N, C = x.shape[0], W2.shape[1]
    y = F.one_hot(target, C).to(dtype)  # (N, C)
    g = torch.randn(N, C, dtype=dtype)  # (N, C)  an upstream gradient dL/dy_hat, for eq. (6)

    # --- autograd: the forward in native ops, then torch.autograd.grad at every step ---------
    xa, W1a, b1a, W2a, b2a = (t.clone().requires_grad_() for t in (x, W1, b1, W2, b2))
    z1a = xa @ W1a + b1a
    a1a = torch.tanh(z1a)
    z2a = a1a @ W2a + b2a
    y_hata = torch.softmax(z2a, 1)
    loss_a = F.cross_entropy(z2a, target)
    (vjp_a,) = torch.autograd.grad(y_hata, z2a, g, retain_graph=True)  # eq. (6) by autograd
    auto = dict(zip(("z2", "a1", "z1", "x", "W1", "b1", "W2", "b2"),
                    torch.autograd.grad(loss_a, (z2a, a1a, z1a, xa, W1a, b1a, W2a, b2a))))  # fmt: skip

    # --- manual: every formula of docs/derivation.md, in its order -------------------------
    z1 = x @ W1 + b1  # (N, H)  eq. (1)
    a1 = torch.tanh(z1)  # (N, H)  eq. (2)
    z2 = a1 @ W2 + b2  # (N, C)  eq. (3)
    y_hat = torch.softmax(z2, 1)  # (N, C)  eq. (4)
    loss = -(y * torch.log(y_hat)).sum() / N  # ()  eq. (5)
    vjp = y_hat * (g - (g * y_hat).sum(1, keepdim=True))  # (N, C)  eq. (6)
    delta2 = (y_hat - y) / N  # (N, C)  eq. (7)
    grad_W2 = a1.T @ delta2  # (H, C)  eq. (8), (14)
    grad_b2 = delta2.sum(0)  # (C,)  eq. (9), (15)
    grad_a1 = delta2 @ W2.T  # (N, H)  eq. (10)
    delta1 = grad_a1 * (1 - a1**2)  # (N, H)  eq. (11)
    grad_W1 = x.T @ delta1  # (D, H)  eq. (12), (16)
    grad_b1 = delta1.sum(0)  # (H,)  eq. (13), (17)
    grad_x = delta1 @ W1.T  # (N, D)  eq. (18)

    rows = []
    compare(rows, "(1)", "z1 = x W1 + b1", z1, z1a)
    compare(rows, "(2)", "a1 = tanh(z1)", a1, a1a)
    compare(rows, "(3)", "z2 = a1 W2 + b2", z2, z2a)
    compare(rows, "(4)", "y_hat = softmax(z2)", y_hat, y_hata)
    compare(rows, "(5)", "L = -(1/N) sum y log y_hat", loss, loss_a)
    compare(rows, "(6)", "softmax VJP y_hat*(g - sum g y_hat)", vjp, vjp_a)
    compare(rows, "(7)", "delta2 = (y_hat - y)/N", delta2, auto["z2"])
    compare(rows, "(8),(14)", "dW2 = a1^T delta2", grad_W2, auto["W2"])
    compare(rows, "(9),(15)", "db2 = sum_n delta2", grad_b2, auto["b2"])
    compare(rows, "(10)", "dL/da1 = delta2 W2^T", grad_a1, auto["a1"])
    compare(rows, "(11)", "delta1 = dL/da1 * (1 - a1^2)", delta1, auto["z1"])
    compare(rows, "(12),(16)", "dW1 = x^T delta1", grad_W1, auto["W1"])
    compare(rows, "(13),(17)", "db1 = sum_n delta1", grad_b1, auto["b1"])
    compare(rows, "(18)", "dx = delta1 W1^T", grad_x, auto["x"])

    # --- manualgrad's own backward (TwoLayerNet.loss), against the same autograd values ------
    xm = x.clone().requires_grad_()
    model.loss(xm, target).backward()
    compare(rows, "(5)", "manualgrad: loss value", model.loss(x, target), loss_a)
    compare(rows, "(18)", "manualgrad: x.grad", xm.grad, auto["x"])
    for eq, name in (("(16)", "W1"), ("(17)", "b1"), ("(14)", "W2"), ("(15)", "b2")):
        compare(rows, eq, f"manualgrad: {name}.grad", getattr(model, name).grad, auto[name])

    tolerance = TOLERANCE[dtype]
    print(f"batch N={N}, D=2, H={args.hidden}, C={C}, {args.dtype}; pass: max relative difference <= {tolerance:g}")
    header = f"{'eq.':<10} {'quantity':<37} {'shape':<10} {'max abs diff':>12} {'max rel diff':>12}  bit-exact  ok"
    print(header)
    print("-" * len(header))
    failures = 0
    for eq, name, shape, max_abs, max_rel, exact in rows:
        ok = max_rel <= tolerance
        failures += not ok
        shape_text = "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
        print(
            f"{eq:<10} {name:<37} {shape_text:<10} {max_abs:>12.3e} {max_rel:>12.3e}  "
            f"{'yes' if exact else 'no':<9}  {'ok' if ok else 'FAIL'}"
        )
    print(f"{len(rows) - failures} of {len(rows)} quantities agree" + ("" if not failures else f"; {failures} FAIL"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
