# ruff: noqa: E501  (whole error messages are compared, one per line)
"""validation.py: each check raises the documented type with its exact message, and lets valid input through.

The messages are part of the contract (the argument named, the offending shape, dtype, device or
value, and how to fix it), so they are compared whole, not with a loose ``match``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from manualgrad import functional, validation

D, H, C = 2, 4, 3


def params(dtype=torch.float64):
    return [
        torch.zeros(D, H, dtype=dtype),
        torch.zeros(H, dtype=dtype),
        torch.zeros(H, C, dtype=dtype),
        torch.zeros(C, dtype=dtype),
    ]


def test_require_tensor_messages():
    t = torch.zeros(2)
    assert validation.require_tensor("x", t) is t
    with pytest.raises(TypeError) as info:
        validation.require_tensor("x", np.zeros(2))
    assert (
        str(info.value)
        == "x must be a torch.Tensor, got ndarray; convert it with torch.from_numpy(x) (and .to(dtype, device) as needed)"
    )
    with pytest.raises(TypeError) as info:
        validation.require_tensor("W1", [1.0])
    assert (
        str(info.value)
        == "W1 must be a torch.Tensor, got list; convert it with torch.as_tensor(W1, dtype=..., device=...)"
    )


@pytest.mark.parametrize("which", ["in_features", "hidden_features", "out_features"])
def test_check_sizes_messages(which):
    sizes = {"in_features": 2, "hidden_features": 3, "out_features": 4}
    validation.check_sizes(*sizes.values())
    validation.check_sizes(1, 1, 1)
    for bad, kind, message in [
        (True, TypeError, f"{which} must be an int, got bool (True); pass a Python int, e.g. int({which})"),
        (2.0, TypeError, f"{which} must be an int, got float (2.0); pass a Python int, e.g. int({which})"),
        (0, ValueError, f"{which} must be positive, got 0"),
        (-3, ValueError, f"{which} must be positive, got -3"),
    ]:
        with pytest.raises(kind) as info:
            validation.check_sizes(*{**sizes, which: bad}.values())
        assert str(info.value) == message


def test_check_parameters_accepts_valid_and_names_each_fault():
    W1, b1, W2, b2 = params()
    validation.check_parameters(W1, b1, W2, b2)
    cases = [
        (
            (W1.long(), b1, W2, b2),
            TypeError,
            "W1 must be a floating-point tensor, got dtype torch.int64; convert it with W1.to(torch.float32) or another floating dtype",
        ),
        (
            (W1, b1, W2, b2.long()),
            TypeError,
            "b2 must be a floating-point tensor, got dtype torch.int64; convert it with b2.to(torch.float32) or another floating dtype",
        ),
        (
            (W1, b1, "W2", b2),
            TypeError,
            "W2 must be a torch.Tensor, got str; convert it with torch.as_tensor(W2, dtype=..., device=...)",
        ),
        ((W1.reshape(-1), b1, W2, b2), ValueError, "W1 must have shape (D, H), got (8,)"),
        ((W1[None], b1, W2, b2), ValueError, "W1 must have shape (D, H), got (1, 2, 4)"),
        ((W1, b1, W2.reshape(-1), b2), ValueError, "W2 must have shape (4, C) to follow W1 (2, 4), got (12,)"),
        ((W1, b1, W2[None], b2), ValueError, "W2 must have shape (4, C) to follow W1 (2, 4), got (1, 4, 3)"),
        ((W1, b1, W2[:3], b2), ValueError, "W2 must have shape (4, C) to follow W1 (2, 4), got (3, 3)"),
        ((W1, b1, W2[:, 0], b2), ValueError, "W2 must have shape (4, C) to follow W1 (2, 4), got (4,)"),
        ((W1, b1, W2[..., None], b2), ValueError, "W2 must have shape (4, C) to follow W1 (2, 4), got (4, 3, 1)"),
        ((W1, b1[:3], W2, b2), ValueError, "b1 must have shape (4,), got (3,)"),
        ((W1, b1[None], W2, b2), ValueError, "b1 must have shape (4,), got (1, 4)"),
        ((W1, b1, W2, b2[:2]), ValueError, "b2 must have shape (3,), got (2,)"),
        (
            (W1, b1.float(), W2, b2),
            TypeError,
            "b1 has dtype torch.float32 but W1 has dtype torch.float64; all parameters must share one dtype",
        ),
        (
            (W1, b1, W2, b2.float()),
            TypeError,
            "b2 has dtype torch.float32 but W1 has dtype torch.float64; all parameters must share one dtype",
        ),
        (
            (W1, b1, W2.to("meta"), b2),
            RuntimeError,
            "Expected all tensors to be on the same device, but found at least two devices: W2 is on meta and W1 is on cpu",
        ),
    ]
    for args, kind, message in cases:
        with pytest.raises(kind) as info:
            validation.check_parameters(*args)
        assert str(info.value) == message


def test_check_input_accepts_valid_and_names_each_fault():
    W1 = params()[0]
    for x in (
        torch.zeros(5, D, dtype=torch.float64),
        torch.zeros(D, dtype=torch.float64),
        torch.zeros(0, D, dtype=torch.float64),
    ):
        assert validation.check_input(x, W1, autocast=False) is x
    x32 = torch.zeros(5, D)
    assert validation.check_input(x32, W1, autocast=True) is x32
    cases = [
        (
            np.zeros((5, D)),
            TypeError,
            "x must be a torch.Tensor, got ndarray; convert it with torch.from_numpy(x) (and .to(dtype, device) as needed)",
        ),
        (
            torch.zeros(5, D, dtype=torch.long),
            TypeError,
            "x must be a floating-point tensor, got dtype torch.int64; convert it with x.to(torch.float32) or another floating dtype",
        ),
        (
            torch.zeros(1, 5, D, dtype=torch.float64),
            ValueError,
            "x must have shape (N, 2) or (2,), got (1, 5, 2) (rank 3)",
        ),
        (torch.zeros((), dtype=torch.float64), ValueError, "x must have shape (N, 2) or (2,), got () (rank 0)"),
        (
            torch.zeros(5, 3, dtype=torch.float64),
            ValueError,
            "x must have shape (N, 2) or (2,) to match W1 (2, 4), got (5, 3)",
        ),
        (
            torch.zeros(3, dtype=torch.float64),
            ValueError,
            "x must have shape (N, 2) or (2,) to match W1 (2, 4), got (3,)",
        ),
        (
            torch.zeros(5, D, dtype=torch.float64, device="meta"),
            RuntimeError,
            "Expected all tensors to be on the same device, but found at least two devices: x is on meta and W1 is on cpu",
        ),
        (
            x32,
            TypeError,
            "x has dtype torch.float32 but the parameters have dtype torch.float64; convert x with x.to(torch.float64) or the module with .to(torch.float32)",
        ),
    ]
    for x, kind, message in cases:
        with pytest.raises(kind) as info:
            validation.check_input(x, W1, autocast=False)
        assert str(info.value) == message


def test_check_reduction_messages():
    for r in ("mean", "sum", "none"):
        assert validation.check_reduction(r) == r
    with pytest.raises(TypeError) as info:
        validation.check_reduction(None)
    assert str(info.value) == "reduction must be a str, one of ('mean', 'sum', 'none'), got NoneType (None)"
    with pytest.raises(TypeError) as info:
        validation.check_reduction(1)
    assert str(info.value) == "reduction must be a str, one of ('mean', 'sum', 'none'), got int (1)"
    with pytest.raises(ValueError) as info:
        validation.check_reduction("avg")
    assert str(info.value) == "reduction must be one of ('mean', 'sum', 'none'), got 'avg'"


def _check_target(target, x, *, autocast=False, check_values=True, dtype=torch.float64):
    W1, _, W2, _ = params(dtype)
    return validation.check_target(target, x, W1, W2, autocast=autocast, check_values=check_values)


def test_check_target_accepts_valid_targets():
    x, x1 = torch.zeros(5, D, dtype=torch.float64), torch.zeros(D, dtype=torch.float64)
    valid = [
        (torch.tensor([0, 1, 2, 0, 2]), x),
        (torch.zeros(5, C, dtype=torch.float64), x),
        (torch.tensor(2), x1),
        (torch.zeros(C, dtype=torch.float64), x1),
        (torch.zeros(0, dtype=torch.long), torch.zeros(0, D, dtype=torch.float64)),
        (torch.tensor([0, 1, 2, 0, 2], dtype=torch.uint8), x),
        (torch.arange(100) % C, torch.zeros(100, D, dtype=torch.float64)),
    ]
    for target, inputs in valid:
        assert _check_target(target, inputs) is target
    soft32 = torch.zeros(5, C)
    assert _check_target(soft32, x, autocast=True) is soft32
    out_of_range = torch.tensor([0, 1, 7, 0, 2])
    assert _check_target(out_of_range, x, check_values=False) is out_of_range


def test_check_target_messages():
    x, x1 = torch.zeros(5, D, dtype=torch.float64), torch.zeros(D, dtype=torch.float64)
    cases = [
        (
            [0, 1],
            x,
            TypeError,
            "target must be a torch.Tensor, got list; convert it with torch.as_tensor(target, dtype=..., device=...)",
        ),
        (
            torch.zeros(5, dtype=torch.bool),
            x,
            TypeError,
            "target must hold integer (int64) class indices or floating probabilities, got dtype torch.bool",
        ),
        (
            torch.zeros(5, dtype=torch.complex64),
            x,
            TypeError,
            "target must hold integer (int64) class indices or floating probabilities, got dtype torch.complex64",
        ),
        (
            torch.zeros(5, dtype=torch.float64),
            x,
            TypeError,
            "target of shape (5,) holds class indices and must be an integer (int64) tensor, got dtype torch.float64; use target.long()",
        ),
        (
            torch.zeros((), dtype=torch.float64),
            x1,
            TypeError,
            "target of shape () holds class indices and must be an integer (int64) tensor, got dtype torch.float64; use target.long()",
        ),
        (
            torch.zeros(5, 4, dtype=torch.float64),
            x,
            ValueError,
            "probability target must have shape (5, 3) (rows of x, classes), got (5, 4)",
        ),
        (
            torch.zeros(4, dtype=torch.float64),
            x1,
            ValueError,
            "probability target must have shape (3,) (classes,) for an unbatched x, got (4,)",
        ),
        (
            torch.zeros(5, C),
            x,
            TypeError,
            "probability target has dtype torch.float32 but the parameters have dtype torch.float64; convert it with target.to(torch.float64)",
        ),
        (
            torch.zeros(4, dtype=torch.long),
            x,
            ValueError,
            "target of class indices must have shape (5,), one per row of x, got shape (4,)",
        ),
        (
            torch.zeros(5, C, dtype=torch.long),
            x,
            ValueError,
            "target of class indices must have shape (5,), one per row of x, got shape (5, 3); for probabilities (soft or one-hot labels) use a floating tensor, target.to(torch.float64)",
        ),
        (
            torch.zeros(1, dtype=torch.long),
            x1,
            ValueError,
            "target of class indices must have shape (), one class index for an unbatched x, got shape (1,)",
        ),
        (
            torch.zeros(5, dtype=torch.long, device="meta"),
            x,
            RuntimeError,
            "Expected all tensors to be on the same device, but found at least two devices: target is on meta and W1 is on cpu",
        ),
        (
            torch.tensor([0, 1, 3, 0, 2]),
            x,
            ValueError,
            "target holds class index 3 at position 2; class indices must lie in [0, 3) or equal ignore_index (-100)",
        ),
        (
            torch.tensor([0, -1, 2, 0, 2]),
            x,
            ValueError,
            "target holds class index -1 at position 1; class indices must lie in [0, 3) or equal ignore_index (-100)",
        ),
        (
            torch.tensor(3),
            x1,
            ValueError,
            "target holds class index 3 at position 0; class indices must lie in [0, 3) or equal ignore_index (-100)",
        ),
    ]
    for target, inputs, kind, message in cases:
        with pytest.raises(kind) as info:
            _check_target(target, inputs)
        assert str(info.value) == message


@pytest.mark.parametrize("rows", [64, 65, 200])
@pytest.mark.parametrize("position", [0, "middle", -1])
@pytest.mark.parametrize("value", [-1, C])
def test_class_range_is_checked_at_every_position_and_size(rows, position, value):
    """Both the list path (<= 64 labels) and the aminmax path, each bound, first and last rows."""
    target = torch.arange(rows) % C
    where = rows // 2 if position == "middle" else position % rows
    target[where] = value
    x = torch.zeros(rows, D, dtype=torch.float64)
    with pytest.raises(ValueError) as info:
        _check_target(target, x)
    assert (
        str(info.value)
        == f"target holds class index {value} at position {where}; class indices must lie in [0, 3) or equal ignore_index (-100)"
    )
    target[where] = C - 1
    assert _check_target(target, x) is target
    target[where] = 0
    assert _check_target(target, x) is target


def test_functional_refuses_out_of_range_labels_before_any_kernel():
    x = torch.zeros(4, D, dtype=torch.float64, requires_grad=True)
    with pytest.raises(
        ValueError, match=r"target holds class index 3 at position 3; class indices must lie in \[0, 3\)"
    ):
        functional.two_layer_net_loss(x, torch.tensor([0, 1, 2, 3]), *params())
    assert x.grad is None
