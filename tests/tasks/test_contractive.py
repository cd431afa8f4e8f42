"""contractive-rnn: its construction and its exact gradient, checked by finite differences."""

from __future__ import annotations

import pytest
import torch

from rbpbench import measure
from rbpbench.cells import Cell
from rbpbench.forward import run_without_graph
from rbpbench.plugins import Registry
from rbpbench.problem import Problem
from rbpbench.runner import CellRunner
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


def last_step_radius(problem: Problem) -> float:
    """rho(J) at h_{T-1} from its structure: diag(1 - h_T^2) W for each row of the batch."""
    h_last = run_without_graph(problem, problem.num_steps)
    w = problem.params_f[0].detach()
    return max(torch.linalg.eigvals((1 - row**2)[:, None] * w).abs().max().item() for row in h_last)


def test_the_spectral_radius_column_is_the_largest_eigenvalue_of_the_last_step(
    registry: Registry,
) -> None:
    params = {"spectral_norm": 0.99}
    cell = Cell("contractive-rnn", "neumann-rbp", 5, 2, "cpu", tuple(params.items()))
    row = CellRunner(registry, "test").run(cell).row
    assert row["spectral_radius"] == pytest.approx(
        last_step_radius(contractive_problem(seed=2, **params)), abs=1e-12
    )


def test_a_state_above_the_dense_threshold_gets_its_radius_from_arnoldi() -> None:
    problem = contractive_problem(seed=2, spectral_norm=0.99, hidden=160)  # 4 x 160 numbers
    h_prev = run_without_graph(problem, problem.num_steps - 1).requires_grad_(True)
    with torch.enable_grad():
        h_next = problem.step(h_prev, problem.num_steps - 1)

    def vjp(v: torch.Tensor) -> torch.Tensor:
        (out,) = torch.autograd.grad(h_next, h_prev, v, retain_graph=True)
        return out

    estimate = measure.spectral_estimate(vjp, h_prev, seed=2)
    assert estimate.path in ("arnoldi", "arnoldi-partial")
    assert estimate.radius == pytest.approx(last_step_radius(problem), abs=1e-9)


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="spectral_norm"):
        contractive_problem(spectral_norm=1.2)
    with pytest.raises(TypeError, match="unknown parameters"):
        contractive_problem(colour="red")


def test_problems_are_reproducible_per_seed() -> None:
    a, b, c = contractive_problem(seed=1), contractive_problem(seed=1), contractive_problem(seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.params_f, b.params_f, strict=True))
    assert not torch.equal(a.params_f[1], c.params_f[1])
