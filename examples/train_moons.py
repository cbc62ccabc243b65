"""Train the article's network on two moons, hand-derived gradients and autograd in lockstep.

What it shows: TwoLayerNet (2 -> 500 tanh -> 2 softmax), trained with full-batch SGD on 200
points of two moons with noise 0.20, reaches >= 97% training accuracy; an identical twin that
starts from the same weights but gets its gradients from PyTorch's autograd follows the same
loss curve to floating-point rounding. With --out DIR, writes the decision boundary and both loss curves as
PNGs (needs matplotlib: ``pip install manualgrad[examples]``).

This is a thin wrapper over :func:`manualgrad.train.main`, the same as
``python -m manualgrad train``. Run::

    python examples/train_moons.py                    # the classic setting, a few seconds
    python examples/train_moons.py --out plots        # PNGs into ./plots
    python examples/train_moons.py --epochs 50 --hidden 32 --no-plot   # a smoke test
    python examples/train_moons.py --help
"""

import sys

from manualgrad.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
