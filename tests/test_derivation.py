"""docs/derivation.md, equation by equation, against torch autograd in float64.

Every numbered quantity of the derivation is computed here explicitly from its formula
(``manual_quantities``) and compared with ``torch.autograd.grad`` on native ops
(``autograd_quantities``): the loss (5), the softmax VJP (6), delta2 (7), dW2 (8)/(14),
db2 (9)/(15), dL/da1 (10), delta1 (11), dW1 (12)/(16), db1 (13)/(17) and dx (18), plus the
general delta2 for soft targets and the identity 2-class softmax = sigmoid; and the fast kernels'
reorderings: (16')-(18') without delta1, and (19)-(21), the classes relative to the last.

Then the article's wrong versions are each shown to *disagree* with autograd, and
manualgrad's public API (functional and TwoLayerNet) is shown to agree with the formulas.
Letters: N batch, D inputs, H hidden, C classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from manualgrad import TwoLayerNet, functional

DTYPE = torch.float64
SIZES = [(1, 2, 3, 2), (4, 2, 5, 2), (7, 3, 6, 4), (16, 2, 500, 2)]  # (N, D, H, C)
BATCH_SIZES = [size for size in SIZES if size[0] > 1]  # the 1/N and the batch sums only show for N > 1
# N == H: the only sizes where the article's matrix readings of eq. (10) and (16) type-check.
SQUARE_SIZES = [(6, 2, 6, 2), (5, 3, 5, 4)]
NON_SQUARE_SIZES = [(4, 2, 5, 2), (7, 3, 6, 4)]


def size_id(size: tuple[int, int, int, int]) -> str:
    return "N{}-D{}-H{}-C{}".format(*size)


@dataclass
class Problem:
    x: Tensor  # (N, D)
    W1: Tensor  # (D, H)
    b1: Tensor  # (H,)
    W2: Tensor  # (H, C)
    b2: Tensor  # (C,)
    target: Tensor  # (N,) int64 class indices
    y: Tensor  # (N, C) one-hot of target
    g: Tensor  # (N, C) an upstream gradient dL/dy_hat, for the probabilities path

    @property
    def params(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.W1, self.b1, self.W2, self.b2


def make_problem(N: int, D: int, H: int, C: int, seed: int = 0) -> Problem:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=DTYPE) * scale

    target = torch.randint(0, C, (N,), generator=generator)
    return Problem(
        x=randn(N, D),
        W1=randn(D, H, scale=D**-0.5),
        b1=randn(H, scale=0.1),
        W2=randn(H, C, scale=H**-0.5),
        b2=randn(C, scale=0.1),
        target=target,
        y=F.one_hot(target, C).to(DTYPE),
        g=randn(N, C),
    )


def soft_targets(N: int, C: int, *, normalized: bool, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    y = torch.rand(N, C, generator=generator, dtype=DTYPE) + 0.1  # (N, C), positive
    return y / y.sum(1, keepdim=True) if normalized else 2 * y  # rows sum to 1, or not


# ----------------------------------------------------------------------------------------
# The two sides: explicit formulas, and torch autograd on native ops
# ----------------------------------------------------------------------------------------


def forward(p: Problem) -> dict[str, Tensor]:
    z1 = p.x @ p.W1 + p.b1  # (N, H)  eq. (1)
    a1 = torch.tanh(z1)  # (N, H)  eq. (2)
    z2 = a1 @ p.W2 + p.b2  # (N, C)  eq. (3)
    y_hat = torch.softmax(z2, 1)  # (N, C)  eq. (4)
    return {"z1": z1, "a1": a1, "z2": z2, "y_hat": y_hat}


def backward_from_delta2(p: Problem, a1: Tensor, delta2: Tensor) -> dict[str, Tensor]:
    grad_W2 = a1.T @ delta2  # (H, C)  eq. (8), (14)
    grad_b2 = delta2.sum(0)  # (C,)  eq. (9), (15)
    grad_a1 = delta2 @ p.W2.T  # (N, H)  eq. (10)
    delta1 = grad_a1 * (1 - a1**2)  # (N, H)  eq. (11)
    grad_W1 = p.x.T @ delta1  # (D, H)  eq. (12), (16)
    grad_b1 = delta1.sum(0)  # (H,)  eq. (13), (17)
    grad_x = delta1 @ p.W1.T  # (N, D)  eq. (18)
    return {
        "delta2": delta2,
        "W2": grad_W2,
        "b2": grad_b2,
        "a1": grad_a1,
        "delta1": delta1,
        "W1": grad_W1,
        "b1": grad_b1,
        "x": grad_x,
    }


def manual_quantities(p: Problem, y: Tensor | None = None) -> dict[str, Tensor]:
    """The loss and every gradient of the mean cross-entropy, from the formulas; y (N, C) any targets."""
    y = p.y if y is None else y
    N = p.x.shape[0]
    f = forward(p)
    loss = -(y * torch.log(f["y_hat"])).sum() / N  # ()  eq. (5)
    delta2 = (f["y_hat"] * y.sum(1, keepdim=True) - y) / N  # (N, C)  eq. (7), general targets
    return {"loss": loss, **backward_from_delta2(p, f["a1"], delta2)}


def manual_probs_quantities(p: Problem) -> dict[str, Tensor]:
    """Every gradient of <y_hat, g> for an upstream gradient g = dL/dy_hat, through eq. (6)."""
    f = forward(p)
    y_hat = f["y_hat"]
    grad_z2 = y_hat * (p.g - (p.g * y_hat).sum(1, keepdim=True))  # (N, C)  eq. (6)
    return backward_from_delta2(p, f["a1"], grad_z2)


NAMES = ("delta2", "a1", "delta1", "x", "W1", "b1", "W2", "b2")


def autograd_quantities(p: Problem, target: Tensor | None = None, *, probs_path: bool = False) -> dict[str, Tensor]:
    """The same quantities from torch.autograd.grad: of F.cross_entropy, or of <softmax(z2), g>."""
    x, W1, b1, W2, b2 = (t.detach().clone().requires_grad_() for t in (p.x, *p.params))
    z1 = x @ W1 + b1
    a1 = torch.tanh(z1)
    z2 = a1 @ W2 + b2
    if probs_path:
        out = (torch.softmax(z2, 1) * p.g).sum()
    else:
        out = F.cross_entropy(z2, p.target if target is None else target)
    grads = torch.autograd.grad(out, (z2, a1, z1, x, W1, b1, W2, b2))
    return {"loss": out.detach(), **dict(zip(NAMES, grads))}


def autograd_sigmoid_derivative(z: Tensor) -> Tensor:
    """d sigma(z) / dz elementwise, by autograd."""
    leaf = z.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(torch.sigmoid(leaf).sum(), leaf)
    return grad


def assert_disagrees(wrong: Tensor, right: Tensor) -> None:
    """Same shape, yet not close even at a loose tolerance (1% relative)."""
    assert wrong.shape == right.shape, f"shapes differ: {tuple(wrong.shape)} vs {tuple(right.shape)}"
    with pytest.raises(AssertionError):
        torch.testing.assert_close(wrong, right, rtol=1e-2, atol=1e-8)


# ----------------------------------------------------------------------------------------
# The forward pass and the loss, eq. (1)-(5)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_forward_eq1_to_eq4(size):
    p = make_problem(*size)
    f = forward(p)
    N, D, H, C = size
    assert f["z1"].shape == (N, H) and f["a1"].shape == (N, H) and f["z2"].shape == (N, C)
    torch.testing.assert_close(functional.two_layer_net_logits(p.x, *p.params), f["z2"])
    torch.testing.assert_close(functional.two_layer_net(p.x, *p.params), f["y_hat"])
    torch.testing.assert_close(f["y_hat"].sum(1), torch.ones(N, dtype=DTYPE))


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_loss_eq5(size):
    p = make_problem(*size)
    manual = manual_quantities(p)["loss"]
    torch.testing.assert_close(manual, autograd_quantities(p)["loss"])  # F.cross_entropy, mean
    torch.testing.assert_close(manual, functional.two_layer_net_loss(p.x, p.target, *p.params))


# ----------------------------------------------------------------------------------------
# The backward pass, one equation per test, eq. (6)-(18)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_softmax_vjp_eq6(size):
    p = make_problem(*size)
    z2 = forward(p)["z2"].requires_grad_()
    y_hat = torch.softmax(z2, 1)  # (N, C)  eq. (4)
    (expected,) = torch.autograd.grad(y_hat, z2, p.g)
    y_hat = y_hat.detach()
    grad_z2 = y_hat * (p.g - (p.g * y_hat).sum(1, keepdim=True))  # (N, C)  eq. (6)
    torch.testing.assert_close(grad_z2, expected)


@pytest.mark.parametrize("C", [2, 3, 5])
def test_softmax_jacobian_eq6(C):
    z = torch.randn(C, dtype=DTYPE, generator=torch.Generator().manual_seed(C))
    s = torch.softmax(z, 0)  # (C,)
    jacobian = torch.diag(s) - torch.outer(s, s)  # (C, C)  eq. (6): ds_i/dz_j = s_i (1[i=j] - s_j)
    torch.testing.assert_close(jacobian, torch.autograd.functional.jacobian(lambda t: torch.softmax(t, 0), z))
    assert jacobian.sum(0).abs().max() < 1e-15  # the columns sum to 0: probabilities keep summing to 1


def test_two_class_softmax_jacobian_is_the_sigmoid_derivative_eq6():
    z = torch.tensor([0.3, -1.2], dtype=DTYPE)
    s = torch.sigmoid(z[1] - z[0])  # y_hat[1]
    jacobian = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, 0), z)
    expected = s * (1 - s) * torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=DTYPE)
    torch.testing.assert_close(jacobian, expected)


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_sigmoid_derivative_eq6(size):
    z = make_problem(*size).g  # any real numbers
    s = torch.sigmoid(z)
    torch.testing.assert_close(s * (1 - s), autograd_sigmoid_derivative(z))  # sigma' = sigma (1 - sigma)


@pytest.mark.parametrize("C", [2, 3, 5])
def test_softmax_jacobian_quotient_rule_eq6(C):
    """Each step of the derivation of ds_i/dz_j = s_i (delta_ij - s_j), against autograd."""
    z = torch.randn(C, dtype=DTYPE, generator=torch.Generator().manual_seed(C))
    e = torch.exp(z)  # (C,)  e^{z_i}
    S = e.sum()  # ()  S = sum_k e^{z_k}
    s = e / S  # (C,)  softmax
    kronecker = torch.eye(C, dtype=DTYPE)  # delta_ij
    d_e = kronecker * e[:, None]  # (C, C)  d e^{z_i} / dz_j = delta_ij e^{z_i}
    d_S = e  # (C,)  dS/dz_j = e^{z_j}
    quotient_rule = (d_e * S - e[:, None] * d_S[None, :]) / S**2  # (C, C)  (u' S - u S') / S^2
    expected = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, 0), z)
    torch.testing.assert_close(quotient_rule, expected)
    torch.testing.assert_close(kronecker * s[:, None] - torch.outer(s, s), expected)  # delta_ij s_i - s_i s_j
    torch.testing.assert_close(s[:, None] * (kronecker - s[None, :]), expected)  # s_i (delta_ij - s_j)
    torch.testing.assert_close(torch.diagonal(expected), s * (1 - s))  # the diagonal: s_i (1 - s_i)


def test_tanh_derivative_eq11():
    """tanh' = (cosh^2 - sinh^2) / cosh^2 = 1 - tanh^2 = 1 / cosh^2, each step against autograd."""
    z = torch.linspace(-4, 4, 41, dtype=DTYPE).requires_grad_()
    (expected,) = torch.autograd.grad(torch.tanh(z).sum(), z)
    z = z.detach()
    sinh, cosh = (torch.exp(z) - torch.exp(-z)) / 2, (torch.exp(z) + torch.exp(-z)) / 2
    leaf = z.clone().requires_grad_()
    d_sinh, d_cosh = (torch.autograd.grad(f(leaf).sum(), leaf)[0] for f in (torch.sinh, torch.cosh))
    torch.testing.assert_close(d_sinh, cosh)  # sinh' = cosh
    torch.testing.assert_close(d_cosh, sinh)  # cosh' = sinh
    quotient_rule = (cosh * cosh - sinh * sinh) / cosh**2  # (sinh' cosh - sinh cosh') / cosh^2
    torch.testing.assert_close(quotient_rule, expected)
    torch.testing.assert_close(1 - torch.tanh(z) ** 2, expected)  # 1 - tanh^2: in terms of the output a
    torch.testing.assert_close(1 / cosh**2, expected)  # cosh^2 - sinh^2 = 1
    assert_disagrees(1 - torch.tanh(z), expected)  # a slip a learner makes: 1 - a, not 1 - a^2


