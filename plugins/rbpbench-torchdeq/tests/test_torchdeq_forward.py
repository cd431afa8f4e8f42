"""torchdeq-anderson and torchdeq-broyden as rbpbench forward solvers."""

from __future__ import annotations

import math

import pytest
import torch
from rbpbench_torchdeq import ANDERSON, BROYDEN, anderson, broyden
from rbpbench_torchdeq.layout import default_tolerance
from torchdeq_helpers import problem, relative_residual, two_part_state_problem, with_forward

from rbpbench import ForwardSolverSpec, Problem, State
from rbpbench import state as S
from rbpbench.costs import counted
from rbpbench.forward import ForwardMismatch, solve_forward, solve_with_graph

SPECS = {"torchdeq-anderson": ANDERSON, "torchdeq-broyden": BROYDEN}
F64_TOL = default_tolerance(torch.float64)


def iterations_to_reach(p: Problem, tol: float, limit: int = 20_000) -> int:
    """Evaluations of F plain iteration needs before an iterate's relative residual is <= tol."""
    h: State = S.detach(p.initial_state)
    with torch.no_grad():
        for n in range(1, limit + 1):
            fh = p.step(h, 0)
            if float(S.norm(S.sub(fh, h)) / S.norm(fh)) <= tol:
                return n
            h = fh
    raise AssertionError(f"plain iteration did not reach {tol} in {limit} evaluations")


def test_the_defaults_are_tight() -> None:
    assert math.isclose(F64_TOL, 1.82e-12, rel_tol=0.01)
    assert math.isclose(default_tolerance(torch.float32), 6.4e-6, rel_tol=0.01)
    assert ANDERSON.defaults == {"m": 6, "beta": 1.0, "lam": 0.0, "tol": 0.0, "max_iter": 1000}
    assert BROYDEN.defaults == {"memory": 0, "tol": 0.0, "max_iter": 1000}
    assert not ANDERSON.differentiable and not BROYDEN.differentiable
    assert not ANDERSON.in_order and not BROYDEN.in_order


@pytest.mark.parametrize(
    ("name", "params", "speedup"),
    [
        ("torchdeq-broyden", {}, 2.5),  # measured: 112 evaluations
        ("torchdeq-anderson", {"m": 40}, 2.0),  # measured: 128
        ("torchdeq-anderson", {}, 1.0),  # m = 6, measured: 284, barely below iteration
    ],
)
def test_the_solvers_reach_the_fixed_point_in_far_fewer_evaluations_than_iteration(
    name: str, params: dict[str, object], speedup: float
) -> None:
    """At spectral norm 0.99 (seed 0) plain iteration needs 334 evaluations to a relative
    residual of 1.8e-12. contractive-rnn's W is rho times an orthogonal matrix: its
    eigenvalues lie on a circle, the case where a small Anderson window gains least."""
    p = problem(0.99, steps=100)
    plain = iterations_to_reach(p, F64_TOL)
    solution = SPECS[name].solve(p.step, S.detach(p.initial_state), num_steps=99, **params)
    assert relative_residual(p, solution.state) <= F64_TOL
    assert solution.iterations * speedup < plain


@pytest.mark.parametrize("name", SPECS)
def test_the_harness_counts_the_evaluations_the_solution_reports(name: str) -> None:
    base = with_forward(problem(0.9, steps=50), SPECS[name])
    p, costs = counted(base)
    h_star = solve_forward(p)
    solution = SPECS[name].solve(base.step, S.detach(base.initial_state), num_steps=49)
    assert costs.forward_evaluations == solution.iterations == len(solution.trace)
    pairs = zip(S.as_tuple(h_star), S.as_tuple(solution.state), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert min(solution.trace) <= F64_TOL
    if name == "torchdeq-broyden":  # it returns the iterate of lowest residual
        assert relative_residual(base, h_star) == pytest.approx(min(solution.trace), rel=1e-6)


def test_max_iter_bounds_the_evaluations() -> None:
    p = problem(0.99, steps=10)
    h0 = S.detach(p.initial_state)
    assert anderson(p.step, h0, num_steps=9, max_iter=10).iterations == 10
    assert broyden(p.step, h0, num_steps=9, max_iter=10).iterations == 11  # one to start


def test_step_sees_the_index_of_its_call() -> None:
    p = problem(0.9, steps=10)
    seen: list[int] = []

    def step(h: State, t: int) -> State:
        seen.append(t)
        return p.step(h, t)

    solution = anderson(step, S.detach(p.initial_state), num_steps=9, max_iter=5, tol=1e-300)
    assert seen == list(range(5)) and solution.iterations == 5


@pytest.mark.parametrize("name", SPECS)
def test_tuple_states_keep_their_structure(name: str) -> None:
    p = two_part_state_problem()
    h0 = S.detach(p.initial_state)
    solution = SPECS[name].solve(p.step, h0, num_steps=10)
    assert isinstance(solution.state, tuple)
    assert [x.shape for x in solution.state] == [x.shape for x in h0]
    assert relative_residual(p, solution.state) <= F64_TOL


@pytest.mark.parametrize("name", SPECS)
def test_float32_reaches_its_own_default_tolerance(name: str) -> None:
    p = problem(0.9, steps=10, dtype=torch.float32)
    solution = SPECS[name].solve(p.step, S.detach(p.initial_state), num_steps=9)
    assert S.as_tuple(solution.state)[0].dtype == torch.float32
    assert relative_residual(p, solution.state) <= default_tolerance(torch.float32)
    assert solution.iterations < 200


@pytest.mark.parametrize("name", SPECS)
def test_the_solvers_cannot_be_differentiated_through(name: str) -> None:
    """torchdeq writes into preallocated buffers and detaches the iterate it returns."""
    p = with_forward(problem(0.9, steps=10), SPECS[name])
    with torch.enable_grad():
        solution = SPECS[name].solve(p.step, S.detach(p.initial_state), num_steps=9)
    assert not any(x.requires_grad for x in S.as_tuple(solution.state))
    with pytest.raises(ForwardMismatch, match="differentiable=False"):
        solve_with_graph(p)


@pytest.mark.parametrize(
    ("spec", "params", "match"),
    [
        (ANDERSON, {"m": 1}, "m must be an int >= 2"),
        (ANDERSON, {"beta": 0.0}, "beta"),
        (ANDERSON, {"lam": -1.0}, "lam"),
        (ANDERSON, {"max_iter": 2}, "max_iter must be an int >= 3"),
        (BROYDEN, {"memory": -1}, "memory"),
        (BROYDEN, {"tol": math.inf}, "tol"),
        (BROYDEN, {"max_iter": 0}, "max_iter"),
    ],
)
def test_bad_parameters_are_refused(
    spec: ForwardSolverSpec, params: dict[str, object], match: str
) -> None:
    p = problem(0.9, steps=10)
    with pytest.raises(ValueError, match=match):
        spec.solve(p.step, S.detach(p.initial_state), num_steps=9, **params)
