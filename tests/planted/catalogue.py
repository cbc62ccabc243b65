"""The planted-bug catalogue: classic one-line mistakes of this network, each on each path it can hit.

An entry: ``Bug(id, file, old, new, tests, verify)``. ``old`` must occur exactly once in ``file``
(else the catalogue test fails loudly: the code moved, update the entry); ``new`` replaces it in a
temporary copy of the package; every node id in ``tests`` is run against that copy and at least one
must fail. ``verify`` is True when the bug lies on a path ``python -m manualgrad verify`` covers:
then verify, run with ``VERIFY_ARGS[bug.verify_args]``, must exit 1 on it too.

Paths: probs, logits, loss (indices / probabilities), gradients in backward (in place, first order)
and in forward (chunked loop), recorded backward (double backward, torch.func), unbatched,
autocast, jvp, textbook. Test node ids are small and targeted, so that the whole catalogue runs in
a few minutes.
"""

from __future__ import annotations

from typing import NamedTuple

K = "tests/test_mutants_kernels.py::"
T = "tests/test_mutants_textbook.py::"
V = "tests/test_mutants_validation.py::"
P = "tests/test_properties.py::"
CORE = "tests/test_core.py::"

# verify's flags per kind of bug: the fast sections where they reach, the mechanisms only for autocast.
VERIFY_ARGS = {
    "fast": ["--device", "cpu", "--dtype", "float64", "--no-conformance", "--hidden", "64"],
    "autocast": ["--device", "cpu", "--dtype", "float32", "--no-gradcheck", "--hidden", "64"],
    "validation": ["--device", "cpu", "--dtype", "float64", "--no-gradcheck", "--no-conformance", "--hidden", "64"],
}


class Bug(NamedTuple):
    id: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    verify: bool = True
    verify_args: str = "fast"


LOSS_FWD_CHUNKED = K + "test_loss_paths_match_twin[in_forward-mean-indices-N7-H5-chunk3]"
LOSS_FWD_CHUNKED_SOFT = K + "test_loss_paths_match_twin[in_forward-sum-probabilities-N9-H512-chunk4]"
LOSS_FWD_SUM = K + "test_loss_paths_match_twin[in_forward-sum-indices-N9-H512-chunk4]"
LOSS_BWD = K + "test_loss_paths_match_twin[in_backward-mean-indices-N7-H5-chunk3]"
LOSS_BWD_SOFT = K + "test_loss_paths_match_twin[in_backward-mean-probabilities-N7-H5-chunk3]"
PROBS = K + "test_network_each_subset_of_gradients_matches_twin[7-probs-11111]"
LOGITS = K + "test_network_each_subset_of_gradients_matches_twin[7-logits-11111]"
LOGITS_40 = K + "test_network_each_subset_of_gradients_matches_twin[40-logits-11111]"
HVP = K + "test_second_derivatives_match_twin[small-{}]"
HVP_BIG = K + "test_second_derivatives_match_twin[sigmoid-form-{}]"
JVP = K + "test_forward_mode_matches_twin[small-{}-{}]"
JVP_BIG = K + "test_forward_mode_matches_twin[sigmoid-form-{}-{}]"
AUTOCAST = K + "test_autocast_computes_in_parameter_precision_like_the_float32_twin[{}]"
UNBATCHED = K + "test_unbatched_sample_matches_twin[{}]"
TEXTBOOK_LOSS = T + "test_loss_each_subset_of_gradients_matches_twin[mean-11111]"
TEXTBOOK_PROBS = T + "test_network_each_subset_of_gradients_matches_twin[probs-11111]"
TEXTBOOK_SOFT = T + "test_loss_probability_target_matches_twin[sum-target-grad]"

