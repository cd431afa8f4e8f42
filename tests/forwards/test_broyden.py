"""The ``broyden`` forward solver: convergence, its cost in evaluations of F, and its graph.

Evaluations of F to the default tolerance (eps ** 0.75: 1.8e-12 in float64,
6.4e-6 in float32), measured on contractive-rnn at its registered defaults
(hidden 32, batch 4, input_scale 0.5), seed 0, as iterate / broyden (default
parameters: memory 30, restarting when full):

=========  =========  =========  =========
dtype      rho 0.9    rho 0.99   rho 0.999
=========  =========  =========  =========
float64    160 / 119  334 / 186  373 / 193
float32     66 / 52   128 / 73   140 / 88
=========  =========  =========  =========

With input_scale 0.1 (tanh less saturated, so the contraction rate at the
fixed point is nearer rho) float64 took 239 / 166, 1463 / 364 and 2289 / 338.
The gain is modest for the reasons test_anderson's docstring gives (the
Jacobian's eigenvalues lie around a circle); more memory helps (memory 50 and
100 took 156 and 118 at rho 0.999). Dropping the oldest pair when the memory
is full, instead of restarting, diverged to NaN at rho 0.99 and 0.999.
"""

from __future__ import annotations

import math

import pytest
import torch

from rbpbench.forwards.broyden import BROYDEN
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
    check_registered(BROYDEN)


@pytest.mark.parametrize(
    ("rho", "input_scale", "at_most"),
    [(0.9, 0.5, 0.85), (0.99, 0.5, 0.65), (0.999, 0.5, 0.65), (0.999, 0.1, 0.25)],
)
def test_reaches_the_tolerance_in_far_fewer_evaluations_than_iterate(
    rho: float, input_scale: float, at_most: float
) -> None:
    problem = rnn(rho, input_scale=input_scale)
    solution, calls = run(BROYDEN, problem)
    check_solution(problem.step, solution, calls)
    assert solution.trace[-1] <= TOL64
    assert calls <= at_most * iterate_evaluations(problem, TOL64)


@pytest.mark.parametrize("rho", [0.99, 0.999])
def test_float32_reaches_its_tolerance_and_stops(rho: float) -> None:
    problem = rnn(rho, dtype=torch.float32)
    solution, calls = run(BROYDEN, problem)
    check_solution(problem.step, solution, calls)
    assert solution.trace[-1] <= TOL32
    assert calls <= 0.7 * iterate_evaluations(problem, TOL32)


def test_float32_stops_at_max_iter_when_the_tolerance_is_out_of_reach() -> None:
    problem = rnn(0.99, dtype=torch.float32)
    solution, calls = run(BROYDEN, problem, tol=1e-12, max_iter=150)
    check_solution(problem.step, solution, calls)
    assert calls == 150
    assert 1e-12 < min(solution.trace) <= TOL32


def test_too_small_a_budget_returns_the_best_iterate_unconverged() -> None:
    problem = rnn(0.99)
    solution, calls = run(BROYDEN, problem, max_iter=6)
    check_solution(problem.step, solution, calls)
    assert calls == 6
    assert min(solution.trace) > 1e-3


def test_a_user_tolerance_is_the_stopping_criterion() -> None:
    problem = rnn(0.99)
    solution, calls = run(BROYDEN, problem, tol=1e-6)
    assert solution.trace[-1] <= 1e-6 < min(solution.trace[:-1])
    assert calls < run(BROYDEN, problem)[1]


def test_finds_the_fixed_point_iterate_finds() -> None:
    problem = rnn(0.99)
    solution, _ = run(BROYDEN, problem)
    x = problem.info["x"]
    h_star = contractive.solve_fixed_point(x, problem.params_f, initial_tensor(problem))
    assert isinstance(solution.state, torch.Tensor)
    assert torch.allclose(solution.state, h_star, rtol=0, atol=1e-10)
    assert torch.equal(solve_tensor(with_forward(problem, BROYDEN)), solution.state)


@pytest.mark.parametrize("memory", [1, 5, 30, 200])
def test_memories_converge_restarting_when_full(memory: int) -> None:
    problem = rnn(0.99)
    solution, calls = run(BROYDEN, problem, memory=memory)
    check_solution(problem.step, solution, calls)
    assert solution.trace[-1] <= TOL64