@pytest.mark.parametrize("size", BATCH_SIZES, ids=size_id)
def test_batch_sums_are_rows_then_flattened_eq9_eq13(size):
    """1_N^T delta is (1, N)(N, C) = (1, C) (and (1, H)); flattened, it is the bias gradient."""
    p = make_problem(*size)
    N, _, H, C = size
    expected = autograd_quantities(p)
    ones = torch.ones(N, 1, dtype=DTYPE)  # (N, 1)  the column 1_N
    row2 = ones.T @ expected["delta2"]  # (1, N)(N, C)  eq. (9), (15)
    row1 = ones.T @ expected["delta1"]  # (1, N)(N, H)  eq. (13), (17)
    assert row2.shape == (1, C) and row1.shape == (1, H)
    assert expected["b2"].shape == (C,) and expected["b1"].shape == (H,)
    torch.testing.assert_close(row2.flatten(), expected["b2"])
    torch.testing.assert_close(row1.flatten(), expected["b1"])


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_delta2_eq7(size):
    p = make_problem(*size)
    N = size[0]
    y_hat = forward(p)["y_hat"]
    delta2 = (y_hat - p.y) / N  # (N, C)  eq. (7), one-hot targets
    torch.testing.assert_close(delta2, autograd_quantities(p)["delta2"])


