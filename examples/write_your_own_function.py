"""Write the network's backward yourself, one ``torch.autograd.Function`` at a time.

What it shows: a commented walkthrough of the recipe manualgrad follows, built from scratch in
small Functions, each checked before the next is written:

1. ``Linear``: z = x W + b, eq. (1) and (3); its backward gives eq. (8)-(10), (12)-(18);
2. ``Tanh``: a = tanh(z), eq. (2); backward eq. (11), reusing the output a, saved properly;
3. ``SoftmaxCrossEntropy``, first *wrong*: it reuses a softmax computed outside autograd's
   record. gradcheck passes, yet gradgradcheck fails and a Hessian-vector product of the
   network silently differs from autograd's (both are printed);
4. remedy one: ``@once_differentiable``: double backward now raises instead of lying;
5. remedy two: recompute the softmax from the saved input in backward: gradgradcheck passes
   and the Hessian-vector product equals autograd's;
6. the three composed into the article's network, against native autograd and manualgrad;
7. the rules a learner must know: never modify grad_output in place, mark non-differentiable
   outputs, and when not to write a custom Function at all.

Every step states what it expects; the script exits non-zero if any expectation fails.
manualgrad/textbook.py is the whole network written the same way.

Run::

    python examples/write_your_own_function.py
"""

import torch
import torch.nn.functional as F
from torch.autograd import Function, gradcheck, gradgradcheck
from torch.autograd.function import once_differentiable

import manualgrad

# gradcheck compares the backward with finite differences (f(x + eps) - f(x - eps)) / 2 eps.
# Its tolerances are meant for float64: in float32 the finite differences are too noisy.
DTYPE = torch.float64
torch.manual_seed(0)


def expect(ok: bool, what: str) -> None:
    """Every step states what it expects; a failed expectation ends the script with exit code 1."""
    if not ok:
        raise SystemExit(f"FAILED: {what}")

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
# gradgradcheck checks the backward of the backward (Hessian-vector products, gradient penalties).
# This backward uses the saved *inputs* x, W with ordinary torch ops, so autograd can differentiate it.
expect(gradgradcheck(Linear.apply, (x, W1, b1)), "Linear passes gradgradcheck")
print("step 1: Linear               gradcheck ok, gradgradcheck ok")


# ----------------------------------------------------------------------------------------
# Step 2. Tanh: a = tanh(z).
#
# tanh'(z) = 1 - tanh(z)^2 = 1 - a^2, so saving the *output* a is enough: no second tanh in
# backward. The product with grad_a is elementwise: each a[n, h] depends only on z[n, h].
# An output saved with save_for_backward stays connected to the inputs (through this very
# Function), so this backward is right under double backward too: gradgradcheck passes.
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
expect(gradgradcheck(Tanh.apply, (z1,)), "Tanh passes gradgradcheck")
print("step 2: Tanh                 gradcheck ok, gradgradcheck ok")




# ----------------------------------------------------------------------------------------
# Step 3. SoftmaxCrossEntropy, the WRONG way: L = -(1/N) sum_n log softmax(z2)[n, target[n]].
#
# Written through the softmax, the gradient is y_hat * (g - sum_c g y_hat) (eq. (6)) with
# g = dL/dy_hat = -y / (N y_hat); it simplifies to (y_hat - y) / N, eq. (7). Fusing softmax and
# loss gives that short formula and avoids dividing by a y_hat that may underflow to 0.
# The target holds class indices: not differentiable, so its gradient is None.
#
# The mistake: setup_context computes y_hat = softmax(z2) and saves it. Autograd records
# nothing there, so in a double backward y_hat is a constant: the term of the second derivative
# that flows through y_hat (the softmax's curvature) silently vanishes. First-order gradients
# are right, so gradcheck passes; only gradgradcheck and a Hessian-vector product notice.
# ----------------------------------------------------------------------------------------


