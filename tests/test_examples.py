"""Every example runs and shows what it claims; the library behind them (data, train) behaves.

The examples run as scripts (``sys.executable``, quick settings, a timeout), the way a reader
runs them. Plot assertions are skipped cleanly when matplotlib is not installed.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from manualgrad import TwoLayerNet, data, train

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Seconds per script, a guard against a hang, not a timing: each takes a few seconds on a quiet
# 2-core machine, but train_moons.py (1500 epochs, two models) took over 180 s with other work on it.
TIMEOUT = 600

# Every example and the test that runs it as a script: a new example without an entry here
# fails test_every_example_is_listed_and_documented.
EXAMPLE_TESTS = {
    "train_moons.py": "test_train_moons_classic_setting_reaches_97_percent_in_lockstep_with_autograd",
    "side_by_side.py": "test_side_by_side_prints_every_equation_in_order",
    "fault_injection.py": "test_fault_injection_catches_every_fault",
    "write_your_own_function.py": "test_write_your_own_function_shows_the_double_backward_mistake_and_both_remedies",
    "in_a_larger_model.py": "test_in_a_larger_model_matches_the_twin_and_trains",
}


def run_script(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def run_example(name: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return run_script(str(EXAMPLES / name), *args, cwd=cwd)


def assert_ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{Path(name).stem}", EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_summary(stdout: str) -> dict[str, float]:
    """The numbers of manualgrad.train's summary line."""
    match = re.search(
        r"training accuracy ([\d.]+)% \(autograd twin ([\d.]+)%\); "
        r"max \|loss_manual - loss_autograd\| over (\d+) epochs (\S+);",
        stdout,
    )
    assert match, f"no summary line in:\n{stdout}"
    accuracy, twin_accuracy, epochs, gap = match.groups()
    return {
        "accuracy": float(accuracy),
        "twin_accuracy": float(twin_accuracy),
        "epochs": int(epochs),
        "gap": float(gap),
    }


# ----------------------------------------------------------------------------------------
# Every example
# ----------------------------------------------------------------------------------------


def test_every_example_is_listed_and_documented():
    scripts = sorted(path.name for path in EXAMPLES.glob("*.py"))
    assert scripts == sorted(EXAMPLE_TESTS)
    for name in scripts:
        assert EXAMPLE_TESTS[name] in globals(), f"{name}: no test named {EXAMPLE_TESTS[name]}"
        docstring = ast.get_docstring(ast.parse((EXAMPLES / name).read_text()))
        assert docstring, f"{name} must start with a docstring"
        assert "What it shows" in docstring, f"{name}'s docstring must say what it shows"
        assert f"python examples/{name}" in docstring, f"{name}'s docstring must say how to run it"


# ----------------------------------------------------------------------------------------
# train_moons.py and manualgrad.train
# ----------------------------------------------------------------------------------------


def test_train_moons_classic_setting_reaches_97_percent_in_lockstep_with_autograd(tmp_path):
    """200 points, noise 0.20, 500 hidden units, the default epochs and learning rate."""
    stdout = assert_ok(run_example("train_moons.py", "--no-plot", "--quiet", cwd=tmp_path))
    summary = parse_summary(stdout)
    assert summary["epochs"] == train.DEFAULT_EPOCHS
    assert summary["accuracy"] >= 97.0
    assert summary["twin_accuracy"] == summary["accuracy"]
    assert summary["gap"] < 1e-5  # float32 rounding; a wrong gradient parts the curves by > 1e-2
    assert list(tmp_path.iterdir()) == []  # --no-plot writes nothing


