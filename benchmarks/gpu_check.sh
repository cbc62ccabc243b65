#!/usr/bin/env bash
# gpu_check.sh: run manualgrad's CUDA checks and the CUDA benchmark on a GPU machine, in < 10 minutes.
#
# How to run (from the repository root, on a machine with Python and a CUDA build of torch):
#     bash benchmarks/gpu_check.sh [RESULTS_DIR]
# RESULTS_DIR defaults to $OUT when set, else ./gpu_check_results. Every step writes its output
# there (NN-step.log, plus bench_step.json / bench_step.png of the benchmark) and summary.txt
# says, per step, ok / FAILED (exit code) / TIMEOUT / skipped (why). No network is needed:
# manualgrad is installed with `pip install -e . --no-deps` (or, if that fails, used through
# PYTHONPATH); a missing optional tool (pytest, matplotlib) skips its step instead of failing.
# Settings: PYTHON (default python3), and per-step timeouts in seconds below.
# Exit code: 0 when no step failed, 1 otherwise (skipped steps do not count).
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="${1:-${OUT:-$ROOT/gpu_check_results}}"
PYTHON="${PYTHON:-python3}"
INSTALL_TIMEOUT=60  # worst case, all steps together: 60 + 60 + 200 + 100 + 180 s = 10 minutes
TESTS_TIMEOUT=200
VERIFY_TIMEOUT=100
BENCH_TIMEOUT=180

mkdir -p "$RESULTS"
SUMMARY="$RESULTS/summary.txt"
: >"$SUMMARY"
failures=0
step_number=0

note() { echo "$*" | tee -a "$SUMMARY"; }

# run_step NAME TIMEOUT COMMAND...: run with a timeout, log to RESULTS, record the outcome.
run_step() {
    local name="$1" limit="$2"
    shift 2
    step_number=$((step_number + 1))
    local log
    log="$RESULTS/$(printf '%02d' "$step_number")-$name.log"
    local start=$SECONDS
    (cd "$ROOT" && timeout --kill-after=10 "$limit" "$@") >"$log" 2>&1
    local code=$?
    local took=$((SECONDS - start))
    if [ "$code" -eq 0 ]; then
        note "$name: ok (${took}s)"
    elif [ "$code" -eq 124 ] || [ "$code" -eq 137 ]; then
        note "$name: TIMEOUT after ${limit}s (log: $log)"
        failures=$((failures + 1))
    else
        note "$name: FAILED, exit code $code (${took}s; log: $log)"
        failures=$((failures + 1))
    fi
}

skip() { note "$1: skipped ($2)"; }

has_module() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }

note "manualgrad gpu_check: $(date -u '+%Y-%m-%d %H:%M UTC'), results in $RESULTS"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    note "python: not found (set PYTHON=...)"
    exit 1
fi
run_step environment 60 "$PYTHON" -c "
import platform, torch
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda)
print('cuda available:', torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    print('device', i, torch.cuda.get_device_name(i))
"
cat "$RESULTS/01-environment.log" >>"$SUMMARY"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    note "CUDA is not available to torch here: the CUDA steps are skipped"
    cuda=no
else
    cuda=yes
fi

# Install without the network (only where there is a GPU to check); fall back to the source tree on the path.
if [ "$cuda" = no ]; then
    skip install "no CUDA, nothing to check"
elif "$PYTHON" -m pip --version >/dev/null 2>&1; then
    run_step install "$INSTALL_TIMEOUT" "$PYTHON" -m pip install --no-deps --no-build-isolation -e .
else
    skip install "pip is missing; using PYTHONPATH"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [ "$cuda" = no ]; then
    skip cuda-tests "no CUDA"
    skip verify-cuda "no CUDA"
    skip bench-cuda "no CUDA"
else
    if has_module pytest; then
        # the device-parametrized tests (ids contain "cuda"), and the ones named for CUDA
        run_step cuda-tests "$TESTS_TIMEOUT" "$PYTHON" -m pytest -q -x -p no:cacheprovider -k cuda tests
    else
        skip cuda-tests "pytest is not installed"
    fi
    run_step verify-cuda "$VERIFY_TIMEOUT" "$PYTHON" -m manualgrad verify --device cuda
    bench_args=(--device cuda --sizes 1 32 256 4096 65536 --repeats 3 --min-run-time 0.1 --no-compile --out "$RESULTS")
    has_module matplotlib || bench_args+=(--no-plot)
    run_step bench-cuda "$BENCH_TIMEOUT" "$PYTHON" -m manualgrad bench "${bench_args[@]}"
fi

note "done: $failures step(s) failed"
[ "$failures" -eq 0 ]
