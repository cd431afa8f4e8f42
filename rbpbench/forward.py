"""The forward pass: finding h* with the cell's forward solver, and which of its steps keep a graph.

Shared by every method, so that "which steps keep a graph" is decided in one
place. A cell's forward solver (``iterate`` unless it says otherwise; see
:class:`~rbpbench.problem.ForwardSolverSpec`) finds h*, the point the final
step starts from; the final step h_T = F(h*) is taken by the method's building
blocks. With ``iterate`` h* is h_{T-1}: T - 1 steps of F, then the final one,
as the paper's methods always did.

- :func:`solve_forward` gives h* without a graph: the RBP family linearises the final
  step there (:class:`rbpbench.linearisation.LinearisedStep`), and the
  phantom gradient and JFB start from it;
- :func:`solve_with_graph` gives h* with a graph over the solver's last few
  evaluations of F (or all of them): BPTT and TBPTT differentiate through the
  solver's own iterations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rbpbench import state as S
from rbpbench.problem import BoundForward, ForwardSolution, ForwardSolverSpec, Problem
from rbpbench.state import State


class ForwardMismatch(Exception):
    """A problem and a forward solver that cannot go together (the cell is skipped, saying why)."""


def iterate(step: Callable[[State, int], State], h0: State, *, num_steps: int) -> ForwardSolution:
    """``num_steps`` steps of F from ``h0``, in order: h_{t+1} = F_t(h_t)."""
    h = h0
    for t in range(num_steps):
        h = step(h, t)
    return ForwardSolution(h, num_steps)


ITERATE = ForwardSolverSpec(
    "iterate",
    iterate,
    "T steps of F, in order (the paper's forward pass; the default)",
    in_order=True,
)


def forward_of(problem: Problem) -> BoundForward:
    """The problem's forward solver: the one bound for its cell, else ``iterate``."""
    return problem.forward if problem.forward is not None else BoundForward(ITERATE)


def check_forward(problem: Problem, forward: BoundForward | None = None) -> None:
    """Raise :class:`ForwardMismatch` when ``forward`` cannot solve ``problem``'s forward pass."""
    forward = forward or forward_of(problem)
    if problem.time_varying and not forward.spec.in_order:
        raise ForwardMismatch(
            f"the task's step depends on t (a different F_t each step), so its forward pass "
            f"has no fixed point for {forward.name} to find; only a forward that takes the "
            "steps in order (iterate) applies"
        )


def _run(problem: Problem, step: Callable[[State, int], State]) -> ForwardSolution:
    forward = forward_of(problem)
    check_forward(problem, forward)
    h0 = S.detach(problem.initial_state)
    solution = forward.spec.solve(step, h0, num_steps=problem.num_steps - 1, **forward.params)
    if not isinstance(solution, ForwardSolution):
        raise TypeError(
            f"forward solver {forward.name} returned {type(solution).__name__}, "
            "not a ForwardSolution"
        )
    return solution


def solve_forward(problem: Problem) -> State:
    """h*, the point the final step starts from, with no autograd graph kept."""
    with torch.no_grad():
        return S.detach(_run(problem, problem.step).state)


def final_step(problem: Problem, h: State) -> State:
    """h_T = F_{T-1}(h), the step every method takes from h* (with a graph if grad is enabled)."""
    return problem.step(h, problem.num_steps - 1)


def solver_evaluations(problem: Problem) -> int:
    """How many times the problem's forward solver evaluates F before h*.

    ``num_steps`` - 1 for a solver that takes the steps in order; otherwise
    counted on a run without a graph (the solvers are deterministic).
    """
    forward = forward_of(problem)
    if forward.spec.in_order:
        return problem.num_steps - 1
    calls = 0

    def counted(h: State, t: int) -> State:
        nonlocal calls
        calls += 1
        return problem.step(h, t)

    with torch.no_grad():
        _run(problem, counted)
    return calls


def solve_with_graph(problem: Problem, graph_evaluations: int | None = None) -> tuple[State, int]:
    """h* with an autograd graph over the solver's last ``graph_evaluations`` evaluations of F,
    and how many evaluations have one.

    None: over all of them (BPTT through the whole solve). Earlier evaluations
    run without a graph, so what the solver computes from them is a constant.
    A solver that does not take the steps in order is run twice when only
    its last evaluations keep a graph: once to count them, once for real.
    """
    forward = forward_of(problem)
    if not forward.spec.differentiable:
        raise ForwardMismatch(
            f"forward solver {forward.name} cannot be differentiated through "
            "(it declares differentiable=False)"
        )
    if graph_evaluations is not None and graph_evaluations <= 0:
        return solve_forward(problem), 0
    first_with_graph = 0
    if graph_evaluations is not None:
        first_with_graph = max(0, solver_evaluations(problem) - graph_evaluations)
    calls = 0

    def step(h: State, t: int) -> State:
        nonlocal calls
        calls += 1
        if calls <= first_with_graph:
            with torch.no_grad():
                return problem.step(h, t)
        return problem.step(h, t)

    with torch.enable_grad():
        h_star = _run(problem, step).state
    return h_star, max(0, calls - first_with_graph)


def run_without_graph(problem: Problem, num_steps: int) -> State:
    """``h_{num_steps}`` of plain iteration from the initial state, with no autograd graph kept."""
    h = S.detach(problem.initial_state)
    with torch.no_grad():
        for t in range(num_steps):
            h = problem.step(h, t)
    return h
