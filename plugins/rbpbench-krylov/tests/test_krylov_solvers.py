"""The Krylov solvers against dense solves on explicit matrices, and their product counts."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable

import pytest
import torch
from rbpbench_krylov import solvers
from torch import Tensor

from rbpbench import AdjointSolution, State, adjoint
from rbpbench import state as S

F64 = torch.float64
N = 24


class MatrixOperator:
    """J as an explicit matrix acting on a state's flattened entries; counts its products."""

    def __init__(self, jacobian: Tensor, like: State) -> None:
        self.jacobian, self.like = jacobian, like
        self.vjps = self.jvps = 0

    def vjp(self, v: State) -> State:
        self.vjps += 1
        return S.unflatten(self.jacobian.T @ S.flatten(v), self.like)

    def jvp(self, v: State) -> State:
        self.jvps += 1
        return S.unflatten(self.jacobian @ S.flatten(v), self.like)


def contractive(n: int = N, norm: float = 0.9, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=generator, dtype=F64)
    return norm * m / torch.linalg.matrix_norm(m, 2)


def non_normal(n: int = N, seed: int = 1) -> Tensor:
    """Spectral radius 1.5, one defective eigenvalue: the Neumann series diverges.

    I - J^T is triangular with -0.5 on its diagonal and condition number ~2e4.
    """
    generator = torch.Generator().manual_seed(seed)
    upper = torch.triu(torch.randn(n, n, generator=generator, dtype=F64), 1)
    return 1.5 * torch.eye(n, dtype=F64) + 0.5 * upper


def right_hand_side(n: int = N, seed: int = 2) -> Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64)


def dense_solution(jacobian: Tensor, g: Tensor) -> Tensor:
    return torch.linalg.solve(torch.eye(len(g), dtype=g.dtype) - jacobian.T, g)


def as_tuple_state(flat: Tensor) -> tuple[Tensor, ...]:
    """The same numbers as a state of two tensors, (4, 3) and (12,)."""
    return (flat[:12].reshape(4, 3).clone(), flat[12:].clone())


SOLVERS: dict[str, Callable[..., AdjointSolution]] = {
    "gmres": functools.partial(solvers.gmres, restart=N),
    "bicgstab": solvers.bicgstab,
    "lsqr": solvers.lsqr,
}
MATRICES: dict[str, Callable[[], Tensor]] = {"contractive": contractive, "non-normal": non_normal}


def relative(a: State, b: State) -> float:
    return float(S.norm(S.sub(a, b)) / S.norm(b))


@pytest.mark.parametrize("matrix", MATRICES)
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("structure", ["tensor", "tuple"])
def test_solvers_match_a_dense_solve(solver: str, matrix: str, structure: str) -> None:
    jacobian, flat_g = MATRICES[matrix](), right_hand_side()
    g: State = flat_g if structure == "tensor" else as_tuple_state(flat_g)
    op = MatrixOperator(jacobian, g)
    solution = SOLVERS[solver](op, g, max_iter=2000, tol=1e-13)
    expected = S.unflatten(dense_solution(jacobian, flat_g), g)
    assert type(solution.z) is type(g)
    assert [x.shape for x in S.as_tuple(solution.z)] == [x.shape for x in S.as_tuple(g)]
    # the non-normal system's condition number is ~2e4: allow for it
    assert relative(solution.z, expected) < (1e-10 if matrix == "contractive" else 1e-8)
    assert solution.iterations <= 2000 and len(solution.trace) >= 1


def test_the_neumann_series_diverges_on_the_non_normal_matrix() -> None:
    jacobian, g = non_normal(), right_hand_side()
    assert float(torch.linalg.eigvals(jacobian).abs().max()) == pytest.approx(1.5)
    neumann = adjoint.neumann(MatrixOperator(jacobian, g), g, max_iter=60)
    assert not math.isfinite(relative(neumann.z, dense_solution(jacobian, g))) or (
        relative(neumann.z, dense_solution(jacobian, g)) > 1e6
    )


def test_full_gmres_terminates_within_n_products() -> None:
    jacobian, g = non_normal(), right_hand_side()
    op = MatrixOperator(jacobian, g)
    solution = solvers.gmres(op, g, max_iter=10 * N, tol=1e-12, restart=N)
    assert solution.iterations <= N
    assert relative(solution.z, dense_solution(jacobian, g)) < 1e-6


@pytest.mark.parametrize("k", [1, 2, 5, 7, 40])
def test_gmres_spends_exactly_its_budget_of_jt_products(k: int) -> None:
    jacobian, g = contractive(norm=0.99), right_hand_side()
    op = MatrixOperator(jacobian, g)
    solution = solvers.gmres(op, g, max_iter=k, tol=0.0, restart=3)  # restarts are free
    assert op.vjps == solution.iterations == k and op.jvps == 0


