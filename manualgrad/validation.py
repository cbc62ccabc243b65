"""Checks at the public boundary: every bad input is refused here, before any computation.

Exception types follow PyTorch users' expectations:

* ``TypeError`` for the wrong kind of object or the wrong dtype,
* ``ValueError`` for the wrong shape, size, or value,
* ``RuntimeError`` for tensors on different devices, and for a class weight that requires
  grad with class-index targets (the types PyTorch itself raises).

Tensors must be dense (``torch.strided``): sparse and other layouts are refused with a
``TypeError`` naming the layout.

Each message names the argument and the offending shape, dtype, device or value. The
checks read only metadata (type, dtype, shape, device), so they run no kernel, with one
exception: the class-index range.

Class-index range checks (``0 <= target < C``, or ``target == ignore_index``) need the values, so they are done
explicitly only where reading the values is cheap and allowed: eager mode on the CPU, on
a plain ``torch.Tensor`` (not a fake or other subclass tensor). On CUDA (where a check
would synchronise the stream), under ``torch.compile``, ``torch.export``, ``make_fx`` and
``torch.func`` transforms (``modes.tracing``: reading values there would guard on them or fail),
the range is checked by PyTorch's own ``scatter`` and ``gather``
kernels that build the effective target (``kernels.effective_target``: a device-side
assertion on CUDA, an ``index ... out of bounds`` error on CPU, an ``index out of bounds``
check in Inductor's generated code), so an out-of-range label still raises instead of
giving a silently wrong loss.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


def require_tensor(name: str, value: object) -> Tensor:
    """Return ``value`` if it is a dense (strided) tensor, else raise a TypeError that says how to convert it."""
    if isinstance(value, Tensor):
        if value.layout != torch.strided:  # sparse, mkldnn...: our kernels use strided views and out=
            raise TypeError(
                f"{name} must be a dense (torch.strided) tensor, got layout {value.layout}; "
                f"convert it with {name}.to_dense()"
            )
        return value
    kind = type(value).__name__
    if type(value).__module__ == "numpy":
        hint = f"convert it with torch.from_numpy({name}) (and .to(dtype, device) as needed)"
    else:
        hint = f"convert it with torch.as_tensor({name}, dtype=..., device=...)"
    raise TypeError(f"{name} must be a torch.Tensor, got {kind}; {hint}")


def _require_floating(name: str, tensor: Tensor) -> None:
    if not tensor.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {tensor.dtype}; "
            f"convert it with {name}.to(torch.float32) or another floating dtype"
        )


def _require_same_device(name: str, tensor: Tensor, ref_name: str, ref: Tensor) -> None:
    if tensor.device != ref.device:
        raise RuntimeError(
            "Expected all tensors to be on the same device, but found at least two devices: "
            f"{name} is on {tensor.device} and {ref_name} is on {ref.device}"
        )


def check_sizes(in_features: object, hidden_features: object, out_features: object) -> None:
    """Refuse non-integer or non-positive layer sizes."""
    for name, size in (
        ("in_features", in_features),
        ("hidden_features", hidden_features),
        ("out_features", out_features),
    ):
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(
                f"{name} must be an int, got {type(size).__name__} ({size!r}); pass a Python int, e.g. int({name})"
            )
        if size <= 0:
            raise ValueError(f"{name} must be positive, got {size}")


def check_parameters(W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> None:
    """Check kinds, dtypes, devices and the shapes W1 (D, H), b1 (H,), W2 (H, C), b2 (C,)."""
    params = {"W1": W1, "b1": b1, "W2": W2, "b2": b2}
    for name, value in params.items():
        require_tensor(name, value)
        _require_floating(name, value)
    if W1.dim() != 2:
        raise ValueError(f"W1 must have shape (D, H), got {tuple(W1.shape)}")
    D, H = W1.shape
    if W2.dim() != 2 or W2.shape[0] != H:
        raise ValueError(f"W2 must have shape ({H}, C) to follow W1 {tuple(W1.shape)}, got {tuple(W2.shape)}")
    C = W2.shape[1]
    expected = {"b1": (H,), "b2": (C,)}
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(params[name].shape)}")
    for name, value in params.items():
        _require_same_device(name, value, "W1", W1)
        if value.dtype != W1.dtype:
            raise TypeError(
                f"{name} has dtype {value.dtype} but W1 has dtype {W1.dtype}; all parameters must share one dtype"
            )


def check_input(x: object, W1: Tensor, *, autocast: bool) -> Tensor:
    """Check x: a floating tensor of shape (N, D) or (D,) on W1's device, in W1's dtype.

    Under autocast any floating dtype is accepted (it is cast to the parameters' dtype).
    """
    x = require_tensor("x", x)
    _require_floating("x", x)
    D = W1.shape[0]
    if x.dim() not in (1, 2):
        raise ValueError(f"x must have shape (N, {D}) or ({D},), got {tuple(x.shape)} (rank {x.dim()})")
    if x.shape[-1] != D:
        raise ValueError(f"x must have shape (N, {D}) or ({D},) to match W1 {tuple(W1.shape)}, got {tuple(x.shape)}")
    _require_same_device("x", x, "W1", W1)
    if x.dtype != W1.dtype and not autocast:
        raise TypeError(
            f"x has dtype {x.dtype} but the parameters have dtype {W1.dtype}; "
            f"convert x with x.to({W1.dtype}) or the module with .to({x.dtype})"
        )
    return x


def check_reduction(reduction: object) -> str:
    """Return ``reduction`` if it is one of "mean", "sum", "none"."""
    if not isinstance(reduction, str):
        raise TypeError(f"reduction must be a str, one of {REDUCTIONS}, got {type(reduction).__name__} ({reduction!r})")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_target(
    target: object, x: Tensor, W1: Tensor, W2: Tensor, *, autocast: bool, check_values: bool, ignore_index: int = -100
) -> Tensor:
    """Check a target: class indices (N,) of an integer dtype, or probabilities (N, C).

    ``x`` is the input as given (rank 1 for one unbatched sample); the target then has
    rank 0 (an index) or rank 1 (C probabilities), as with ``F.cross_entropy``. With
    ``check_values``, class indices must lie in [0, C) or equal ``ignore_index``.
    """
    target = require_tensor("target", target)
    C = W2.shape[1]
    unbatched = x.dim() == 1
    N = None if unbatched else x.shape[0]
    index_shape = () if unbatched else (N,)
    prob_shape = (C,) if unbatched else (N, C)
    _require_same_device("target", target, "W1", W1)
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(
            f"target must hold integer (int64) class indices or floating probabilities, got dtype {target.dtype}"
        )
    if target.is_floating_point():
        if tuple(target.shape) == index_shape and index_shape != prob_shape:
            raise TypeError(
                f"target of shape {tuple(target.shape)} holds class indices and must be an integer "
                f"(int64) tensor, got dtype {target.dtype}; use target.long()"
            )
        if tuple(target.shape) != prob_shape:
            meaning = "(classes,) for an unbatched x" if unbatched else "(rows of x, classes)"
            raise ValueError(f"probability target must have shape {prob_shape} {meaning}, got {tuple(target.shape)}")
        if target.dtype != W1.dtype and not autocast:
            raise TypeError(
                f"probability target has dtype {target.dtype} but the parameters have dtype {W1.dtype}; "
                f"convert it with target.to({W1.dtype})"
            )
        return target
    if tuple(target.shape) != index_shape:
        what = "shape (), one class index for an unbatched x" if unbatched else f"shape ({N},), one per row of x"
        hint = ""
        if tuple(target.shape) == prob_shape:
            hint = f"; for probabilities (soft or one-hot labels) use a floating tensor, target.to({W1.dtype})"
        raise ValueError(f"target of class indices must have {what}, got shape {tuple(target.shape)}{hint}")
    if check_values:
        check_class_indices(target, C, ignore_index)
    return target


def check_class_indices(target: Tensor, C: int, ignore_index: int) -> bool:
    """Refuse class indices outside [0, C) other than ``ignore_index``; True if every row counts.

    Reads the labels' values: call it only in eager mode on the CPU. Returns True when no label
    equals ``ignore_index`` (the loss may then use the labels as they are), False when some do
    or when the values cannot be read (fake and other subclass tensors: gather checks later).
    """
    if target.numel() == 0:
        return True
    if type(target) is not Tensor:
        return False
    # comparisons and aminmax are not implemented for uint16-uint64; int64 rows need no copy
    flat = target if target.dtype == torch.int64 and target.dim() == 1 else target.reshape(-1).long()
    ignore_in_range = 0 <= ignore_index < C
    if flat.numel() <= 64:  # a few labels: reading them as a list is cheaper than any kernel
        labels = flat.tolist()
        lowest, highest = min(labels), max(labels)
        if lowest >= 0 and highest < C:
            return not (ignore_in_range and ignore_index in labels)
    else:
        lowest, highest = (int(bound) for bound in torch.aminmax(flat))
        if lowest >= 0 and highest < C:
            return not (ignore_in_range and bool((flat == ignore_index).any()))
    counts = flat != ignore_index
    if target.dtype == torch.uint64:  # .long() wrapped labels from 2**63 to negative values: never ignore_index
        counts |= flat < 0
    outside = ((flat < 0) | (flat >= C)) & counts
    if not bool(outside.any()):
        return False  # every label outside [0, C) is ignore_index
    position = int(outside.nonzero()[0, 0])
    value = int(flat[position])
    if target.dtype == torch.uint64 and value < 0:  # .long() wrapped it: report the label as given
        value += 1 << 64
    raise ValueError(
        f"target holds class index {value} at position {position}; class indices must lie in [0, {C}) "
        f"or equal ignore_index ({ignore_index})"
    )


def default_loss_options(weight: object, ignore_index: object, label_smoothing: object) -> bool:
    """Whether these are F.cross_entropy's defaults exactly (look-alikes such as -100.0 or a tensor 0 are not)."""
    defaults = type(ignore_index) is int and ignore_index == -100 and type(label_smoothing) in (int, float)
    return defaults and weight is None and label_smoothing == 0


def check_loss_options(
    weight: object,
    ignore_index: object,
    label_smoothing: object,
    target: Tensor,
    W1: Tensor,
    W2: Tensor,
    *,
    autocast: bool,
) -> tuple[Tensor | None, float]:
    """Check F.cross_entropy's ``weight``, ``ignore_index`` and ``label_smoothing``; return weight.

    ``target`` has passed :func:`check_target`. Reads metadata only. Returns the weight (under
    autocast, a weight of any floating dtype, in the parameters' dtype) and label_smoothing as
    a float.
    """
    if default_loss_options(weight, ignore_index, label_smoothing):
        return None, 0.0  # the defaults (-100 is a valid ignore_index for either kind of target)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__} ({ignore_index!r})")
    if not -(2**63) <= ignore_index < 2**63:
        raise ValueError(f"ignore_index must fit in int64, got {ignore_index}")
    if target.is_floating_point() and ignore_index != -100:
        raise ValueError(
            f"ignore_index ({ignore_index}) applies to class-index targets only, not to probabilities "
            "(F.cross_entropy refuses it too); to drop rows, give them zero probabilities or leave them out"
        )
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(
            f"label_smoothing must be a float in [0, 1], got {type(label_smoothing).__name__} ({label_smoothing!r})"
        )
    label_smoothing = float(label_smoothing)
    if not 0.0 <= label_smoothing <= 1.0:  # NaN fails too
        raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing}")
    if weight is None:
        return None, label_smoothing
    weight = require_tensor("weight", weight)
    _require_floating("weight", weight)
    C = W2.shape[1]
    if tuple(weight.shape) != (C,):
        raise ValueError(f"weight must have shape ({C},), one per class, got {tuple(weight.shape)}")
    _require_same_device("weight", weight, "W1", W1)
    if weight.dtype != W1.dtype:
        if not autocast:
            raise TypeError(
                f"weight has dtype {weight.dtype} but the parameters have dtype {W1.dtype}; "
                f"convert it with weight.to({W1.dtype})"
            )
        weight = weight.to(W1.dtype)
    if weight.requires_grad and torch.is_grad_enabled() and not target.is_floating_point():
        raise RuntimeError(
            "weight requires grad, but the loss is not differentiable in weight for class-index targets "
            "(F.cross_entropy refuses it too); pass weight.detach()"
        )
    return weight, label_smoothing
