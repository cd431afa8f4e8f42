"""GMRES-RBP, BiCGSTAB-RBP and LSQR-RBP: the RBP family's one-step graph with Krylov solvers.

Each is :func:`rbpbench.implicit_method` of a solver from
:mod:`rbpbench_krylov.solvers`: it runs the first T - 1 steps without a graph,
linearises the last step and solves (I - J^T) z = dL/dh with its solver, so it
reports the same diagnostics as the built-in RBP methods and its memory does
not grow with T.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rbpbench import implicit_method
from rbpbench_krylov import solvers


def checks(name: str) -> Callable[[int, Mapping[str, Any]], None]:
    """The values a Krylov method refuses before it runs: K < 1, a negative tol, a
    restart that is no whole number."""

    def check(truncation: int, params: Mapping[str, Any]) -> None:
        if truncation < 1:
            raise ValueError(f"{name}: the truncation K must be >= 1, not {truncation}")
        if params["tol"] < 0:
            raise ValueError(f"{name}: tol must be >= 0, not {params['tol']}")
        restart = params.get("restart", 1)
        if isinstance(restart, bool) or not isinstance(restart, int):
            raise ValueError(f"{name}: restart must be a whole number, not {restart!r}")

    return check


GMRES_RBP = implicit_method(
    solvers.gmres,
    name="gmres-rbp",
    summary="restarted GMRES on (I - J^T) z = g, at most K J^T products",
    defaults={"restart": 50, "tol": 1e-10},
    check=checks("gmres-rbp"),
)
BICGSTAB_RBP = implicit_method(
    solvers.bicgstab,
    name="bicgstab-rbp",
    summary="BiCGSTAB on (I - J^T) z = g, at most K J^T products (K/2 iterations)",
    defaults={"tol": 1e-10},
    check=checks("bicgstab-rbp"),
)
LSQR_RBP = implicit_method(
    solvers.lsqr,
    name="lsqr-rbp",
    summary="LSQR on (I - J^T) z = g (stable CG-RBP), at most K iterations",
    defaults={"tol": 1e-10},
    check=checks("lsqr-rbp"),
)

# The methods as functions: compute(problem, truncation, *, diagnostics=True, **params).
gmres_rbp = GMRES_RBP.compute  # GMRES(restart): at most K Jacobian-transpose products
bicgstab_rbp = BICGSTAB_RBP.compute  # BiCGSTAB: at most K J^T products (K/2 iterations)
lsqr_rbp = LSQR_RBP.compute  # LSQR: at most K iterations, each one J^T and one J product
