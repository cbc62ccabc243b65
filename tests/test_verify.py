"""``verify`` on the manualgrad.testing engine: it sees every path, compares with the twins, and
turns each planted bug into a failing line of its report (never a traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from manualgrad import autograd, cli, kernels, modes, verify

SMALL = dict(devices=["cpu"], dtypes=[torch.float64], batch=8, hidden=16, seed=0)


@pytest.fixture(scope="module")
def report():
    return verify.verify(SMALL["devices"], SMALL["dtypes"], batch=8, hidden=16, conformance=False)


def run_section(index: int, dtypes=(torch.float64,)):
    """Section ``index`` of verify (0: the twin, 1: gradients in the forward, 2: numpy, 3: autograd)."""
    plan = verify.sections(["cpu"], list(dtypes), 8, 16, 0, True, False)
    return plan[index][1]()


def cases_of(results, check):
    return {r.case for r in results if r.name == check}


def test_verify_passes_and_compares_with_the_twins(report):
    assert report.passed, verify.format_report(report)
    assert {r.name for r in report.results} >= {"values", "gradients", "numpy", "gradcheck", "gradgradcheck", "hvp"}


def test_verify_sees_every_path(report):
    n = modes.PRECOMPUTE_MIN_ROWS + 44
    twin = cases_of(report.results, "gradients")
    for path in ("loss", "soft"):
        for reduction in verify.REDUCTIONS:
            assert f"{path} {reduction} cpu float64" in twin  # every reduction; soft: target requires grad
        assert f"{path} unbatched cpu float64" in twin
    assert {"probs unbatched cpu float64", "logits unbatched cpu float64"} <= twin
    # gradients in the forward at real sizes: the default (one chunk), three chunks, a one-row last chunk
    for label in (f"loss mean N={n}", f"loss sum chunks of {n // 3 + 1}", f"soft mean chunks of {n - 1}"):
        assert f"{label} cpu float64" in twin
    assert f"loss mean N={n} cpu float64" in cases_of(report.results, "hvp")  # double backward at real sizes
    # forward AD with respect to every input, the probability target included
    forward_ad = [r for r in report.results if r.name == "forward_ad" and r.case == "soft mean cpu"]
    assert forward_ad and forward_ad[0].status == "pass"
    assert len(cases_of(report.results, "numpy")) == 4


def test_soft_target_cases_differentiate_the_target():
    case = dict(verify.every_path(verify.Problem.make(4, 8, 0), "cpu", torch.float64))["soft sum"]
    assert case.names[1] == "target" and 1 in case.differentiable


# Planted bugs: each one-line bug of issue 15's catalogue that reaches verify's paths fails it.
def _scaled(function, factor):
    return lambda *args, **kwargs: function(*args, **kwargs) * factor


def _one_over_n_minus_one(N, num_classes=1):
    return 1.0 / (N - 1) if N > 1 else float("nan")


def plant(monkeypatch, attribute, make_bug):
    """Replace a kernel wherever the Functions call it (kernels itself and the autograd layer)."""
    bug = make_bug(getattr(kernels, attribute))
    for module in (kernels, autograd):
        if hasattr(module, attribute):
            monkeypatch.setattr(module, attribute, bug)


@pytest.mark.parametrize(
    "attribute, make_bug, section, failing_case",
    [
        ("loss_grad_target", lambda f: _scaled(f, 2.0), 0, "soft sum cpu float64"),
        ("mean_scale", lambda f: _one_over_n_minus_one, 0, "loss mean in backward cpu float64"),
        ("softmax_jvp", lambda f: _scaled(f, -1.0), 3, "probs cpu"),
    ],
)
def test_planted_bug_fails_a_named_case(monkeypatch, attribute, make_bug, section, failing_case):
    plant(monkeypatch, attribute, make_bug)
    results = run_section(section)
    failing = {r.case for r in results if r.status == "fail"}
    assert failing_case in failing, sorted(failing)


def test_a_wrong_transpose_in_the_chunked_loss_is_a_failing_line_not_a_traceback(monkeypatch):
    original = autograd.loss_and_gradients

    def transposed_dx(*args, **kwargs):
        loss, grads = original(*args, **kwargs)
        return loss, (None if grads[0] is None else grads[0].T, *grads[1:])

    monkeypatch.setattr(autograd, "loss_and_gradients", transposed_dx)
    results = run_section(1)
    failures = [r for r in results if r.status == "fail" and r.name == "gradients"]
    assert failures and all("RuntimeError" in r.message and "shape" in r.message for r in failures)


def test_verify_cli_prints_sections_as_they_finish_and_exits_1_on_a_bug(monkeypatch, capsys):
    plant(monkeypatch, "mean_scale", lambda f: _one_over_n_minus_one)
    code = cli.main(["verify", "--device", "cpu", "--dtype", "float64", "--batch", "8", "--hidden", "16",
                     "--no-gradcheck", "--no-conformance"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    assert "FAIL" in out and "Traceback" not in out + err
    progress = [line for line in err.splitlines() if line.startswith("[")]
    assert [line[:5] for line in progress] == ["[1/3]", "[2/3]", "[3/3]"]  # a log: one plain line per section


def test_verify_json_and_exit_code_in_a_subprocess():
    command = [sys.executable, "-m", "manualgrad", "verify", "--device", "cpu", "--dtype", "float32",
               "--batch", "8", "--hidden", "16", "--no-gradcheck", "--no-conformance", "--json"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(result.stdout)
    assert data["passed"] and data["settings"]["dtypes"] == ["float32"] and len(data["sections"]) == 3
    assert "[3/3]" in result.stderr
