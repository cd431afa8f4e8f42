"""rbpbench-krylov: GMRES-RBP, BiCGSTAB-RBP and LSQR-RBP for rbpbench, as an out-of-tree plugin."""

from rbpbench_krylov.methods import bicgstab_rbp, gmres_rbp, lsqr_rbp
from rbpbench_krylov.solvers import bicgstab, gmres, lsqr

__all__ = ["bicgstab", "bicgstab_rbp", "gmres", "gmres_rbp", "lsqr", "lsqr_rbp"]
