"""torchdeq-ift and torchdeq-phantom against exact gradients, rbpbench's methods and by-hand autograd."""

from __future__ import annotations

import math

import pytest
import torch
from rbpbench_torchdeq import ANDERSON, BROYDEN, ift, phantom
from torchdeq_helpers import problem, two_part_state_problem, with_forward

from rbpbench import LinearisedStep, LossTerms, Problem, final_step, solve_forward
from rbpbench import state as S
from rbpbench.costs import counted
from rbpbench.measure import relative_error
from rbpbench.methods.implicit import neumann_rbp
from rbpbench.methods.unrolled import bptt, tbptt
from rbpbench.plugins import load_registry

SOLVERS = ["fixed_point_iter", "anderson", "broyden"]


def forwards() -> dict[str, Problem | None]:
    """The forwards torchdeq-ift is checked on: rbpbench's iterate, torchdeq's two, and
    rbpbench's own anderson where it is installed (None: skip)."""
    p = problem(0.9)
    registry = load_registry(warn=False)
    own = registry.forwards.get("anderson")
    return {
        "iterate": p,
        "torchdeq-anderson": with_forward(p, ANDERSON),
        "torchdeq-broyden": with_forward(p, BROYDEN),
        "anderson": None if own is None else with_forward(p, own[0]),
    }


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize(
    "forward", ["iterate", "torchdeq-anderson", "torchdeq-broyden", "anderson"]
)
def test_ift_matches_the_exact_gradient_at_k_100(forward: str, solver: str) -> None:
    """Measured (float64, spectral norm 0.9, seed 0): 5.3e-8 with fixed_point_iter, 4.0e-8
    with anderson, 1.1e-10 with broyden (which stops on tol after 81 products), on every forward."""
    p = forwards()[forward]
    if p is None:
        pytest.skip("rbpbench's own forward solver 'anderson' is not registered here")
    assert p.exact_gradient is not None
    result = ift(p, 100, solver=solver)
    assert relative_error(result.grads_f, p.exact_gradient()) < 1e-6
    reference_g = LossTerms(p, final_step(p, solve_forward(p))).grads_g
    assert relative_error(result.grads_g, reference_g) < 1e-12
    assert result.forward_residual < 1e-10
    assert 0 < result.backward_iterations <= 100 and result.backward_residual < 1e-7


def test_ift_with_fixed_point_iteration_is_neumann_rbp_with_one_product_fewer() -> None:
    """torchdeq's fixed_point_iter starts at z = 0 and spends a J^T product on it, so K
    iterations sum K terms of the Neumann series: neumann-rbp with K - 1 products."""
    p = problem(0.9)
    for k in (1, 2, 5, 30):
        ours = ift(p, k, tol=0.0)
        assert ours.backward_iterations == k
        assert relative_error(ours.grads_f, neumann_rbp(p, k - 1).grads_f) < 1e-12


def test_ift_backward_residual_is_that_of_torchdeqs_adjoint() -> None:
    """At K = 1 torchdeq's z is g itself, so ||(I - J^T) z - g|| = ||J^T g|| with J at h*."""
    p = problem(0.9)
    result = ift(p, 1)
    step = LinearisedStep(p, solve_forward(p))
    g = LossTerms(p, step.h_next).g
    assert result.backward_residual == pytest.approx(float(S.norm(step.vjp(g))), rel=1e-12)
    assert result.backward_residual == pytest.approx(step.adjoint_residual(g, g), rel=1e-12)
    residuals = [ift(p, k).backward_residual for k in (1, 10, 50)]
    assert residuals[0] > residuals[1] > residuals[2]


@pytest.mark.parametrize("solver", SOLVERS)
def test_ift_without_diagnostics_gives_the_same_gradients(solver: str) -> None:
    p = problem(0.9, steps=100)
    full, quick = ift(p, 20, solver=solver), ift(p, 20, solver=solver, diagnostics=False)
    assert all(
        torch.equal(a, b)
        for a, b in zip(full.grads_f + full.grads_g, quick.grads_f + quick.grads_g, strict=True)
    )
    assert math.isfinite(full.backward_residual) and math.isnan(quick.backward_residual)
    assert (full.loss, full.forward_residual) == (quick.loss, quick.forward_residual)


def test_ift_stops_on_its_tolerance_and_counts_its_products() -> None:
    p = problem(0.9)
    loose, tight = ift(p, 500, tol=1e-4), ift(p, 500, tol=1e-12)
    assert loose.backward_iterations < tight.backward_iterations < 500
    assert loose.backward_residual > tight.backward_residual


def test_the_harness_counts_what_ift_evaluates() -> None:
    """T - 1 steps to h*, F(h*), torchdeq's own re-evaluation of F at F(h*) in its backward
    pass; K J^T products and the one (dF/dw)^T z."""
    base = problem(0.9, steps=120)
    p, costs = counted(base)
    result = ift(p, 25, tol=0.0)
    assert result.backward_iterations == 25
    assert costs.forward_evaluations == (base.num_steps - 1) + 2
    assert costs.backward_vjps == 25 + 1 and costs.backward_jvps == 0