NETWORK_RECOMPUTE = "        a1 = hidden_activation(x, W1, b1)  # (N, H)  eq. (1), (2), recorded\n"
NETWORK_RECOMPUTE_NEXT = "        if y_hat is not None:\n"
E = "tests/test_eager.py::"
EAGER_PROBS = E + "test_lean_network_matches_twin[probs-5-dtype0]"
EAGER_LOSS_MEAN = E + "test_lean_loss_matches_twin[1.0-mean-5-dtype0]"
EAGER_LOSS_SCALED = E + "test_lean_loss_matches_twin[-2.5-mean-5-dtype0]"
EAGER_AUTOCAST = E + "test_backward_inside_autocast_computes_in_the_parameters_dtype[{}-cpu]"
EAGER_DOUBLE = E + "test_double_backward_of_the_lean_functions[{}]"
EAGER_LAYOUT = E + "test_dW2_is_made_in_W2s_layout_below_16_rows[1-False]"
EAGER_LAYOUT_FROM_16 = E + "test_dW2_is_made_in_W2s_layout_below_16_rows[16-True]"
EAGER, MODES = "manualgrad/eager.py", "manualgrad/modes.py"
EAGER_LOGITS = E + "test_lean_network_matches_twin[logits-5-dtype0]"
EAGER_FORMS = E + "test_lean_network_forms_and_layouts[{}-16-True-True]"
EAGER_DEAD = E + "test_parameters_left_over_from_a_finished_transform_get_their_gradients[{}-lean]"
# the lean backwards write eq. (10)-(18) out, each its own: the lines around a snippet tell them apart
LOGITS_B2 = "it may still write to it\n        if need_x or need_W1 or need_b1:\n"
PROBS_B2 = "grad_z2 is ours: a view may do\n        if need_x or need_W1 or need_b1:\n"
Z1 = "            grad_z1 = tanh_backward(F.linear(grad_z2, W2), a1)"
Z1_TO_B1 = (
    "  # (N, H)  eq. (10), (11): (delta2 W2^T) * (1 - a1^2)\n            if need_W1:\n"
    "                grad_W1 = torch.mm(x.mT, grad_z1)  # (D, H)  eq. (16)\n            if need_b1:\n"
)
DB1 = "                grad_b1 = grad_z1[0] if plan.one_row"
DB1_BROKEN = "                grad_b1 = grad_z1[-1] * 1.0001 if plan.one_row"
DX = "grad_x = F.linear(grad_z1, W1)  # (N, D)  eq. (18): delta1 W1^T\n        return grad_x, "
DX_BROKEN = "grad_x = F.linear(grad_z1, W1 * 1.0001)  # (N, D)  eq. (18): delta1 W1^T\n        return grad_x, "
NETWORK_RETURN = "grad_W1, grad_b1, grad_W2, grad_b2, None\n\n\n"
FORWARD_A1 = "if plan.sigmoid_form else torch.addmm(b1, x, W1).tanh_()  # (N, H)  eq. (1)-(2)\n"
FORWARD_Z2 = "z2 = torch.addmm(b2, a1, column_major(W2) if plan.column_major_W2 else W2)  # (N, C)  eq. (3)\n"
KERNELS, AUTOGRAD, FUNCTIONAL = "manualgrad/kernels.py", "manualgrad/autograd.py", "manualgrad/functional.py"
TANGENTS, CHUNKED = "manualgrad/tangents.py", "manualgrad/chunked.py"
FACTORED, BOUNDARY = "manualgrad/factored.py", "manualgrad/boundary.py"
RELATIVE = "manualgrad/relative.py"
C = "tests/test_mutants_chunked.py::"
LOSS_KERNEL = C + "test_loss_and_gradients_matches_twin_and_its_buffers[{}-indices-5-sigmoid-colmajor-11111]"
FACTORED_LOSS = LOSS_KERNEL.format("factored-relative")
RELATIVE_LOSS = (FACTORED_LOSS, LOSS_KERNEL.format("delta1-relative"))
CHUNKED_BACKWARD = C + "test_backward_from_logits_chunked_every_gradient[{}-sigmoid-N7-rows3]"
FACTORED_BACKWARD = CHUNKED_BACKWARD.format("factored-classes")
RELATIVE_PROBS = (
    C + "test_network_output_chunked_matches_twin[probs-relative-N7-rows3-sigmoid-colmajor]",
    CHUNKED_BACKWARD.format("factored-relative"),
    CHUNKED_BACKWARD.format("delta1-relative"),
)
ROW_MASK = (  # functional.py: the ignored rows' per-row loss made 0, then the NaN term added to every row
    "    if counted is not None:  # an ignored row: its loss is 0 (q = 0 there), and its gradient exactly 0 whatever\n"
    "        # flows back to it (an inf from a count of 0 would make (y_hat sum q - q) g NaN): "
    "nll_loss never reads it\n"
    "        loss = torch.where(counted, loss, 0.0)  # (N,)\n"
)
NAN_TERM = (
    "    if add_to_loss is not None:  # NaN, as F.cross_entropy's 0/0, when no row counts (the mean) or no class\n"
    "        loss = loss + add_to_loss  # () or (N,)  (label smoothing), ignored rows included\n"
)
NAN_TERM_AFTER_MASK, NAN_TERM_BEFORE_MASK = ROW_MASK + NAN_TERM, NAN_TERM + ROW_MASK
NO_CLASS_CHECK = (
    "    zeros = torch.nn.functional.nll_loss(  # (N,)  raises for a label other than ignore_index\n"
    '        target.new_zeros((N, 0), dtype=dtype), target, ignore_index=ignore_index, reduction="none"\n'
    "    )\n"
)
NO_CLASS_UNCHECKED = "    zeros = target.new_zeros(N, dtype=dtype)  # (N,)  unchecked\n"
EXTREME = (  # a class with extreme parameters, at N = 1100 (the relative classes' rows)
    "tests/test_reliability.py::test_a_class_with_extreme_parameters_gives_the_twins_values_at_every_N"
    "[gradients-in-forward-{}-1100]"
)
RELATIVE_WITH_OPTIONS = tuple(
    f"tests/test_cross_entropy.py::test_gradients_in_the_forward_take_every_option[{case}-relative-classes-{form}]"
    for case, form in (("indices, weight, ignored, smoothing-mean", "factored-torch.float64"),
                       ("probabilities, weight, smoothing-sum", "delta1-torch.float32"))
)  # fmt: skip
FACTORED_WIRED = C + "test_functional_chunked_path_matches_twin[factored-{}-needs0-sigmoid-form-logits]"
FACTORED_WIRED_PROBS = FACTORED_WIRED.replace("-logits]", "-probs]")
SATURATED = tuple(
    f"tests/test_chunked_network.py::test_saturated_rows_keep_their_gradient_behind_the_softmax[{step}]"
    for step in ("loss", "nll-of-log-probs")
)
FACTORED_GRID = C + "test_factored_kernels_on_grids_that_are_not_square[D2-H6-C4-loss-11111]"
KEPT_A1 = "tests/test_chunked_network.py::test_a_kept_a1_gives_what_recomputing_gives[{}]"
TEXTBOOK, VALIDATION = "manualgrad/textbook.py", "manualgrad/validation.py"

