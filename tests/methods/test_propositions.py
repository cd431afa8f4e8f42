"""The paper's Propositions 1 and 3, checked on the methods themselves."""

from __future__ import annotations

import pytest
import torch

from rbpbench.measure import relative_error
from rbpbench.methods.implicit import neumann_rbp, rbp
from rbpbench.methods.unrolled import bptt, tbptt
from tests.conftest import contractive_problem, started_at_fixed_point


@pytest.mark.parametrize("k", [1, 5, 20, 60])
@pytest.mark.parametrize("rho", [0.5, 0.9, 0.99])
def test_proposition_1_tbptt_equals_neumann_rbp_at_the_fixed_point(rho: float, k: int) -> None:
    problem = started_at_fixed_point(contractive_problem(seed=5, spectral_norm=rho, steps=100))
    unrolled, neumann = tbptt(problem, k), neumann_rbp(problem, k)
    assert unrolled.forward_residual < 1e-14
    assert relative_error(unrolled.grads_f, neumann.grads_f) < 1e-12
    for a, b in zip(unrolled.grads_g, neumann.grads_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_proposition_1_full_neumann_rbp_equals_bptt() -> None:
    problem = started_at_fixed_point(contractive_problem(seed=6, spectral_norm=0.9, steps=400))
    assert relative_error(neumann_rbp(problem, 399).grads_f, bptt(problem, 0).grads_f) < 1e-12


def test_proposition_1_needs_its_assumption() -> None:
    """Far from the fixed point (few steps from h0 = 0) the two differ: the test above is not vacuous."""
    problem = contractive_problem(seed=5, spectral_norm=0.9, steps=8)
    assert relative_error(tbptt(problem, 5).grads_f, neumann_rbp(problem, 5).grads_f) > 1e-3


@pytest.mark.parametrize("k", [0, 1, 5, 30])
def test_proposition_3_rbp_from_zero_equals_neumann_rbp(k: int) -> None:
    problem = contractive_problem(seed=7, spectral_norm=0.9, steps=60)
    original = rbp(problem, k + 1, init="zeros", tol=0.0)
    neumann = neumann_rbp(problem, k)
    assert original.backward_iterations == k + 1
    assert relative_error(original.grads_f, neumann.grads_f) < 1e-13


def test_rbp_from_uniform_start_differs_and_is_seeded() -> None:
    problem = contractive_problem(seed=7, spectral_norm=0.9, steps=60)
    uniform = rbp(problem, 5, init="uniform", tol=0.0)
    assert relative_error(uniform.grads_f, neumann_rbp(problem, 4).grads_f) > 1e-3
    again = rbp(problem, 5, init="uniform", tol=0.0)
    assert relative_error(uniform.grads_f, again.grads_f) == 0.0


def test_rbp_rejects_an_unknown_start() -> None:
    with pytest.raises(ValueError, match="init must be"):
        rbp(contractive_problem(steps=5), 3, init="gaussian")
