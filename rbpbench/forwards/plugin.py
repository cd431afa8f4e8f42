"""Registers the built-in accelerated forward solvers; found through the ``rbpbench`` entry-point
group. (``iterate``, the default, is part of rbpbench's core: :mod:`rbpbench.forward`.)"""

from __future__ import annotations

from rbpbench.forwards.anderson import ANDERSON
from rbpbench.forwards.broyden import BROYDEN
from rbpbench.hookspecs import hookimpl
from rbpbench.problem import ForwardSolverSpec


@hookimpl
def rbpbench_forward_solvers() -> list[ForwardSolverSpec]:
    return [ANDERSON, BROYDEN]
