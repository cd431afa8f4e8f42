"""The recurrent back-propagation family: RBP, CG-RBP and Neumann-RBP, and the factory behind them.

All three find h* with the cell's forward solver and no graph (T - 1 steps
of ``iterate``), keep a graph for the final step only, solve the adjoint system (I - J^T) z = dL/dh at that step with
their own solver from :mod:`rbpbench.adjoint`, and return (dF/dw_F)^T z. Their
memory therefore does not grow with T. A problem may name other maps to
linearise instead of the last step (``Problem.adjoint_steps``, e.g. a
full-batch training step); the gradient is then averaged over them.

:func:`implicit_method` turns any adjoint solver into such a method: the three
built-in ones are made by it, as a plugin's solver is.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from rbpbench import adjoint, forward
from rbpbench import state as S
from rbpbench.adjoint import AdjointSolution, AdjointSolver
from rbpbench.linearisation import LinearisedStep, LossTerms
from rbpbench.problem import GradientResult, MethodSpec, Problem
from rbpbench.state import State

# A solver bound to its truncation and parameters: ``solve(step, g) -> AdjointSolution``.
Solve = Callable[[LinearisedStep, State], AdjointSolution]


def implicit_gradient(problem: Problem, solve: Solve, *, diagnostics: bool) -> GradientResult:
    """The implicit gradient with every diagnostic, ``solve(step, g)`` giving the adjoint z.

    Finds h* with the problem's forward solver and no graph (T - 1 steps of
    ``iterate``), linearises the final step there (or each of
    ``problem.adjoint_steps``), takes g = dL/dh_T, calls ``solve`` and returns
    (dF/dw_F)^T z plus the direct partials; ``diagnostics=False`` skips the
    backward residual (one more Jacobian product).
    """
    h_prev = forward.solve_forward(problem)
    if not problem.adjoint_steps:
        step = LinearisedStep(problem, h_prev)
        return one_linearisation(problem, step, solve, diagnostics=diagnostics)
    return averaged_linearisations(problem, h_prev, solve, diagnostics=diagnostics)


def one_linearisation(
    problem: Problem, step: LinearisedStep, solve: Solve, *, diagnostics: bool
) -> GradientResult:
    terms = LossTerms(problem, step.h_next)
    solution = solve(step, terms.g)
    residual = step.adjoint_residual(solution.z, terms.g) if diagnostics else math.nan
    through_state = step.param_vjp(solution.z, release=True)
    return GradientResult(
        loss=terms.loss,
        grads_f=terms.total_grads_f(through_state),
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
        step = LinearisedStep(problem, h_prev, linearised)
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
        grads_f=terms.total_grads_f(tuple(a / count for a in total)),
        grads_g=terms.grads_g,
        forward_residual=float(S.norm(S.sub(h_last, S.detach(h_prev)))),
        backward_iterations=iterations,
        backward_residual=sum(residuals) / len(residuals) if residuals else math.nan,
    )


# Keywords the factory passes itself, which a method's parameters cannot be named.
RESERVED = ("max_iter", "diagnostics", "truncation", "problem")


@dataclass(frozen=True)
class ImplicitMethod:
    """The ``compute`` of a method made by :func:`implicit_method`.

    ``compute(problem, truncation, *, diagnostics=True, **params)`` with
    ``params`` exactly the keys of ``defaults`` (its signature, as
    :func:`inspect.signature` reports it, lists them as keyword-only
    arguments): an unknown one raises TypeError naming it and the valid ones.
    ``check(truncation, params)``, if given, sees the parameters (defaults
    merged) before the forward pass runs and raises ValueError for a bad value.
    """

    name: str
    solve: AdjointSolver
    defaults: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[int, Mapping[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        keyword = inspect.Parameter.KEYWORD_ONLY
        parameters = [
            inspect.Parameter("problem", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("truncation", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("diagnostics", keyword, default=True),
            *(inspect.Parameter(key, keyword, default=v) for key, v in self.defaults.items()),
        ]
        # inspect.signature (and so rbpbench.config, which checks names and types against
        # it before a sweep runs) sees the method's own parameters, not **params.
        signature = inspect.Signature(parameters, return_annotation="GradientResult")
        object.__setattr__(self, "__signature__", signature)
        # named as a function would be (neumann_rbp), for tracebacks and test ids
        identifier = self.name.replace("-", "_")
        object.__setattr__(self, "__name__", identifier)
        object.__setattr__(self, "__qualname__", identifier)

    def __call__(
        self, problem: Problem, truncation: int, *, diagnostics: bool = True, **params: Any
    ) -> GradientResult:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            valid = ", ".join(self.defaults) or "(none)"
            raise TypeError(f"{self.name} has no parameter {', '.join(unknown)}; valid: {valid}")
        merged = {**self.defaults, **params}
        if self.check is not None:
            self.check(truncation, merged)

        def solve(step: LinearisedStep, g: State) -> AdjointSolution:
            return self.solve(step, g, max_iter=truncation, **merged)

        return implicit_gradient(problem, solve, diagnostics=diagnostics)


def implicit_method(
    solve: AdjointSolver,
    *,
    name: str,
    summary: str,
    defaults: Mapping[str, Any] | None = None,
    check: Callable[[int, Mapping[str, Any]], None] | None = None,
) -> MethodSpec:
    """A method of the RBP family from an adjoint solver: the :class:`MethodSpec` to contribute.

    Its ``compute(problem, truncation, *, diagnostics=True, **params)`` runs
    :func:`implicit_gradient` with ``solve(step, g, max_iter=truncation,
    **params)``, ``step`` being the :class:`LinearisedStep` (a
    :class:`~rbpbench.adjoint.JacobianOperator`; ``step.problem.seed`` seeds
    a random start). ``defaults`` are the method's parameters, all of them,
    with their defaults (``--method-param`` overrides them; any other name is
    refused); the solver must take each as a keyword. ``check(truncation,
    params)`` (optional) raises ValueError for a bad value before the forward
    pass runs. Raises TypeError when the solver does not take a parameter.
    """
    defaults = dict(defaults or {})
    reserved = [key for key in defaults if key in RESERVED]
    if reserved:
        raise TypeError(f"{name}: {reserved[0]} is passed by rbpbench; it is no method parameter")
    try:
        accepts = inspect.signature(solve).parameters
    except (TypeError, ValueError):  # a callable inspect cannot read: take it on trust
        accepts = None
    if accepts is not None and not any(p.kind is p.VAR_KEYWORD for p in accepts.values()):
        for key in ("max_iter", *defaults):
            p = accepts.get(key)
            if p is None or p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                raise TypeError(
                    f"{name}: the solver {getattr(solve, '__name__', solve)!r} takes no "
                    f"keyword {key}; a solver is solve(op, g, *, max_iter, **params)"
                )
    compute = ImplicitMethod(name, solve, defaults, check)
    return MethodSpec(name, compute, summary, defaults=defaults)


def uniform_start(g: State, seed: int) -> State:
    """z0 ~ U[0, 1), as in the paper's Algorithm 1, reproducible from the problem's seed."""
    first = S.as_tuple(g)[0]
    generator = torch.Generator(device=first.device).manual_seed(seed)
    parts = [
        torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        for x in S.as_tuple(g)
    ]
    return S.like(g, parts)


def rbp_fixed_point(
    step: LinearisedStep, g: State, *, max_iter: int, init: str, tol: float
) -> AdjointSolution:
    """Algorithm 1 from z0 ~ U[0, 1) seeded by the problem (``init="uniform"``) or z0 = 0."""
    z0 = uniform_start(g, step.problem.seed) if init == "uniform" else None
    return adjoint.fixed_point(step, g, max_iter=max_iter, tol=tol, init=z0)


def check_start(truncation: int, params: Mapping[str, Any]) -> None:
    if params["init"] not in ("uniform", "zeros"):
        raise ValueError(f"rbp: init must be 'uniform' or 'zeros', not {params['init']!r}")


RBP = implicit_method(
    rbp_fixed_point,
    name="rbp",
    summary="original RBP: fixed-point iteration z <- J^T z + g, at most K iterations",
    defaults={"init": "uniform", "tol": 1e-8},
    check=check_start,
)
CG_RBP = implicit_method(
    adjoint.cg_normal_equations,
    name="cg-rbp",
    summary="CG on the normal equations (I-J)(I-J^T) z = (I-J) g, at most K iterations",
    defaults={"tol": 1e-10, "damping": 0.0},
)
NEUMANN_RBP = implicit_method(
    adjoint.neumann,
    name="neumann-rbp",
    summary="truncated Neumann series, K Jacobian products",
)

# The methods as functions: compute(problem, truncation, *, diagnostics=True, **params).
rbp = RBP.compute  # original RBP (Algorithm 1): at most K fixed-point iterations
cg_rbp = CG_RBP.compute  # CG-RBP: at most K CG iterations on the normal equations (Eq. 16)
neumann_rbp = NEUMANN_RBP.compute  # Neumann-RBP (Algorithm 2): K products, K + 1 series terms
