"""The contract between a task and a gradient method.

A task hands a method a :class:`Problem`: a recurrent network
``h_{t+1} = F_t(h_t; w_F)`` run for ``num_steps`` steps from ``initial_state``
and scored by ``loss`` on the final state (the loss includes the readout G,
whose parameters ``params_g`` get ordinary back-propagation). A method answers
with a :class:`GradientResult`. Tasks know nothing of methods and methods know
nothing of tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from rbpbench.state import State


@dataclass
class Problem:
    """One gradient computation to benchmark.

    ``step(h, t)`` returns ``F_t(h)`` for ``t = 0 .. num_steps - 1``; it may use
    ``t`` (a mini-batch per step, as in the hyperparameter task) and closes over
    the leaves ``params_f``. ``initial_state`` is a constant: no method
    differentiates through it. ``loss(h)`` is a scalar and may use ``params_g``
    and, directly, ``params_f``. ``exact_gradient``, where the task can compute
    one, returns the exact implicit gradient dL/dw_F at the fixed point.
    """

    step: Callable[[State, int], State]
    initial_state: State
    num_steps: int
    params_f: tuple[Tensor, ...]
    params_g: tuple[Tensor, ...]
    loss: Callable[[State], Tensor]
    seed: int = 0
    exact_gradient: Callable[[], tuple[Tensor, ...]] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class GradientResult:
    """What every method returns.

    ``forward_residual`` is ||h_T - h_{T-1}||; ``backward_iterations`` the
    number of backward steps taken (steps back-propagated for the unrolling
    methods, solver iterations for the RBP family); ``backward_residual`` is
    ||(I - J^T) z - g|| for the adjoint z the method used (NaN where a method
    has no adjoint, or when diagnostics were not asked for).
    """

    loss: float
    grads_f: tuple[Tensor, ...]
    grads_g: tuple[Tensor, ...]
    forward_residual: float
    backward_iterations: int
    backward_residual: float = math.nan


class GradientMethod(Protocol):
    """``compute(problem, truncation, diagnostics=..., **params)``.

    With ``diagnostics=False`` a method may skip work that only feeds its
    diagnostics (the backward residual); the runner times that variant.
    """

    def __call__(
        self, problem: Problem, truncation: int, *, diagnostics: bool = True, **params: Any
    ) -> GradientResult: ...


class ProblemBuilder(Protocol):
    def __call__(
        self, *, seed: int, device: torch.device, dtype: torch.dtype, **params: Any
    ) -> Problem: ...


@dataclass(frozen=True)
class MethodSpec:
    """A gradient method as a plugin contributes it.

    ``unrolls`` declares that the method's memory grows with T by design
    (BPTT, TBPTT); every other method must keep its memory flat in T.
    """

    name: str
    compute: GradientMethod
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    unrolls: bool = False


@dataclass(frozen=True)
class TaskSpec:
    """A task as a plugin contributes it: a builder of problems plus defaults."""

    name: str
    build: ProblemBuilder
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
