"""Time one training step of manualgrad against eager autograd, torch.compile and numpy.

Edit the settings below, or override them on the command line, e.g.
    python benchmarks/bench_step.py --sizes 1 4096 --no-compile
The benchmark itself is manualgrad/bench.py (also run by `python -m manualgrad bench`).
"""

import sys

from manualgrad.bench import main

# -----------------------------------------------------------------------------
sizes = [1, 32, 256, 4096, 65536]  # batch sizes N
hidden = 500  # H; D = C = 2
device = "all"  # cpu, cuda or all (available)
repeats = 5  # interleaved rounds: every path once per round
min_run_time = 0.2  # seconds of timing per path, size and round
compile = True  # also time the autograd twin under torch.compile
plot = True  # write bench_step.png too (needs matplotlib)
out = None  # folder for bench_step.json and bench_step.png; None: print only, write no files
# -----------------------------------------------------------------------------

argv = ["--hidden", str(hidden), "--device", device] + ([] if plot else ["--no-plot"])
argv += [] if out is None else ["--out", out]
if "--quick" not in sys.argv:  # --quick: its own sizes and timing, a few seconds
    argv += ["--sizes", *map(str, sizes), "--repeats", str(repeats), "--min-run-time", str(min_run_time)]
    argv += [] if compile else ["--no-compile"]
sys.exit(main(argv + sys.argv[1:]))
