"""Break one formula of the backward at a time and watch the checks catch it.

What it shows: a hand-written backward is only as good as the checks run against it. Here the
network's loss is written as one custom ``torch.autograd.Function`` whose backward is assembled
from three small steps, eq. (7), (10) and (11) of docs/derivation.md. Each *fault* replaces one
step with a classic slip (several of them are printed in the article):

* drop (1 - a1^2), the tanh derivative, eq. (11);
* flip the sign of y_hat - y, eq. (7) (the article's y - y_hat);
* drop the 1/N of the mean, eq. (7);
* use z2 where W2 belongs, eq. (10) (the article's dz2/da1 = z2);
* a matrix product where the elementwise product belongs, eq. (11)/(16).

and three checks run against it:

* *twin*: value and every gradient against the same network in native autograd
  (``manualgrad.reference.loss``), float32, at assert_close-like tolerances;
* *gradcheck*: ``torch.autograd.gradcheck`` (finite differences) in float64;
* *shapes*: the backward run with N != H. The last two faults type-check only because this
  script uses N == H (as any square batch would); with N != H PyTorch raises a shape error.

The correct backward runs first as a control: it must pass every check, or the checks prove
nothing. The script exits 1 if the control fails or if any fault goes uncaught. It does not
depend on manualgrad's internals: the Functions are defined here.

Run::

    python examples/fault_injection.py
"""

import argparse
import sys

import torch
from torch.autograd import Function

from manualgrad import reference

N, D, H, C = 6, 2, 6, 3  # N == H, so that the shape-preserving slips of eq. (10), (16) type-check

# The three steps of the backward that the faults replace, correct versions.
CORRECT = {
    "eq7": lambda y_hat, y, N: (y_hat - y) / N,  # (N, C)  eq. (7): delta2
    "eq10": lambda delta2, W2, z2: delta2 @ W2.T,  # (N, H)  eq. (10): dL/da1
    "eq11": lambda grad_a1, a1: grad_a1 * (1 - a1**2),  # (N, H)  eq. (11): delta1
}

# name -> (equation, the step it replaces, the broken version)
FAULTS = {
    "drop (1 - a1^2)": ("(11)", "eq11", lambda grad_a1, a1: grad_a1),
    "flip the sign of y_hat - y": ("(7)", "eq7", lambda y_hat, y, N: (y - y_hat) / N),
    "drop the 1/N": ("(7)", "eq7", lambda y_hat, y, N: y_hat - y),
    "z2 in place of W2": ("(10)", "eq10", lambda delta2, W2, z2: delta2 @ z2.T),
    "matrix product for elementwise": ("(11)/(16)", "eq11", lambda grad_a1, a1: grad_a1 @ (1 - a1**2)),
}


def make_loss_function(steps):
    """A Function for L = -(1/N) sum y log softmax(tanh(x W1 + b1) W2 + b2), backward from ``steps``."""

    class NetworkLoss(Function):
        @staticmethod
        def forward(x, y, W1, b1, W2, b2):
            z1 = x @ W1 + b1  # (N, H)  eq. (1)
            a1 = torch.tanh(z1)  # (N, H)  eq. (2)
            z2 = a1 @ W2 + b2  # (N, C)  eq. (3)
            log_y_hat = torch.log_softmax(z2, 1)  # (N, C)  eq. (4), as a log
            loss = -(y * log_y_hat).sum() / x.shape[0]  # ()  eq. (5)
            return loss, a1, z2, log_y_hat.exp()

        @staticmethod
        def setup_context(ctx, inputs, output):
            x, y, W1, b1, W2, b2 = inputs
            _, a1, z2, y_hat = output
            ctx.mark_non_differentiable(a1, z2, y_hat)
            ctx.save_for_backward(x, y, W1, W2, a1, z2, y_hat)

        @staticmethod
        def backward(ctx, grad_loss, _grad_a1, _grad_z2, _grad_y_hat):
            x, y, W1, W2, a1, z2, y_hat = ctx.saved_tensors
            grad_x = grad_W1 = grad_b1 = grad_W2 = grad_b2 = None
            delta2 = steps["eq7"](y_hat, y, x.shape[0]) * grad_loss  # (N, C)  eq. (7)
            if ctx.needs_input_grad[4]:
                grad_W2 = a1.T @ delta2  # (H, C)  eq. (14)
            if ctx.needs_input_grad[5]:
                grad_b2 = delta2.sum(0)  # (C,)  eq. (15)
            grad_a1 = steps["eq10"](delta2, W2, z2)  # (N, H)  eq. (10)
            delta1 = steps["eq11"](grad_a1, a1)  # (N, H)  eq. (11)
            if ctx.needs_input_grad[2]:
                grad_W1 = x.T @ delta1  # (D, H)  eq. (16)
            if ctx.needs_input_grad[3]:
                grad_b1 = delta1.sum(0)  # (H,)  eq. (17)
            if ctx.needs_input_grad[0]:
                grad_x = delta1 @ W1.T  # (N, D)  eq. (18)
            return grad_x, None, grad_W1, grad_b1, grad_W2, grad_b2

    def loss(x, y, W1, b1, W2, b2):
        return NetworkLoss.apply(x, y, W1, b1, W2, b2)[0]

    return loss


