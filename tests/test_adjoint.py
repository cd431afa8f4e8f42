"""The adjoint solvers on explicit matrices, where (I - A^T)^{-1} g is known exactly."""

from __future__ import annotations

import pytest
import torch

from rbpbench import adjoint
from rbpbench import state as S


class MatrixOperator:
    """J as an explicit matrix acting on a state (a tensor or a tuple of tensors)."""

    def __init__(self, matrix: torch.Tensor, template: S.State) -> None:
        self.matrix, self.template = matrix, template

    def vjp(self, v: S.State) -> S.State:
        return S.unflatten(self.matrix.T @ S.flatten(v), self.template)

    def jvp(self, v: S.State) -> S.State:
        return S.unflatten(self.matrix @ S.flatten(v), self.template)


def random_operator(n: int, radius: float, seed: int, template: S.State) -> MatrixOperator:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    a *= radius / torch.linalg.eigvals(a).abs().max()
    return MatrixOperator(a, template)


def exact_adjoint(op: MatrixOperator, g: S.State) -> torch.Tensor:
    n = op.matrix.shape[0]
    return torch.linalg.solve(torch.eye(n, dtype=torch.float64) - op.matrix.T, S.flatten(g))


TEMPLATES = {
    "tensor": torch.zeros(3, 4, dtype=torch.float64),
    "tuple": (torch.zeros(5, dtype=torch.float64), torch.zeros(7, dtype=torch.float64)),
}


@pytest.mark.parametrize("template", TEMPLATES.values(), ids=TEMPLATES.keys())
@pytest.mark.parametrize(
    "solve",
    [adjoint.fixed_point, adjoint.neumann, adjoint.cg_normal_equations],
    ids=["fixed_point", "neumann", "cg"],
)
def test_solvers_reach_the_exact_adjoint(solve, template) -> None:
    n = S.flatten(template).numel()
    op = random_operator(n, 0.8, seed=1, template=template)
    g = S.unflatten(torch.randn(n, dtype=torch.float64), template)
    solution = solve(op, g, max_iter=400)
    assert isinstance(solution.z, type(template))
    exact = exact_adjoint(op, g)
    assert torch.linalg.vector_norm(S.flatten(solution.z) - exact) <= 1e-8 * exact.norm()
    assert len(solution.trace) == solution.iterations


def test_cg_solves_systems_where_the_neumann_series_diverges() -> None:
    """CG on the normal equations needs only I - J^T invertible, not rho(J) < 1."""
    template = torch.zeros(20, dtype=torch.float64)
    op = random_operator(20, 1.5, seed=2, template=template)
    g = torch.randn(20, dtype=torch.float64)
    exact = exact_adjoint(op, g)
    cg = adjoint.cg_normal_equations(op, g, max_iter=200)
    assert torch.linalg.vector_norm(cg.z - exact) <= 1e-6 * exact.norm()
    neumann = adjoint.neumann(op, g, max_iter=200)
    assert torch.linalg.vector_norm(neumann.z - exact) > exact.norm()


@pytest.mark.parametrize("k", [0, 1, 5, 20])
def test_neumann_error_within_proposition_2(k: int) -> None:
    """||z_K - z*|| <= ||(I - J)^{-1}|| ||J||^{K+1} ||g||, the adjoint form of Proposition 2."""
    template = torch.zeros(30, dtype=torch.float64)
    op = random_operator(30, 0.7, seed=3, template=template)
    op.matrix *= 0.9 / torch.linalg.matrix_norm(op.matrix, 2)  # the bound needs ||J|| < 1
    g = torch.randn(30, dtype=torch.float64)
    z = adjoint.neumann(op, g, max_iter=k).z
    inverse_norm = torch.linalg.matrix_norm(torch.linalg.inv(torch.eye(30) - op.matrix), 2)
    bound = inverse_norm * torch.linalg.matrix_norm(op.matrix, 2) ** (k + 1) * g.norm()
    assert torch.linalg.vector_norm(z - exact_adjoint(op, g)) <= bound * (1 + 1e-9)


@pytest.mark.parametrize("k", [0, 1, 4, 30])
def test_proposition_3_on_matrices(k: int) -> None:
    """K+1 fixed-point iterations from z0 = 0 equal the K-product Neumann series."""
    template = torch.zeros(12, dtype=torch.float64)
    op = random_operator(12, 0.95, seed=4, template=template)
    g = torch.randn(12, dtype=torch.float64)
    rbp = adjoint.fixed_point(op, g, max_iter=k + 1, tol=0.0)
    neumann = adjoint.neumann(op, g, max_iter=k)
    assert rbp.iterations == k + 1
    torch.testing.assert_close(rbp.z, neumann.z, rtol=1e-13, atol=1e-13)


def test_fixed_point_stops_at_tolerance() -> None:
    template = torch.zeros(10, dtype=torch.float64)
    op = random_operator(10, 0.3, seed=5, template=template)
    solution = adjoint.fixed_point(op, torch.ones(10, dtype=torch.float64), max_iter=1000, tol=1e-6)
    assert solution.iterations < 1000
    assert solution.trace[-1] <= 1e-6 * float(solution.z.norm())


def test_cg_stops_at_tolerance_and_damping_shifts_the_solution() -> None:
    template = torch.zeros(10, dtype=torch.float64)
    op = random_operator(10, 0.5, seed=6, template=template)
    g = torch.ones(10, dtype=torch.float64)
    plain = adjoint.cg_normal_equations(op, g, max_iter=1000, tol=1e-12)
    assert plain.iterations <= 10 + 5  # CG in exact arithmetic needs at most n steps
    damped = adjoint.cg_normal_equations(op, g, max_iter=1000, tol=1e-12, damping=0.5)
    assert not torch.allclose(plain.z, damped.z)
