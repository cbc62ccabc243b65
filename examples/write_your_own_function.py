"""Write the network's backward yourself, one ``torch.autograd.Function`` at a time.

What it shows: a commented walkthrough of the recipe manualgrad follows, built from scratch in
three small Functions, each checked with ``torch.autograd.gradcheck`` before the next is written:

1. ``Linear``: z = x W + b, the shape of eq. (1) and (3); its backward gives eq. (8)-(9),
   (12)-(18) in one place;
2. ``Tanh``: a = tanh(z), eq. (2); backward eq. (11), reusing the saved output a;
3. ``SoftmaxCrossEntropy``: the mean cross-entropy of logits, eq. (4)-(5), with the fused
   backward delta2 = (y_hat - y) / N, eq. (7).

Then the three are composed into the article's network and compared with manualgrad's own
``two_layer_net_loss`` and with native autograd, and gradcheck runs on the whole composition.
gradcheck raises on the first mismatch, so the script exits non-zero if any step is wrong.

Run::

    python examples/write_your_own_function.py
"""

import torch
import torch.nn.functional as F
from torch.autograd import Function, gradcheck

import manualgrad

# gradcheck compares the backward with finite differences (f(x + eps) - f(x - eps)) / 2 eps.
# Its tolerances are meant for float64: in float32 the finite differences are too noisy.
DTYPE = torch.float64
torch.manual_seed(0)
N, D, H, C = 5, 2, 7, 3  # batch, inputs, hidden units, classes: small, so gradcheck is quick


# ----------------------------------------------------------------------------------------
# Step 1. Linear: z = x W + b.
#
# A Function has a forward that computes the output with ordinary torch ops (autograd does
# not record them), a setup_context that saves what backward will need, and a backward that
# receives grad_z = dL/dz and returns dL/d(input) for each input of forward, in order.
# Shapes decide the formulas: dL/dW must have W's shape (D, H), and the only way to get it
# from x (N, D) and grad_z (N, H) is x^T grad_z, which also sums over the batch.
# ----------------------------------------------------------------------------------------


class Linear(Function):
    @staticmethod
    def forward(x, W, b):
        return x @ W + b  # (N, H)  eq. (1) (and eq. (3) with a1, W2, b2)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, W, b = inputs
        ctx.save_for_backward(x, W)  # tensors go through save_for_backward, never ctx.x = x

    @staticmethod
    def backward(ctx, grad_z):
        x, W = ctx.saved_tensors
        grad_x = grad_W = grad_b = None  # None for every input nobody asked a gradient for
        if ctx.needs_input_grad[0]:
            grad_x = grad_z @ W.T  # (N, D)  eq. (18), and eq. (10) for the second layer
        if ctx.needs_input_grad[1]:
            grad_W = x.T @ grad_z  # (D, H)  eq. (16), and eq. (14) for the second layer
        if ctx.needs_input_grad[2]:
            grad_b = grad_z.sum(0)  # (H,)  eq. (17), and eq. (15): b was broadcast over N rows
        return grad_x, grad_W, grad_b


x = torch.randn(N, D, dtype=DTYPE, requires_grad=True)
W1 = torch.randn(D, H, dtype=DTYPE, requires_grad=True)
b1 = torch.randn(H, dtype=DTYPE, requires_grad=True)
gradcheck(Linear.apply, (x, W1, b1))  # raises GradcheckError, with both Jacobians, if the backward is wrong
print("step 1: Linear               gradcheck ok")


# ----------------------------------------------------------------------------------------
# Step 2. Tanh: a = tanh(z).
#
# tanh'(z) = 1 - tanh(z)^2 = 1 - a^2, so saving the *output* a is enough: no second tanh in
# backward. The product with grad_a is elementwise: each a[n, h] depends only on z[n, h].
# ----------------------------------------------------------------------------------------


class Tanh(Function):
    @staticmethod
    def forward(z):
        return torch.tanh(z)  # (N, H)  eq. (2)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_a):
        (a,) = ctx.saved_tensors
        grad_z = None
        if ctx.needs_input_grad[0]:
            grad_z = grad_a * (1 - a**2)  # (N, H)  eq. (11), elementwise
        return grad_z


