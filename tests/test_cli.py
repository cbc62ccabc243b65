"""The command line's contract: one line on stderr and exit 2 for every bad value, before any work;
exit 1 only for a failed check; files only under --out, all or none; subcommands with their own usage."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

import manualgrad
from manualgrad import arguments, bench_paths, cli, train

ROOT = Path(__file__).resolve().parents[1]
HUGE = "99999999999999999999"  # > 2**63 - 1: overflows every C integer type
FAST_TRAIN = ["--epochs", "3", "--hidden", "4", "--samples", "10", "--quiet"]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "manualgrad", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_version_is_the_package_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"manualgrad {manualgrad.__version__} (torch ")


def test_version_is_written_once_and_read_by_setuptools():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'attr = "manualgrad.__version__"' in pyproject
    assert "\nversion =" not in pyproject.split("[tool.setuptools.dynamic]")[0]


@pytest.mark.parametrize(
    ("args", "prog", "fragment"),
    [
        (["verify", "--bogus"], "manualgrad verify: error", "usage: manualgrad verify [-h] [--device"),
        (["train", "--bogus"], "manualgrad train: error", "usage: manualgrad train [-h] [--samples"),
        (["bench", "--bogus"], "manualgrad bench: error", "usage: manualgrad bench [-h] [--sizes"),
        (["bogus"], "manualgrad: error", "invalid choice: 'bogus'"),
    ],
)
def test_unknown_option_shows_the_subcommands_own_usage(args, prog, fragment):
    result = run_cli(*args)
    assert_one_line_error(result, prog, fragment)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["verify", "--seed", HUGE], f"--seed: must be at most {2**63 - 1}, got {HUGE}"),
        (["verify", "--seed", "-1"], "--seed: must be an integer >= 0, got -1"),
        (["verify", "--batch", HUGE], f"--batch: must be at most {2**31 - 1}, got {HUGE}"),
        (["verify", "--hidden", "1e3"], "--hidden: must be a positive integer, got '1e3'"),
        (["verify", "--batch", "100000000", "--hidden", "1000000"], "need at least"),
        (["train", "--seed", HUGE], "--seed: must be at most"),
        (["train", "--epochs", HUGE], "--epochs: must be at most"),
        (["train", "--samples", HUGE], "--samples: must be at most"),
        (["train", "--samples", "2000000000", "--hidden", "100000"], "more than this machine's"),
        (["train", "--lr", "inf"], "--lr: must be a positive number, got inf"),
        (["bench", "--sizes", "8", HUGE], "--sizes: must be at most"),
        (["bench", "--repeats", HUGE], "--repeats: must be at most"),
        (["bench", "--sizes", "2000000000", "--hidden", "2000000000"], "need at least"),
    ],
)
def test_bad_values_are_one_line_and_exit_2_before_any_work(args, fragment):
    result = run_cli(*args, timeout=60)
    assert_one_line_error(result, fragment)
    assert result.stdout == ""  # nothing ran


def test_out_that_is_a_file_is_refused_before_training(tmp_path):
    file = tmp_path / "taken"
    file.write_text("mine")
    for command in (["train", *FAST_TRAIN], ["bench", "--quick"]):
        result = run_cli(*command, "--out", str(file))
        assert_one_line_error(result, "--out:", "exists and is not a folder")
        assert result.stdout == ""
    assert file.read_text() == "mine"


def test_out_under_a_file_is_refused(tmp_path):
    (tmp_path / "taken").write_text("mine")
    result = run_cli("train", *FAST_TRAIN, "--out", str(tmp_path / "taken" / "plots"))
    assert_one_line_error(result, "--out:", "is not a folder")


def test_out_that_cannot_be_written_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK) and os.geteuid() == 0:
            target = Path("/proc/self/plots")  # root writes anywhere on disk, but not into /proc
        else:
            target = locked / "plots"
        result = run_cli("train", *FAST_TRAIN, "--out", str(target))
    finally:
        locked.chmod(0o700)
    assert_one_line_error(result, "--out:", "cannot write into")
    assert result.stdout == ""


def test_a_folder_in_the_way_of_an_output_file_is_refused_before_training(tmp_path):
    (tmp_path / train.LOSS_PNG).mkdir()
    result = run_cli("train", *FAST_TRAIN, "--out", str(tmp_path))
    assert_one_line_error(result, "a folder or special file is in the way")
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [train.LOSS_PNG]


def test_no_partial_output_when_writing_fails_halfway(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "new" / "plots"

    def broken_plot(result, path):
        raise OSError("disk full")

    monkeypatch.setattr(train, "plot_losses", broken_plot)  # the second of the two files fails
    with pytest.raises(OSError, match="disk full"):
        train.main([*FAST_TRAIN, "--out", str(out)])
    assert list(tmp_path.iterdir()) == []  # neither the first PNG nor the folders it created


def test_staged_output_moves_all_files_on_success(tmp_path):
    out = tmp_path / "a" / "b"
    with arguments.staged_output(out) as stage:
        (stage / "one").write_text("1")
        (stage / "two").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["one", "two"]


def test_train_writes_files_only_under_out(tmp_path):
    pytest.importorskip("matplotlib")
    result = run_cli("train", *FAST_TRAIN, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []  # no --out: no files
    result = run_cli("train", *FAST_TRAIN, "--out", "plots", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted([train.BOUNDARY_PNG, train.LOSS_PNG])
    assert [p.name for p in tmp_path.iterdir()] == ["plots"]


def test_bench_writes_nothing_without_out(tmp_path):
    result = run_cli("bench", "--quick", "--sizes", "1", "--hidden", "8", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Time per training step" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_train_prints_no_progress_bar_into_a_log():
    result = run_cli("train", "--epochs", "200", "--hidden", "8")  # stderr is a pipe, not a terminal
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_bench_plot_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    before = matplotlib.get_backend()
    result = bench_paths.PathResult("cpu", "loss", 4, manualgrad=1e-3, autograd=2e-3, ratios=[2.0, 1.9, 2.1])
    path = str(tmp_path / "plot.png")
    assert bench_paths.write_plot([result], 8, path, "title") == path
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert matplotlib.get_backend() == before
    assert "matplotlib.pyplot" not in sys.modules or matplotlib.get_backend() == before


def test_exit_1_means_a_failed_check(monkeypatch, capsys):
    original = manualgrad.TwoLayerNet.loss

    def wrong_loss(self, x, target, *args, **kwargs):
        return original(self, x, target, *args, **kwargs) * 1.5  # a wrong value: the twins part at once

    monkeypatch.setattr(manualgrad.TwoLayerNet, "loss", wrong_loss)
    assert cli.main(["train", *FAST_TRAIN]) == 1
    assert "the loss curves differ" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        (arguments.seed, "0", 0),
        (arguments.seed, str(2**63 - 1), 2**63 - 1),
        (arguments.size, str(2**31 - 1), 2**31 - 1),
        (arguments.positive_int, "1", 1),
    ],
)
def test_bounds_are_inclusive(kind, text, expected):
    assert kind(text) == expected


@pytest.mark.parametrize(
    ("kind", "text"),
    [(arguments.seed, str(2**63)), (arguments.size, str(2**31)), (arguments.size, "0"), (arguments.seed, "nan")],
)
def test_values_just_outside_the_bounds_are_refused(kind, text):
    with pytest.raises(argparse.ArgumentTypeError):
        kind(text)