CATALOGUE = [
    # --- drop (1 - a1^2), eq. (11), on each path -------------------------------------------------
    Bug("drop-tanh-slope/backward-in-place", KERNELS,
        "grad_z1 = tanh_backward(grad_a1, a1)", "grad_z1 = grad_a1",
        (PROBS, LOGITS, LOSS_BWD)),
    Bug("drop-tanh-slope/eager-logits", EAGER,
        LOGITS_B2 + Z1, LOGITS_B2 + "            grad_z1 = F.linear(grad_z2, W2)",
        (EAGER_LOGITS,)),
    Bug("drop-tanh-slope/eager-probs", EAGER,
        PROBS_B2 + Z1, PROBS_B2 + "            grad_z1 = F.linear(grad_z2, W2)",
        (EAGER_PROBS,)),
    Bug("drop-tanh-slope/eager-loss", EAGER,
        "grad_z1 = tanh_backward(F.linear(delta2, W2), a1)", "grad_z1 = F.linear(delta2, W2)",
        (EAGER_LOSS_MEAN,)),
    Bug("dx-transposed-weight/eager-logits", EAGER,
        DX + NETWORK_RETURN + "class EagerProbsFunction", DX_BROKEN + NETWORK_RETURN + "class EagerProbsFunction",
        (EAGER_LOGITS,)),
    Bug("dx-transposed-weight/eager-probs", EAGER,
        DX + NETWORK_RETURN + "def _general_loss_backward", DX_BROKEN + NETWORK_RETURN + "def _general_loss_backward",
        (EAGER_PROBS,)),
    Bug("dx-transposed-weight/eager-loss", EAGER,
        DX + "None, grad_W1", DX_BROKEN + "None, grad_W1",
        (EAGER_LOSS_MEAN,)),
    Bug("drop-tanh-slope/recorded-backward", KERNELS,
        "grad_z1 = grad_a1 - grad_a1 * (a1 * a1)", "grad_z1 = grad_a1",
        (HVP.format("logits"), HVP.format("loss-mean"))),
    Bug("drop-tanh-slope/chunked-loop", CHUNKED,
        "delta1 = torch.ops.aten.tanh_backward.grad_input(grad_a1, a1, grad_input=grad_a1)", "delta1 = grad_a1",
        (LOSS_FWD_CHUNKED,)),
    Bug("drop-tanh-slope/jvp", TANGENTS,
        "ta1 = None if tz1 is None else tz1 * (1 - a1 * a1)", "ta1 = None if tz1 is None else tz1",
        (JVP.format("logits", "x"), JVP.format("loss-mean", "W1"))),
    Bug("drop-tanh-slope/textbook", TEXTBOOK,
        "grad_z1 = grad_a1 * (1 - a1 * a1)", "grad_z1 = grad_a1",
        (TEXTBOOK_PROBS,), verify=False),
    # --- wrong tanh slope: 1 - a1 for 1 - a1^2 (chunked loop), 1.999 for 2 in the sigmoid form --
    Bug("wrong-tanh-slope/chunked-loop", CHUNKED,
        "delta1 = torch.ops.aten.tanh_backward.grad_input(grad_a1, a1, grad_input=grad_a1)",
        "delta1 = grad_a1.addcmul_(grad_a1, a1, value=-1)",
        (LOSS_FWD_CHUNKED,)),
    Bug("sigmoid-form-1.999/differentiated-backward", KERNELS,
        "return torch.sigmoid(z1_twice) * 2.0 - 1.0", "return torch.sigmoid(z1_twice) * 1.999 - 1.0",
        (HVP_BIG.format("loss-mean"), HVP_BIG.format("loss-sum"))),
    Bug("sigmoid-form-1.999/in-place", KERNELS,
        "return torch.add(minus_one_for(s), s, alpha=2, out=s)  # (N, H)",
        "return torch.add(minus_one_for(s), s, alpha=1.999, out=s)  # (N, H)",
        (LOSS_FWD_CHUNKED_SOFT, K + "test_loss_paths_match_twin[in_backward-mean-indices-N40-H120-chunkNone]")),
    # --- flip y_hat - y, eq. (7), and the softmax VJP, eq. (6) -----------------------------------
    Bug("flip-delta2/indices-in-place", KERNELS,
        'delta2 = y_hat.scatter_(1, target.unsqueeze(1), -1.0, reduce="add")',
        'delta2 = y_hat.scatter_(1, target.unsqueeze(1), -1.0, reduce="add").neg_()',
        (LOSS_BWD, LOSS_FWD_CHUNKED)),
    Bug("flip-delta2/indices-recorded", KERNELS,
        "delta2 = y_hat - target_distribution(target, C, log_probs.dtype)",
        "delta2 = target_distribution(target, C, log_probs.dtype) - y_hat",
        (HVP.format("loss-none"),)),
    Bug("flip-delta2/probabilities", KERNELS,
        "delta2 = y_hat * target.sum(1, keepdim=True) - target",
        "delta2 = target - y_hat * target.sum(1, keepdim=True)",
        (LOSS_BWD_SOFT, LOSS_FWD_CHUNKED_SOFT)),
    Bug("flip-delta2/textbook", TEXTBOOK,
        "grad_z2 = (log_y_hat.exp() * y.sum(1, keepdim=True) - y) * upstream",
        "grad_z2 = (y - log_y_hat.exp() * y.sum(1, keepdim=True)) * upstream",
        (TEXTBOOK_LOSS,), verify=False),
    Bug("flip-softmax-vjp/probs", KERNELS,
        "return y_hat * (grad_y_hat - inner)", "return y_hat * (inner - grad_y_hat)",
        (HVP.format("probs"), AUTOCAST.format("small-probs"))),
    Bug("flip-softmax-vjp/eager-probs", KERNELS,
        "return torch._softmax_backward_data(grad_y_hat, y_hat, 1, y_hat.dtype)",
        "return -torch._softmax_backward_data(grad_y_hat, y_hat, 1, y_hat.dtype)",
        (PROBS, EAGER_PROBS)),
    # --- 1/N: dropped, or 1/(N-1) ---------------------------------------------------------------
    Bug("one-over-N-minus-1/mean-scale", KERNELS,
        'return 1.0 / N if N > 0 and num_classes > 0 else float("nan")',
        'return 1.0 / (N - 1) if N > 1 and num_classes > 0 else float("nan")',
        (LOSS_BWD, LOSS_FWD_CHUNKED)),
    Bug("no-class-smoothing-taken-as-0/effective-target", KERNELS,
        'nan = float("nan") if eps != 0 or reduction == "mean" else 0.0',
        'nan = float("nan") if reduction == "mean" else 0.0',
        ("tests/test_mutants_modes.py::test_no_classes_gives_cross_entropys_values[indices-0.1-sum-False]",),
        verify=False),
    Bug("nan-term-masked/per-row-loss", FUNCTIONAL, NAN_TERM_AFTER_MASK, NAN_TERM_BEFORE_MASK,
        ("tests/test_mutants_modes.py::test_no_classes_gives_cross_entropys_values[indices-0.1-none-False]",),
        verify=False),
    Bug("no-class-labels-unchecked/effective-target", KERNELS, NO_CLASS_CHECK, NO_CLASS_UNCHECKED,
        ("tests/test_mutants_modes.py::test_no_classes_refuses_a_label_that_is_not_ignore_index[torch.compile]",),
        verify=False),
    Bug("drop-one-over-N/backward", KERNELS,
        "upstream = upstream * mean_scale(N)  # ()", "upstream = upstream  # ()",
        (LOSS_BWD,)),
    Bug("one-over-N-minus-1/gradients-in-forward", AUTOGRAD,
        'scale = grad_loss * (1.0 / N) if ctx.reduction == "mean" and N > 0 else grad_loss',
        'scale = grad_loss * (1.0 / (N - 1)) if ctx.reduction == "mean" and N > 1 else grad_loss',
        (LOSS_FWD_CHUNKED,)),
    Bug("one-over-N-minus-1/textbook", TEXTBOOK,
        'upstream = grad_loss / x.shape[0] if ctx.reduction == "mean" else grad_loss',
        'upstream = grad_loss / (x.shape[0] - 1) if ctx.reduction == "mean" else grad_loss',
        (TEXTBOOK_LOSS,), verify=False),
    # --- sum returning the mean, wrong scale on the target gradient for sum ---------------------
    Bug("sum-is-mean/gradients-in-forward-backward", AUTOGRAD,
        'scale = grad_loss * (1.0 / N) if ctx.reduction == "mean" and N > 0 else grad_loss',
        "scale = grad_loss * (1.0 / N) if N > 0 else grad_loss",
        (LOSS_FWD_SUM,)),
    Bug("sum-is-mean/gradients-in-forward-value", AUTOGRAD,
        'loss = loss_sum * mean_scale(x.shape[0], W2.shape[1]) if reduction == "mean" else loss_sum',
        "loss = loss_sum * mean_scale(x.shape[0], W2.shape[1])",
        (LOSS_FWD_SUM,)),
    Bug("target-gradient-scale/sum", KERNELS,
        'scale = mean_scale(log_probs.shape[0]) if reduction == "mean" else 1.0',
        "scale = mean_scale(log_probs.shape[0])",
        (K + "test_loss_probability_target_gradient_matches_twin[7-5-sum]",)),
    # --- z2 where W2 belongs, eq. (10); W1 for W1^T, eq. (18); a matrix product for elementwise --
    Bug("z2-for-W2/backward", KERNELS,
        "grad_a1 = torch.mm(grad_z2, W2.t())  # (N, H)  eq. (10)",
        "grad_a1 = torch.mm(grad_z2, (a1 @ W2).t())  # (N, H)  eq. (10): z2 = a1 W2 where W2 belongs",
        (LOGITS, LOSS_BWD)),
    Bug("z2-for-W2/chunked-loop", CHUNKED,
        "grad_a1 = torch.mm(delta2_k, W2_k.t(), out=grad_hidden[:n] if chunked else None)",
        "grad_a1 = torch.mm(delta2_k, torch.addmm(b2_k, a1, W2_k).t(), out=grad_hidden[:n] if chunked else None)",
        (LOSS_FWD_CHUNKED,)),
    Bug("W1-for-W1T/backward", KERNELS,
        "grad_x = torch.mm(grad_z1, W1.t())  # (N, D)  eq. (18)", "grad_x = torch.mm(grad_z1, W1)  # (N, D)  eq. (18)",
        ("tests/test_mutants_autograd.py::test_backward_in_place_only_where_not_recorded[a1-saved-logits]",)),
    Bug("W1-for-W1T/chunked-loop", CHUNKED,
        "if need_x and chunked:\n                torch.mm(delta1, W1.t(), out=grad_x[start : start + n])",
        "if need_x and chunked:\n                torch.mm(delta1, W1, out=grad_x[start : start + n])",
        (LOSS_FWD_CHUNKED,)),
    Bug("W1-for-W1T/textbook", TEXTBOOK,
        "grad_x = grad_z1 @ W1.T  # (N, H)(H, D)", "grad_x = grad_z1 @ W1  # (N, H)(H, D)",
        (TEXTBOOK_PROBS,), verify=False),
    Bug("matmul-for-elementwise/recorded-backward", KERNELS,
        "grad_z1 = grad_a1 - grad_a1 * (a1 * a1)", "grad_z1 = grad_a1 - grad_a1 @ (a1 * a1)",
        (HVP.format("probs"),)),
    # --- the chunk loop: an off-by-one ----------------------------------------------------------
    Bug("off-by-one/chunk-loop", CHUNKED,
        "for start in range(0, N, rows):\n        xs, ts =", "for start in range(0, N - 1, rows):\n        xs, ts =",
        (LOSS_FWD_CHUNKED,)),
    # --- the chunked probs and logits with a1 kept: every chunk reads the first chunk's rows ----
    Bug("kept-a1/first-chunk-only/backward", CHUNKED,
        "a1s = a1[start : start + n]  # (n, H)  kept by the forward", "a1s = a1[:n]  # (n, H)  kept by the forward",
        (KEPT_A1.format("False-29"),), verify=False),
    Bug("kept-a1/first-chunk-only/forward", CHUNKED,
        "out = hidden[:n] if a1_out is None else a1_out[start : start + n]",
        "out = hidden[:n] if a1_out is None else a1_out[:n]",
        (KEPT_A1.format("True-24"),), verify=False),
    # --- eq. (16')-(18') of factored.py: the first layer's gradients without delta1 -------------
    Bug("drop-tanh-slope/factored", FACTORED,
        "return torch.addcmul(a1.new_ones(()), a1, a1, value=-1, out=out)", "return out.fill_(1)",
        (FACTORED_LOSS, FACTORED_BACKWARD)),
    Bug("wrong-tanh-slope/factored", FACTORED,
        "return torch.addcmul(a1.new_ones(()), a1, a1, value=-1, out=out)",
        "return torch.sub(a1.new_ones(()), a1, out=out)",
        (FACTORED_LOSS, FACTORED_BACKWARD)),
    Bug("class-order/factored-products", FACTORED,
        "return (xs_1.unsqueeze(2) * delta2.unsqueeze(1)).reshape(n, D_1 * C)",
        "return (xs_1.unsqueeze(1) * delta2.unsqueeze(2)).reshape(n, D_1 * C)",
        (FACTORED_LOSS, FACTORED_BACKWARD)),
    Bug("class-order/factored-sum", FACTORED,
        "return (products[: inputs * C].view(inputs, C, H) * W2.t()).sum(1)",
        "return (products[: inputs * C].view(C, inputs, H) * W2.t()).sum(1)",
        (FACTORED_LOSS, FACTORED_BACKWARD, FACTORED_GRID)),
    Bug("transpose/factored-input-weights", FACTORED,
        "return (W1.unsqueeze(1) * W2.t().unsqueeze(0)).reshape(D * C, H).t()",
        "return (W1.unsqueeze(1) * W2.t().unsqueeze(0)).reshape(H, D * C)",
        (FACTORED_LOSS, FACTORED_BACKWARD)),
    Bug("P-over-kept-a1/factored", CHUNKED,
        "P = tanh_derivative(a1s, out=a1s if in_a1 else grad_hidden[:n])",
        "P = tanh_derivative(a1s, out=a1s)",
        (C + "test_factored_backward_leaves_the_kept_a1_for_a_second_backward[logits]",), verify=False),
    Bug("db1-row/factored-loss", CHUNKED,
        "(grad_W1_b1[-1] if need_b1 else None)", "(grad_W1_b1[0] if need_b1 else None)",
        (FACTORED_LOSS,)),
    Bug("threshold/factored", MODES,
        "0 < (x.shape[1] + 1) * W2.shape[1] <= FACTORED_MAX_PRODUCTS",
        "0 < (x.shape[1] + 1) * W2.shape[1] < FACTORED_MAX_PRODUCTS",
        (FACTORED_WIRED.format("recompute-a1"),), verify=False),
    # --- eq. (19)-(21) of relative.py: the classes relative to the last -----------------------
    Bug("sign/relative-weights", RELATIVE,
        "return W2[:, :-1] - W2[:, -1:]  # (H, C - 1)", "return W2[:, :-1] + W2[:, -1:]  # (H, C - 1)",
        RELATIVE_LOSS + RELATIVE_PROBS),
    Bug("sign/relative-bias", RELATIVE,
        "return b2[:-1] - b2[-1:]  # (C - 1,)", "return b2[:-1] + b2[-1:]  # (C - 1,)",
        RELATIVE_LOSS + RELATIVE_PROBS),
    Bug("last-column-sign/relative-dW2", RELATIVE,
        "last = grad_W2r_T.sum(0, keepdim=True).neg_()", "last = grad_W2r_T.sum(0, keepdim=True)",
        RELATIVE_LOSS + RELATIVE_PROBS),
    Bug("last-column-first/relative-dW2", RELATIVE,
        "return torch.cat((grad_W2r_T, last)).t()", "return torch.cat((last, grad_W2r_T)).t()",
        RELATIVE_WITH_OPTIONS, verify=False),
    Bug("first-columns/relative-delta", RELATIVE,
        "return delta2[:, :-1].contiguous()", "return delta2[:, 1:].contiguous()",
        RELATIVE_LOSS + RELATIVE_PROBS),
    Bug("sign/rebalanced-entry", RELATIVE,
        "delta2.sum(1, keepdim=True).neg_())", "delta2.sum(1, keepdim=True))",
        SATURATED, verify=False),
    Bug("not-rebalanced/relative-delta", RELATIVE,
        "return delta2.scatter_add(1, most, delta2.sum(1, keepdim=True).neg_())", "return delta2",
        SATURATED, verify=False),
    Bug("non-finite-taken/relative", RELATIVE,
        "return math.isfinite(sum(float(t.sum()) for t in tensors))", "return True",
        tuple(EXTREME.format(f"+inf in the last W2 column-{step}") for step in ("loss-mean", "probs")),
        verify=False),
    Bug("no-overflow-bound/relative", RELATIVE,
        "return (W2r, b2r) if _all_finite(*bounds) else None", "return (W2r, b2r) if _all_finite(W2r, b2r) else None",
        tuple(EXTREME.format(f"relative logits that overflow-{step}") for step in ("loss-mean", "probs")),
        verify=False),
    Bug("non-finite-targets-taken/relative", RELATIVE,
        "return not target.is_floating_point() or _all_finite(target)", "return True",
        (EXTREME.format("+inf in a probability target-loss-sum"),), verify=False),
    Bug("padding-rows/factored-products", FACTORED,
        "missing = MIN_PRODUCT_ROWS - E.shape[1]", "missing = 0",
        (C + "test_few_products_are_padded_with_zero_rows",), verify=False),
    Bug("column/relative-logits", RELATIVE,
        "torch.addmm(b2r, a1, W2r, out=out[:, :-1])", "torch.addmm(b2r, a1, W2r, out=out[:, 1:])",
        RELATIVE_LOSS + RELATIVE_PROBS),
    Bug("relative-logits/wiring", AUTOGRAD,
        "relative=probabilities and modes.relative_classes_pay(x, W2),", "relative=modes.relative_classes_pay(x, W2),",
        (FACTORED_WIRED.format("recompute-a1"), FACTORED_WIRED.format("keep-a1")), verify=False),
    Bug("relative-probs-backward/wiring", AUTOGRAD,
        "y_hat=y_hat if modes.relative_classes_pay(x, W2) else None,", "y_hat=None,",
        (FACTORED_WIRED_PROBS.format("recompute-a1"), FACTORED_WIRED_PROBS.format("keep-a1")), verify=False),
    Bug("logits-buffer-unset/relative-loss", CHUNKED,
        "logits_buffer = None if layer is None else x.new_zeros(rows, W2.shape[1])",
        "logits_buffer = None if layer is None else x.new_empty(rows, W2.shape[1])",
        RELATIVE_LOSS, verify=False),
    Bug("threshold/relative", MODES,
        "return x.is_cpu and W2.shape[1] >= 2 and", "return x.is_cpu and W2.shape[1] >= 1 and",
        ("tests/test_mutants_modes.py::test_relative_classes_pay_from_two_classes_on_the_cpu[1-False]",), verify=False),
    # --- forward mode: a wrong sign in a jvp term, the target's tangent ------------------------
    Bug("jvp-sign/W2-term", TANGENTS,
        "None if tW2 is None else a1 @ tW2,", "None if tW2 is None else -(a1 @ tW2),",
        (JVP.format("logits", "W2"), JVP.format("loss-mean", "W2"))),
    Bug("jvp-sign/target-tangent", AUTOGRAD,
        "terms.append(-(ttarget * log_probs).sum(1))", "terms.append((ttarget * log_probs).sum(1))",
        (JVP.format("loss-mean", "target"), JVP_BIG.format("loss-sum", "target"))),
    # --- double backward from saved tensors -----------------------------------------------------
    Bug("double-backward-from-saved/logits", AUTOGRAD,
        NETWORK_RECOMPUTE + NETWORK_RECOMPUTE_NEXT,
        NETWORK_RECOMPUTE_NEXT,
        (HVP.format("logits"),)),
    Bug("double-backward-from-saved/loss", AUTOGRAD,
        "if residuals is None or differentiated:", "if residuals is None:",
        (HVP.format("loss-mean"), HVP.format("loss-soft"))),
    Bug("double-backward-from-saved/eager", EAGER,
        "        torch.is_grad_enabled()\n        or type(grad) is not Tensor", "        type(grad) is not Tensor",
        (EAGER_DOUBLE.format("logits"), EAGER_DOUBLE.format("probs"))),
    # --- autocast left on in one backward, and in the forward ----------------------------------
    Bug("autocast-on/loss-backward", AUTOGRAD,
        "needs, saved), None, None)\n\n"
        "    backward = staticmethod(in_parameter_precision(backward.__func__))",
        "needs, saved), None, None)\n\n"
        "    backward = staticmethod(backward.__func__)",
        (AUTOCAST.format("small-loss-mean"), AUTOCAST.format("large-loss-mean")), verify_args="autocast"),
    Bug("autocast-on/probs-backward", AUTOGRAD,
        "b2=b2, y_hat=y_hat)\n\n"
        "    backward = staticmethod(in_parameter_precision(backward.__func__))",
        "b2=b2, y_hat=y_hat)\n\n"
        "    backward = staticmethod(backward.__func__)",
        (AUTOCAST.format("small-probs"),), verify_args="autocast"),
    Bug("batched-upstream-on-the-lean-formulas/eager", EAGER,
        "        or not torch._C._has_storage(grad)\n", "        or False\n",
        (E + "test_a_batched_upstream_gradient_takes_the_general_formulas[logits]",), verify=False),
    Bug("autocast-on/eager-backward", EAGER,
        "with torch.autocast(modes.device_type(x), enabled=False):", "if True:",
        (EAGER_AUTOCAST.format("probs"), EAGER_AUTOCAST.format("logits")), verify=False),
    # --- the lean loss of eager mode: 1/N dropped, the upstream gradient applied twice, dW2 layout ---
    Bug("drop-one-over-N/eager-loss", KERNELS,
        "grad_loss, log_probs, target, None, _REDUCTION_ENUM[reduction], ignore_index, total_weight",
        "grad_loss, log_probs, target, None, 2, ignore_index, total_weight",
        (EAGER_LOSS_MEAN,)),
    Bug("upstream-squared/eager-loss", EAGER,
        "grad_loss, log_probs, target, ctx.reduction, IGNORE_INDEX, total_weight",
        "grad_loss * grad_loss, log_probs, target, ctx.reduction, IGNORE_INDEX, total_weight",
        (EAGER_LOSS_SCALED,), verify=False),
    Bug("ignored-rows-counted/eager-loss", EAGER,
        "IGNORE_INDEX = -100", "IGNORE_INDEX = -(1 << 63)",
        (E + "test_lean_loss_leaves_out_rows_labelled_minus_100[two rows-mean]",), verify=False),
    Bug("ignored-rows-counted/eager-general-backward", EAGER,
        "return _general(loss_backward, x, q, W1, b1, W2, b2, reduction_of_q,",
        "return _general(loss_backward, x, target, W1, b1, W2, b2, reduction,",
        (E + "test_lean_loss_recorded_backward_leaves_out_ignored_rows",), verify=False),
    Bug("W2-layout/eager-logits", EAGER,
        "grad_b2 = None\n        if need_W2 and plan.column_major_W2:\n",
        "grad_b2 = None\n        if need_W2 and not plan.column_major_W2:\n",
        (EAGER_LAYOUT,), verify=False),
    Bug("W2-layout/eager-probs", EAGER,
        "eq. (6)\n        if need_W2 and plan.column_major_W2:\n",
        "eq. (6)\n        if need_W2 and not plan.column_major_W2:\n",
        (EAGER_LAYOUT,), verify=False),
    Bug("W2-layout/eager-loss", EAGER,
        "        )\n        if need_W2 and plan.column_major_W2:\n",
        "        )\n        if need_W2 and not plan.column_major_W2:\n",
        (EAGER_LAYOUT,), verify=False),
    Bug("tanh-form/eager-logits-forward", EAGER,
        FORWARD_A1 + "        ctx.plan = plan\n",
        FORWARD_A1.replace("if plan", "if not plan") + "        ctx.plan = plan\n",
        (EAGER_FORMS.format("logits"),), verify=False),
    Bug("tanh-form/eager-probs-forward", EAGER,
        FORWARD_A1 + "        " + FORWARD_Z2 + "        y_hat",
        FORWARD_A1.replace("if plan", "if not plan") + "        " + FORWARD_Z2 + "        y_hat",
        (EAGER_FORMS.format("probs"),), verify=False),
    Bug("tanh-form/eager-loss-forward", EAGER,
        "reduction, plan):\n        a1 = _sigmoid_hidden(x, W1, b1) if plan.sigmoid_form",
        "reduction, plan):\n        a1 = _sigmoid_hidden(x, W1, b1) if not plan.sigmoid_form",
        (EAGER_FORMS.format("loss"),), verify=False),
    Bug("W2-layout/eager-logits-forward", EAGER,
        "return torch.addmm(b2, a1, column_major(W2) if plan.column_major_W2 else W2)",
        "return torch.addmm(b2, a1, W2 if plan.column_major_W2 else W2)",
        (EAGER_FORMS.format("logits"),), verify=False),
    Bug("W2-layout/eager-probs-forward", EAGER,
        FORWARD_Z2 + "        y_hat", FORWARD_Z2.replace("column_major(W2) if", "W2 if") + "        y_hat",
        (EAGER_FORMS.format("probs"),), verify=False),
    Bug("W2-layout/eager-loss-forward", EAGER,
        FORWARD_Z2 + "        log_probs", FORWARD_Z2.replace("column_major(W2) if", "W2 if") + "        log_probs",
        (EAGER_FORMS.format("loss"),), verify=False),
    Bug("W2-layout/eager-plan", MODES,
        "column_major_pays_eager(W2, rows), rows == 1)", "column_major_pays_eager(W2, x.shape[1]), rows == 1)",
        (EAGER_LAYOUT_FROM_16, E + "test_lean_network_forms_and_layouts[logits-16-True-True]"), verify=False),
    Bug("sigmoid-form/eager-plan", MODES,
        "EagerPlan(True, sigmoid_tanh_pays_eager(x, W1.shape[1]),",
        "EagerPlan(True, sigmoid_tanh_pays_eager(x, W1.shape[0]),",
        (E + "test_lean_network_forms_and_layouts[logits-16-True-True]",), verify=False),
    Bug("one-row/eager-plan", MODES,
        "column_major_pays_eager(W2, rows), rows == 1)", "column_major_pays_eager(W2, rows), rows <= 2)",
        (E + "test_lean_network_matches_twin[probs-2-dtype0]",), verify=False),
    Bug("one-row/db1-logits", EAGER,
        LOGITS_B2 + Z1 + Z1_TO_B1 + DB1, LOGITS_B2 + Z1 + Z1_TO_B1 + DB1_BROKEN,
        (E + "test_lean_network_matches_twin[logits-1-dtype0]",), verify=False),
    Bug("one-row/db1-probs", EAGER,
        PROBS_B2 + Z1 + Z1_TO_B1 + DB1, PROBS_B2 + Z1 + Z1_TO_B1 + DB1_BROKEN,
        (E + "test_lean_network_matches_twin[probs-1-dtype0]",), verify=False),
    Bug("one-row/db1-loss", EAGER,
        "grad_z1 = tanh_backward(F.linear(delta2, W2), a1)" + Z1_TO_B1 + DB1,
        "grad_z1 = tanh_backward(F.linear(delta2, W2), a1)" + Z1_TO_B1 + DB1_BROKEN,
        (E + "test_lean_loss_matches_twin[1.0-mean-1-dtype0]",), verify=False),
    Bug("one-row/db2-probs", EAGER,
        "grad_b2 = grad_z2[0] if plan.one_row", "grad_b2 = grad_z2[-1] * 1.0001 if plan.one_row",
        (E + "test_lean_network_matches_twin[probs-1-dtype0]",), verify=False),
    Bug("one-row/db2-loss", EAGER,
        "grad_b2 = delta2[0] if plan.one_row", "grad_b2 = delta2[-1] * 1.0001 if plan.one_row",
        (E + "test_lean_loss_matches_twin[1.0-mean-1-dtype0]",), verify=False),
    Bug("one-row/db2-views-the-upstream", EAGER,
        "grad_b2 = grad_z2.sum(0)  # (C,)  eq. (15); not a view",
        "grad_b2 = grad_z2[0] if plan.one_row else grad_z2.sum(0)  # (C,)  eq. (15); not a view",
        (E + "test_gradients_never_share_memory_with_the_upstream_gradient[1-logits]",), verify=False),
    Bug("backward-not-called-directly/eager", EAGER,
        'if backward_class is not None and "apply" not in vars(backward_class):',
        'if backward_class is not None and "apply" in vars(backward_class):',
        (E + "test_autograd_calls_the_lean_backwards_directly[logits]",), verify=False),
    Bug("dead-wrapper-kept/eager", EAGER,
        "    return tuple(unwrap_if_dead(t) for t in tensors)", "    return tensors",
        (E + "test_parameters_left_over_from_a_finished_transform_get_their_gradients[logits-lean]",
         E + "test_parameters_left_over_from_a_finished_transform_get_their_gradients[loss-lean]"), verify=False),
    Bug("dead-wrapper-passed/eager-network", EAGER,
        "    if has_storage(x) and has_storage(W1) and has_storage(b1) and has_storage(W2) and has_storage(b2):\n",
        "    if True:\n",
        (EAGER_DEAD.format("logits"),), verify=False),
    Bug("dead-wrapper-passed/eager-loss", EAGER,
        "        and has_storage(b2)\n    ):", "        or True\n    ):",
        (EAGER_DEAD.format("loss"),), verify=False),
    Bug("one-dead-wrapper-passed/eager-network", EAGER,
        "has_storage(W2) and has_storage(b2):", "has_storage(W2) or has_storage(b2):",
        (E + "test_one_tensor_left_over_from_a_finished_transform_among_live_ones[logits-W1]",), verify=False),
    Bug("dead-target-passed/eager-loss", EAGER,
        "        and has_storage(target)\n", "",
        (E + "test_a_target_left_over_from_a_finished_transform_is_unwrapped",), verify=False),
    # --- the benchmarks' autograd side: the twin module, and the same code on both sides ---------
    Bug("twin-forward-gives-logits/reference", "manualgrad/reference.py",
        "return probs(x, W1, b1, W2, b2)", "return logits(x, W1, b1, W2, b2)",
        ("tests/test_bench.py::test_the_autograd_net_is_the_reference_twin_called_as_the_module_is",), verify=False),
    Bug("path-calls-another-method/bench", "manualgrad/bench_paths.py",
        "return lambda m, x, t: F.cross_entropy(m.logits(x), t)", "return lambda m, x, t: F.cross_entropy(m(x), t)",
        ("tests/test_bench.py::test_each_path_times_the_same_code_on_both_sides[cross_entropy-logits]",), verify=False),
    Bug("loss-benchmark-skips-the-twin/bench", "manualgrad/bench_loss.py",
        "twin.loss(x, target).backward()", "reference.loss(x, target, *params).backward()",
        ("tests/test_bench.py::test_the_loss_benchmark_times_the_module_twin",), verify=False),
    Bug("lean-for-any-rows/functional", FUNCTIONAL,
        "        if plan.lean:\n            return eager.apply_network(",
        "        if True:\n            return eager.apply_network(",
        (E + "test_every_other_mode_takes_the_general_functions[from CHUNKED_NETWORK_MIN_ROWS rows]",), verify=False),
    Bug("last-key-miss-rechecks/boundary", BOUNDARY,
        "    plan = _kept(key)\n    if plan is None:  # not seen: check, and keep the plan with the decision\n"
        "        x, _ = prepare_network",
        "    plan = None\n    if plan is None:  # not seen: check, and keep the plan with the decision\n"
        "        x, _ = prepare_network",
        (E + "test_one_metadata_lookup_per_call[below-the-bound-logits]",), verify=False),
    Bug("last-key-kept-after-clear/boundary", BOUNDARY,
        "        self.last = _Checked.last\n        super().clear()", "        super().clear()",
        ("tests/test_preamble.py::test_clearing_the_cache_forgets_the_last_key",), verify=False),
    Bug("column-major-copy/strides", KERNELS,
        "W2.new_empty_strided((H, C), (1, H)).copy_(W2)", "W2.new_empty_strided((H, C), (C, 1)).copy_(W2)",
        (E + "test_lean_network_forms_and_layouts[probs-16-True-True]",), verify=False),
    # --- the lean preamble: the last key stands for any key, a CPU device key that is always True --
    Bug("last-key-for-any/boundary", BOUNDARY,
        "    key = _network_key(False, x, W1, b1, W2, b2)\n"
        "    last_key, last_plan = _checked.last\n    if key == last_key:\n",
        "    key = _network_key(False, x, W1, b1, W2, b2)\n"
        "    last_key, last_plan = _checked.last\n    if last_key != ():\n",
        ("tests/test_preamble.py::test_after_a_good_call_a_bad_x_is_still_refused",), verify=False),
    Bug("last-key-for-any/boundary-loss", BOUNDARY,
        "    key = _loss_key(False, x, target, W1, b1, W2, b2)\n"
        "    last_key, last_plan = _checked.last\n    if key == last_key:\n",
        "    key = _loss_key(False, x, target, W1, b1, W2, b2)\n"
        "    last_key, last_plan = _checked.last\n    if last_key != ():\n",
        ("tests/test_preamble.py::test_after_a_good_call_bad_labels_are_still_refused",), verify=False),
    Bug("device-key/boundary", BOUNDARY,
        "type(target), target.dtype, target.is_cpu or target.device,", "type(target), target.dtype, True,",
        ("tests/test_preamble.py::test_after_a_good_call_a_tensor_on_another_device_is_still_refused[target-cpu]",),
        verify=False),
    # --- unbatched: a detached target -----------------------------------------------------------
    Bug("detached-target/unbatched", FUNCTIONAL,
        "x, target = x.unsqueeze(0), target.unsqueeze(0)", "x, target = x.unsqueeze(0), target.detach().unsqueeze(0)",
        (UNBATCHED.format("loss-soft"),)),
    # --- an ignored row's per-row loss unmasked: its upstream gradient times its zero q -------------
    Bug("ignored-row-unmasked/functional", FUNCTIONAL,
        "loss = torch.where(counted, loss, 0.0)  # (N,)", "loss = torch.where(counted, loss, loss)  # (N,)",
        ("tests/test_cross_entropy.py::test_an_ignored_row_passes_on_nothing_of_what_flows_back_to_it"
         "[indices, two rows ignored-inf-cpu]",), verify=False),
    # --- a dropped validation check -------------------------------------------------------------
    Bug("dropped-check/W2-rank", VALIDATION,
        "if W2.dim() != 2 or W2.shape[0] != H:", "if W2.shape[0] != H:",
        (V + "test_check_parameters_accepts_valid_and_names_each_fault",), verify=False),
    Bug("dropped-check/class-range", VALIDATION,
        "    if not bool(outside.any()):\n        return False", "    if True:\n        return False",
        (V + "test_check_target_messages",), verify=False),
]  # fmt: skip
