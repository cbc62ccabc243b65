#!/usr/bin/env bash
# Regenerate the README's images in docs/img/ (needs matplotlib: pip install -e ".[examples]").
#
#   docs/make_images.sh          # both: the two-moons plots (about 10 s) and the benchmark plot (minutes)
#   docs/make_images.sh train    # moons_decision_boundary.png, moons_loss.png
#   docs/make_images.sh bench    # bench_step.png (and bench_step.json, its numbers, not committed)
#   docs/make_images.sh bench --repeats 1 --min-run-time 0.05   # options after the first go to bench
#
# Run it on a quiet machine: the benchmark's plot shows wall-clock times.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
shift || true
case "$what" in
  train | bench | all) ;;
  *) echo "usage: docs/make_images.sh [train|bench|all]" >&2; exit 2 ;;
esac
python="${PYTHON:-python}"
if [[ "$what" != bench ]]; then
  "$python" -m manualgrad train --quiet --out docs/img
fi
if [[ "$what" != train ]]; then
  "$python" -m manualgrad bench --out docs/img "$@"
fi