@pytest.mark.parametrize("k", [1, 2, 5, 7, 40])
def test_bicgstab_spends_at_most_k_jt_products_and_reports_them(k: int) -> None:
    jacobian, g = contractive(norm=0.99), right_hand_side()
    op = MatrixOperator(jacobian, g)
    solution = solvers.bicgstab(op, g, max_iter=k, tol=0.0)
    assert op.vjps == solution.iterations == k and op.jvps == 0
    # the answer's residual is the smallest the solver saw, half steps included
    residual = float(S.norm(S.sub(S.sub(solution.z, op.vjp(solution.z)), g)))
    assert residual == pytest.approx(min([float(S.norm(g)), *solution.trace]), rel=1e-8)


@pytest.mark.parametrize("k", [1, 2, 5, 40])
def test_lsqr_spends_one_jt_and_one_j_product_per_iteration(k: int) -> None:
    jacobian, g = contractive(norm=0.99), right_hand_side()
    op = MatrixOperator(jacobian, g)
    solution = solvers.lsqr(op, g, max_iter=k, tol=0.0)
    assert solution.iterations == k and op.vjps == k and op.jvps == k + 1


@pytest.mark.parametrize("k", [1, 3, 8, 15])
def test_lsqr_equals_cg_on_the_normal_equations_at_equal_k(k: int) -> None:
    """CG-RBP's normal equations are LSQR's: same iterates in exact arithmetic."""
    jacobian, g = contractive(norm=0.7), right_hand_side()
    lsqr = solvers.lsqr(MatrixOperator(jacobian, g), g, max_iter=k, tol=0.0)
    cg = adjoint.cg_normal_equations(MatrixOperator(jacobian, g), g, max_iter=k, tol=0.0)
    assert relative(lsqr.z, cg.z) < 1e-9


def test_gmres_residual_never_rises_even_across_restarts() -> None:
    jacobian, g = contractive(norm=0.95), right_hand_side()
    solution = solvers.gmres(MatrixOperator(jacobian, g), g, max_iter=60, tol=0.0, restart=7)
    trace = [float(S.norm(g)), *solution.trace]
    assert all(b <= a * (1 + 1e-10) for a, b in itertools.pairwise(trace))


def test_gmres_residual_is_at_most_neumann_with_one_product_fewer() -> None:
    """GMRES minimises the residual over the Krylov space holding Neumann's K-1 product sum."""
    jacobian, g = contractive(norm=0.95), right_hand_side()
    a = torch.eye(N, dtype=F64) - jacobian.T
    for k in (1, 2, 5, 10, 20):
        z_gmres = solvers.gmres(MatrixOperator(jacobian, g), g, max_iter=k, tol=0.0).z
        z_neumann = adjoint.neumann(MatrixOperator(jacobian, g), g, max_iter=k - 1).z
        assert float(torch.linalg.vector_norm(a @ z_gmres - g)) <= float(
            torch.linalg.vector_norm(a @ z_neumann - g)
        ) * (1 + 1e-12)


@pytest.mark.parametrize("solver", SOLVERS)
def test_tolerance_stops_early_and_is_relative_to_g(solver: str) -> None:
    jacobian, g = contractive(norm=0.5), 1e6 * right_hand_side()
    op = MatrixOperator(jacobian, g)
    solution = SOLVERS[solver](op, g, max_iter=500, tol=1e-6)
    residual = float(torch.linalg.vector_norm(g - solution.z + jacobian.T @ solution.z))
    assert solution.iterations < 40 and residual <= 1e-5 * float(torch.linalg.vector_norm(g))


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_zero_right_hand_side_costs_nothing(solver: str) -> None:
    g = torch.zeros(N, dtype=F64)
    op = MatrixOperator(contractive(), g)
    solution = SOLVERS[solver](op, g, max_iter=10, tol=1e-10)
    assert solution.iterations == 0 and op.vjps == 0 and not bool(solution.z.any())


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_start_at_the_solution_stays_there(solver: str) -> None:
    jacobian, g = contractive(), right_hand_side()
    exact = dense_solution(jacobian, g)
    solution = SOLVERS[solver](MatrixOperator(jacobian, g), g, max_iter=10, tol=1e-8, init=exact)
    assert solution.iterations == 0 and relative(solution.z, exact) < 1e-12


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_start_elsewhere_converges_too(solver: str) -> None:
    jacobian, g = contractive(), right_hand_side()
    init = right_hand_side(seed=5)
    solution = SOLVERS[solver](MatrixOperator(jacobian, g), g, max_iter=200, tol=1e-12, init=init)
    assert relative(solution.z, dense_solution(jacobian, g)) < 1e-10


@pytest.mark.parametrize("solver", SOLVERS)
def test_float32_states_stay_float32(solver: str) -> None:
    jacobian, g = contractive().float(), right_hand_side().float()
    solution = SOLVERS[solver](MatrixOperator(jacobian, g), g, max_iter=200, tol=1e-6)
    assert solution.z.dtype == torch.float32
    expected = dense_solution(jacobian.double(), g.double()).float()
    assert relative(solution.z, expected) < 1e-4


def test_restart_must_be_positive() -> None:
    g = right_hand_side()
    with pytest.raises(ValueError, match="restart"):
        solvers.gmres(MatrixOperator(contractive(), g), g, max_iter=5, restart=0)
