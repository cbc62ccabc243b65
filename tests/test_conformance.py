"""manualgrad's own Functions through the manualgrad.testing engine, and the module-level checks
of manualgrad.conformance, each with negative controls showing the checks catch a broken mechanism."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import DEVICES

from manualgrad import TwoLayerNet, autograd, boundary, conformance, functional, modes, verify
from manualgrad.testing import CHECK_NAMES, run_checks
from manualgrad.verify_cases import Problem

PROBLEM = Problem.make(8, 16, 0, out_features=3)
PATHS = ("probs", "logits", "loss mean", "soft mean")
ENGINE_CHECKS = [name for name in CHECK_NAMES if name not in ("cuda",)]


def manualgrad_case(path: str, device: str = "cpu"):
    return dict(verify.every_path(PROBLEM, device, torch.float64))[path]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", PATHS)
def test_manualgrad_functions_pass_every_engine_check(path, device):
    results = run_checks(manualgrad_case(path, device), ENGINE_CHECKS)
    failing = [f"{r.name}: {r.message}" for r in results if r.status != "pass"]
    assert not failing, failing


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", conformance.PATHS)
@pytest.mark.parametrize("check", ["autocast_policy", "module_contracts"])
def test_module_check(check, path, device):
    conformance.CHECKS[check](path, device)


def test_ddp_gloo_two_processes_matches_the_twin():
    """DDP with gloo, 2 local processes on loopback, bounded in time by a subprocess timeout."""
    code = (
        "from manualgrad import conformance\n"
        "if __name__ == '__main__':\n"
        "    for path in conformance.PATHS:\n"
        "        conformance.check_ddp(path, 'cpu')\n"
        "    print('ddp ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0 and "ddp ok" in result.stdout, result.stderr[-3000:]


def test_forward_with_target_returns_the_loss():
    torch.manual_seed(0)
    model = TwoLayerNet(2, 8, 3)
    x, target = torch.randn(5, 2), torch.tensor([0, 1, 2, 1, 0])
    torch.testing.assert_close(model(x, target), model.loss(x, target), rtol=0, atol=0)
    torch.testing.assert_close(model(x, target, "sum"), model.loss(x, target, "sum"), rtol=0, atol=0)


def test_compiled_functions_have_no_jvp_and_eager_ones_do():
    """Dynamo refuses autograd.Functions that define jvp; the compile-time classes must not."""
    for eager, compiled in [
        (functional.ProbsFunction, functional.ProbsFunctionNoJvp),
        (functional.LogitsFunction, functional.LogitsFunctionNoJvp),
        (functional.LossFunction, functional.LossFunctionNoJvp),
    ]:
        assert compiled.jvp is torch.autograd.Function.jvp
        assert eager.jvp is not torch.autograd.Function.jvp


# ---------------------------------------------------------------------------------------
# Negative controls: the checks catch a broken mechanism, by name.
# ---------------------------------------------------------------------------------------


def statuses(path, checks):
    return {r.name: r.status for r in run_checks(manualgrad_case(path), checks)}


@pytest.mark.parametrize("path", PATHS)
def test_negative_control_saved_intermediates_break_double_backward(monkeypatch, path):
    """pytorch issue 58509: a backward that uses saved a1/y_hat (no history) under create_graph is
    silently wrong. Turning off the recomputation must fail the Hessian-vector products."""
    monkeypatch.setattr(autograd, "backward_is_differentiated", lambda: False)
    assert statuses(path, ["gradients", "hvp"]) == {"gradients": "pass", "hvp": "fail"}


def test_negative_control_missing_and_wrong_jvp_are_caught(monkeypatch):
    original = autograd.softmax_jvp
    monkeypatch.setattr(autograd, "softmax_jvp", lambda tz2, y_hat: 2 * original(tz2, y_hat))
    assert statuses("probs", ["forward_ad"]) == {"forward_ad": "fail"}
    monkeypatch.setattr(functional, "ProbsFunction", functional.ProbsFunctionNoJvp)
    result = run_checks(manualgrad_case("probs"), ["forward_ad"])[0]
    assert result.status == "fail" and "jvp" in result.message


def test_negative_control_a_batch_size_branch_under_compile_is_caught(monkeypatch):
    """A size-tuned branch taken under torch.compile recompiles for a new batch size and breaks export."""
    monkeypatch.setattr(modes, "column_major_pays", lambda W2, rows: rows >= 10)
    assert statuses("logits", ["compile_dynamic", "export"]) == {"compile_dynamic": "fail", "export": "fail"}


def test_negative_control_autocast_policy_catches_bfloat16_math(monkeypatch):
    """With the precision policy off, manualgrad's ops see autocast's bfloat16: the policy check fails."""
    for module in (boundary, modes):
        monkeypatch.setattr(module, "autocast_enabled", lambda device_type: False)
    with pytest.raises((AssertionError, RuntimeError), match="autocast|dtype"):
        conformance.check_autocast_policy("logits", "cpu")


def test_module_results_report_failures_as_results(monkeypatch):
    for module in (boundary, modes):
        monkeypatch.setattr(module, "autocast_enabled", lambda device_type: False)
    results = conformance.results(["cpu"], paths=["logits"], checks=["autocast_policy", "module_contracts"])
    assert {r.name: r.status for r in results} == {"autocast_policy": "fail", "module_contracts": "pass"}
