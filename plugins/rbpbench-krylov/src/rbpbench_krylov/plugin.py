"""Registers the Krylov RBP methods; found through the ``rbpbench`` entry-point group."""

from __future__ import annotations

from rbpbench import MethodSpec, hookimpl
from rbpbench_krylov.methods import bicgstab_rbp, gmres_rbp, lsqr_rbp


@hookimpl
def rbpbench_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            "gmres-rbp",
            gmres_rbp,
            "restarted GMRES on (I - J^T) z = g, at most K J^T products",
            defaults={"restart": 50, "tol": 1e-10},
        ),
        MethodSpec(
            "bicgstab-rbp",
            bicgstab_rbp,
            "BiCGSTAB on (I - J^T) z = g, at most K J^T products (K/2 iterations)",
            defaults={"tol": 1e-10},
        ),
        MethodSpec(
            "lsqr-rbp",
            lsqr_rbp,
            "LSQR on (I - J^T) z = g (stable CG-RBP), at most K iterations",
            defaults={"tol": 1e-10},
        ),
    ]