z1 = torch.randn(N, H, dtype=DTYPE, requires_grad=True)
gradcheck(Tanh.apply, (z1,))
print("step 2: Tanh                 gradcheck ok")


# ----------------------------------------------------------------------------------------
# Step 3. SoftmaxCrossEntropy: L = -(1/N) sum_n log softmax(z2)[n, target[n]].
#
# Written through the softmax, the gradient is y_hat * (g - sum_c g y_hat) (eq. (6)) with
# g = dL/dy_hat = -y / (N y_hat); it simplifies to (y_hat - y) / N, eq. (7). Fusing softmax and
# loss gives that short formula and avoids dividing by a y_hat that may underflow to 0.
# The target holds class indices: not differentiable, so its gradient is None.
# The loss is a scalar, so grad_loss is a 0-dim tensor (1 when you call loss.backward()).
# ----------------------------------------------------------------------------------------


class SoftmaxCrossEntropy(Function):
    @staticmethod
    def forward(z2, target):
        log_y_hat = torch.log_softmax(z2, 1)  # (N, C)  eq. (4), as a log: stable for large logits
        return -log_y_hat.gather(1, target[:, None]).mean()  # ()  eq. (5)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z2, target = inputs
        ctx.save_for_backward(torch.softmax(z2, 1), target)

    @staticmethod
    def backward(ctx, grad_loss):
        y_hat, target = ctx.saved_tensors
        grad_z2 = None
        if ctx.needs_input_grad[0]:
            y = F.one_hot(target, y_hat.shape[1]).to(y_hat.dtype)  # (N, C)
            grad_z2 = (y_hat - y) / y_hat.shape[0] * grad_loss  # (N, C)  eq. (7)
        return grad_z2, None


z2 = torch.randn(N, C, dtype=DTYPE, requires_grad=True)
target = torch.randint(0, C, (N,))
gradcheck(lambda z: SoftmaxCrossEntropy.apply(z, target), (z2,))
print("step 3: SoftmaxCrossEntropy  gradcheck ok")


# ----------------------------------------------------------------------------------------
# Step 4. Compose them into the article's network, eq. (1)-(5). Autograd chains the three
# backwards; what flows between them is exactly delta2 (eq. 7), dL/da1 (eq. 10) and
# delta1 (eq. 11).
# ----------------------------------------------------------------------------------------


def network_loss(x, W1, b1, W2, b2, target):
    a1 = Tanh.apply(Linear.apply(x, W1, b1))  # (N, H)  eq. (1), (2)
    z2 = Linear.apply(a1, W2, b2)  # (N, C)  eq. (3)
    return SoftmaxCrossEntropy.apply(z2, target)  # ()  eq. (4), (5)


W2 = torch.randn(H, C, dtype=DTYPE, requires_grad=True)
b2 = torch.randn(C, dtype=DTYPE, requires_grad=True)
inputs = (x, W1, b1, W2, b2)
gradcheck(lambda *t: network_loss(*t, target), inputs)
print("step 4: the whole network    gradcheck ok")

# Against native autograd and against manualgrad: the same value and the same five gradients.
ours = torch.autograd.grad(network_loss(*inputs, target), inputs)
native = torch.autograd.grad(F.cross_entropy(torch.tanh(x @ W1 + b1) @ W2 + b2, target), inputs)
library = torch.autograd.grad(manualgrad.two_layer_net_loss(x, target, W1, b1, W2, b2), inputs)
for name, a, b, c in zip(("x", "W1", "b1", "W2", "b2"), ours, native, library):
    torch.testing.assert_close(a, b, msg=lambda m, name=name: f"grad {name} vs native autograd: {m}")
    torch.testing.assert_close(a, c, msg=lambda m, name=name: f"grad {name} vs manualgrad: {m}")
    print(f"        grad {name:<2} {tuple(a.shape)!s:<7} max |ours - autograd| {(a - b).abs().max().item():.1e}")
print("step 5: agrees with native autograd and with manualgrad.two_layer_net_loss")
