"""rbpbench: a benchmark of gradient methods for convergent recurrent networks.

Everything a plugin author or a notebook needs is importable from here (and
listed in ``__all__``); the submodules are the implementation:

- the contracts: :class:`Problem`, :class:`GradientResult`, :class:`MethodSpec`,
  :class:`TaskSpec`, :class:`TrainingRun`, :class:`TrainingOutcome`,
  :class:`Curve`, :class:`TaskFigure`, :data:`hookimpl`, :func:`check_result`;
- forward solvers: :class:`ForwardSolverSpec`, :class:`ForwardSolution`,
  :class:`BoundForward`, and the forward building blocks every method uses:
  :func:`solve_forward` (h* without a graph), :func:`solve_with_graph`,
  :func:`final_step`;
- the building blocks of an implicit method: :func:`run_without_graph`,
  :class:`LinearisedStep`, :class:`LossTerms`, :func:`implicit_gradient`, and
  :func:`implicit_method`, which makes a method of an adjoint solver;
- the adjoint solvers: :class:`JacobianOperator`, :data:`AdjointSolver`,
  :class:`AdjointSolution`, :func:`fixed_point`, :func:`neumann`,
  :func:`cg_normal_equations`;
- state arithmetic: the module :mod:`rbpbench.state` and the :data:`State` type;
  autograd with absent gradients: :func:`grads_or_none`, :func:`grads_or_zeros`;
- sweeps from Python: :func:`run`, :func:`load`, :class:`UsageError`,
  :class:`StorageError`; the conformance kit: :func:`check_method`,
  :class:`ConformanceError`.

The last six are imported on first use (they bring pandas, or the kit), so that
``import rbpbench``, which every worker process does, stays light.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from rbpbench import state
from rbpbench.adjoint import (
    AdjointSolution,
    AdjointSolver,
    JacobianOperator,
    cg_normal_equations,
    fixed_point,
    neumann,
)
from rbpbench.forward import final_step, run_without_graph, solve_forward, solve_with_graph
from rbpbench.gradients import grads_or_none, grads_or_zeros
from rbpbench.hookspecs import hookimpl
from rbpbench.linearisation import LinearisedStep, LossTerms
from rbpbench.methods.implicit import implicit_gradient, implicit_method
from rbpbench.problem import (
    BoundForward,
    Curve,
    ForwardSolution,
    ForwardSolverSpec,
    GradientResult,
    MethodSpec,
    Problem,
    TaskFigure,
    TaskSpec,
    TrainingOutcome,
    TrainingRun,
    check_result,
)
from rbpbench.state import State

if TYPE_CHECKING:
    from rbpbench.api import load, run
    from rbpbench.config import UsageError
    from rbpbench.results import StorageError
    from rbpbench.testing import ConformanceError, check_method

try:
    __version__ = version("rbpbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

# Imported on first use: name -> module.
_LAZY = {
    "run": "rbpbench.api",
    "load": "rbpbench.api",
    "UsageError": "rbpbench.config",
    "StorageError": "rbpbench.results",
    "check_method": "rbpbench.testing",
    "ConformanceError": "rbpbench.testing",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'rbpbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AdjointSolution",
    "AdjointSolver",
    "BoundForward",
    "ConformanceError",
    "Curve",
    "ForwardSolution",
    "ForwardSolverSpec",
    "GradientResult",
    "JacobianOperator",
    "LinearisedStep",
    "LossTerms",
    "MethodSpec",
    "Problem",
    "State",
    "StorageError",
    "TaskFigure",
    "TaskSpec",
    "TrainingOutcome",
    "TrainingRun",
    "UsageError",
    "__version__",
    "cg_normal_equations",
    "check_method",
    "check_result",
    "final_step",
    "fixed_point",
    "grads_or_none",
    "grads_or_zeros",
    "hookimpl",
    "implicit_gradient",
    "implicit_method",
    "load",
    "neumann",
    "run",
    "run_without_graph",
    "solve_forward",
    "solve_with_graph",
    "state",
]
