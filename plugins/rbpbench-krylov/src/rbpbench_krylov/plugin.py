"""Registers the Krylov RBP methods; found through the ``rbpbench`` entry-point group."""

from __future__ import annotations

from rbpbench import MethodSpec, hookimpl
from rbpbench_krylov.methods import BICGSTAB_RBP, GMRES_RBP, LSQR_RBP


@hookimpl
def rbpbench_methods() -> list[MethodSpec]:
    return [GMRES_RBP, BICGSTAB_RBP, LSQR_RBP]
