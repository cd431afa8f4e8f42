"""What a method costs, counted by the harness rather than reported by the method.

Every row has three counts that do not depend on the machine:

- ``forward_evaluations``: calls of the step function F (the task's step, or
  one of its adjoint steps), whatever makes them: the forward solver, the
  final step, a phantom gradient's damped steps;
- ``backward_vjps``: backward passes through an evaluation of F, each one
  vector-Jacobian product (with respect to the state, the parameters or both
  at once): the J^T v of an adjoint solver, the (dF/dw)^T z that ends every
  implicit gradient, each step an unrolled method back-propagates through;
- ``backward_jvps``: Jacobian-vector products J v, taken by differentiating a
  vector-Jacobian product once more (the double-backward trick).

:func:`counted` wraps a problem's step functions so that each call is
counted, and the output of each call made with a graph passes through an
identity autograd function whose backward counts a VJP and whose
double-backward counts a JVP. A plugin method that runs autograd through the
problem's steps in its own way is therefore charged like a built-in one.
Forward-mode products (``torch.func.jvp``) call F with dual numbers and are
counted as forward evaluations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rbpbench import state as S
from rbpbench.problem import Problem
from rbpbench.state import State


@dataclass
class Costs:
    forward_evaluations: int = 0
    backward_vjps: int = 0
    backward_jvps: int = 0

    def columns(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class _CountJvp(torch.autograd.Function):
    """Identity on a VJP's cotangents; differentiating through it is one J v product."""

    @staticmethod
    def forward(ctx: Any, costs: Costs, *grads: Tensor) -> tuple[Tensor, ...]:
        ctx.costs = costs
        return tuple(g.view_as(g) for g in grads)

    @staticmethod
    def backward(ctx: Any, *outer: Tensor) -> tuple[Any, ...]:
        ctx.costs.backward_jvps += 1
        return (None, *outer)


class _CountVjp(torch.autograd.Function):
    """Identity on a step's output; a backward pass through it is one vector-Jacobian product."""

    @staticmethod
    def forward(ctx: Any, costs: Costs, *outputs: Tensor) -> tuple[Tensor, ...]:
        ctx.costs = costs
        return tuple(y.view_as(y) for y in outputs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Any, ...]:
        ctx.costs.backward_vjps += 1
        if torch.is_grad_enabled():  # create_graph=True: J v may be taken through this VJP
            return (None, *_CountJvp.apply(ctx.costs, *grads))
        return (None, *grads)


def counting(fn: Callable[..., State], costs: Costs) -> Callable[..., State]:
    """``fn`` (a step of the state) counted: each call, and each backward pass through one."""

    def counted_step(h: State, *args: Any) -> State:
        costs.forward_evaluations += 1
        out = fn(h, *args)
        parts = S.as_tuple(out)
        if not torch.is_grad_enabled() or not any(p.requires_grad for p in parts):
            return out
        return S.like(out, _CountVjp.apply(costs, *parts))

    return counted_step


def counted(problem: Problem) -> tuple[Problem, Costs]:
    """A copy of ``problem`` whose step functions count what is done with them, and the counts."""
    costs = Costs()
    copy = dataclasses.replace(
        problem,
        step=counting(problem.step, costs),
        adjoint_steps=tuple(counting(f, costs) for f in problem.adjoint_steps),
    )
    return copy, costs
