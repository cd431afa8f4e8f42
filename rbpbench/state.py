"""Arithmetic on recurrent states.

A state is a tensor or a tuple of tensors (the hyperparameter task's state is
weights plus velocities). Every method and solver goes through these helpers,
so none of them has to care which of the two it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

State = Tensor | tuple[Tensor, ...]


def as_tuple(state: State) -> tuple[Tensor, ...]:
    return (state,) if isinstance(state, Tensor) else tuple(state)


def like(template: State, parts: Sequence[Tensor]) -> State:
    """Give ``parts`` the structure of ``template`` (bare tensor or tuple)."""
    return parts[0] if isinstance(template, Tensor) else tuple(parts)


def tree_map(fn: Callable[..., Tensor], *states: State) -> State:
    tuples = [as_tuple(s) for s in states]
    return like(states[0], [fn(*parts) for parts in zip(*tuples, strict=True)])


def add(a: State, b: State, alpha: float | Tensor = 1.0) -> State:
    """``a + alpha * b``."""
    return tree_map(lambda x, y: x + alpha * y, a, b)


def sub(a: State, b: State) -> State:
    return tree_map(lambda x, y: x - y, a, b)


def scale(a: State, alpha: float | Tensor) -> State:
    return tree_map(lambda x: alpha * x, a)


def dot(a: State, b: State) -> Tensor:
    parts = [torch.sum(x * y) for x, y in zip(as_tuple(a), as_tuple(b), strict=True)]
    return torch.stack(parts).sum()


def norm(a: State) -> Tensor:
    return torch.sqrt(dot(a, a))


def zeros_like(a: State) -> State:
    return tree_map(torch.zeros_like, a)


def detach(a: State) -> State:
    return tree_map(lambda x: x.detach(), a)


def detached_leaf(a: State) -> State:
    """A copy of ``a`` cut from any graph, requiring grad, so that J^T v can be taken w.r.t. it."""
    return tree_map(lambda x: x.detach().requires_grad_(True), a)


def is_finite(a: State) -> bool:
    return all(bool(torch.isfinite(x).all()) for x in as_tuple(a))


def flatten(a: State) -> Tensor:
    return torch.cat([x.reshape(-1) for x in as_tuple(a)])


def unflatten(flat: Tensor, template: State) -> State:
    parts, offset = [], 0
    for x in as_tuple(template):
        parts.append(flat[offset : offset + x.numel()].view_as(x))
        offset += x.numel()
    return like(template, parts)
