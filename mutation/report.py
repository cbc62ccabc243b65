"""Write mutation/REPORT.md from mutmut's results in the working copy and mutation/equivalent.toml.

Usage: python mutation/report.py --workdir /tmp/manualgrad-mutation --repo . [FILE ...]

Counts per file: killed (a test failed), timeout, survived, equivalent (listed in equivalent.toml
with the reason it changes no observable behaviour), not run. Score = killed / (mutants run - equivalent).
An equivalent entry whose mutant no longer exists, or whose diff no longer contains its ``line``,
is reported as stale: the code moved and the entry must be reviewed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import tomllib

STATUS = {1: "killed", 3: "killed", 0: "survived", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout",
          255: "timeout", 5: "no tests", 33: "no tests", None: "not run"}  # fmt: skip


def load_results(workdir: Path, files: list[str]) -> dict[str, dict[str, str]]:
    """{file: {mutant name: status}} from mutmut's .meta files."""
    results = {}
    for meta in sorted((workdir / "mutants").rglob("*.py.meta")):
        source = str(meta.relative_to(workdir / "mutants"))[: -len(".meta")]
        if files and source not in files:
            continue
        data = json.loads(meta.read_text())
        results[source] = {k: STATUS.get(v, "suspicious") for k, v in data["exit_code_by_key"].items()}
    return results


def mutant_diff(workdir: Path, name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=workdir, capture_output=True, text=True)
    return "\n".join(line for line in out.stdout.splitlines() if line.startswith(("+", "-")) and line[1:2] != line[:1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("files", nargs="*")
    args = parser.parse_args()
    equivalents = tomllib.loads((args.repo / "mutation" / "equivalent.toml").read_text()).get("equivalent", [])
    reason_by_name = {e["mutant"]: e for e in equivalents}
    results = load_results(args.workdir, args.files)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.repo, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "manualgrad", "tests"], cwd=args.repo, capture_output=True, text=True
    )
    lines = [
        "# Mutation testing report",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- commit: {commit.stdout.strip()}"
        + (" (with uncommitted changes in manualgrad/ or tests/)" if dirty.stdout.strip() else ""),
        "- tool: mutmut 3 (`mutation/run.sh`, configuration in pyproject.toml `[tool.mutmut]`)",
        f"- files: {', '.join(results) or 'none'}",
        "- score = killed / (mutants run - equivalent); timeouts are counted apart (a timeout is a",
        "  detection, but not by an assertion); 'not run': mutants the run had not reached when it stopped",
        "",
        "| file | mutants | killed | timeout | survived | equivalent | not run | score |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    survivors, equivalent_rows, stale = [], [], []
    totals: Counter[str] = Counter()
    for source, statuses in results.items():
        counts: Counter[str] = Counter()
        for name, status in statuses.items():
            if status == "survived" and name in reason_by_name:
                entry = reason_by_name[name]
                diff = mutant_diff(args.workdir, name)
                if diff and entry["line"].strip() not in diff:  # no diff: `mutmut show` failed, the name decides
                    stale.append(f"- `{name}`: diff no longer shows `{entry['line'].strip()}`")
                    counts["survived"] += 1
                    survivors.append((name, diff))
                    continue
                counts["equivalent"] += 1
                equivalent_rows.append(f"- `{name}`: `{entry['line'].strip()}`  \n  {entry['reason']}")
            elif status == "survived":
                counts["survived"] += 1
                survivors.append((name, mutant_diff(args.workdir, name)))
            else:
                counts[status] += 1
        total = sum(counts.values())
        non_equivalent = total - counts["equivalent"] - counts["not run"] - counts["no tests"]
        score = counts["killed"] / non_equivalent if non_equivalent else 1.0
        lines.append(
            f"| {source} | {total} | {counts['killed']} | {counts['timeout']} | {counts['survived']} | "
            f"{counts['equivalent']} | {counts['not run'] + counts['no tests']} | {score:.1%} |"
        )
        totals.update(counts)
    total = sum(totals.values())
    non_equivalent = total - totals["equivalent"] - totals["not run"] - totals["no tests"]
    score = totals["killed"] / non_equivalent if non_equivalent else 1.0
    lines.append(
        f"| **all** | {total} | {totals['killed']} | {totals['timeout']} | {totals['survived']} | "
        f"{totals['equivalent']} | {totals['not run'] + totals['no tests']} | **{score:.1%}** |"
    )
    for name in reason_by_name:
        if not any(name in statuses for statuses in results.values()) and any(
            name.startswith(Path(f).with_suffix("").as_posix().replace("/", ".")) for f in results
        ):
            stale.append(f"- `{name}`: no such mutant any more")
    scope = tomllib.loads((args.repo / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
    missing = [f for f in scope if f not in results]
    if missing:
        lines += [
            "",
            f"Not run in this report (in scope, `mutation/run.sh {' '.join(missing)}`): {', '.join(missing)}.",
        ]
    lines += ["", f"## Equivalent mutants ({len(equivalent_rows)})", "", *(equivalent_rows or ["none"])]
    lines += ["", f"## Surviving mutants ({len(survivors)})", ""]
    for name, diff in survivors:
        lines += [f"- `{name}`", "", "```diff", diff, "```", ""]
    if not survivors:
        lines.append("none")
    if stale:
        lines += ["", "## Stale equivalent entries (review them)", "", *stale]
    out = args.repo / "mutation" / "REPORT.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[9 : 11 + len(results) + 1]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