class SoftmaxCrossEntropyWrong(Function):
    @staticmethod
    def forward(z2, target):
        log_y_hat = torch.log_softmax(z2, 1)  # (N, C)  eq. (4), as a log: stable for large logits
        return -log_y_hat.gather(1, target[:, None]).mean()  # ()  eq. (5)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z2, target = inputs
        ctx.save_for_backward(torch.softmax(z2, 1), target)  # WRONG: y_hat has no history back to z2

    @staticmethod
    def backward(ctx, grad_loss):
        y_hat, target = ctx.saved_tensors
        grad_z2 = None
        if ctx.needs_input_grad[0]:
            y = F.one_hot(target, y_hat.shape[1]).to(y_hat.dtype)  # (N, C)
            grad_z2 = (y_hat - y) / y_hat.shape[0] * grad_loss  # (N, C)  eq. (7)
        return grad_z2, None


def network_loss(loss_function, x, W1, b1, W2, b2, target):
    a1 = Tanh.apply(Linear.apply(x, W1, b1))  # (N, H)  eq. (1), (2)
    z2 = Linear.apply(a1, W2, b2)  # (N, C)  eq. (3)
    return loss_function.apply(z2, target)  # ()  eq. (4), (5)


def native_loss(x, W1, b1, W2, b2, target):
    return F.cross_entropy(torch.tanh(x @ W1 + b1) @ W2 + b2, target)


W2 = torch.randn(H, C, dtype=DTYPE, requires_grad=True)
b2 = torch.randn(C, dtype=DTYPE, requires_grad=True)
params = (W1, b1, W2, b2)
direction = tuple(torch.randn_like(p) for p in params)  # v in H v


def hessian_vector_product(loss_function=None):
    """H v for the loss as a function of (W1, b1, W2, b2): ours, or native autograd's if None."""

    def loss_of(*p):
        return native_loss(x, *p, target) if loss_function is None else network_loss(loss_function, x, *p, target)

    grads = torch.autograd.grad(loss_of(*params), params, create_graph=True)  # recorded backward
    # The wrong version's grad b2 = sum_n (y_hat - y) / N is built from a constant y_hat: it has no
    # history at all, so its row of the Hessian silently comes out as zeros (materialize_grads).
    pairs = [(g, v) for g, v in zip(grads, direction) if g.requires_grad]
    outputs, directions = zip(*pairs)
    hv = torch.autograd.grad(outputs, params, directions, allow_unused=True, materialize_grads=True)  # H v
    return torch.cat([t.flatten() for t in hv])


def sce_check(function, check):
    return check(lambda z: function.apply(z, target), (z2,), raise_exception=False)


z2 = torch.randn(N, C, dtype=DTYPE, requires_grad=True)
target = torch.randint(0, C, (N,))
expect(sce_check(SoftmaxCrossEntropyWrong, gradcheck), "the wrong version still passes gradcheck")
expect(not sce_check(SoftmaxCrossEntropyWrong, gradgradcheck), "the wrong version fails gradgradcheck")
wrong, native = hessian_vector_product(SoftmaxCrossEntropyWrong), hessian_vector_product()
print("step 3: SoftmaxCrossEntropyWrong  gradcheck ok, gradgradcheck FAILS (as expected)")
print(f"        H v, wrong Function: {wrong[:4].tolist()} ...")
print(f"        H v, native autograd: {native[:4].tolist()} ...")
print(f"        max |difference| {(wrong - native).abs().max().item():.2e}: a silent, wrong second derivative")
expect(not torch.allclose(wrong, native), "the wrong version's Hessian-vector product differs from autograd's")


# ----------------------------------------------------------------------------------------
# Step 4. Remedy one: @once_differentiable. It runs backward under no_grad and, when the
# upstream gradient itself requires grad (as in gradgradcheck, or for any Function in the middle
# of a network being double-differentiated), returns gradients whose own backward raises:
# a double backward errors out instead of silently returning a wrong number. Cheap (backward
# stays as it is), but no Hessian-vector products, gradient penalties or gradgradcheck.
# The catch, for a loss: the decorator looks only at backward's arguments. At the end of the
# graph the upstream gradient is a constant 1, so it cannot tell, returns plain constants, and
# a Hessian-vector product through it is silently wrong again (shown below). For a loss, or
# whenever second derivatives may be wanted, use remedy two.
# ----------------------------------------------------------------------------------------