def assert_matches_autograd(size, quantity: str) -> None:
    p = make_problem(*size)
    torch.testing.assert_close(manual_quantities(p)[quantity], autograd_quantities(p)[quantity])


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_dW2_eq8_eq14(size):
    assert_matches_autograd(size, "W2")  # a1^T delta2


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_db2_eq9_eq15(size):
    assert_matches_autograd(size, "b2")  # sum_n delta2


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_grad_a1_eq10(size):
    assert_matches_autograd(size, "a1")  # delta2 W2^T


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_delta1_eq11(size):
    assert_matches_autograd(size, "delta1")  # dL/da1 * (1 - a1^2)


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_dW1_eq12_eq16(size):
    assert_matches_autograd(size, "W1")  # x^T delta1


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_db1_eq13_eq17(size):
    assert_matches_autograd(size, "b1")  # sum_n delta1


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_dx_eq18(size):
    assert_matches_autograd(size, "x")  # delta1 W1^T


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_probs_path_every_gradient_eq6_to_eq18(size):
    p = make_problem(*size)
    manual = manual_probs_quantities(p)
    expected = autograd_quantities(p, probs_path=True)
    for name in NAMES:
        torch.testing.assert_close(manual[name], expected[name], msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("size", BATCH_SIZES, ids=size_id)
def test_batch_gradient_is_the_sum_of_per_sample_gradients_eq14_to_eq17(size):
    """The article's single-sample formulas (row n, times the 1/N of the mean), summed over n."""
    p = make_problem(*size)
    N = size[0]
    expected = autograd_quantities(p)
    f = forward(p)
    totals = dict.fromkeys(("W2", "b2", "W1", "b1"), 0.0)
    for n in range(N):
        x_n, a1_n = p.x[n : n + 1], f["a1"][n : n + 1]  # (1, D), (1, H): one sample, as in the article
        delta2_n = (f["y_hat"][n : n + 1] - p.y[n : n + 1]) / N  # (1, C)  eq. (7) for sample n
        delta1_n = (delta2_n @ p.W2.T) * (1 - a1_n**2)  # (1, H)  eq. (10), (11)
        totals["W2"] = totals["W2"] + a1_n.T @ delta2_n  # (H, C)  eq. (8), (14): an outer product
        totals["b2"] = totals["b2"] + delta2_n[0]  # (C,)  eq. (9), (15)
        totals["W1"] = totals["W1"] + x_n.T @ delta1_n  # (D, H)  eq. (12), (16): an outer product
        totals["b1"] = totals["b1"] + delta1_n[0]  # (H,)  eq. (13), (17)
    for name, total in totals.items():
        torch.testing.assert_close(total, expected[name], msg=lambda m, name=name: f"{name}: {m}")


def test_gradient_shapes():
    N, D, H, C = 7, 3, 6, 4
    shapes = {k: tuple(v.shape) for k, v in manual_quantities(make_problem(N, D, H, C)).items()}
    assert shapes == {
        "loss": (),
        "delta2": (N, C),
        "W2": (H, C),
        "b2": (C,),
        "a1": (N, H),
        "delta1": (N, H),
        "W1": (D, H),
        "b1": (H,),
        "x": (N, D),
    }


# ----------------------------------------------------------------------------------------
# Beyond the article: soft targets, and 2-class softmax = sigmoid
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_soft_targets_general_delta2(size):
    """delta2 = (y_hat * sum_c y - y) / N for any targets; (y_hat - y)/N only when rows of y sum to 1."""
    p = make_problem(*size)
    N, _, _, C = size
    y_hat = forward(p)["y_hat"]
    for normalized in (True, False):
        y = soft_targets(N, C, normalized=normalized)
        expected = autograd_quantities(p, target=y)
        manual = manual_quantities(p, y)
        torch.testing.assert_close(manual["loss"], expected["loss"])
        for name in NAMES:
            torch.testing.assert_close(manual[name], expected[name], msg=lambda m, name=name: f"{name}: {m}")
        textbook = (y_hat - y) / N  # (N, C)  eq. (7) as for one-hot targets
        if normalized:
            torch.testing.assert_close(textbook, expected["delta2"])
        else:
            assert_disagrees(textbook, expected["delta2"])


@pytest.mark.parametrize("size", [s for s in SIZES if s[3] == 2], ids=size_id)
def test_two_class_softmax_is_sigmoid_of_logit_difference(size):
    p = make_problem(*size)
    z2 = forward(p)["z2"].requires_grad_()
    d = z2[:, 1] - z2[:, 0]  # (N,)  logit difference
    torch.testing.assert_close(torch.softmax(z2, 1)[:, 1], torch.sigmoid(d))
    torch.testing.assert_close(torch.softmax(z2, 1)[:, 0], torch.sigmoid(-d))
    # The article's binary loss, with the minus sign, on the logit difference, is the cross-entropy (5).
    t = p.target.to(DTYPE)  # (N,) in {0, 1}
    binary = -(t * F.logsigmoid(d) + (1 - t) * F.logsigmoid(-d))  # (N,)
    cross_entropy = F.cross_entropy(z2, p.target, reduction="none")  # (N,)
    torch.testing.assert_close(binary, cross_entropy)
    # ... and so is its gradient: d/dd = sigma(d) - t, which is delta2[:, 1] = -delta2[:, 0].
    (grad_binary,) = torch.autograd.grad(binary.sum(), z2)
    torch.testing.assert_close(grad_binary[:, 1], torch.sigmoid(d) - t)
    torch.testing.assert_close(grad_binary, torch.softmax(z2, 1) - p.y)


# ----------------------------------------------------------------------------------------
# The article's wrong versions must disagree with autograd
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [s for s in SIZES if s[3] == 2], ids=size_id)
def test_article_eq5_without_minus_sign_disagrees(size):
    """As printed, eq. (5) is the log-likelihood (to maximise), the negative of the loss."""
    p = make_problem(*size)
    z2 = forward(p)["z2"]
    s = torch.sigmoid(z2[:, 1] - z2[:, 0])  # (N,)  y_hat[:, 1]
    t = p.target.to(DTYPE)
    article = t * torch.log(s) + (1 - t) * torch.log(1 - s)  # (N,)  eq. (5) as printed
    assert_disagrees(article, F.cross_entropy(z2, p.target, reduction="none"))
    torch.testing.assert_close(-article, F.cross_entropy(z2, p.target, reduction="none"))


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_article_eq6_log_product_is_not_the_sigmoid_derivative(size):
    z = make_problem(*size).g
    s = torch.sigmoid(z)
    article = torch.log(s) * torch.log(1 - s)  # eq. (6) as printed
    assert_disagrees(article, autograd_sigmoid_derivative(z))


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_article_eq7_y_minus_y_hat_disagrees(size):
    """y - y_hat is the gradient of the log-likelihood; the loss we minimise has y_hat - y."""
    p = make_problem(*size)
    y_hat = forward(p)["y_hat"]
    expected = autograd_quantities(p)
    flipped = (p.y - y_hat) / size[0]  # (N, C)  sign of eq. (7) as printed, with the 1/N
    assert_disagrees(flipped, expected["delta2"])
    flipped_dW2 = forward(p)["a1"].T @ flipped  # (H, C)  eq. (14) as printed
    assert_disagrees(flipped_dW2, expected["W2"])


