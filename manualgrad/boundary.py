"""The entry points' boundary checks (``validation.py``), decided once per combination of metadata.

The checks read only metadata (kind, dtype, device, layout, shape), except the class range of a
target. Metadata that passed once passes again: in plain eager mode the checks run once per
combination of the tensors' metadata and the autocast state (at most ``_MAX_CHECKED`` kept), then a
dict lookup stands in for them. The class range needs the values: ``functional.py`` checks it on
every call. Beside each combination that passed, the lookup keeps what the lean Functions of
``eager.py`` do with such tensors (``modes.EagerPlan``), which also depends on metadata only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import modes, validation
from .modes import autocast_enabled

_MAX_CHECKED = 256
_Key = tuple[object, ...]


class _Checked(dict[_Key, modes.EagerPlan]):
    """The combinations of metadata that passed the checks, each with its plan; ``last``: the last
    one the lean lookups found, compared first (one ``==`` in place of a hash and a lookup, for the
    training step that repeats itself: 2.4 us less, of 6.6, in a step at N=1). :func:`network_plan`
    and :func:`loss_plan` compare it inline, a call less."""

    last: tuple[_Key, modes.EagerPlan] = ((), modes.EagerPlan(False, False, False, False))  # () is no one's key

    def clear(self) -> None:
        self.last = _Checked.last
        super().clear()


_checked = _Checked()


def _metadata(tag: object, *tensors: object) -> _Key | None:
    """``tag`` and what the boundary checks read of these tensors, one flat tuple (cheaper to build
    and hash than a tuple per tensor), or None where it must not be cached."""
    if torch.compiler.is_compiling():  # traced: the checks cost nothing at run time
        return None
    return _network_key(tag, *tensors) if len(tensors) == 5 else _loss_key(tag, *tensors)


# The keys of plain eager mode, written out: one tuple built at once costs a third less than a loop
# over the tensors, and a step at N=1 is about 200 us. Per tensor: kind, dtype, device, layout, shape;
# the device as ``t.is_cpu or t.device``: True says all of a CPU tensor's device, where a torch.device
# would be built, hashed and compared (key and lookup: 7.9 us of a step at N=1 with them, 6.6 without).


def _network_key(tag: object, x: Any, W1: Any, b1: Any, W2: Any, b2: Any) -> _Key | None:
    """``tag`` and what the checks read of the network's tensors; None where one is not a tensor."""
    try:
        return (
            tag,
            type(x), x.dtype, x.is_cpu or x.device, x.layout, x.shape,
            type(W1), W1.dtype, W1.is_cpu or W1.device, W1.layout, W1.shape,
            type(b1), b1.dtype, b1.is_cpu or b1.device, b1.layout, b1.shape,
            type(W2), W2.dtype, W2.is_cpu or W2.device, W2.layout, W2.shape,
            type(b2), b2.dtype, b2.is_cpu or b2.device, b2.layout, b2.shape,
        )  # fmt: skip
    except AttributeError:  # not a tensor: the checks say what it is
        return None


def _loss_key(tag: object, x: Any, target: Any, W1: Any, b1: Any, W2: Any, b2: Any) -> _Key | None:
    """:func:`_network_key` with the target's (six tensors: never a network's key, of five)."""
    try:
        return (
            tag,
            type(x), x.dtype, x.is_cpu or x.device, x.layout, x.shape,
            type(target), target.dtype, target.is_cpu or target.device, target.layout, target.shape,
            type(W1), W1.dtype, W1.is_cpu or W1.device, W1.layout, W1.shape,
            type(b1), b1.dtype, b1.is_cpu or b1.device, b1.layout, b1.shape,
            type(W2), W2.dtype, W2.is_cpu or W2.device, W2.layout, W2.shape,
            type(b2), b2.dtype, b2.is_cpu or b2.device, b2.layout, b2.shape,
        )  # fmt: skip
    except AttributeError:
        return None


def _seen(key: _Key | None) -> bool:
    try:
        return key is not None and key in _checked
    except TypeError:  # symbolic sizes (make_fx, export) cannot be hashed: check every time
        return False


def _kept(key: _Key | None) -> modes.EagerPlan | None:
    """The plan kept for ``key``, or None: not seen, not a key, or not hashable (then every call is
    checked); a plan found becomes ``_checked.last``."""
    if key is None:
        return None
    try:
        plan = _checked.get(key)
    except TypeError:
        return None
    if plan is not None:
        _checked.last = (key, plan)
    return plan


def _remember(key: _Key | None, plan: Callable[[], modes.EagerPlan]) -> None:
    """Keep ``plan()`` for ``key``; ``plan`` is called only where the key is kept, never on symbolic
    sizes (its comparisons of N would become guards)."""
    if key is None or len(_checked) >= _MAX_CHECKED:
        return
    try:
        hash(key)
    except TypeError:  # symbolic sizes (make_fx, export)
        return
    _checked[key] = plan()


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
    _remember(key, lambda: modes.eager_network_plan(x, W1, W2))
    return x, autocast


def network_plan(x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> modes.EagerPlan:
    """For plain eager mode (``modes.plain_eager``: autocast off, not traced): the checks of
    :func:`prepare_network`, once per combination of metadata, and what the lean Functions do with
    such tensors (``modes.eager_network_plan``)."""
    key = _network_key(False, x, W1, b1, W2, b2)
    last_key, last_plan = _checked.last
    if key == last_key:
        return last_plan
    plan = _kept(key)
    if plan is None:  # not seen: check, and keep the plan with the decision
        x, _ = prepare_network(x, W1, b1, W2, b2, autocast=False)
        plan = _kept(key) or modes.eager_network_plan(x, W1, W2)  # (not kept: the cache is full)
    return plan


def prepare_loss(
    x: object, target: object, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, autocast: bool | None = None
) -> tuple[Tensor, Tensor, bool]:
    """The network's checks and ``validation.check_target`` (metadata only), as one cached decision.

    The class range needs the values: the caller checks it on every call."""
    autocast = _autocast(x) if autocast is None else autocast
    key = _metadata(autocast, x, target, W1, b1, W2, b2)
    if _seen(key):
        return x, target, autocast  # type: ignore[return-value]
    x = _check_network(x, W1, b1, W2, b2, autocast)
    target = validation.check_target(target, x, W1, W2, autocast=autocast, check_values=False)
    _remember(key, lambda: modes.eager_loss_plan(x, target, W1, W2))
    return x, target, autocast


def loss_plan(x: Tensor, target: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> modes.EagerPlan:
    """For plain eager mode (``modes.plain_eager``: autocast off, not traced): the checks of
    :func:`prepare_loss`, once per combination of metadata, and what the lean loss does with such
    tensors (``modes.eager_loss_plan``)."""
    key = _loss_key(False, x, target, W1, b1, W2, b2)
    last_key, last_plan = _checked.last
    if key == last_key:
        return last_plan
    plan = _kept(key)
    if plan is None:  # not seen: check, and keep the plan with the decision
        x, target, _ = prepare_loss(x, target, W1, b1, W2, b2, autocast=False)
        plan = _kept(key) or modes.eager_loss_plan(x, target, W1, W2)  # (not kept: the cache is full)
    return plan
