"""Has the forward pass converged, and has the adjoint system been solved?

Every row says so, measured by the harness rather than reported by the method:
``forward_relative_residual`` = ||h_T - h_{T-1}|| / ||h_T|| on the cell's
problem, and ``adjoint_relative_residual`` = ||(I - J^T) z - g|| / ||g||
(g = dL/dh_T) for a method that solved an adjoint system. Each is compared
with a tolerance: the task's own (``TaskSpec.forward_tolerance``,
``adjoint_tolerance``), a user's (the task parameters ``forward_tolerance``
and ``adjoint_tolerance``), or by default the square root of the machine
epsilon of the task's dtype: half its digits (about 1.5e-8 in float64,
3.5e-4 in float32). A forward whose relative residual is r is roughly
r / (1 - rho) away from its fixed point, so the default leaves the forward's
error well below the gradient errors a sweep compares. docs/measurement.md
says more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from rbpbench import state as S
from rbpbench.linearisation import LossTerms
from rbpbench.problem import Problem, TaskSpec
from rbpbench.state import State

# Task parameters every task accepts: the harness reads them, the task's builder never sees them.
TOLERANCE_PARAMS = ("forward_tolerance", "adjoint_tolerance")


def default_tolerance(dtype: torch.dtype) -> float:
    """The square root of the dtype's machine epsilon."""
    return math.sqrt(torch.finfo(dtype).eps)


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the builder's parameters, the harness's tolerance parameters)."""
    builder = {k: v for k, v in params.items() if k not in TOLERANCE_PARAMS}
    tolerances = {k: v for k, v in params.items() if k in TOLERANCE_PARAMS}
    return builder, tolerances


@dataclass(frozen=True)
class Tolerances:
    forward: float | None  # None: the task's forward is no fixed-point iteration; not checked
    adjoint: float

    @classmethod
    def of(cls, spec: TaskSpec, overrides: Mapping[str, Any]) -> Tolerances:
        default = default_tolerance(spec.dtype)
        forward = overrides.get("forward_tolerance", spec.forward_tolerance)
        adjoint = overrides.get("adjoint_tolerance", spec.adjoint_tolerance)
        return cls(
            forward=(float(forward) if forward is not None else default)
            if spec.forward_converges
            else None,
            adjoint=float(adjoint) if adjoint is not None else default,
        )


@dataclass(frozen=True)
class ForwardFacts:
    """What the harness measures of a problem's forward pass, once per problem."""

    relative_residual: float
    rhs_norm: float  # ||g||, g = dL/dh_T: the right-hand side of every adjoint system


def forward_facts(problem: Problem, h_prev: State) -> ForwardFacts:
    """From h_{T-1}: one more step gives h_T, the residual, and g at h_T."""
    with torch.no_grad():
        h_last = problem.step(S.detach(h_prev), problem.num_steps - 1)
    residual = float(S.norm(S.sub(h_last, S.detach(h_prev))))
    size = float(S.norm(h_last))
    relative = residual / size if size > 0 else residual
    return ForwardFacts(relative, float(S.norm(LossTerms(problem, h_last).g)))


def convergence_columns(
    facts: ForwardFacts | None, backward_residual: float, tolerances: Tolerances
) -> dict[str, Any]:
    """The six convergence columns of a row (nulls where nothing was or could be measured)."""
    row: dict[str, Any] = {}
    if facts is not None:
        row["forward_relative_residual"] = facts.relative_residual
        if tolerances.forward is not None and math.isfinite(facts.relative_residual):
            row["forward_tolerance"] = tolerances.forward
            row["forward_converged"] = facts.relative_residual <= tolerances.forward
        elif tolerances.forward is not None:
            row["forward_tolerance"] = tolerances.forward
            row["forward_converged"] = False
    if facts is not None and not math.isnan(backward_residual):
        relative = backward_residual / facts.rhs_norm if facts.rhs_norm > 0 else backward_residual
        row["adjoint_relative_residual"] = relative
        row["adjoint_tolerance"] = tolerances.adjoint
        row["adjoint_converged"] = bool(math.isfinite(relative) and relative <= tolerances.adjoint)
    return row
