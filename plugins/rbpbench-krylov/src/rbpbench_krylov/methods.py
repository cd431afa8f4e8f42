"""GMRES-RBP, BiCGSTAB-RBP and LSQR-RBP: the RBP family's one-step graph with Krylov solvers.

Each runs the first T - 1 steps without a graph, linearises the last step and
solves (I - J^T) z = dL/dh with its solver from :mod:`rbpbench_krylov.solvers`
through :func:`rbpbench.methods.implicit.implicit_gradient`, so it reports the
same diagnostics as the built-in RBP methods and its memory does not grow
with T.
"""

from __future__ import annotations

from typing import Any

from rbpbench.adjoint import AdjointSolution
from rbpbench.forward import LastStep
from rbpbench.methods.implicit import implicit_gradient
from rbpbench.problem import GradientResult, Problem
from rbpbench.state import State
from rbpbench_krylov import solvers


def _check(name: str, truncation: int, tol: float) -> None:
    if truncation < 1:
        raise ValueError(f"{name}: the truncation K must be >= 1, not {truncation}")
    if tol < 0:
        raise ValueError(f"{name}: tol must be >= 0, not {tol}")


def gmres_rbp(
    problem: Problem,
    truncation: int,
    *,
    diagnostics: bool = True,
    restart: int = 50,
    tol: float = 1e-10,
    **_: Any,
) -> GradientResult:
    """GMRES(restart) on (I - J^T) z = g: at most K Jacobian-transpose products."""
    _check("gmres-rbp", truncation, tol)

    def solve(step: LastStep, g: State) -> AdjointSolution:
        return solvers.gmres(step, g, max_iter=truncation, tol=tol, restart=int(restart))

    return implicit_gradient(problem, solve, diagnostics=diagnostics)


def bicgstab_rbp(
    problem: Problem,
    truncation: int,
    *,
    diagnostics: bool = True,
    tol: float = 1e-10,
    **_: Any,
) -> GradientResult:
    """BiCGSTAB on (I - J^T) z = g: at most K Jacobian-transpose products (K/2 iterations)."""
    _check("bicgstab-rbp", truncation, tol)

    def solve(step: LastStep, g: State) -> AdjointSolution:
        return solvers.bicgstab(step, g, max_iter=truncation, tol=tol)

    return implicit_gradient(problem, solve, diagnostics=diagnostics)


def lsqr_rbp(
    problem: Problem,
    truncation: int,
    *,
    diagnostics: bool = True,
    tol: float = 1e-10,
    **_: Any,
) -> GradientResult:
    """LSQR on (I - J^T) z = g: at most K iterations, each one J^T and one J product."""
    _check("lsqr-rbp", truncation, tol)

    def solve(step: LastStep, g: State) -> AdjointSolution:
        return solvers.lsqr(step, g, max_iter=truncation, tol=tol)

    return implicit_gradient(problem, solve, diagnostics=diagnostics)