@pytest.mark.parametrize("size", BATCH_SIZES, ids=size_id)
def test_article_missing_1_over_N_disagrees(size):
    """The article treats one sample; for a batch mean, every gradient carries 1/N."""
    p = make_problem(*size)
    f = forward(p)
    expected = autograd_quantities(p)
    summed = -(p.y * torch.log(f["y_hat"])).sum()  # ()  eq. (5) without 1/N
    assert_disagrees(summed, expected["loss"])
    delta2 = f["y_hat"] - p.y  # (N, C)  eq. (7) without 1/N
    assert_disagrees(delta2, expected["delta2"])
    wrong = backward_from_delta2(p, f["a1"], delta2)
    for name in ("W2", "b2", "W1", "b1", "x"):
        assert_disagrees(wrong[name], expected[name])


@pytest.mark.parametrize("size", SQUARE_SIZES, ids=size_id)
def test_article_eq10_z2_in_place_of_W2_disagrees(size):
    """dz2/da1 is W2 (used as delta2 W2^T), not z2; delta2 z2^T type-checks only when N == H."""
    p = make_problem(*size)
    f = forward(p)
    expected = autograd_quantities(p)
    delta2 = expected["delta2"]
    grad_a1 = delta2 @ f["z2"].T  # (N, N) == (N, H) here  eq. (10) as printed
    assert_disagrees(grad_a1, expected["a1"])
    delta1 = grad_a1 * (1 - f["a1"] ** 2)  # (N, H)  eq. (11)
    assert_disagrees(p.x.T @ delta1, expected["W1"])  # (D, H)  eq. (16)


@pytest.mark.parametrize("size", NON_SQUARE_SIZES, ids=size_id)
def test_article_eq10_z2_in_place_of_W2_does_not_type_check(size):
    p = make_problem(*size)
    f = forward(p)
    grad_a1 = autograd_quantities(p)["delta2"] @ f["z2"].T  # (N, N)  eq. (10) as printed
    with pytest.raises(RuntimeError):
        grad_a1 * (1 - f["a1"] ** 2)  # (N, N) against (N, H)


