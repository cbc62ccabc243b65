#!/usr/bin/env bash
# Mutation testing of manualgrad's mathematical core and boundary checks with mutmut 3.
#
#   mutation/run.sh                       # every file of [tool.mutmut] only_mutate (pyproject.toml)
#   mutation/run.sh manualgrad/textbook.py manualgrad/validation.py   # only these files
#
# Runs in a copy of the working tree ($MUTATION_WORKDIR, default /tmp/manualgrad-mutation; kept
# between runs so that mutmut's cache of results is reused), never in the repository itself, then
# writes mutation/REPORT.md from the results and mutation/equivalent.toml. Environment:
#   PY                 python with torch, pytest, hypothesis and mutmut (default /work/main/.venv/bin/python)
#   MUTATION_JOBS      parallel mutmut workers (default 2)
#   MUTATION_WORKDIR   the copy to work in
#   MUTATION_REPORT_ONLY=1   only rewrite REPORT.md from the last run's results
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-/work/main/.venv/bin/python}"
WORK="${MUTATION_WORKDIR:-/tmp/manualgrad-mutation}"
JOBS="${MUTATION_JOBS:-2}"
mkdir -p "$WORK"
# tar keeps modification times, so mutmut regenerates the mutants of changed files only.
tar -C "$REPO" --exclude=./.git --exclude=./mutants --exclude=./.venv --exclude=__pycache__ \
    --exclude=./.hypothesis --exclude=./.pytest_cache -cf - . | tar -C "$WORK" -xpf -
FILES=("$@")
if [ ${#FILES[@]} -gt 0 ]; then
    "$PY" "$REPO/mutation/select_files.py" "$WORK/pyproject.toml" "${FILES[@]}"
fi
cd "$WORK"
# mutmut puts $WORK/mutants first on sys.path and removes $WORK: the tests import the mutated copy.
unset PYTHONPATH
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# A file copied unmutated by an earlier run (outside that run's only_mutate) has the source's
# modification time, which mutmut takes for "already mutated": remove such copies.
# A file mutated for the first time needs the stats (which test reaches which function) collected
# again: mutmut's cached stats know no functions of a file that was not mutated when they were taken,
# and would mark all its mutants "no tests". MUTATION_FRESH_STATS=1 forces that too.
fresh_stats="${MUTATION_FRESH_STATS:-0}"
for copy in mutants/manualgrad/*.py; do
    if [ -e "$copy" ] && [ ! -e "$copy.meta" ]; then rm -f "$copy"; fi
done
for meta in mutants/manualgrad/*.py.meta; do  # every result "no tests": a run without stats for it, redo
    if [ -e "$meta" ] && "$PY" -c 'import json, sys; codes = set(json.load(open(sys.argv[1]))["exit_code_by_key"].values()); sys.exit(0 if codes <= {33, 5} else 1)' "$meta"; then
        rm -f "$meta" "${meta%.meta}"
        fresh_stats=1
    fi
done
for f in "${FILES[@]}"; do
    if [ ! -e "mutants/$f.meta" ]; then fresh_stats=1; fi
done
if [ "$fresh_stats" = 1 ]; then rm -f mutants/mutmut-stats.json; fi
if [ "${MUTATION_REPORT_ONLY:-0}" != 1 ]; then
    start=$(date +%s)
    "$PY" -m mutmut run --max-children "$JOBS" || true
    echo "mutmut run: $(( $(date +%s) - start )) s"
fi
"$PY" "$REPO/mutation/report.py" --workdir "$WORK" --repo "$REPO" "${FILES[@]}"
