"""exercises/: every solution is right (against its native reference, gradcheck, gradgradcheck,
double backward) and every untouched stub fails its check with its TODO message, not a traceback.

The checks through manualgrad.testing (check_function, ``python -m manualgrad check``) skip until
that package exists.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from manualgrad.testing import check_function

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = ROOT / "exercises"
NAMES = ["gelu", "layernorm"]
RTOL = 1e-10  # float64: relative to the largest entry compared


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"_exercise_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def solution(name: str):
    return load(EXERCISES / "solutions" / f"{name}.py")


def stub(name: str):
    return load(EXERCISES / f"{name}.py")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def assert_matches_reference(module) -> None:
    """Value first, then the gradient of every input, with a non-trivial upstream gradient."""
    inputs = module.make_inputs()
    assert all(t.dtype == torch.float64 and t.requires_grad for t in inputs)
    out, expected = module.function(*inputs), module.reference(*inputs)
    assert relative_error(out.detach(), expected.detach()) < RTOL
    upstream = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(out, inputs, upstream)
    expected_grads = torch.autograd.grad(expected, inputs, upstream)
    for index, (grad, want) in enumerate(zip(grads, expected_grads)):
        assert relative_error(grad, want) < RTOL, f"grad of input {index}: relative error {relative_error(grad, want)}"


@pytest.mark.parametrize("name", NAMES)
def test_solution_matches_its_reference(name):
    assert_matches_reference(solution(name))


@pytest.mark.parametrize("name", NAMES)
def test_solution_passes_gradcheck_and_gradgradcheck(name):
    module = solution(name)
    inputs = module.make_inputs()
    assert gradcheck(module.function, inputs)
    assert gradgradcheck(module.function, inputs)


@pytest.mark.parametrize("name", NAMES)
def test_solution_hessian_vector_product_equals_the_reference(name):
    module = solution(name)
    inputs = module.make_inputs()
    v = [torch.randn(t.shape, generator=torch.Generator().manual_seed(2), dtype=t.dtype) for t in inputs]

    def hvp(fn):
        out = fn(*inputs)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        grads = torch.autograd.grad((out * weights).sum(), inputs, create_graph=True)
        outputs, directions = zip(*[(g, d) for g, d in zip(grads, v) if g.requires_grad])  # dL/dbias is constant
        return torch.autograd.grad(outputs, inputs, directions, allow_unused=True, materialize_grads=True)

    for index, (ours, expected) in enumerate(zip(hvp(module.function), hvp(module.reference))):
        torch.testing.assert_close(
            ours,
            expected,
            rtol=RTOL,
            atol=RTOL * expected.abs().max().item(),
            msg=lambda m, i=index: f"HVP input {i}: {m}",
        )


def test_gelu_saves_its_input_not_its_output():
    module = solution("gelu")
    (x,) = module.make_inputs()
    y = module.function(x)
    (saved,) = y.grad_fn.saved_tensors
    assert saved is not y and torch.equal(saved, x)


@pytest.mark.parametrize("name", NAMES)
def test_solution_works_under_vmap(name):
    module = solution(name)
    inputs = [t.detach() for t in module.make_inputs()]
    batched = torch.stack([inputs[0], inputs[0] * 2])  # a batch of two first inputs
    out = torch.func.vmap(lambda a: module.function(a, *inputs[1:]))(batched)
    torch.testing.assert_close(out, torch.stack([module.reference(b, *inputs[1:]) for b in batched]))


@pytest.mark.parametrize("name", NAMES)
def test_stub_backward_raises_its_todo(name):
    module = stub(name)
    inputs = module.make_inputs()
    assert relative_error(module.function(*inputs).detach(), module.reference(*inputs).detach()) < RTOL
    with pytest.raises(NotImplementedError, match="TODO"):
        module.function(*inputs).sum().backward()


def test_negative_control_a_wrong_solution_is_caught(monkeypatch):
    """The comparison must catch a planted slip: GELU's derivative without its x phi(x) term."""
    module = solution("gelu")

    def wrong_backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * 0.5 * (1 + torch.erf(x / 2**0.5))  # Phi(x) only: the product rule forgotten

    monkeypatch.setattr(module.GELU, "backward", staticmethod(wrong_backward))
    with pytest.raises(AssertionError, match="grad of input 0"):
        assert_matches_reference(module)


def run_selfcheck(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("name", NAMES)
def test_python_exercise_file_fails_cleanly_for_the_stub(name):
    """`python exercises/<name>.py` on the untouched stub: exit 1, the TODO quoted, no traceback.
    (The solutions' full report is checked in-process below, and by CI's `manualgrad check` step.)"""
    failed = run_selfcheck(EXERCISES / f"{name}.py")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "NotImplementedError: TODO" in failed.stdout and "Traceback" not in failed.stdout + failed.stderr


# ----------------------------------------------------------------------------------------
# Through manualgrad.testing, the checker
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_check_function_passes_on_each_solution(name):
    module = solution(name)
    report = check_function(
        module.function, module.reference, *module.make_inputs(), checks=getattr(module, "CHECKS", None)
    )
    assert report.passed, str(report)


@pytest.mark.parametrize("name", NAMES)
def test_python_m_manualgrad_check_on_each_solution_and_untouched_stub(name):
    def check(path: Path, *options: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "manualgrad", "check", str(path.relative_to(ROOT)), *options]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)

    passed = check(EXERCISES / "solutions" / f"{name}.py", "--checks", "values,gradients,gradcheck")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    failed = check(EXERCISES / f"{name}.py")
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1, output
    assert "NotImplementedError" in output and "TODO" in output and "Traceback" not in output
