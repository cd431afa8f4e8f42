"""contractive-rnn: its construction and its exact gradient, checked by finite differences."""

from __future__ import annotations

import pytest
import torch

from rbpbench import measure
from rbpbench.forward import run_without_graph
from rbpbench.runner import spectral_radius_at_end
from rbpbench.tasks import contractive
from tests.conftest import contractive_problem


@pytest.mark.parametrize("rho", [0.5, 0.9, 0.99])
def test_w_has_the_requested_spectral_norm_and_radius(rho: float) -> None:
    w = contractive_problem(spectral_norm=rho).params_f[0]
    assert torch.linalg.matrix_norm(w, 2).item() == pytest.approx(rho, rel=1e-12)
    assert torch.linalg.eigvals(w).abs().max().item() == pytest.approx(rho, rel=1e-10)


def test_exact_gradient_matches_finite_differences_of_the_fixed_point_loss() -> None:
    problem = contractive_problem(seed=4, spectral_norm=0.9, hidden=6, inputs=3, batch=2)
    exact = problem.exact_gradient()
    x, target = problem.info["x"], problem.info["target"]
    pf, pg = problem.params_f, problem.params_g
    h0 = problem.initial_state

    def fixed_point_loss(params_f: tuple[torch.Tensor, ...]) -> float:
        h_star = contractive.solve_fixed_point(x, params_f, h0)
        with torch.no_grad():
            return float(contractive.readout_loss(h_star, target, pg))

    gen = torch.Generator().manual_seed(0)
    eps = 1e-6
    for index, param in enumerate(pf):
        direction = torch.randn(param.shape, generator=gen, dtype=param.dtype)
        plus = tuple(
            p.detach() + eps * direction if i == index else p.detach() for i, p in enumerate(pf)
        )
        minus = tuple(
            p.detach() - eps * direction if i == index else p.detach() for i, p in enumerate(pf)
        )
        finite_difference = (fixed_point_loss(plus) - fixed_point_loss(minus)) / (2 * eps)
        assert float((exact[index] * direction).sum()) == pytest.approx(finite_difference, rel=1e-6)


@pytest.mark.parametrize("hidden", [32, 160])
def test_the_spectral_radius_column_is_the_largest_eigenvalue_of_the_last_step(hidden: int) -> None:
    """J at h_{T-1} is block diagonal over the batch: diag(1 - h_T^2) W for each row.

    The default state (4 x 32) takes the dense path, 4 x 160 the Arnoldi one.
    """
    problem = contractive_problem(seed=2, spectral_norm=0.99, hidden=hidden)
    h_last = run_without_graph(problem, problem.num_steps)
    w = problem.params_f[0].detach()
    radius = max(
        torch.linalg.eigvals((1 - row**2)[:, None] * w).abs().max().item() for row in h_last
    )
    arnoldi = problem.initial_state.numel() > measure.DENSE_MAX_STATE
    assert arnoldi == (hidden > 32)
    assert spectral_radius_at_end(problem) == pytest.approx(radius, abs=1e-9 if arnoldi else 1e-12)


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="spectral_norm"):
        contractive_problem(spectral_norm=1.2)
    with pytest.raises(TypeError, match="unknown parameters"):
        contractive_problem(colour="red")


def test_problems_are_reproducible_per_seed() -> None:
    a, b, c = contractive_problem(seed=1), contractive_problem(seed=1), contractive_problem(seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.params_f, b.params_f, strict=True))
    assert not torch.equal(a.params_f[1], c.params_f[1])
