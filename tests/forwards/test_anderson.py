"""The ``anderson`` forward solver: convergence, its cost in evaluations of F, and its graph.

Evaluations of F to the default tolerance (eps ** 0.75: 1.8e-12 in float64,
6.4e-6 in float32), measured on contractive-rnn at its registered defaults
(hidden 32, batch 4, input_scale 0.5), seed 0, as iterate / anderson (default
parameters: m 20, beta 1, damping 1e-4):

=========  =========  =========  =========
dtype      rho 0.9    rho 0.99   rho 0.999
=========  =========  =========  =========
float64    160 / 121  334 / 164  373 / 166
float32     66 / 49   128 / 68   140 / 71
=========  =========  =========  =========

With input_scale 0.1 (tanh less saturated, so the contraction rate at the
fixed point is nearer rho) float64 took 239 / 166, 1463 / 407 and 2289 / 368.
The gain is modest at rho 0.9, and iterate needs far fewer than the
log(tol) / log(rho) steps rho alone suggests, because tanh' < 1 at the fixed
point makes the contraction there stronger (spectral radius about 0.93 at
rho 0.999); and contractive-rnn's Jacobian (rho times an orthogonal matrix
times tanh') has its eigenvalues around a circle, where no Krylov-type
acceleration beats plain iteration by much until its window spans the state.
The default window m = 20 is chosen for that: m = 5, 10, 30 took 345, 249, 134
at rho 0.999.
"""

from __future__ import annotations

import math

import pytest
import torch

from rbpbench.forwards.anderson import ANDERSON
from rbpbench.measure import relative_error
from rbpbench.tasks import contractive
from tests.forwards.solvers import (
    TOL32,
    TOL64,
    check_registered,
    check_solution,
    graph_gradients,
    initial_tensor,
    iterate_evaluations,
    nan_after,
    plain_fixed_point,
    rnn,
    run,
    run_step,
    same_evaluations_with_and_without_graph,
    shifted,
    solve_tensor,
    tuple_problem,
    with_forward,
)


def test_registered_with_every_parameter_as_a_plain_default() -> None:
    check_registered(ANDERSON)


@pytest.mark.parametrize(
    ("rho", "input_scale", "at_most"),
    [(0.9, 0.5, 0.85), (0.99, 0.5, 0.6), (0.999, 0.5, 0.6), (0.999, 0.1, 0.25)],
)
def test_reaches_the_tolerance_in_far_fewer_evaluations_than_iterate(
    rho: float, input_scale: float, at_most: float
) -> None:
    problem = rnn(rho, input_scale=input_scale)
    solution, calls = run(ANDERSON, problem)
    check_solution(problem.step, solution, calls)
    assert solution.trace[-1] <= TOL64
    assert calls <= at_most * iterate_evaluations(problem, TOL64)


@pytest.mark.parametrize("rho", [0.99, 0.999])
def test_float32_reaches_its_tolerance_and_stops(rho: float) -> None:
    problem = rnn(rho, dtype=torch.float32)
    solution, calls = run(ANDERSON, problem)
    check_solution(problem.step, solution, calls)
    assert solution.trace[-1] <= TOL32
    assert calls <= 0.6 * iterate_evaluations(problem, TOL32)


def test_float32_stops_at_max_iter_when_the_tolerance_is_out_of_reach() -> None:
    problem = rnn(0.99, dtype=torch.float32)
    solution, calls = run(ANDERSON, problem, tol=1e-12, max_iter=150)
    check_solution(problem.step, solution, calls)
    assert calls == 150
    assert 1e-12 < min(solution.trace) <= TOL32


def test_too_small_a_budget_returns_the_best_iterate_unconverged() -> None:
    problem = rnn(0.99)
    solution, calls = run(ANDERSON, problem, max_iter=6)
    check_solution(problem.step, solution, calls)
    assert calls == 6
    assert min(solution.trace) > 1e-3


def test_a_user_tolerance_is_the_stopping_criterion() -> None:
    problem = rnn(0.99)
    solution, calls = run(ANDERSON, problem, tol=1e-6)
    assert solution.trace[-1] <= 1e-6 < min(solution.trace[:-1])
    assert calls < run(ANDERSON, problem)[1]


