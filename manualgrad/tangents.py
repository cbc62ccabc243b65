"""Forward-mode formulas: the tangent form of eq. (1)-(5), for the Functions' ``jvp``.

Letters and equation numbers as in ``kernels.py`` and ``docs/derivation.md``. A tangent is None for
an input without one; each formula adds the terms of the tangents that are given.
"""

from __future__ import annotations

from torch import Tensor


def add_tangents(*terms: Tensor | None) -> Tensor | None:
    """The sum of the tangents given (None for an input without one); None if there are none."""
    present = [t for t in terms if t is not None]
    if not present:
        return None
    total = present[0]
    for term in present[1:]:
        total = total + term
    return total


def logits_tangent(x, W1, W2, a1, tx, tW1, tb1, tW2, tb2) -> Tensor | None:
    tz1 = add_tangents(  # (N, H)  tangent of eq. (1)
        None if tx is None else tx @ W1,
        None if tW1 is None else x @ tW1,
        tb1,
    )
    ta1 = None if tz1 is None else tz1 * (1 - a1 * a1)  # (N, H)  tangent of eq. (2), cf. eq. (11)
    tz2 = add_tangents(  # (N, C), or (C,) when only b2 has a tangent  tangent of eq. (3)
        None if ta1 is None else ta1 @ W2,
        None if tW2 is None else a1 @ tW2,
        tb2,
    )
    return None if tz2 is None else tz2.expand(a1.shape[0], W2.shape[1])  # (N, C)


def softmax_jvp(tz2: Tensor, y_hat: Tensor) -> Tensor:
    return y_hat * (tz2 - (tz2 * y_hat).sum(1, keepdim=True))  # (N, C)  eq. (6), forward form