def test_train_moons_writes_both_pngs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots" / "nested"  # created on demand
    assert train.main(["--epochs", "60", "--hidden", "32", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    for name in (train.BOUNDARY_PNG, train.LOSS_PNG):
        path = out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        assert path.stat().st_size > 10_000  # a real figure, not an empty canvas
        assert f"wrote {path}" in stdout
    assert "loss: first" in stdout  # not --quiet: the settings and the loss are printed


def test_train_without_matplotlib_or_tqdm_says_how_to_install_them(tmp_path, capsys, monkeypatch):
    for name in list(sys.modules):
        if name.split(".")[0] in ("matplotlib", "tqdm"):
            monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: import raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert train.main(["--epochs", "20", "--hidden", "8", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "pip install manualgrad[examples]" in captured.err
    assert list(tmp_path.iterdir()) == []
    assert parse_summary(captured.out)["epochs"] == 20


def test_python_m_manualgrad_train():
    result = run_script("-m", "manualgrad", "train", "--epochs", "20", "--hidden", "8", "--no-plot", "--quiet")
    assert parse_summary(assert_ok(result))["epochs"] == 20


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--epochs", "-1"], "--epochs: must be an integer >= 0, got -1"),
        (["--lr", "0"], "--lr: must be a positive number, got 0"),
        (["--samples", "1"], "--samples must be at least 2"),
        (["--hidden", "x"], "--hidden: must be a positive integer, got 'x'"),
        (["--noise", "nan"], "--noise: must be a finite number >= 0, got nan"),
    ],
)
def test_train_rejects_bad_options(args, match, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main([*args, "--no-plot"])
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err


def test_train_exits_1_when_the_hand_derived_gradient_is_wrong(monkeypatch, capsys):
    """Negative control: a loss whose value is right but whose gradient is 1.5 times too large."""
    original = TwoLayerNet.loss

    def wrong_gradient(self, x, target, reduction="mean"):
        loss = original(self, x, target, reduction)
        return loss + 0.5 * (loss - loss.detach())  # same value, gradient times 1.5

    monkeypatch.setattr(TwoLayerNet, "loss", wrong_gradient)
    assert train.main(["--epochs", "30", "--hidden", "16", "--no-plot", "--quiet"]) == 1
    assert "the hand-derived gradients disagree with autograd" in capsys.readouterr().err


def test_train_tells_chaotic_training_from_a_wrong_gradient(capsys):
    """lr 1.0 without momentum is unstable for the first epochs: the curves part, the gradients agree."""
    assert train.main(["--epochs", "300", "--lr", "1.0", "--momentum", "0", "--no-plot", "--quiet"]) == 1
    assert "the gradients agree at the first epoch" in capsys.readouterr().err


def test_train_moons_library_result():
    state = torch.random.get_rng_state()
    result = train.train_moons(n_samples=40, hidden=16, epochs=25, lr=0.2, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert len(result.manual_losses) == len(result.autograd_losses) == 25
    gaps = [abs(a - b) for a, b in zip(result.manual_losses, result.autograd_losses)]
    assert result.max_loss_difference == max(gaps) < 1e-5
    assert result.manual_losses[-1] < result.manual_losses[0]
    assert result.final_loss == result.manual_losses[-1]
    predictions = result.model.predict(result.x)
    assert result.accuracy == pytest.approx((predictions == result.y).double().mean().item())
    assert result.x.shape == (40, 2) and result.model.hidden_features == 16
    assert result.first_gradient_difference < 1e-5
    again = train.train_moons(n_samples=40, hidden=16, epochs=25, lr=0.2, seed=3)
    assert again.manual_losses == result.manual_losses  # seeded: the same run twice


def test_train_moons_float64_curves_agree_to_float64_rounding():
    result = train.train_moons(n_samples=60, hidden=32, epochs=40, dtype=torch.float64)
    assert result.max_loss_difference < 1e-12
    assert result.max_parameter_difference < 1e-12
    assert result.first_gradient_difference < 1e-12


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"hidden": 0}, ValueError, "hidden must be positive, got 0"),
        ({"epochs": -1}, ValueError, "epochs must be >= 0, got -1"),
        ({"epochs": 2.5}, TypeError, r"epochs must be an int, got float \(2.5\)"),
        ({"lr": 0.0}, ValueError, "lr must be a finite number > 0.0, got 0.0"),
        ({"lr": math.nan}, ValueError, "lr must be a finite number"),
        ({"momentum": -0.1}, ValueError, "momentum must be a finite number >= 0.0, got -0.1"),
        ({"dtype": torch.int64}, TypeError, "dtype must be a floating torch.dtype, got torch.int64"),
        ({"noise": -1.0}, ValueError, "noise must be a finite number >= 0"),
    ],
)
def test_train_moons_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        train.train_moons(**{"epochs": 1, "hidden": 4, **kwargs})


