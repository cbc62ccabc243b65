"""``python -m manualgrad check FILE``: the engine on a learner's file; exit 0, 1, or 2 on bad usage."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from manualgrad import cli
from manualgrad.testing import CHECK_NAMES

GELU_FILE = textwrap.dedent(
    """
    import math

    import torch
    from torch.autograd import Function


    class Gelu(Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x):
            return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, grad_output):
            (x,) = ctx.saved_tensors
            BACKWARD


    def function(x):
        return Gelu.apply(x)


    def reference(x):
        return torch.nn.functional.gelu(x)


    def make_inputs():
        return (torch.randn(6, 4, dtype=torch.float64, requires_grad=True),)


    CHECKS = ["values", "gradients", "gradcheck", "vmap"]
    """
)
RIGHT = (
    "return grad_output * (0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))"
    " + x * torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi))"
)
STUB = 'raise NotImplementedError("TODO: dL/dx = grad_output * (Phi(x) + x phi(x))")'


@pytest.fixture
def exercise(tmp_path):
    def write(backward: str) -> str:
        path = tmp_path / "gelu.py"
        path.write_text(GELU_FILE.replace("BACKWARD", backward))
        return str(path)

    return write


def test_a_right_backward_passes_the_files_checks(exercise, capsys):
    assert cli.main(["check", exercise(RIGHT)]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[3:7]] == ["values", "gradients", "gradcheck", "vmap"]
    assert "PASSED: 4 passed, 0 failed, 0 skipped" in out


def test_a_stub_backward_is_a_clean_failing_report(exercise, capsys):
    assert cli.main(["check", exercise(STUB), "--checks", "values,gradients"]) == 1
    out, err = capsys.readouterr()
    assert "NotImplementedError: TODO: dL/dx = grad_output * (Phi(x) + x phi(x))" in out
    assert "Traceback" not in out + err and "FAILED: 1 passed, 1 failed" in out


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["/no/such/file.py"], "no such file"),
        (["FILE", "--function", "missing"], "function 'missing' not defined"),
        (["FILE", "--checks", "values,bogus"], "unknown check(s) 'bogus'"),
        ([], "a FILE is required"),
    ],
)
def test_bad_usage_is_one_line_on_stderr_and_exit_2(exercise, capsys, arguments, message):
    path = exercise(RIGHT)
    assert cli.main(["check", *(path if a == "FILE" else a for a in arguments)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and message in err


def test_list_checks_names_every_check(capsys):
    assert cli.main(["check", "--list-checks"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == list(CHECK_NAMES)


def test_python_dash_m_manualgrad_check(exercise):
    result = subprocess.run(
        [sys.executable, "-m", "manualgrad", "check", exercise(RIGHT), "--checks", "values,gradients"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gradients" in result.stdout
