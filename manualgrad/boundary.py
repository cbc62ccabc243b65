"""The entry points' boundary checks (``validation.py``), decided once per combination of metadata.

The checks read only metadata (kind, dtype, device, layout, shape), except the class range of a
target. Metadata that passed once passes again: in plain eager mode the checks run once per
combination of the tensors' metadata and the autocast state (at most ``_MAX_CHECKED`` kept), then a
dict lookup stands in for them. The class range needs the values: ``functional.py`` checks it on
every call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import modes, validation
from .modes import autocast_enabled

_MAX_CHECKED = 256
_Key = tuple[object, ...]
_checked: dict[_Key, bool] = {}


def _metadata(tag: object, *tensors: object) -> _Key | None:
    """``tag`` and what the boundary checks read of these tensors, one flat tuple (cheaper to build
    and hash than a tuple per tensor), or None where it must not be cached."""
    if torch.compiler.is_compiling():  # traced: the checks cost nothing at run time
        return None
    key: list[object] = [tag]
    try:
        for t in tensors:
            key += (type(t), t.dtype, t.device, t.layout, t.shape)  # type: ignore[attr-defined]
    except AttributeError:  # not a tensor: the checks say what it is
        return None
    return tuple(key)


def _seen(key: _Key | None) -> bool:
    try:
        return key is not None and key in _checked
    except TypeError:  # symbolic sizes (make_fx, export) cannot be hashed: check every time
        return False


def _remember(key: _Key | None) -> None:
    if key is not None and len(_checked) < _MAX_CHECKED:
        try:
            _checked[key] = True
        except TypeError:  # symbolic sizes
            pass


def _autocast(x: object) -> bool:
    return isinstance(x, Tensor) and autocast_enabled(modes.device_type(x))


def _check_network(x: object, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, autocast: bool) -> Tensor:
    validation.check_parameters(W1, b1, W2, b2)
    x = validation.require_tensor("x", x)
    return validation.check_input(x, W1, autocast=autocast)


def prepare_network(
    x: object, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, autocast: bool | None = None
) -> tuple[Tensor, bool]:
    autocast = _autocast(x) if autocast is None else autocast
    key = _metadata(autocast, x, W1, b1, W2, b2)
    if _seen(key):
        return x, autocast  # type: ignore[return-value]
    x = _check_network(x, W1, b1, W2, b2, autocast)
    _remember(key)
    return x, autocast


def prepare_loss(
    x: object, target: object, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, autocast: bool | None = None
) -> tuple[Tensor, Tensor, bool]:
    """The network's checks and ``validation.check_target`` (metadata only), as one cached decision.

    The class range needs the values: the caller checks it on every call."""
    autocast = _autocast(x) if autocast is None else autocast
    key = _metadata(autocast, x, target, W1, b1, W2, b2)  # six tensors: never a network's key (five)
    if _seen(key):
        return x, target, autocast  # type: ignore[return-value]
    x = _check_network(x, W1, b1, W2, b2, autocast)
    target = validation.check_target(target, x, W1, W2, autocast=autocast, check_values=False)
    _remember(key)
    return x, target, autocast