# ----------------------------------------------------------------------------------------
# manualgrad.data.make_moons
# ----------------------------------------------------------------------------------------


def test_make_moons_shapes_dtypes_balance_and_seed():
    x, y = data.make_moons()
    assert x.shape == (200, 2) and x.dtype == torch.float32
    assert y.shape == (200,) and y.dtype == torch.int64
    assert int((y == 0).sum()) == 100 and int((y == 1).sum()) == 100
    x2, y2 = data.make_moons()
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = data.make_moons(seed=1)
    assert not torch.equal(x, x3)
    x64, _ = data.make_moons(7, dtype=torch.float64)
    assert x64.shape == (7, 2) and x64.dtype == torch.float64


def test_make_moons_geometry_without_noise():
    """Class 0 on the upper unit half circle; class 1 on the lower half circle around (1, 0.5)."""
    x, y = data.make_moons(101, noise=0.0, dtype=torch.float64)
    upper, lower = x[y == 0], x[y == 1]
    assert upper.shape == (50, 2) and lower.shape == (51, 2)
    torch.testing.assert_close(upper.norm(dim=1), torch.ones(50, dtype=torch.float64))
    assert bool((upper[:, 1] >= -1e-12).all())
    centre = torch.tensor([1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close((lower - centre).norm(dim=1), torch.ones(51, dtype=torch.float64))
    assert bool((lower[:, 1] <= 0.5 + 1e-12).all())
    assert float(x[:, 0].min()) == pytest.approx(-1.0) and float(x[:, 0].max()) == pytest.approx(2.0)


def test_make_moons_noise_has_the_requested_scale():
    clean, _ = data.make_moons(4000, noise=0.0, seed=5, dtype=torch.float64)
    noisy, _ = data.make_moons(4000, noise=0.2, seed=5, dtype=torch.float64)
    # same seed, same permutation: the difference is the noise alone
    assert float((noisy - clean).std()) == pytest.approx(0.2, rel=0.05)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_samples": 1}, ValueError, "n_samples must be at least 2 .* got 1"),
        ({"n_samples": 2.0}, TypeError, r"n_samples must be an int, got float \(2.0\)"),
        ({"n_samples": True}, TypeError, "n_samples must be an int, got bool"),
        ({"noise": -0.1}, ValueError, "noise must be a finite number >= 0 .* got -0.1"),
        ({"noise": math.inf}, ValueError, "noise must be a finite number >= 0 .* got inf"),
        ({"noise": "0.2"}, TypeError, r"noise must be a real number, got str \('0.2'\)"),
        ({"seed": -1}, ValueError, "seed must be >= 0 .* got -1"),
        ({"seed": 1.5}, TypeError, r"seed must be an int, got float \(1.5\)"),
        ({"dtype": torch.int32}, TypeError, "dtype must be a floating torch.dtype .* got torch.int32"),
        ({"device": 0}, TypeError, r"device must be None, a str or a torch.device, got int \(0\)"),
    ],
)
def test_make_moons_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        data.make_moons(**kwargs)


# ----------------------------------------------------------------------------------------
# side_by_side.py, fault_injection.py, write_your_own_function.py, in_a_larger_model.py
# ----------------------------------------------------------------------------------------


def test_side_by_side_prints_every_equation_in_order():
    stdout = assert_ok(run_example("side_by_side.py"))
    labels = [line.split()[0] for line in stdout.splitlines() if line.startswith("(")]
    expected = ["(1)", "(2)", "(3)", "(4)", "(5)", "(6)", "(7)", "(8),(14)", "(9),(15)", "(10)", "(11)"]
    expected += ["(12),(16)", "(13),(17)", "(18)"]
    assert labels[: len(expected)] == expected
    assert "float64" in stdout and "20 of 20 quantities agree" in stdout
    assert "FAIL" not in stdout