def test_finds_the_fixed_point_iterate_finds() -> None:
    problem = rnn(0.99)
    solution, _ = run(ANDERSON, problem)
    x = problem.info["x"]
    h_star = contractive.solve_fixed_point(x, problem.params_f, initial_tensor(problem))
    assert isinstance(solution.state, torch.Tensor)
    assert torch.allclose(solution.state, h_star, rtol=0, atol=1e-10)
    assert torch.equal(solve_tensor(with_forward(problem, ANDERSON)), solution.state)


@pytest.mark.parametrize(("m", "beta"), [(1, 1.0), (5, 1.0), (20, 0.5), (20, 1.3)])
def test_windows_and_mixings_converge(m: int, beta: float) -> None:
    problem = rnn(0.9)
    solution, calls = run(ANDERSON, problem, m=m, beta=beta)
    check_solution(problem.step, solution, calls)
    assert solution.trace[-1] <= TOL64


def test_a_window_of_one_is_plain_iteration() -> None:
    problem = rnn(0.9)
    _, calls = run(ANDERSON, problem, m=1)
    assert calls == iterate_evaluations(problem, TOL64)


def test_a_tuple_state() -> None:
    step, h0 = tuple_problem()
    solution, calls = run_step(ANDERSON, step, h0)
    check_solution(step, solution, calls)
    assert solution.trace[-1] <= TOL64
    assert isinstance(solution.state, tuple) and len(solution.state) == 2
    for part, expected in zip(solution.state, plain_fixed_point(step, h0), strict=True):
        assert part.shape == expected.shape
        assert torch.allclose(part, expected, rtol=0, atol=1e-10)


def test_a_non_finite_step_stops_with_the_best_finite_iterate() -> None:
    problem = rnn(0.99)
    solution, calls = run_step(ANDERSON, nan_after(10, problem.step), problem.initial_state)
    assert calls == solution.iterations == len(solution.trace) == 11
    assert math.isnan(solution.trace[-1])
    assert all(math.isfinite(r) for r in solution.trace[:-1])
    assert isinstance(solution.state, torch.Tensor)
    assert bool(torch.isfinite(solution.state).all())


@pytest.mark.parametrize("damping", [0.0, 1e-4])
def test_residuals_that_never_change_do_not_break_the_least_squares(damping: float) -> None:
    """F(h) = h + c has no fixed point; every residual is c, so the Gram matrix is singular.

    The solver neither raises nor produces NaN (with no damping it may leap far,
    where the residual is small relative to F(h)).
    """
    c = torch.linspace(-1, 1, 6, dtype=torch.float64)
    solution, calls = run_step(
        ANDERSON, shifted(c), torch.zeros(6, dtype=torch.float64), damping=damping
    )
    assert solution.iterations == calls == len(solution.trace)
    assert all(math.isfinite(r) for r in solution.trace)
    if damping > 0:
        assert calls == 1000


@pytest.mark.parametrize("graph_evaluations", [None, 3])
def test_gradients_through_the_solver_exist_and_are_finite(graph_evaluations: int | None) -> None:
    problem = with_forward(rnn(0.99), ANDERSON)
    grads = graph_gradients(problem, graph_evaluations)
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    if graph_evaluations is None:
        # Differentiating through the whole converged solve gives the implicit gradient.
        # (measured: 2.3e-10 relative).
        assert relative_error(grads, problem.exact_gradient()) < 1e-8  # type: ignore[misc]


def test_a_run_with_a_graph_takes_the_evaluations_counted_without_one() -> None:
    for dtype in (torch.float64, torch.float32):
        assert same_evaluations_with_and_without_graph(
            with_forward(rnn(0.99, dtype=dtype), ANDERSON)
        )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"m": 0}, "anderson: m must be an int >= 1, got 0"),
        ({"beta": 0.0}, "anderson: beta must be a finite number > 0, got 0.0"),
        ({"beta": -1.0}, "anderson: beta must be"),
        ({"damping": -1e-4}, "anderson: damping must be a finite number >= 0"),
        ({"tol": -1e-9}, "anderson: tol must be a finite number >= 0"),
        ({"max_iter": 0}, "anderson: max_iter must be an int >= 1, got 0"),
    ],
)
def test_out_of_range_parameters_are_refused_by_name(
    params: dict[str, float], message: str
) -> None:
    problem = rnn(0.9)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        run(ANDERSON, problem, **params)