def test_the_first_step_is_plain_iteration() -> None:
    problem = rnn(0.9)
    solution, _ = run(BROYDEN, problem, max_iter=2)
    h1 = plain_fixed_point(problem.step, problem.initial_state, steps=1)
    assert isinstance(h1, torch.Tensor)
    assert solution.trace[1] < solution.trace[0]
    assert isinstance(solution.state, torch.Tensor)
    assert torch.equal(solution.state, h1)


def test_a_tuple_state() -> None:
    step, h0 = tuple_problem()
    solution, calls = run_step(BROYDEN, step, h0)
    check_solution(step, solution, calls)
    assert solution.trace[-1] <= TOL64
    assert isinstance(solution.state, tuple) and len(solution.state) == 2
    for part, expected in zip(solution.state, plain_fixed_point(step, h0), strict=True):
        assert part.shape == expected.shape
        assert torch.allclose(part, expected, rtol=0, atol=1e-10)


def test_a_non_finite_step_stops_with_the_best_finite_iterate() -> None:
    problem = rnn(0.99)
    solution, calls = run_step(BROYDEN, nan_after(10, problem.step), problem.initial_state)
    assert calls == solution.iterations == len(solution.trace) == 11
    assert math.isnan(solution.trace[-1])
    assert all(math.isfinite(r) for r in solution.trace[:-1])
    assert isinstance(solution.state, torch.Tensor)
    assert bool(torch.isfinite(solution.state).all())


def test_a_secant_pair_with_no_change_in_g_skips_the_update() -> None:
    """F(h) = h + c: g is c everywhere, so every dg is 0 and the update's denominator too."""
    c = torch.linspace(-1, 1, 6, dtype=torch.float64)
    solution, calls = run_step(
        BROYDEN, shifted(c), torch.zeros(6, dtype=torch.float64), max_iter=50
    )
    assert calls == 50
    assert all(math.isfinite(r) for r in solution.trace)
    # With no update B stays -I: every step is one of plain iteration, h_k = k c.
    assert isinstance(solution.state, torch.Tensor)
    assert torch.allclose(solution.state, 49 * c)


def test_an_affine_map_is_solved_in_a_few_steps() -> None:
    """Broyden's method on a linear g ends in at most 2n steps (Gay); here n = 4."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    a = 0.95 * a / torch.linalg.matrix_norm(a, 2)
    b = torch.randn(4, generator=gen, dtype=torch.float64)
    solution, calls = run_step(BROYDEN, lambda h, t: a @ h + b, torch.zeros(4, dtype=torch.float64))
    assert solution.trace[-1] <= TOL64
    assert calls <= 2 * 4 + 2


@pytest.mark.parametrize("graph_evaluations", [None, 3])
def test_gradients_through_the_solver_exist_and_are_finite(graph_evaluations: int | None) -> None:
    problem = with_forward(rnn(0.99), BROYDEN)
    grads = graph_gradients(problem, graph_evaluations)
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    if graph_evaluations is None:
        # Differentiating through the whole converged solve approaches the implicit gradient
        # (measured: 2.4e-7 relative).
        assert relative_error(grads, problem.exact_gradient()) < 1e-5  # type: ignore[misc]


def test_a_run_with_a_graph_takes_the_evaluations_counted_without_one() -> None:
    for dtype in (torch.float64, torch.float32):
        assert same_evaluations_with_and_without_graph(
            with_forward(rnn(0.99, dtype=dtype), BROYDEN)
        )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"memory": 0}, "broyden: memory must be an int >= 1, got 0"),
        ({"tol": -1e-9}, "broyden: tol must be a finite number >= 0"),
        ({"tol": math.nan}, "broyden: tol must be a finite number >= 0"),
        ({"max_iter": 0}, "broyden: max_iter must be an int >= 1, got 0"),
        ({"max_iter": 2.5}, "broyden: max_iter must be an int >= 1, got 2.5"),
    ],
)
def test_out_of_range_parameters_are_refused_by_name(
    params: dict[str, float], message: str
) -> None:
    problem = rnn(0.9)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        run(BROYDEN, problem, **params)
