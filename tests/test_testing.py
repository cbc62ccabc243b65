"""manualgrad.testing: a catalogue of broken Functions, each caught by the check that should
catch it (named), and correct Functions that pass every applicable check."""

from __future__ import annotations

import re

import pytest
import testing_catalogue as cat
import torch

from manualgrad import testing
from manualgrad.testing import CHECK_NAMES, CheckResult, Report, check_function


def activations(n=6, d=5):
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(n, d, dtype=torch.float64, generator=generator).requires_grad_(),)


def logits_and_targets(n=6, c=4):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(n, c, dtype=torch.float64, generator=generator).requires_grad_()
    return logits, torch.randint(0, c, (n,), generator=generator)


# (broken Function, reference, inputs, the check that must fail, checks that must still pass)
CATALOGUE = [
    ("wrong derivative", cat.WrongDerivative, cat.gelu_reference, activations, "gradients", ["values"]),
    ("wrong derivative", cat.WrongDerivative, cat.gelu_reference, activations, "gradcheck", ["values"]),
    ("missing 1/N", cat.MissingMean, cat.cross_entropy_reference, logits_and_targets, "gradients", ["values"]),
    (
        "softmax saved without history",
        cat.SoftmaxSavedWithoutHistory,
        cat.cross_entropy_reference,
        logits_and_targets,
        "hvp",
        ["values", "gradients", "gradcheck"],
    ),
    (
        "softmax saved without history",
        cat.SoftmaxSavedWithoutHistory,
        cat.cross_entropy_reference,
        logits_and_targets,
        "gradgradcheck",
        [],
    ),
    ("wrong jvp", cat.WrongJvp, cat.gelu_reference, activations, "forward_ad", ["values", "gradients"]),
    (
        "backward writes into grad_output",
        cat.ModifiesGradOutput,
        cat.gelu_reference,
        activations,
        "grad_output_unmodified",
        ["values"],
    ),
    (
        "branch on the batch size",
        cat.BranchOnBatchSize,
        cat.gelu_reference,
        activations,
        "compile_dynamic",
        ["values", "gradients", "compile"],
    ),
    ("branch on the batch size", cat.BranchOnBatchSize, cat.gelu_reference, activations, "export", []),
    (
        "saves a needless (N, N) tensor",
        cat.SavesOuterProduct,
        cat.gelu_reference,
        lambda: activations(n=64, d=4),
        "saved_memory",
        ["values", "gradients"],
    ),
]


@pytest.mark.parametrize(
    "function, reference, make_inputs, caught_by, still_passing",
    [pytest.param(*row[1:], id=f"{row[0]}-{row[4]}") for row in CATALOGUE],
)
def test_catalogue_bug_is_caught_by_its_check(function, reference, make_inputs, caught_by, still_passing):
    report = check_function(cat.applying(function), reference, *make_inputs(), checks=[caught_by, *still_passing])
    statuses = {r.name: r.status for r in report.results}
    assert statuses[caught_by] == "fail", str(report)
    assert all(statuses[name] == "pass" for name in still_passing), str(report)
    assert not report.passed
    with pytest.raises(AssertionError, match=caught_by):
        report.raise_if_failed()


@pytest.mark.parametrize(
    "fn, reference, make_inputs",
    [
        pytest.param(cat.gelu, cat.gelu_reference, activations, id="gelu"),
        pytest.param(cat.cross_entropy, cat.cross_entropy_reference, logits_and_targets, id="cross-entropy"),
    ],
)
def test_correct_functions_pass_every_applicable_check(fn, reference, make_inputs):
    report = check_function(fn, reference, *make_inputs())
    report.raise_if_failed()
    assert [r.name for r in report.results] == list(CHECK_NAMES)
    skipped = {r.name: r.message for r in report.results if r.status == "skip"}
    expected_skips = set() if torch.cuda.is_available() else {"cuda"}
    assert set(skipped) == expected_skips, skipped
    assert all(skipped.values()), "every skip gives its reason"


def test_a_refusing_mechanism_is_a_failure_quoting_pytorch():
    """Dynamo refuses a Function with a jvp: the compile check fails with Dynamo's own words."""
    report = check_function(cat.applying(cat.Gelu), cat.gelu_reference, *activations(), checks=["compile"])
    (result,) = report.results
    assert result.status == "fail" and "jvp" in result.message and "Unsupported" in result.message


def test_every_exception_becomes_the_checks_result():
    """A stub backward raising NotImplementedError: clean failures quoting it, no crash, no traceback."""

    class Stub(cat.GeluNoJvp):
        @staticmethod
        def backward(ctx, grad_output):
            raise NotImplementedError("TODO: write the GELU backward")

    report = check_function(cat.applying(Stub), cat.gelu_reference, *activations())
    statuses = {r.name: r.status for r in report.results}
    assert statuses["values"] == "pass" and statuses["gradients"] == "fail"
    gradients = next(r for r in report.results if r.name == "gradients")
    assert gradients.message == "NotImplementedError: TODO: write the GELU backward"
    assert "Traceback" not in str(report)


def test_a_function_that_raises_in_forward_fails_every_check_that_runs_it():
    def broken(x):
        raise ValueError("shape mismatch in forward")

    report = check_function(broken, cat.gelu_reference, *activations(), checks=["values", "gradients", "vmap"])
    assert [r.status for r in report.results] == ["fail", "fail", "fail"]
    assert all("shape mismatch in forward" in r.message for r in report.results)


def test_checks_that_do_not_apply_skip_with_a_reason():
    x = torch.randn(5, dtype=torch.float64)  # no requires_grad, no batch dimension 1
    report = check_function(torch.tanh, torch.tanh, x, checks=["values", "gradients", "vmap"], batch_dim=1)
    assert [r.status for r in report.results] == ["pass", "skip", "skip"]
    assert "requires grad" in report.results[1].message and "batch" in report.results[2].message


def test_tolerances_are_relative_to_the_size_of_what_is_compared():
    """A relative error of 1e-5 fails in float64 at any scale; the caller's rtol lets it pass."""
    for scale in (1e-6, 1.0, 1e6):
        x = (torch.rand(4, 3, dtype=torch.float64) + 1) * scale

        def slightly_off(t):
            return t * (1 + 1e-5)

        report = check_function(slightly_off, lambda t: t, x, checks=["values"])
        assert report.results[0].status == "fail", str(report)
        assert re.search(r"rel (1\.0e-05|9\.9e-06)", report.results[0].message), report.results[0].message
        assert check_function(slightly_off, lambda t: t, x, checks=["values"], rtol=1e-4).passed


def test_unknown_check_names_are_a_value_error():
    with pytest.raises(ValueError, match="unknown check.*'valuez'.*known: values"):
        check_function(torch.tanh, torch.tanh, torch.randn(3), checks=["valuez"])


def test_report_table_and_dict():
    report = Report([CheckResult("values", "pass", "max abs 0"), CheckResult("cuda", "skip", "no CUDA device")])
    text = str(report)
    assert "values" in text and "SKIP" in text and "no CUDA device" in text and report.passed
    assert report.to_dict()["summary"] == "1 passed, 0 failed, 1 skipped"
    with pytest.raises(ValueError, match="status"):
        CheckResult("values", "ok")


def test_public_names():
    assert set(testing.__all__) >= {"check_function", "Report", "CheckResult", "CHECK_NAMES"}
    assert len(set(CHECK_NAMES)) == len(CHECK_NAMES) == 16