@pytest.mark.parametrize("size", SQUARE_SIZES, ids=size_id)
def test_article_eq16_matrix_product_disagrees(size):
    """delta1 = dL/da1 (elementwise) (1 - a1^2); a matrix product there type-checks only when N == H."""
    p = make_problem(*size)
    f = forward(p)
    expected = autograd_quantities(p)
    grad_a1 = expected["a1"]  # (N, H)  eq. (10), correct
    delta1 = grad_a1 @ (1 - f["a1"] ** 2)  # (N, H) @ (N, H), N == H  eq. (16) as printed
    assert_disagrees(delta1, expected["delta1"])
    assert_disagrees(p.x.T @ delta1, expected["W1"])  # (D, H)  eq. (16)


@pytest.mark.parametrize("size", NON_SQUARE_SIZES, ids=size_id)
def test_article_eq16_matrix_product_does_not_type_check(size):
    p = make_problem(*size)
    f = forward(p)
    with pytest.raises(RuntimeError):
        autograd_quantities(p)["a1"] @ (1 - f["a1"] ** 2)  # (N, H) @ (N, H)


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_article_eq17_dz1_dW1_disagrees(size):
    """The first line of eq. (17) multiplies by dz1/dW1 = x where dz1/db1 = 1 belongs."""
    p = make_problem(*size)
    expected = autograd_quantities(p)
    wrong = p.x.T @ expected["delta1"]  # (D, H): x in place of 1, which is dW1, eq. (16)
    torch.testing.assert_close(wrong, expected["W1"])
    for d in range(size[1]):
        assert_disagrees(wrong[d], expected["b1"])  # (H,) against db1 (H,)
    torch.testing.assert_close(expected["delta1"].sum(0), expected["b1"])  # eq. (17), corrected


# ----------------------------------------------------------------------------------------
# manualgrad's own code agrees with the formulas: public API first, then building blocks
# ----------------------------------------------------------------------------------------

GRADIENT_ORDER = ("x", "W1", "b1", "W2", "b2")


def api_gradients(fn, p: Problem, upstream: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
    leaves = [t.detach().clone().requires_grad_() for t in (p.x, *p.params)]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, upstream)
    return out.detach(), grads