class SoftmaxCrossEntropyOnce(SoftmaxCrossEntropyWrong):
    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        return SoftmaxCrossEntropyWrong.backward(ctx, grad_loss)


expect(sce_check(SoftmaxCrossEntropyOnce, gradcheck), "once_differentiable keeps first order right")
expect(not sce_check(SoftmaxCrossEntropyOnce, gradgradcheck), "gradgradcheck fails on once_differentiable")
upstream = torch.ones((), dtype=DTYPE, requires_grad=True)  # an upstream gradient that requires grad
(grad_z2,) = torch.autograd.grad(SoftmaxCrossEntropyOnce.apply(z2, target), z2, upstream, create_graph=True)
try:
    grad_z2.sum().backward()  # differentiate the backward: a double backward
except RuntimeError as error:
    print("step 4: @once_differentiable     gradcheck ok; double backward raises:")
    print(f"        RuntimeError: {str(error).splitlines()[0]}")
else:
    expect(False, "double backward through a once_differentiable backward raises")
at_the_end = hessian_vector_product(SoftmaxCrossEntropyOnce)
print(f"        but as the network's last Function, upstream gradient 1: H v max |difference| "
      f"{(at_the_end - native).abs().max().item():.2e}, silently")
expect(not torch.allclose(at_the_end, native), "a once_differentiable loss cannot guard an HVP with upstream 1")


# ----------------------------------------------------------------------------------------
# Step 5. Remedy two: save the *input* z2, and recompute y_hat in backward with ordinary torch
# ops. When autograd records a backward (create_graph=True), the record now reaches back to z2,
# and the formula (y_hat - y) / N is itself differentiated. Cost: one softmax more per backward.
# This is what manualgrad/textbook.py does for the whole network.
# ----------------------------------------------------------------------------------------


class SoftmaxCrossEntropy(SoftmaxCrossEntropyWrong):
    @staticmethod
    def setup_context(ctx, inputs, output):
        z2, target = inputs
        ctx.save_for_backward(z2, target)  # the input: its history is known to autograd

    @staticmethod
    def backward(ctx, grad_loss):
        z2, target = ctx.saved_tensors
        grad_z2 = None
        if ctx.needs_input_grad[0]:
            y_hat = torch.softmax(z2, 1)  # (N, C)  eq. (4), recomputed: recorded under double backward
            y = F.one_hot(target, y_hat.shape[1]).to(y_hat.dtype)  # (N, C)
            grad_z2 = (y_hat - y) / y_hat.shape[0] * grad_loss  # (N, C)  eq. (7)
        return grad_z2, None


expect(sce_check(SoftmaxCrossEntropy, gradcheck), "the recomputing version passes gradcheck")
expect(sce_check(SoftmaxCrossEntropy, gradgradcheck), "the recomputing version passes gradgradcheck")
right = hessian_vector_product(SoftmaxCrossEntropy)
print("step 5: SoftmaxCrossEntropy      gradcheck ok, gradgradcheck ok")
print(f"        H v, recomputing Function: {right[:4].tolist()} ...")
print(f"        max |H v - autograd's| {(right - native).abs().max().item():.2e}")
expect(torch.allclose(right, native, rtol=1e-10, atol=1e-12), "the recomputing version's H v equals autograd's")


# ----------------------------------------------------------------------------------------
# Step 6. Compose them into the article's network, eq. (1)-(5). Autograd chains the three
# backwards; what flows between them is exactly delta2 (eq. 7), dL/da1 (eq. 10) and
# delta1 (eq. 11).
# ----------------------------------------------------------------------------------------

