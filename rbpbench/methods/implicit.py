"""The recurrent back-propagation family: RBP, CG-RBP and Neumann-RBP.

All three run the first T - 1 steps without a graph, keep a graph for the
last step only, solve the adjoint system (I - J^T) z = dL/dh at that step with
their own solver from :mod:`rbpbench.adjoint`, and return (dF/dw_F)^T z. Their
memory therefore does not grow with T. A problem may name other maps to
linearise instead of the last step (``Problem.adjoint_steps``, e.g. a
full-batch training step); the gradient is then averaged over them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from rbpbench import adjoint
from rbpbench import state as S
from rbpbench.forward import LastStep, LossTerms, plus_direct, run_without_graph
from rbpbench.problem import GradientResult, Problem
from rbpbench.state import State

Solve = Callable[[LastStep, State], adjoint.AdjointSolution]


def implicit_gradient(problem: Problem, solve: Solve, *, diagnostics: bool) -> GradientResult:
    h_prev = run_without_graph(problem, problem.num_steps - 1)
    if not problem.adjoint_steps:
        return one_linearisation(problem, LastStep(problem, h_prev), solve, diagnostics=diagnostics)
    return averaged_linearisations(problem, h_prev, solve, diagnostics=diagnostics)


def one_linearisation(
    problem: Problem, step: LastStep, solve: Solve, *, diagnostics: bool
) -> GradientResult:
    terms = LossTerms(problem, step.h_next)
    solution = solve(step, terms.g)
    residual = step.adjoint_residual(solution.z, terms.g) if diagnostics else math.nan
    through_state = step.param_vjp(solution.z, release=True)
    return GradientResult(
        loss=terms.loss,
        grads_f=plus_direct(through_state, terms.direct_f),
        grads_g=terms.grads_g,
        forward_residual=step.forward_residual,
        backward_iterations=solution.iterations,
        backward_residual=residual,
    )


def averaged_linearisations(
    problem: Problem, h_prev: State, solve: Solve, *, diagnostics: bool
) -> GradientResult:
    """The loss at the true h_T; the gradient averaged over ``problem.adjoint_steps``.

    One linearisation is alive at a time, so memory stays that of one step.
    ``backward_iterations`` is the largest count, ``backward_residual`` the mean.
    """
    with torch.no_grad():
        h_last = problem.step(S.detach(h_prev), problem.num_steps - 1)
    terms = LossTerms(problem, h_last)
    total: tuple[torch.Tensor, ...] | None = None
    iterations, residuals = 0, []
    for linearised in problem.adjoint_steps:
        step = LastStep(problem, h_prev, linearised)
        solution = solve(step, terms.g)
        if diagnostics:
            residuals.append(step.adjoint_residual(solution.z, terms.g))
        part = step.param_vjp(solution.z, release=True)
        total = part if total is None else tuple(a + b for a, b in zip(total, part, strict=True))
        iterations = max(iterations, solution.iterations)
    assert total is not None
    count = len(problem.adjoint_steps)
    return GradientResult(
        loss=terms.loss,
        grads_f=plus_direct(tuple(a / count for a in total), terms.direct_f),
        grads_g=terms.grads_g,
        forward_residual=float(S.norm(S.sub(h_last, S.detach(h_prev)))),
        backward_iterations=iterations,
        backward_residual=sum(residuals) / len(residuals) if residuals else math.nan,
    )


def uniform_start(g: State, seed: int) -> State:
    """z0 ~ U[0, 1), as in the paper's Algorithm 1, reproducible from the problem's seed."""
    first = S.as_tuple(g)[0]
    generator = torch.Generator(device=first.device).manual_seed(seed)
    parts = [
        torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        for x in S.as_tuple(g)
    ]
    return S.like(g, parts)


def rbp(
    problem: Problem,
    truncation: int,
    *,
    diagnostics: bool = True,
    init: str = "uniform",
    tol: float = 1e-8,
    **_: Any,
) -> GradientResult:
    """Original RBP (Algorithm 1): at most ``truncation`` fixed-point iterations."""
    if init not in ("uniform", "zeros"):
        raise ValueError(f"rbp: init must be 'uniform' or 'zeros', not {init!r}")

    def solve(step: LastStep, g: State) -> adjoint.AdjointSolution:
        z0 = uniform_start(g, problem.seed) if init == "uniform" else None
        return adjoint.fixed_point(step, g, max_iter=truncation, tol=tol, init=z0)

    return implicit_gradient(problem, solve, diagnostics=diagnostics)


def cg_rbp(
    problem: Problem,
    truncation: int,
    *,
    diagnostics: bool = True,
    tol: float = 1e-10,
    damping: float = 0.0,
    **_: Any,
) -> GradientResult:
    """CG-RBP: at most ``truncation`` CG iterations on the normal equations (Eq. 16)."""

    def solve(step: LastStep, g: State) -> adjoint.AdjointSolution:
        return adjoint.cg_normal_equations(step, g, max_iter=truncation, tol=tol, damping=damping)

    return implicit_gradient(problem, solve, diagnostics=diagnostics)


def neumann_rbp(
    problem: Problem, truncation: int, *, diagnostics: bool = True, **_: Any
) -> GradientResult:
    """Neumann-RBP (Algorithm 2): ``truncation`` Jacobian products, K + 1 series terms."""

    def solve(step: LastStep, g: State) -> adjoint.AdjointSolution:
        return adjoint.neumann(step, g, max_iter=truncation)

    return implicit_gradient(problem, solve, diagnostics=diagnostics)