def test_side_by_side_float32(capsys):
    assert load_example("side_by_side.py").main(["--dtype", "float32", "--batch", "64"]) == 0
    stdout = capsys.readouterr().out
    assert "float32" in stdout and "20 of 20 quantities agree" in stdout


def test_fault_injection_catches_every_fault():
    module = load_example("fault_injection.py")
    stdout = assert_ok(run_example("fault_injection.py"))
    lines = {line.split("  ")[0].strip(): line for line in stdout.splitlines()}
    control = lines["(none: the correct formulas)"]
    assert control.split()[-3:] == ["pass", "pass", "pass"]
    assert len(module.FAULTS) == 5
    for name in module.FAULTS:
        eq, twin, gradcheck, shapes, *_ = lines[name][35:].split()
        # the twin comparison and gradcheck each catch every fault on their own ...
        assert (twin, gradcheck) == ("CAUGHT", "CAUGHT"), lines[name]
        # ... and a batch with N != H catches exactly the two slips that only type-check when N == H
        assert shapes == ("CAUGHT" if eq in ("(10)", "(11)/(16)") else "-"), lines[name]
    assert "5 of 5 faults caught" in stdout


def test_fault_injection_exits_1_when_a_fault_goes_uncaught(capsys):
    module = load_example("fault_injection.py")
    # Not a fault at all: 1 - a1^2 expanded. No check can catch it, so the run must fail.
    harmless = {"1 - a1^2 expanded": ("(11)", "eq11", lambda grad_a1, a1: grad_a1 - grad_a1 * a1 * a1)}
    assert module.main([], faults=harmless) == 1
    assert "UNCAUGHT: 1 - a1^2 expanded" in capsys.readouterr().out


def test_write_your_own_function_shows_the_double_backward_mistake_and_both_remedies():
    stdout = assert_ok(run_example("write_your_own_function.py"))
    assert re.search(r"step 1: Linear .* gradcheck ok, gradgradcheck ok", stdout), stdout
    assert re.search(r"step 2: Tanh .* gradcheck ok, gradgradcheck ok", stdout), stdout
    assert re.search(r"step 3: SoftmaxCrossEntropyWrong .* gradgradcheck FAILS", stdout), stdout
    wrong, native = (re.search(rf"H v, {who}[^:]*: \[([-\d.e, ]+)", stdout).group(1) for who in ("wrong", "native"))
    assert wrong != native, stdout  # both printed, and they differ
    assert "trying to differentiate twice a function that was marked with @once_differentiable" in stdout
    assert re.search(r"step 5: SoftmaxCrossEntropy .* gradcheck ok, gradgradcheck ok", stdout), stdout
    assert float(re.search(r"max \|H v - autograd's\| (\S+)", stdout).group(1)) < 1e-12
    assert re.search(r"step 6: the whole network .* gradgradcheck ok", stdout), stdout
    assert "agrees with native autograd and with manualgrad.two_layer_net_loss" in stdout
    assert "the other branch was corrupted" in stdout and stdout.rstrip().endswith("all steps passed")


def test_write_your_own_function_exits_1_when_a_remedy_is_broken(tmp_path):
    """Undo remedy two (y_hat detached again): the script must fail, not print a wrong H v and exit 0."""
    source = (EXAMPLES / "write_your_own_function.py").read_text()
    line = "y_hat = torch.softmax(z2, 1)  # (N, C)  eq. (4), recomputed"
    assert line in source
    broken = tmp_path / "write_your_own_function.py"
    broken.write_text(source.replace(line, line.replace("torch.softmax(z2, 1)", "torch.softmax(z2, 1).detach()")))
    result = run_script(str(broken))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED: the recomputing version passes gradgradcheck" in result.stderr


def test_in_a_larger_model_matches_the_twin_and_trains():
    stdout = assert_ok(run_example("in_a_larger_model.py", "--steps", "100"))
    assert "TwoLayerNet(in_features=8, hidden_features=64, out_features=4)" in stdout
    assert "grad input" in stdout and "FAIL" not in stdout
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", stdout).groups())
    assert last < 0.75 * first
