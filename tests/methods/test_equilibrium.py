"""jfb and phantom against their definitions, and the propositions that tie them to TBPTT."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rbpbench.forward import solve_forward
from rbpbench.gradients import grads_or_zeros
from rbpbench.methods.equilibrium import jfb, phantom
from rbpbench.methods.unrolled import tbptt
from rbpbench.testing.kit import check_memory_flat_in_t
from tests.conftest import contractive_problem, started_at_fixed_point


def close(a, b, tol=1e-12):
    return all(torch.allclose(x, y, rtol=tol, atol=tol) for x, y in zip(a, b, strict=True))


def test_jfb_is_the_parameter_vjp_of_dl_dh_at_the_fixed_point() -> None:
    problem = contractive_problem(steps=400, spectral_norm=0.9)
    h_star = solve_forward(problem)
    with torch.enable_grad():
        h_next = problem.step(h_star, 0)
        leaf = h_next.detach().requires_grad_(True)
        (dl_dh,) = torch.autograd.grad(problem.loss(leaf), leaf)
    by_hand = grads_or_zeros((h_next,), problem.params_f, (dl_dh,))
    for k in (1, 5, 100):  # K is ignored
        result = jfb(problem, k)
        assert close(result.grads_f, by_hand)
        assert result.backward_iterations == 0


def test_jfb_is_biased_where_the_spectral_radius_is_large() -> None:
    problem = contractive_problem(steps=3000, spectral_norm=0.99)
    exact = problem.exact_gradient()
    result = jfb(problem, 10)
    error = float(
        torch.linalg.vector_norm(
            torch.cat([(a - b).flatten() for a, b in zip(result.grads_f, exact, strict=True)])
        )
        / torch.linalg.vector_norm(torch.cat([b.flatten() for b in exact]))
    )
    assert error > 1e-3


@pytest.mark.parametrize("k", [1, 4, 20])
def test_phantom_with_tau_one_is_tbptt_from_the_fixed_point(k: int) -> None:
    problem = started_at_fixed_point(contractive_problem(steps=200, spectral_norm=0.9))
    assert close(phantom(problem, k, tau=1.0).grads_f, tbptt(problem, k - 1).grads_f)
    assert close(phantom(problem, k, tau=1.0).grads_g, tbptt(problem, k - 1).grads_g)


def test_phantom_with_one_step_is_jfb() -> None:
    problem = contractive_problem(steps=400, spectral_norm=0.9)
    assert close(phantom(problem, 1, tau=1.0).grads_f, jfb(problem, 1).grads_f)


def test_phantom_damping_by_hand() -> None:
    """Two damped steps from h*, back-propagated by hand."""
    problem = contractive_problem(steps=400, spectral_norm=0.9)
    tau = 0.5
    h_star = solve_forward(problem)
    with torch.enable_grad():
        h1 = (1 - tau) * h_star + tau * problem.step(h_star, 0)
        h2 = (1 - tau) * h1 + tau * problem.step(h1, 0)
        expected = grads_or_zeros((problem.loss(h2),), problem.params_f)
    assert close(phantom(problem, 2, tau=tau).grads_f, expected)


def test_phantom_refuses_bad_parameters() -> None:
    problem = contractive_problem(steps=20)
    with pytest.raises(ValueError, match="tau"):
        phantom(problem, 3, tau=0.0)
    with pytest.raises(ValueError, match="K must be at least 1"):
        phantom(problem, 0)


@pytest.mark.parametrize("name", ["jfb", "phantom"])
def test_memory_stays_flat_in_t(name: str, registry) -> None:
    from rbpbench.testing.kit import KitSettings

    spec = registry.method(name)
    check_memory_flat_in_t(spec, KitSettings())


def test_seeded_problem_is_unchanged_by_binding_a_forward() -> None:
    problem = contractive_problem(steps=50)
    again = dataclasses.replace(problem)
    assert close(jfb(problem, 1).grads_f, jfb(again, 1).grads_f)