@pytest.mark.parametrize("size", SIZES, ids=size_id)
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
def test_public_loss_matches_the_derivation(size, soft):
    p = make_problem(*size)
    target = soft_targets(size[0], size[3], normalized=True) if soft else p.target
    manual = manual_quantities(p, target if soft else p.y)
    value, grads = api_gradients(lambda x, *w: functional.two_layer_net_loss(x, target, *w), p)
    torch.testing.assert_close(value, manual["loss"])
    for name, grad in zip(GRADIENT_ORDER, grads):
        torch.testing.assert_close(grad, manual[name], msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_public_probs_matches_the_derivation(size):
    p = make_problem(*size)
    manual = manual_probs_quantities(p)
    _, grads = api_gradients(functional.two_layer_net, p, p.g)
    for name, grad in zip(GRADIENT_ORDER, grads):
        torch.testing.assert_close(grad, manual[name], msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_public_logits_matches_the_derivation(size):
    p = make_problem(*size)
    manual = backward_from_delta2(p, forward(p)["a1"], p.g)  # g taken as dL/dz2
    _, grads = api_gradients(functional.two_layer_net_logits, p, p.g)
    for name, grad in zip(GRADIENT_ORDER, grads):
        torch.testing.assert_close(grad, manual[name], msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_module_matches_the_derivation(size):
    N, D, H, C = size
    p = make_problem(*size)
    model = TwoLayerNet(D, H, C, dtype=DTYPE)
    with torch.no_grad():
        for parameter, value in zip(model.parameters(), p.params):
            parameter.copy_(value)
    x = p.x.clone().requires_grad_()
    model.loss(x, p.target).backward()
    manual = manual_quantities(p)
    torch.testing.assert_close(x.grad, manual["x"])
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, manual[name], msg=lambda m, name=name: f"{name}: {m}")


def internal(name: str):
    """A building block of manualgrad.functional, or a skip that says it was renamed."""
    block = getattr(functional, name, None)
    if block is None:
        pytest.skip(f"manualgrad.functional.{name} no longer exists (renamed?); the public-API tests cover it")
    return block


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_building_block_softmax_vjp_eq6(size):
    p = make_problem(*size)
    torch.testing.assert_close(internal("softmax_vjp")(p.g, forward(p)["y_hat"]), manual_probs_quantities(p)["delta2"])


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_building_block_loss_grad_logits_eq7(size):
    p = make_problem(*size)
    log_probs = torch.log_softmax(forward(p)["z2"], 1)
    delta2 = internal("loss_grad_logits")(log_probs, p.target, "mean", torch.tensor(1.0, dtype=DTYPE))
    torch.testing.assert_close(delta2, autograd_quantities(p)["delta2"])


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_building_block_backward_from_logits_eq8_to_eq18(size):
    p = make_problem(*size)
    expected = autograd_quantities(p)
    grads = internal("backward_from_logits")(expected["delta2"], p.x, p.W1, p.W2, forward(p)["a1"], [True] * 5)
    for name, grad in zip(GRADIENT_ORDER, grads):
        torch.testing.assert_close(grad, expected[name], msg=lambda m, name=name: f"{name}: {m}")


# ----------------------------------------------------------------------------------------
# The whole F.cross_entropy signature: eq. (5'), (7'), (7'') with weight, ignore_index and
# label_smoothing, through the effective target q and the denominator d
# ----------------------------------------------------------------------------------------

IGNORE = -100
# (weight?, ignored rows, label_smoothing): each option alone, and all at once
OPTION_CASES = {
    "plain": (False, (), 0.0),
    "weight": (True, (), 0.0),
    "ignore_index": (False, (0, 2), 0.0),
    "label_smoothing": (False, (), 0.2),
    "all-three": (True, (1,), 0.3),
}
OPTION_SIZES = [(4, 2, 5, 2), (7, 3, 6, 4)]


def class_weights(C: int, seed: int = 2) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(C, generator=generator, dtype=DTYPE) + 0.25  # (C,), positive, not all equal


def options_problem(size, case: str, soft: bool = False):
    """The problem, its target (labels with IGNORE in the ignored rows, or probabilities) and F's options."""
    p = make_problem(*size)
    use_weight, ignored, eps = OPTION_CASES[case]
    N, C = size[0], size[3]
    if soft:
        target = soft_targets(N, C, normalized=True)
    else:
        target = p.target.clone()
        target[list(ignored)] = IGNORE
    options = {"weight": class_weights(C) if use_weight else None, "label_smoothing": eps}
    return p, target, options


def effective_target_by_hand(target: Tensor, C: int, weight: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    """q (N, C) and the mean's denominator d, written from their definitions in docs/derivation.md."""
    w = torch.ones(C, dtype=DTYPE) if weight is None else weight  # (C,)
    if target.is_floating_point():
        q = w * ((1 - eps) * target + eps / C)  # (N, C)  q = w * y',  y' = (1 - eps) y + eps / C
        return q, torch.tensor(float(target.shape[0]), dtype=DTYPE)  # d = N
    q = torch.zeros(target.shape[0], C, dtype=DTYPE)
    d = torch.zeros((), dtype=DTYPE)
    for n, t in enumerate(target.tolist()):
        if t == IGNORE:  # m_n = 0: the row counts for nothing
            continue
        q[n] = eps * w / C  # eps w_c / C for every class
        q[n, t] += (1 - eps) * w[t]  # (1 - eps) w_t for the label
        d += w[t]  # d = sum_n m_n w_{t_n}
    return q, d


def logits_of(p: Problem, requires_grad: bool = False) -> Tensor:
    z2 = forward(p)["z2"].detach()
    return z2.requires_grad_() if requires_grad else z2


@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
@pytest.mark.parametrize("case", OPTION_CASES)
@pytest.mark.parametrize("size", OPTION_SIZES, ids=size_id)
def test_per_row_loss_with_effective_target_eq5_prime(size, case, soft):
    """l_n = -sum_c q_nc log y_hat_nc is F.cross_entropy(..., reduction="none") for every option."""
    p, target, options = options_problem(size, case, soft)
    z2 = logits_of(p)
    q, _ = effective_target_by_hand(target, size[3], options["weight"], options["label_smoothing"])
    per_row = -(q * torch.log_softmax(z2, 1)).sum(1)  # (N,)  eq. (5')
    torch.testing.assert_close(per_row, F.cross_entropy(z2, target, reduction="none", **options))


@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
@pytest.mark.parametrize("case", OPTION_CASES)
@pytest.mark.parametrize("size", OPTION_SIZES, ids=size_id)
def test_mean_divides_by_the_denominator_eq5_prime(size, case, soft):
    """The mean is sum_n l_n / d: d the summed weights of the rows that count (N for probabilities)."""
    p, target, options = options_problem(size, case, soft)
    z2 = logits_of(p)
    q, d = effective_target_by_hand(target, size[3], options["weight"], options["label_smoothing"])
    mean = -(q * torch.log_softmax(z2, 1)).sum() / d  # ()  eq. (5'), mean
    torch.testing.assert_close(mean, F.cross_entropy(z2, target, **options))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
@pytest.mark.parametrize("case", OPTION_CASES)
@pytest.mark.parametrize("size", OPTION_SIZES, ids=size_id)
def test_generalised_delta2_eq7_prime(size, case, soft, reduction):
    """delta2 = g (y_hat sum_c q - q) / d against autograd of F.cross_entropy at z2, g an upstream gradient."""
    p, target, options = options_problem(size, case, soft)
    z2 = logits_of(p, requires_grad=True)
    loss = F.cross_entropy(z2, target, reduction=reduction, **options)
    g = torch.rand(loss.shape, generator=torch.Generator().manual_seed(4), dtype=DTYPE) + 0.5
    (autograd_delta2,) = torch.autograd.grad(loss, z2, g)
    q, d = effective_target_by_hand(target, size[3], options["weight"], options["label_smoothing"])
    y_hat = torch.softmax(z2.detach(), 1)
    scale = g.unsqueeze(1) if reduction == "none" else (g / d if reduction == "mean" else g)  # (N, 1) or ()
    delta2 = (y_hat * q.sum(1, keepdim=True) - q) * scale  # (N, C)  eq. (7')
    torch.testing.assert_close(delta2, autograd_delta2)


@pytest.mark.parametrize("size", OPTION_SIZES, ids=size_id)
def test_generalised_delta2_without_options_is_eq7(size):
    """No weight, no ignored row, eps = 0: q = y, sum_c q = 1, d = N, and (7') is (7)."""
    p = make_problem(*size)
    q, d = effective_target_by_hand(p.target, size[3], None, 0.0)
    torch.testing.assert_close(q, p.y)
    assert float(d) == size[0]
    y_hat = forward(p)["y_hat"]
    torch.testing.assert_close((y_hat * q.sum(1, keepdim=True) - q) / d, (y_hat - p.y) / size[0])


@pytest.mark.parametrize("size", OPTION_SIZES, ids=size_id)
def test_smoothed_rows_do_not_sum_to_one_so_eq7_needs_its_general_form(size):
    """With weights, sum_c q_nc is not 1: the short form (y_hat - q)/d of eq. (7) would be wrong."""
    p, target, options = options_problem(size, "weight")
    z2 = logits_of(p, requires_grad=True)
    (autograd_delta2,) = torch.autograd.grad(F.cross_entropy(z2, target, **options), z2)
    q, d = effective_target_by_hand(target, size[3], options["weight"], 0.0)
    assert_disagrees((torch.softmax(z2.detach(), 1) - q) / d, autograd_delta2)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", OPTION_CASES)
@pytest.mark.parametrize("size", OPTION_SIZES, ids=size_id)
def test_probability_target_gradient_eq7_second(size, case, reduction):
    """dL/dy = -(1 - eps) w log y_hat / d (d = N for the mean, 1 for the sum) against autograd."""
    p, y, options = options_problem(size, case, soft=True)
    y = y.clone().requires_grad_()
    (autograd_grad_y,) = torch.autograd.grad(F.cross_entropy(logits_of(p), y, reduction=reduction, **options), y)
    w = torch.ones(size[3], dtype=DTYPE) if options["weight"] is None else options["weight"]
    d = size[0] if reduction == "mean" else 1
    grad_y = -(1 - options["label_smoothing"]) * w * torch.log_softmax(logits_of(p), 1) / d  # (N, C)  eq. (7'')
    torch.testing.assert_close(grad_y, autograd_grad_y)


@pytest.mark.parametrize("case", ["weight", "all-three"])
@pytest.mark.parametrize("size", OPTION_SIZES, ids=size_id)
def test_weight_gradient_for_probability_targets(size, case):
    """dL/dw_c = -(1/N) sum_n y'_nc log y_hat_nc: F.cross_entropy differentiates w for probabilities."""
    p, y, options = options_problem(size, case, soft=True)
    w = options.pop("weight").clone().requires_grad_()
    (autograd_grad_w,) = torch.autograd.grad(F.cross_entropy(logits_of(p), y, weight=w, **options), w)
    eps = options["label_smoothing"]
    y_smoothed = (1 - eps) * y + eps / size[3]  # (N, C)  y'
    grad_w = -(y_smoothed * torch.log_softmax(logits_of(p), 1)).sum(0) / size[0]  # (C,)
    torch.testing.assert_close(grad_w, autograd_grad_w)


def test_every_row_ignored_gives_nan_mean_and_zero_gradient():
    """d = 0: the mean is 0/0 = NaN (as F.cross_entropy), every q_n = 0, so delta2 = 0."""
    p = make_problem(4, 2, 5, 3)
    target = torch.full((4,), IGNORE)
    q, d = effective_target_by_hand(target, 3, None, 0.2)
    assert float(d) == 0 and not q.any()
    z2 = logits_of(p, requires_grad=True)
    loss = F.cross_entropy(z2, target, label_smoothing=0.2)
    (autograd_delta2,) = torch.autograd.grad(loss, z2)
    assert loss.isnan() and not autograd_delta2.any()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
@pytest.mark.parametrize("case", OPTION_CASES)
@pytest.mark.parametrize("size", OPTION_SIZES, ids=size_id)
def test_public_loss_with_options_matches_the_derivation(size, case, soft, reduction):
    """manualgrad's loss: its value is (5'), and every gradient is (8)-(18) from the delta2 of (7')."""
    p, target, options = options_problem(size, case, soft)
    q, d = effective_target_by_hand(target, size[3], options["weight"], options["label_smoothing"])
    f = forward(p)
    per_row = -(q * torch.log(f["y_hat"])).sum(1)  # (N,)  eq. (5')
    delta2 = f["y_hat"] * q.sum(1, keepdim=True) - q  # (N, C)  eq. (7'), unit upstream gradient of each row
    if reduction == "mean":
        per_row, delta2 = per_row / d, delta2 / d
    manual = backward_from_delta2(p, f["a1"], delta2)
    loss = lambda x, *w: functional.two_layer_net_loss(x, target, *w, reduction=reduction, **options)  # noqa: E731
    upstream = torch.ones(size[0], dtype=DTYPE) if reduction == "none" else None
    value, grads = api_gradients(loss, p, upstream)
    torch.testing.assert_close(value, per_row if reduction == "none" else per_row.sum())
    for name, grad in zip(GRADIENT_ORDER, grads):
        torch.testing.assert_close(grad, manual[name], msg=lambda m, name=name: f"{name}: {m}")


# ----------------------------------------------------------------------------------------
# Few inputs and classes: (16')-(18'), the first layer's gradients without delta1
# ----------------------------------------------------------------------------------------


def without_delta1(p: Problem, delta2: Tensor | None = None, W2: Tensor | None = None) -> dict[str, Tensor]:
    """dW1, db1 and dx by eq. (16')-(18'): rows summed first, classes last; of the mean cross-entropy,
    or from a given delta2 (N, K) and W2 (H, K) (K = C - 1 relative classes: eq. (21))."""
    N, D = p.x.shape
    f = forward(p)
    delta2 = (f["y_hat"] - p.y) / N if delta2 is None else delta2  # (N, K)  eq. (7)
    W2 = p.W2 if W2 is None else W2  # (H, K)
    C = W2.shape[1]
    P = 1 - f["a1"] ** 2  # (N, H)  eq. (11)'s factor
    x_1 = torch.cat([p.x, torch.ones(N, 1, dtype=DTYPE)], 1)  # (N, D + 1)  [x, 1]
    E = torch.stack([x_1[:, d] * delta2[:, c] for d in range(D + 1) for c in range(C)], 1)  # (N, (D + 1) C)
    products = (E.T @ P).reshape(D + 1, C, -1)  # (D + 1, C, H)  E^T P, row (d, c)
    grad_W1_b1 = sum(W2[:, c] * products[:, c] for c in range(C))  # (D + 1, H)  eq. (16'), (17')
    B = torch.stack([p.W1[d] * W2[:, c] for d in range(D) for c in range(C)], 1)  # (H, D C)
    PB = (P @ B).reshape(N, D, C)  # (N, D, C)
    grad_x = sum(delta2[:, c, None] * PB[:, :, c] for c in range(C))  # (N, D)  eq. (18')
    return {"W1": grad_W1_b1[:D], "b1": grad_W1_b1[D], "x": grad_x}


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_first_layer_without_delta1_eq16_prime_eq17_prime(size):
    p = make_problem(*size)
    manual, expected = without_delta1(p), autograd_quantities(p)
    torch.testing.assert_close(manual["W1"], expected["W1"])
    torch.testing.assert_close(manual["b1"], expected["b1"])


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_dx_without_delta1_eq18_prime(size):
    p = make_problem(*size)
    torch.testing.assert_close(without_delta1(p)["x"], autograd_quantities(p)["x"])


# ----------------------------------------------------------------------------------------
# Classes relative to the last: (19)-(21)
# ----------------------------------------------------------------------------------------


def relative_output_layer_by_hand(p: Problem) -> tuple[Tensor, Tensor]:
    """W2r (H, C - 1) and b2r (C - 1,): column c is class c's weights minus the last class's, eq. (20)."""
    C = p.W2.shape[1]
    W2r = torch.stack([p.W2[:, c] - p.W2[:, C - 1] for c in range(C - 1)], 1)  # (H, C - 1)
    b2r = torch.stack([p.b2[c] - p.b2[C - 1] for c in range(C - 1)])  # (C - 1,)
    return W2r, b2r


def delta2_of_cross_entropy(p: Problem, target: Tensor, **options) -> Tensor:
    """dL/dz2 (N, C) of F.cross_entropy with its options, by autograd."""
    z2 = logits_of(p, requires_grad=True)
    (delta2,) = torch.autograd.grad(F.cross_entropy(z2, target, **options), z2)
    return delta2


@pytest.mark.parametrize("soft", [False, True], ids=["indices", "unnormalised-targets"])
@pytest.mark.parametrize("case", OPTION_CASES)
@pytest.mark.parametrize("size", OPTION_SIZES, ids=size_id)
def test_delta2_rows_sum_to_zero_eq19(size, case, soft):
    """Every row of delta2 sums to 0: from (7') by hand, from autograd, and through the softmax (6)."""
    p, target, options = options_problem(size, case, soft)
    if soft:
        target = soft_targets(size[0], size[3], normalized=False)  # rows that do not sum to 1
    q, d = effective_target_by_hand(target, size[3], options["weight"], options["label_smoothing"])
    by_hand = (forward(p)["y_hat"] * q.sum(1, keepdim=True) - q) / d  # (N, C)  eq. (7')
    zeros = torch.zeros(size[0], dtype=DTYPE)
    torch.testing.assert_close(by_hand, delta2_of_cross_entropy(p, target, **options))
    torch.testing.assert_close(by_hand.sum(1), zeros)  # eq. (19)
    torch.testing.assert_close(delta2_of_cross_entropy(p, target, **options).sum(1), zeros)
    torch.testing.assert_close(autograd_quantities(p, probs_path=True)["delta2"].sum(1), zeros)  # through (6)
    assert_disagrees(p.g.sum(1), zeros)  # an arbitrary upstream gradient of the logits: no such rule


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_relative_logits_give_the_same_probabilities_eq20(size):
    p = make_problem(*size)
    W2r, b2r = relative_output_layer_by_hand(p)
    f = forward(p)
    z2r = f["a1"] @ W2r + b2r  # (N, C - 1)
    torch.testing.assert_close(z2r, f["z2"][:, :-1] - f["z2"][:, -1:])  # z2 minus its last column
    relative = torch.cat([z2r, torch.zeros(size[0], 1, dtype=DTYPE)], 1)  # (N, C)  [a1 W2r + b2r, 0]
    torch.testing.assert_close(torch.softmax(relative, 1), f["y_hat"])  # eq. (20) = eq. (4)
    torch.testing.assert_close(F.cross_entropy(relative, p.target), autograd_quantities(p)["loss"])  # eq. (5)


def relative_gradients(p: Problem, delta2: Tensor) -> dict[str, Tensor]:
    """dL/da1, dW2 and the first layer's (16')-(18') from delta2r = delta2[:, :C-1] and W2r, eq. (21)."""
    C = p.W2.shape[1]
    W2r, _ = relative_output_layer_by_hand(p)
    delta2r = delta2[:, : C - 1]  # (N, C - 1)
    a1 = forward(p)["a1"]
    first = a1.T @ delta2r  # (H, C - 1)  dW2's first C - 1 columns
    grad_W2 = torch.cat([first, -first.sum(1, keepdim=True)], 1)  # (H, C)  eq. (21): the last is minus their sum
    return {"a1": delta2r @ W2r.T, "W2": grad_W2, **without_delta1(p, delta2r, W2r)}  # (16')-(18') with W2r


@pytest.mark.parametrize("probs_path", [False, True], ids=["loss", "probs"])
@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_gradients_through_W2_with_relative_classes_eq21(size, probs_path):
    p = make_problem(*size)
    expected = autograd_quantities(p, probs_path=probs_path)
    manual = relative_gradients(p, expected["delta2"])
    for name in ("a1", "W2", "W1", "b1", "x"):
        torch.testing.assert_close(manual[name], expected[name], msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_relative_classes_are_wrong_for_an_arbitrary_upstream_gradient_eq21(size):
    """The logits' upstream gradient need not sum to 0 along a row: (21) does not apply to it."""
    p = make_problem(*size)
    a1 = forward(p)["a1"]
    manual = relative_gradients(p, p.g)  # p.g: the upstream gradient dL/dz2 of <z2, g>
    assert_disagrees(manual["a1"], p.g @ p.W2.T)  # eq. (10) with the full W2
    assert_disagrees(manual["W2"], a1.T @ p.g)  # eq. (14)
