"""The hooks an rbpbench plugin may implement.

A plugin is a module (or any object) registered under the ``rbpbench``
entry-point group whose functions carry the :data:`hookimpl` marker. The
built-in methods, tasks and forward solvers are plugins of exactly this kind.
"""

from __future__ import annotations

import pluggy

from rbpbench.problem import ForwardSolverSpec, MethodSpec, TaskSpec

PROJECT = "rbpbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def rbpbench_methods() -> list[MethodSpec]:  # type: ignore[empty-body]
    """Return the gradient methods this plugin contributes.

    Each :class:`~rbpbench.problem.MethodSpec` names the method (unique across
    all installed plugins), gives its ``compute(problem, truncation,
    diagnostics=..., **params)`` function, its default parameters, and whether
    it unrolls (memory growing with T by design).
    """


@hookspec
def rbpbench_tasks() -> list[TaskSpec]:  # type: ignore[empty-body]
    """Return the tasks this plugin contributes.

    Each :class:`~rbpbench.problem.TaskSpec` names the task (unique across all
    installed plugins) and gives ``build(seed=, device=, dtype=, **params)``
    returning a :class:`~rbpbench.problem.Problem`.
    """


@hookspec
def rbpbench_forward_solvers() -> list[ForwardSolverSpec]:  # type: ignore[empty-body]
    """Return the forward solvers this plugin contributes.

    Each :class:`~rbpbench.problem.ForwardSolverSpec` names the solver (unique
    across all installed plugins) and gives ``solve(step, h0, *, num_steps,
    **params)`` returning a :class:`~rbpbench.problem.ForwardSolution`, with
    its default parameters. ``rbpbench run --forward NAME`` selects it.
    """
