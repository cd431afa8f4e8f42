"""Registers the five paper methods; found through the ``rbpbench`` entry-point group."""

from __future__ import annotations

from rbpbench.hookspecs import hookimpl
from rbpbench.methods.implicit import cg_rbp, neumann_rbp, rbp
from rbpbench.methods.unrolled import bptt, tbptt
from rbpbench.problem import MethodSpec


@hookimpl
def rbpbench_methods() -> list[MethodSpec]:
    return [
        MethodSpec("bptt", bptt, "back-propagation through all T steps", unrolls=True),
        MethodSpec(
            "tbptt", tbptt, "BPTT through the last K+1 steps (K Jacobian products)", unrolls=True
        ),
        MethodSpec(
            "rbp",
            rbp,
            "original RBP: fixed-point iteration z <- J^T z + g, at most K iterations",
            defaults={"init": "uniform", "tol": 1e-8},
        ),
        MethodSpec(
            "cg-rbp",
            cg_rbp,
            "CG on the normal equations (I-J)(I-J^T) z = (I-J) g, at most K iterations",
            defaults={"tol": 1e-10, "damping": 0.0},
        ),
        MethodSpec("neumann-rbp", neumann_rbp, "truncated Neumann series, K Jacobian products"),
    ]
