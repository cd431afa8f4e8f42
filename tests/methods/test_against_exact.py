"""Every paper method against the exact implicit gradient of contractive-rnn."""

from __future__ import annotations

import math

import pytest
import torch

from rbpbench import adjoint
from rbpbench import state as S
from rbpbench.forward import run_without_graph
from rbpbench.linearisation import LinearisedStep, LossTerms
from rbpbench.measure import relative_error
from rbpbench.methods.implicit import cg_rbp, neumann_rbp, rbp
from rbpbench.methods.unrolled import bptt, tbptt
from tests.conftest import contractive_problem

RADII = [0.5, 0.9, 0.99]
# Forward steps after which the state of each radius has converged in float64.
CONVERGED_STEPS = {0.5: 200, 0.9: 600, 0.99: 4000}


@pytest.fixture(params=RADII, ids=lambda r: f"rho={r}")
def converged(request):
    rho = request.param
    problem = contractive_problem(seed=3, spectral_norm=rho, steps=CONVERGED_STEPS[rho])
    return rho, problem, problem.exact_gradient()


def test_bptt_matches_exact_once_the_forward_has_converged(converged) -> None:
    _, problem, exact = converged
    result = bptt(problem, 0)
    assert result.forward_residual < 1e-12
    assert relative_error(result.grads_f, exact) < 1e-6


@pytest.mark.parametrize("method", [cg_rbp, neumann_rbp], ids=["cg-rbp", "neumann-rbp"])
def test_rbp_variants_with_enough_iterations_match_exact(converged, method) -> None:
    _, problem, exact = converged
    result = method(problem, 3000)
    assert relative_error(result.grads_f, exact) < 1e-6
    assert result.backward_residual < 1e-8


def test_original_rbp_with_enough_iterations_matches_exact(converged) -> None:
    _, problem, exact = converged
    for init in ("uniform", "zeros"):
        result = rbp(problem, 5000, init=init, tol=1e-13)
        assert relative_error(result.grads_f, exact) < 1e-6


def test_errors_shrink_with_truncation() -> None:
    problem = contractive_problem(seed=1, spectral_norm=0.9)
    exact = problem.exact_gradient()
    for method in (tbptt, neumann_rbp, cg_rbp):
        errors = [relative_error(method(problem, k).grads_f, exact) for k in (2, 8, 32, 128)]
        assert errors == sorted(errors, reverse=True), (method.__name__, errors)


@pytest.mark.parametrize("k", [0, 3, 10, 40])
def test_neumann_rbp_gradient_error_within_proposition_2(converged, k: int) -> None:
    """||grad_K - grad_exact|| <= ||dF/dw|| ||(I - J)^{-1}|| ||J||^{K+1} ||g||, J at h_{T-1}."""
    _, problem, _ = converged
    previous = run_without_graph(problem, problem.num_steps - 1)
    n = previous.numel()
    jac = torch.autograd.functional.jacobian(lambda h: problem.step(h, 0), previous).reshape(n, n)
    step = LinearisedStep(problem, previous)
    g = LossTerms(problem, step.h_next).g
    z_exact = torch.linalg.solve((torch.eye(n, dtype=jac.dtype) - jac).T, g.reshape(n))
    grad_exact = step.param_vjp(z_exact.reshape_as(g), release=False)
    result = neumann_rbp(problem, k)
    # dF/dw as a dense matrix: rows are state entries, columns are parameters.
    basis = torch.eye(n, dtype=g.dtype)
    dfdw = torch.stack([S.flatten(step.param_vjp(e.reshape_as(g), release=False)) for e in basis])
    j_norm = torch.linalg.matrix_norm(jac, 2)
    inv_norm = torch.linalg.matrix_norm(torch.linalg.inv(torch.eye(n, dtype=jac.dtype) - jac), 2)
    bound = torch.linalg.matrix_norm(dfdw, 2) * inv_norm * j_norm ** (k + 1) * g.norm()
    error = torch.linalg.vector_norm(S.flatten(result.grads_f) - S.flatten(grad_exact))
    assert error <= bound * (1 + 1e-9)
    if k == 0:
        assert error > 0.05 * bound  # the bound is not vacuous here


def test_last_step_jvp_and_vjp_agree_with_the_dense_jacobian() -> None:
    problem = contractive_problem(seed=2, spectral_norm=0.9)
    previous = run_without_graph(problem, problem.num_steps - 1)
    n = previous.numel()
    jac = torch.autograd.functional.jacobian(lambda h: problem.step(h, 0), previous).reshape(n, n)
    step = LinearisedStep(problem, previous)
    v = torch.randn_like(previous)
    torch.testing.assert_close(step.jvp(v).reshape(n), jac @ v.reshape(n), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(step.vjp(v).reshape(n), jac.T @ v.reshape(n), rtol=1e-12, atol=1e-12)
    # and against central finite differences, which know nothing of autograd
    eps = 1e-6
    fd = (problem.step(previous + eps * v, 0) - problem.step(previous - eps * v, 0)) / (2 * eps)
    torch.testing.assert_close(step.jvp(v), fd, rtol=1e-7, atol=1e-9)


def test_methods_report_their_diagnostics() -> None:
    problem = contractive_problem(seed=0, spectral_norm=0.9, steps=50)
    unrolled = tbptt(problem, 7)
    assert unrolled.backward_iterations == 8 and math.isnan(unrolled.backward_residual)
    assert unrolled.forward_residual > 1e-6  # not converged after 50 steps at rho = 0.9
    for method in (rbp, cg_rbp, neumann_rbp):
        result = method(problem, 7)
        assert result.backward_iterations <= 7
        assert result.backward_residual > 0
        assert math.isnan(method(problem, 7, diagnostics=False).backward_residual)
    # The reported residual is ||(I - J^T) z - g|| for the z actually used.
    step = LinearisedStep(problem, run_without_graph(problem, problem.num_steps - 1))
    g = LossTerms(problem, step.h_next).g
    z = adjoint.neumann(step, g, max_iter=7).z
    assert abs(step.adjoint_residual(z, g) - neumann_rbp(problem, 7).backward_residual) < 1e-15
