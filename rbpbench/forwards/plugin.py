"""Registers the built-in forward solvers; found through the ``rbpbench`` entry-point group."""

from __future__ import annotations

from rbpbench.forward import ITERATE
from rbpbench.forwards.anderson import ANDERSON
from rbpbench.forwards.broyden import BROYDEN
from rbpbench.hookspecs import hookimpl
from rbpbench.problem import ForwardSolverSpec


@hookimpl
def rbpbench_forward_solvers() -> list[ForwardSolverSpec]:
    return [ITERATE, ANDERSON, BROYDEN]
