"""Registers the five paper methods and jfb and phantom; found through the ``rbpbench`` entry-point group."""

from __future__ import annotations

from rbpbench.hookspecs import hookimpl
from rbpbench.methods.equilibrium import JFB, PHANTOM
from rbpbench.methods.implicit import CG_RBP, NEUMANN_RBP, RBP
from rbpbench.methods.unrolled import bptt, tbptt
from rbpbench.problem import MethodSpec


@hookimpl
def rbpbench_methods() -> list[MethodSpec]:
    return [
        MethodSpec("bptt", bptt, "back-propagation through all T steps", unrolls=True),
        MethodSpec(
            "tbptt", tbptt, "BPTT through the last K+1 steps (K Jacobian products)", unrolls=True
        ),
        RBP,
        CG_RBP,
        NEUMANN_RBP,
        JFB,
        PHANTOM,
    ]
