"""PyTorch conformance: every mechanism PyTorch offers, on every path, against the autograd twin.

The checks themselves live in manualgrad.conformance (``python -m manualgrad verify`` prints
them as a matrix); here each runs as a test, per path and device, with negative controls
showing that the checks fail when the mechanism is broken.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import DEVICES

from manualgrad import TwoLayerNet, autograd, conformance, functional

IN_PROCESS_CHECKS = [name for name in conformance.CHECKS if not name.startswith("DDP")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", conformance.PATHS)
@pytest.mark.parametrize("check", IN_PROCESS_CHECKS)
def test_conformance_check(check, path, device):
    conformance.CHECKS[check](path, device)


def test_ddp_gloo_two_processes_matches_single_process():
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


def test_autocast_returns_parameter_dtype_and_float32_math():
    """The documented precision policy: under autocast manualgrad computes in the parameters' dtype."""
    torch.manual_seed(0)
    model = TwoLayerNet(2, 16, 2)
    x = torch.randn(4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x.bfloat16())
        loss = model.loss(x.bfloat16(), torch.tensor([0, 1, 1, 0]))
    assert out.dtype == torch.float32 and loss.dtype == torch.float32
    torch.testing.assert_close(out, model(x.bfloat16().float()))
    xb = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.loss(xb, torch.tensor([0, 1, 1, 0])).backward()
    assert xb.grad.dtype == torch.bfloat16 and model.W1.grad.dtype == torch.float32


# ---------------------------------------------------------------------------------------
# Negative controls: the conformance checks catch a broken mechanism.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", conformance.PATHS)
def test_negative_control_saved_intermediates_break_double_backward(monkeypatch, path):
    """pytorch issue 58509: a backward that uses saved a1/y_hat (no history) under create_graph is
    silently wrong. Turning off the recomputation must make the double-backward check fail."""
    monkeypatch.setattr(autograd, "backward_is_differentiated", lambda: False)
    with pytest.raises(Exception, match="gradgradcheck|Hessian|Jacobian mismatch"):
        conformance.check_double_backward(path, "cpu")


def test_negative_control_missing_jvp_is_caught(monkeypatch):
    monkeypatch.setattr(functional, "ProbsFunction", functional.ProbsFunctionNoJvp)
    with pytest.raises(Exception, match="jvp"):
        conformance.check_forward_ad("probs", "cpu")


def test_negative_control_wrong_jvp_is_caught(monkeypatch):
    original = autograd.softmax_jvp
    monkeypatch.setattr(autograd, "softmax_jvp", lambda tz2, y_hat: 2 * original(tz2, y_hat))
    with pytest.raises(Exception, match="Jacobian mismatch|forward"):
        conformance.check_forward_ad("probs", "cpu")


def test_negative_control_conformance_matrix_reports_failures(monkeypatch):
    monkeypatch.setattr(autograd, "backward_is_differentiated", lambda: False)
    cells = conformance.conformance_matrix(["cpu"], paths=["probs"], checks=["double backward, HVP", "autocast"])
    statuses = {check: status for check, _, _, status, _ in cells}
    assert statuses == {"double backward, HVP": "fail", "autocast": "pass"}
