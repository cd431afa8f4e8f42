"""Registers torchdeq's methods and forward solvers; found through the ``rbpbench`` entry-point group."""

from __future__ import annotations

from rbpbench import ForwardSolverSpec, MethodSpec, hookimpl
from rbpbench_torchdeq.forward import ANDERSON, BROYDEN
from rbpbench_torchdeq.methods import IFT, PHANTOM


@hookimpl
def rbpbench_methods() -> list[MethodSpec]:
    return [IFT, PHANTOM]


@hookimpl
def rbpbench_forward_solvers() -> list[ForwardSolverSpec]:
    return [ANDERSON, BROYDEN]
