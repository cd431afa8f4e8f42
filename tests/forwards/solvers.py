"""What the tests of the accelerated forward solvers (anderson, broyden) share."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from rbpbench import state as S
from rbpbench.forward import solve, solve_with_graph, solver_evaluations
from rbpbench.forwards.common import default_solver_tolerance
from rbpbench.plugins import load_registry
from rbpbench.problem import BoundForward, ForwardSolution, ForwardSolverSpec, Problem
from rbpbench.state import State
from rbpbench.tasks import contractive

CPU = torch.device("cpu")
TOL64 = default_solver_tolerance(torch.float64)
TOL32 = default_solver_tolerance(torch.float32)


def rnn(
    spectral_norm: float, *, seed: int = 0, dtype: torch.dtype = torch.float64, **params: object
) -> Problem:
    """contractive-rnn at its registered defaults (hidden 32, batch 4), one spectral norm."""
    return contractive.build(
        seed=seed,
        device=CPU,
        dtype=dtype,
        spectral_norm=spectral_norm,
        **params,  # type: ignore[arg-type]
    )


class Counted:
    """A step that counts its calls."""

    def __init__(self, step: Callable[[State, int], State]) -> None:
        self.step = step
        self.calls = 0

    def __call__(self, h: State, t: int) -> State:
        self.calls += 1
        return self.step(h, t)


def relative_residual(step: Callable[[State, int], State], h: State) -> float:
    """||F(h) - h|| / ||F(h)||, as the harness measures the forward."""
    with torch.no_grad():
        fh = step(h, 0)
        return float(S.norm(S.sub(fh, h)) / S.norm(fh))


def iterate_evaluations(problem: Problem, tol: float, cap: int = 100_000) -> int:
    """How many evaluations of F plain iteration needs until an evaluated point's residual <= tol."""
    h = problem.initial_state
    with torch.no_grad():
        for k in range(cap):
            fh = problem.step(h, k)
            if float(S.norm(S.sub(fh, h)) / S.norm(fh)) <= tol:
                return k + 1
            h = fh
    raise AssertionError(f"plain iteration did not reach {tol} in {cap} evaluations")


def run_step(
    spec: ForwardSolverSpec, step: Callable[[State, int], State], h0: State, **params: object
) -> tuple[ForwardSolution, int]:
    """The solver on ``step`` from ``h0`` without a graph: its solution and the evaluations of F."""
    counted = Counted(step)
    with torch.no_grad():
        solution = spec.solve(counted, h0, num_steps=1, **params)
    return solution, counted.calls


def run(spec: ForwardSolverSpec, problem: Problem, **params: object) -> tuple[ForwardSolution, int]:
    """The solver on ``problem``'s forward pass without a graph (see :func:`run_step`)."""
    return run_step(spec, problem.step, S.detach(problem.initial_state), **params)


def shifted(c: Tensor) -> Callable[[State, int], State]:
    """F(h) = h + c, a map with no fixed point (g = c everywhere)."""

    def step(h: State, t: int) -> State:
        return S.add(h, c)

    return step


def initial_tensor(problem: Problem) -> Tensor:
    assert isinstance(problem.initial_state, Tensor)
    return problem.initial_state


def solve_tensor(problem: Problem) -> Tensor:
    """h* of :func:`rbpbench.forward.solve`, a tensor state."""
    h = solve(problem)
    assert isinstance(h, Tensor)
    return h


def nan_after(calls: int, step: Callable[[State, int], State]) -> Callable[[State, int], State]:
    """``step``, whose output turns NaN from its call number ``calls`` + 1 on."""
    counted = Counted(step)

    def broken(h: State, t: int) -> State:
        out = counted(h, t)
        return S.scale(out, math.nan) if counted.calls > calls else out

    return broken


def check_solution(
    step: Callable[[State, int], State], solution: ForwardSolution, calls: int
) -> None:
    """One trace entry per evaluation of F, and the returned state is the best one evaluated."""
    assert solution.iterations == calls == len(solution.trace)
    finite = [r for r in solution.trace if math.isfinite(r)]
    assert relative_residual(step, solution.state) == pytest.approx(min(finite), rel=1e-6)


def with_forward(problem: Problem, spec: ForwardSolverSpec) -> Problem:
    return dataclasses.replace(problem, forward=BoundForward(spec, dict(spec.defaults)))


def graph_gradients(problem: Problem, graph_evaluations: int | None) -> tuple[Tensor, ...]:
    """dL/dw_F through the solver: the loss at F(h*), h* with a graph over its last evaluations."""
    with torch.enable_grad():
        h = solve_with_graph(problem, graph_evaluations)
        loss = problem.loss(problem.step(h, problem.num_steps - 1))
        grads = torch.autograd.grad(loss, problem.params_f, allow_unused=True)
    assert all(g is not None for g in grads)
    return grads


def graph_run_evaluations(problem: Problem) -> int:
    """Evaluations of F on a run of the solver with autograd recording (as solve_with_graph runs it)."""
    step = Counted(problem.step)
    forward = problem.forward
    assert forward is not None
    with torch.enable_grad():
        forward.spec.solve(step, S.detach(problem.initial_state), num_steps=1, **forward.params)
    return step.calls


def same_evaluations_with_and_without_graph(problem: Problem) -> bool:
    return graph_run_evaluations(problem) == solver_evaluations(problem)


def tuple_problem(
    dtype: torch.dtype = torch.float64,
) -> tuple[Callable[[State, int], State], State]:
    """A tiny contraction on a state of two tensors, a (3,) and b (2, 2), coupled both ways."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    w = (0.9 * w / torch.linalg.matrix_norm(w, 2)).to(dtype)
    c = torch.randn(3, generator=gen, dtype=torch.float64).to(dtype)

    def step(h: State, t: int) -> State:
        a, b = S.as_tuple(h)
        a_next = torch.tanh(w @ a + c + 0.05 * b.sum())
        b_next = 0.5 * torch.tanh(b) + 0.2 * a[:2, None] * a[1:, None].T
        return (a_next, b_next)

    h0 = (torch.zeros(3, dtype=dtype), torch.zeros(2, 2, dtype=dtype))
    return step, h0


def plain_fixed_point(step: Callable[[State, int], State], h0: State, steps: int = 2000) -> State:
    h = h0
    with torch.no_grad():
        for t in range(steps):
            h = step(h, t)
    return h


def check_registered(spec: ForwardSolverSpec) -> None:
    """The registry holds the spec, whose defaults are the solver's keyword defaults, plain numbers."""
    assert load_registry().forward(spec.name) is spec
    assert spec.differentiable and not spec.in_order
    signature = inspect.signature(spec.solve).parameters
    keywords = {k: p.default for k, p in signature.items() if p.kind is p.KEYWORD_ONLY}
    keywords.pop("num_steps")
    assert dict(spec.defaults) == keywords
    for value in spec.defaults.values():
        assert type(value) in (int, float)
