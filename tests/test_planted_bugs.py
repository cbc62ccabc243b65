"""The planted-bug catalogue (tests/planted/catalogue.py): each classic mistake must fail a named test.

For each entry the source snippet is replaced in a temporary copy of the package, the entry's named
tests run against that copy in a subprocess, and at least one must fail; a control run of every named
test on the unpatched copy must pass (else the failures would prove nothing). An entry whose snippet
no longer occurs exactly once fails loudly: the code moved, and the entry must move with it. Entries
on a path ``python -m manualgrad verify`` covers also make verify exit 1.

The verify part runs one ``verify`` per entry (about 10 s of CPU each), so it runs only with
``MANUALGRAD_PLANTED_VERIFY=1`` (about half an hour; CI leaves it out); run times are in mutation/README.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from planted.catalogue import CATALOGUE, VERIFY_ARGS, Bug

REPO = Path(__file__).resolve().parents[1]
COPIED = ("manualgrad", "tests", "pyproject.toml", "README.md", "docs")
IDS = [bug.id for bug in CATALOGUE]
TIMEOUT = 600


def _copy_tree(destination: Path) -> Path:
    destination.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", ".pytest_cache")
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, destination / name)
    return destination


def _run(tree: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def _pytest(tree: Path, node_ids: list[str], *extra: str) -> subprocess.CompletedProcess:
    return _run(tree, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *extra, *node_ids])


def _patch(tree: Path, bug: Bug) -> None:
    path = tree / bug.file
    source = path.read_text()
    assert source.count(bug.old) == 1, f"{bug.id}: the snippet occurs {source.count(bug.old)} times in {bug.file}"
    path.write_text(source.replace(bug.old, bug.new))


def _tail(result: subprocess.CompletedProcess, lines: int = 25) -> str:
    return "\n".join((result.stdout + result.stderr).splitlines()[-lines:])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return _copy_tree(tmp_path_factory.mktemp("planted") / "pristine")


def test_catalogue_ids_are_unique_and_every_snippet_occurs_once():
    assert len(IDS) == len(set(IDS)), "duplicate ids"
    for bug in CATALOGUE:
        source = (REPO / bug.file).read_text()
        count = source.count(bug.old)
        assert count == 1, f"{bug.id}: snippet found {count} times in {bug.file} (the code moved: update the entry)"
        assert bug.new != bug.old and bug.tests, bug.id
        assert bug.verify_args in VERIFY_ARGS, bug.id


def test_control_every_named_test_passes_unpatched(pristine):
    node_ids = sorted({t for bug in CATALOGUE for t in bug.tests})
    result = _pytest(pristine, node_ids)
    assert result.returncode == 0, f"the control run failed:\n{_tail(result, 40)}"
    # each id ran (a misspelt parametrisation id is a collection error, exit code 4)
    assert f"{len(node_ids)} passed" in result.stdout, _tail(result)


@pytest.mark.parametrize("bug", CATALOGUE, ids=IDS)
def test_planted_bug_fails_a_named_test(bug, tmp_path):
    tree = _copy_tree(tmp_path / "tree")
    _patch(tree, bug)
    result = _pytest(tree, list(bug.tests), "-x")
    assert result.returncode == 1, f"{bug.id}: no named test failed (exit {result.returncode}):\n{_tail(result)}"
    assert "failed" in result.stdout, _tail(result)


@pytest.mark.skipif(
    os.environ.get("MANUALGRAD_PLANTED_VERIFY") != "1",
    reason="one verify run per entry: set MANUALGRAD_PLANTED_VERIFY=1",
)
@pytest.mark.parametrize("bug", [b for b in CATALOGUE if b.verify], ids=[b.id for b in CATALOGUE if b.verify])
def test_verify_exits_1_on_planted_bug(bug, tmp_path):
    tree = _copy_tree(tmp_path / "tree")
    _patch(tree, bug)
    result = _run(tree, ["-m", "manualgrad", "verify", *VERIFY_ARGS[bug.verify_args]])
    assert result.returncode == 1, f"{bug.id}: verify exited {result.returncode}:\n{_tail(result)}"