inputs = (x, W1, b1, W2, b2)
expect(gradcheck(lambda *t: network_loss(SoftmaxCrossEntropy, *t, target), inputs), "network gradcheck")
expect(gradgradcheck(lambda *t: network_loss(SoftmaxCrossEntropy, *t, target), inputs), "network gradgradcheck")
print("step 6: the whole network        gradcheck ok, gradgradcheck ok")

# Against native autograd and against manualgrad: the same value and the same five gradients.
ours = torch.autograd.grad(network_loss(SoftmaxCrossEntropy, *inputs, target), inputs)
native_grads = torch.autograd.grad(native_loss(*inputs, target), inputs)
library = torch.autograd.grad(manualgrad.two_layer_net_loss(x, target, W1, b1, W2, b2), inputs)
for name, a, b, c in zip(("x", "W1", "b1", "W2", "b2"), ours, native_grads, library):
    expect(torch.allclose(a, b, rtol=1e-10, atol=1e-12), f"grad {name} equals native autograd's")
    expect(torch.allclose(a, c, rtol=1e-10, atol=1e-12), f"grad {name} equals manualgrad's")
    print(f"        grad {name:<2} {tuple(a.shape)!s:<7} max |ours - autograd| {(a - b).abs().max().item():.1e}")
print("        agrees with native autograd and with manualgrad.two_layer_net_loss")


# ----------------------------------------------------------------------------------------
# Step 7. Rules a learner must know.
#
# * Never modify grad_output in place. Autograd may hand the same tensor to several backwards
#   (a tensor used twice, a sum): `grad_z.mul_(2)` would corrupt the others' gradients. Write
#   `grad_z * 2`. Tensors you created yourself inside backward are yours to modify.
# * Mark outputs that have no gradient: a Function returning (values, indices) or a mask calls
#   `ctx.mark_non_differentiable(indices)` in setup_context, and its backward receives None (or
#   zeros) for them. Non-tensor inputs (a reduction string, a target of class indices) get None.
# * Save tensors with ctx.save_for_backward (inputs or outputs), never as ctx attributes; an
#   intermediate saved there is a constant to a double backward (step 3): recompute it instead.
# * Do not write a custom Function at all when native ops already say it: autograd derives
#   tanh(x @ W + b) exactly, and torch.compile fuses it. Write one for numerical stability (the
#   fused softmax cross-entropy), to save memory, to call code autograd cannot see (numpy, a
#   C++/CUDA kernel), or, as here, to learn the derivation. Then check it as above: gradcheck,
#   gradgradcheck (or once_differentiable), and side by side with native autograd.
# ----------------------------------------------------------------------------------------


class DoublesGradInPlace(Function):
    """Broken on purpose: y = 2 z, but its backward scales grad_output in place."""

    @staticmethod
    def forward(z):
        return z * 2

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass  # nothing to save: dy/dz = 2

    @staticmethod
    def backward(ctx, grad_y):
        return grad_y.mul_(2)  # WRONG: grad_y is shared with the other branch of the sum below


class Doubles(DoublesGradInPlace):
    @staticmethod
    def backward(ctx, grad_y):
        return grad_y * 2  # right: a new tensor


z = torch.randn(3, dtype=DTYPE, requires_grad=True)
weights = torch.tensor([1.0, 2.0, 3.0], dtype=DTYPE)
expected = 3 * weights  # d/dz sum(w * (z + 2 z)) = 3 w
(bad,) = torch.autograd.grad(((z + DoublesGradInPlace.apply(z)) * weights).sum(), z)
(good,) = torch.autograd.grad(((z + Doubles.apply(z)) * weights).sum(), z)
print(f"step 7: rules. d/dz sum(w (z + 2 z)) = 3 w = {expected.tolist()}")
print(f"        grad_output modified in place: {bad.tolist()} (the other branch was corrupted, silently)")
print(f"        grad_output * 2, a new tensor: {good.tolist()}")
expect(not torch.equal(bad, expected) and torch.equal(good, expected), "in-place grad_output corrupts a gradient")
print("all steps passed")