def test_ift_on_a_tuple_state_with_a_direct_partial_agrees_with_bptt() -> None:
    p = two_part_state_problem()
    ours, reference = ift(p, 200, solver="broyden"), bptt(p, 0)
    assert relative_error(ours.grads_f, reference.grads_f) < 1e-9
    assert relative_error(ours.grads_g, reference.grads_g) < 1e-12
    assert ours.loss == pytest.approx(reference.loss, rel=1e-12)


def test_ift_in_float32_stays_float32() -> None:
    p = problem(0.9, dtype=torch.float32)
    result = ift(p, 100)
    assert all(g.dtype == torch.float32 for g in result.grads_f + result.grads_g)
    assert p.exact_gradient is not None
    assert relative_error(result.grads_f, p.exact_gradient()) < 1e-4


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"solver": "newton"}, "solver must be one of fixed_point_iter, anderson, broyden"),
        ({"stop_mode": "relative"}, "stop_mode"),
        ({"tol": -1.0}, "tol"),
        ({"m": 1}, "m must be"),
        ({"lam": float("nan")}, "lam"),
    ],
)
def test_ift_refuses_bad_parameters(params: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ift(problem(0.9, steps=20), 5, **params)  # type: ignore[arg-type]


def test_methods_refuse_k_below_one() -> None:
    p = problem(0.9, steps=20)
    with pytest.raises(ValueError, match="truncation K must be an int >= 1"):
        ift(p, 0)
    with pytest.raises(ValueError, match="truncation K must be an int >= 1"):
        phantom(p, 0)
    with pytest.raises(ValueError, match="tau"):
        phantom(p, 3, tau=0.0)


def by_hand_phantom(p: Problem, k: int, tau: float) -> tuple[torch.Tensor, ...]:
    """K damped steps of the final step from h* with a graph; the loss at the last, back-propagated."""
    h = solve_forward(p)
    with torch.enable_grad():
        for _ in range(k):
            h = S.add(S.scale(h, 1 - tau), final_step(p, h), tau)
        loss = p.loss(h)
    return torch.autograd.grad(loss, p.params_f + p.params_g)


@pytest.mark.parametrize("tau", [1.0, 0.6])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_phantom_is_back_propagation_through_k_damped_steps_from_h_star(k: int, tau: float) -> None:
    p = problem(0.9, steps=80)
    ours = phantom(p, k, tau=tau)
    expected = by_hand_phantom(p, k, tau)
    n_f = len(p.params_f)
    assert relative_error(ours.grads_f, expected[:n_f]) < 1e-13
    assert relative_error(ours.grads_g, expected[n_f:]) < 1e-13
    assert ours.backward_iterations == k and math.isnan(ours.backward_residual)


def test_phantom_with_one_undamped_step_is_neumann_rbp_with_none() -> None:
    """One step, tau = 1: the gradient (dF/dw)^T dL/dh_T at h*, i.e. z = g (JFB)."""
    p = problem(0.9, steps=80)
    ours, reference = phantom(p, 1), neumann_rbp(p, 0)
    assert relative_error(ours.grads_f, reference.grads_f) < 1e-13
    assert ours.loss == reference.loss and ours.forward_residual == reference.forward_residual


@pytest.mark.parametrize("k", [5, 50])
def test_phantom_on_a_converged_forward_is_tbptt_with_one_product_fewer(k: int) -> None:
    """Both back-propagate K steps; tbptt's K counts the Jacobian products (K + 1 steps)."""
    p = problem(0.9)
    ours, reference = phantom(p, k), tbptt(p, k - 1)
    assert relative_error(ours.grads_f, reference.grads_f) < 1e-13
    assert relative_error(ours.grads_g, reference.grads_g) < 1e-13


def test_phantom_is_biased_at_small_k_and_reaches_the_exact_gradient_as_k_grows() -> None:
    """Measured at spectral norm 0.9: 2.2e-2 at K = 20, below 1e-9 at K = 300 (tau = 1)."""
    p = problem(0.9)
    assert p.exact_gradient is not None
    exact = p.exact_gradient()
    assert relative_error(phantom(p, 20).grads_f, exact) > 1e-3
    assert relative_error(phantom(p, 300).grads_f, exact) < 1e-8


def test_phantom_reports_the_loss_at_h_t_and_the_harness_counts_its_steps() -> None:
    base = problem(0.9, steps=40)  # far from converged: z_K is not h_T
    p, costs = counted(base)
    result = phantom(p, 7, tau=0.5)
    h_star = solve_forward(base)
    with torch.no_grad():
        h_final = final_step(base, h_star)
    assert result.loss == pytest.approx(float(base.loss(h_final).detach()), rel=1e-14)
    assert result.forward_residual == pytest.approx(float(S.norm(S.sub(h_final, h_star))))
    assert costs.forward_evaluations == (base.num_steps - 1) + 7
    assert costs.backward_vjps == 7


def test_phantom_on_a_forward_of_torchdeq() -> None:
    p = with_forward(problem(0.9), BROYDEN)
    assert p.exact_gradient is not None
    assert relative_error(phantom(p, 300).grads_f, p.exact_gradient()) < 1e-8