def make_inputs(n, h, dtype, seed=0):
    """x (n, D), one-hot y (n, C) and parameters W1, b1, W2, b2."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=generator, dtype=dtype)
    target = torch.randint(0, C, (n,), generator=generator)
    y = torch.nn.functional.one_hot(target, C).to(dtype)
    params = [
        torch.randn(D, h, generator=generator, dtype=dtype) / D**0.5,
        torch.randn(h, generator=generator, dtype=dtype) * 0.1,
        torch.randn(h, C, generator=generator, dtype=dtype) / h**0.5,
        torch.randn(C, generator=generator, dtype=dtype) * 0.1,
    ]
    return x, target, y, params


NAMES = ("x", "W1", "b1", "W2", "b2")


def check_twin(loss_fn):
    """Value and gradients against native autograd in float32; returns the names that differ."""
    x, target, y, params = make_inputs(N, H, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (x, *params)]
    value = loss_fn(leaves[0], y, *leaves[1:])
    grads = torch.autograd.grad(value, leaves)
    twin_leaves = [t.clone().requires_grad_() for t in (x, *params)]
    twin_value = reference.loss(twin_leaves[0], target, *twin_leaves[1:])
    twin_grads = torch.autograd.grad(twin_value, twin_leaves)
    wrong = [] if torch.allclose(value, twin_value, rtol=1e-5, atol=1e-6) else ["loss"]
    for name, g, t in zip(NAMES, grads, twin_grads):
        if not torch.allclose(g, t, rtol=1e-5, atol=1e-6):
            wrong.append(name)
    return wrong


def check_gradcheck(loss_fn):
    """True when gradcheck (float64, finite differences) finds a mismatch."""
    x, _, y, params = make_inputs(N, H, torch.float64)
    inputs = [t.requires_grad_() for t in (x, *params)]
    ok = torch.autograd.gradcheck(lambda x, *p: loss_fn(x, y, *p), inputs, raise_exception=False)
    return not ok


def check_shapes(loss_fn):
    """True when the backward raises a shape error for a batch with N != H."""
    x, _, y, params = make_inputs(N - 1, H, torch.float64)
    leaves = [t.requires_grad_() for t in (x, *params)]
    try:
        torch.autograd.grad(loss_fn(leaves[0], y, *leaves[1:]), leaves)
    except RuntimeError:
        return True
    return False


def main(argv=None, faults=None) -> int:
    """Run the control and every fault; 0 when the control passes and every fault is caught.

    ``faults`` replaces :data:`FAULTS` (name -> (equation, step, broken step)), for experiments.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    faults = FAULTS if faults is None else faults

    header = f"{'fault':<34} {'eq.':<10} {'twin (float32)':<15} {'gradcheck (f64)':<16} {'shapes (N != H)':<16} wrong"
    print(header)
    print("-" * len(header))

    control = make_loss_function(CORRECT)
    wrong, gradcheck_fails, shape_fails = check_twin(control), check_gradcheck(control), check_shapes(control)
    control_ok = not wrong and not gradcheck_fails and not shape_fails
    print(
        f"{'(none: the correct formulas)':<34} {'-':<10} {'pass' if not wrong else 'FAIL':<15} "
        f"{'FAIL' if gradcheck_fails else 'pass':<16} {'FAIL' if shape_fails else 'pass':<16} {', '.join(wrong)}"
    )

    uncaught = []
    for name, (eq, step, broken) in faults.items():
        loss_fn = make_loss_function({**CORRECT, step: broken})
        wrong, by_gradcheck, by_shapes = check_twin(loss_fn), check_gradcheck(loss_fn), check_shapes(loss_fn)
        caught = bool(wrong) or by_gradcheck or by_shapes
        if not caught:
            uncaught.append(name)
        print(
            f"{name:<34} {eq:<10} {'CAUGHT' if wrong else '-':<15} {'CAUGHT' if by_gradcheck else '-':<16} "
            f"{'CAUGHT' if by_shapes else '-':<16} {', '.join(wrong) or '-'}"
        )

    print()
    if not control_ok:
        print("the correct backward FAILED a check: the checks themselves are broken")
    print(f"{len(faults) - len(uncaught)} of {len(faults)} faults caught")
    if uncaught:
        print("UNCAUGHT: " + ", ".join(uncaught))
    return 0 if control_ok and not uncaught else 1


if __name__ == "__main__":
    sys.exit(main())
