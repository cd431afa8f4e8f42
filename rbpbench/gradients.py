"""``torch.autograd.grad`` for inputs the outputs may not depend on.

A parameter that a loss or a step does not read has no gradient in autograd's
eyes (None, or an error without ``allow_unused``); rbpbench's methods and
tasks want None or zeros there, with one call.
"""

from __future__ import annotations

import torch
from torch import Tensor


def grads_or_none(
    outputs: tuple[Tensor, ...],
    inputs: tuple[Tensor, ...],
    grad_outputs: tuple[Tensor, ...] | None = None,
    *,
    retain_graph: bool = False,
    create_graph: bool = False,
) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad`` with None for inputs the outputs do not depend on."""
    if grad_outputs is None:
        grad_outputs = tuple(torch.ones_like(y) for y in outputs)
    pairs = [(y, v) for y, v in zip(outputs, grad_outputs, strict=True) if y.requires_grad]
    if not inputs or not pairs:
        return tuple(None for _ in inputs)
    return torch.autograd.grad(
        [y for y, _ in pairs],
        inputs,
        [v for _, v in pairs],
        retain_graph=retain_graph,
        create_graph=create_graph,
        allow_unused=True,
    )


def grads_or_zeros(
    outputs: tuple[Tensor, ...],
    inputs: tuple[Tensor, ...],
    grad_outputs: tuple[Tensor, ...] | None = None,
    *,
    retain_graph: bool = False,
    create_graph: bool = False,
) -> tuple[Tensor, ...]:
    """``torch.autograd.grad`` with zeros for inputs the outputs do not depend on."""
    grads = grads_or_none(
        outputs, inputs, grad_outputs, retain_graph=retain_graph, create_graph=create_graph
    )
    return zeros_where_absent(grads, inputs)


def zeros_where_absent(
    grads: tuple[Tensor | None, ...], inputs: tuple[Tensor, ...]
) -> tuple[Tensor, ...]:
    """``grads`` with zeros shaped like ``inputs`` where a gradient is None."""
    return tuple(
        torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs, strict=True)
    )
