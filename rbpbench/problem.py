"""The contract between a task and a gradient method.

A task hands a method a :class:`Problem`: a recurrent network
``h_{t+1} = F_t(h_t; w_F)`` run for ``num_steps`` steps from ``initial_state``
and scored by ``loss`` on the final state (the loss includes the readout G,
whose parameters ``params_g`` get ordinary back-propagation). A method answers
with a :class:`GradientResult`. Tasks know nothing of methods and methods know
nothing of tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from rbpbench.measure import all_finite, relative_error
from rbpbench.state import State

if TYPE_CHECKING:
    import pandas as pd

    from rbpbench.costs import Costs


@dataclass
class Problem:
    """One gradient computation to benchmark.

    ``step(h, t)`` returns ``F_t(h)`` for ``t = 0 .. num_steps - 1``; it may use
    ``t`` (a mini-batch per step, as in the hyperparameter task) and closes over
    the leaves ``params_f``. ``initial_state`` is a constant: no method
    differentiates through it. ``loss(h)`` is a scalar and may use ``params_g``
    and, directly, ``params_f``. ``exact_gradient``, where the task can compute
    one, returns the exact implicit gradient dL/dw_F at the fixed point.

    ``time_varying``: the step depends on ``t`` (a mini-batch per step). Such a
    problem runs only with a forward solver that takes the steps in order
    (``iterate``); a cell pairing it with another forward is skipped.

    ``forward`` is the forward solver the harness binds for the cell (None:
    ``iterate``, T steps of F). Methods reach it through
    :mod:`rbpbench.forward`, never directly.

    ``adjoint_steps`` (optional) are the maps whose linearisations at h_{T-1}
    the RBP family uses instead of the last step's: each gives one adjoint
    system and one gradient, and the gradients are averaged. A task whose
    steps see a different mini-batch each (hyperopt) offers the full set or
    several mini-batches here. Empty (the default): the last step,
    ``step(h, num_steps - 1)``. BPTT and TBPTT never use them.
    """

    step: Callable[[State, int], State]
    initial_state: State
    num_steps: int
    params_f: tuple[Tensor, ...]
    params_g: tuple[Tensor, ...]
    loss: Callable[[State], Tensor]
    seed: int = 0
    exact_gradient: Callable[[], tuple[Tensor, ...]] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    adjoint_steps: tuple[Callable[[State], State], ...] = ()
    time_varying: bool = False
    forward: BoundForward | None = None


@dataclass
class ForwardSolution:
    """What a forward solver returns: ``state`` = h*, the point the final step starts from.

    For ``iterate`` that is h_{T-1}; the harness's building blocks take the
    final step h_T = F(h*) themselves, with a graph where a method needs one.
    ``iterations`` counts the solver's iterations; ``trace`` (optional) holds
    one relative residual ||F(h) - h|| / ||F(h)|| per iteration. Whether the
    forward converged is measured by the harness, not taken from here.
    """

    state: State
    iterations: int
    trace: list[float] = field(default_factory=list)


class ForwardSolve(Protocol):
    """``solve(step, h0, *, num_steps, **params) -> ForwardSolution``.

    ``step(h, t)`` is F_t(h), ``h0`` the initial state (no graph), and
    ``num_steps`` = T - 1, the number of steps ``iterate`` takes before the
    final one (an accelerated solver may ignore it and use its own budget).
    ``params`` are the solver's parameters, the keys of
    ``ForwardSolverSpec.defaults``. A solver is written with differentiable
    torch operations (no in-place updates of tensors it computed from F), so
    that BPTT and TBPTT can differentiate through its iterations.
    """

    def __call__(
        self, step: Callable[[State, int], State], h0: State, *, num_steps: int, **params: Any
    ) -> ForwardSolution: ...


@dataclass(frozen=True)
class ForwardSolverSpec:
    """A forward solver as a plugin contributes it: how a cell finds the fixed point h*.

    ``in_order`` declares a solver that takes the task's steps F_0 .. F_{T-2}
    in order, exactly ``num_steps`` of them (``iterate``): the only kind a
    time-varying problem accepts. ``differentiable=False`` declares a solver
    that autograd cannot go through (in-place buffers): BPTT and TBPTT cells
    on it are skipped with that reason. ``check`` (optional) receives the
    parameters a sweep gives the solver, defaults merged, before anything runs,
    and raises ValueError naming a value out of range: the sweep then stops
    with that line (exit 2) instead of filling its table with error rows.
    """

    name: str
    solve: Callable[..., ForwardSolution]
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    in_order: bool = False
    differentiable: bool = True
    check: Callable[[Mapping[str, Any]], None] | None = None


@dataclass(frozen=True)
class BoundForward:
    """A forward solver with the cell's parameters (defaults merged), as a problem carries it."""

    spec: ForwardSolverSpec
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class GradientResult:
    """What every method returns.

    ``forward_residual`` is ||h_T - h_{T-1}||; ``backward_iterations`` the
    number of backward steps taken (steps back-propagated for the unrolling
    methods, solver iterations for the RBP family); ``backward_residual`` is
    ||(I - J^T) z - g|| for the adjoint z the method used (NaN where a method
    has no adjoint, or when diagnostics were not asked for).
    """

    loss: float
    grads_f: tuple[Tensor, ...]
    grads_g: tuple[Tensor, ...]
    forward_residual: float
    backward_iterations: int
    backward_residual: float = math.nan


class GradientMethod(Protocol):
    """How the harness calls a method: ``compute(problem, truncation, diagnostics=..., **params)``.

    ``params`` are the method's parameters, the keys of ``MethodSpec.defaults``
    (with the user's values); a method takes them as keyword-only arguments
    with defaults, and no others. With ``diagnostics=False`` a method may skip
    work that only feeds its diagnostics (the backward residual); the runner
    times that variant.
    """

    def __call__(
        self, problem: Problem, truncation: int, *, diagnostics: bool = True, **params: Any
    ) -> GradientResult: ...


@dataclass
class Probes:
    """The gradient-error probes of one training run, as :meth:`TrainingRun.probes` schedules them.

    Call it with each gradient the run takes, ``probes(point, problem,
    result)``: at a scheduled ``point`` (an epoch, a meta step) it records the
    relative error of ``result.grads_f`` against the reference method's on
    the same ``problem``, taken before the parameters move. ``taken`` holds
    the ``(point, error)`` pairs in order.
    """

    points: frozenset[int]
    reference: Callable[[Problem], GradientResult]
    taken: list[tuple[int, float]] = field(default_factory=list)

    def __call__(self, point: int, problem: Problem, result: GradientResult) -> None:
        if point in self.points:
            reference = self.reference(problem).grads_f
            self.taken.append((point, relative_error(result.grads_f, reference)))

    @property
    def errors(self) -> list[float]:
        return [error for _, error in self.taken]

    def curves(self, axis: str) -> dict[str, list[float]]:
        """The two curves a task stores: ``axis`` (``probe_epoch``, say) and ``probe_grad_rel_error``."""
        return {
            axis: [float(point) for point, _ in self.taken],
            "probe_grad_rel_error": self.errors,
        }


@dataclass
class TrainingRun:
    """What a training task's ``train`` receives: the cell's method, bound to its truncation.

    ``gradient(problem)`` is the method under test; ``reference(problem)`` is
    BPTT, for gradient-error probes during training. ``params`` are the task's
    parameters (defaults merged), as ``build`` receives them.

    The plumbing every training loop shares lives here, so that a task's
    ``train`` writes only what is its own (its model, data, optimiser,
    evaluation and curves):

    - :meth:`probes` schedules gradient-error probes against ``reference``
      over the run and records them (:class:`Probes`);
    - :meth:`update` hands a gradient to the optimiser and says whether the
      run diverged (its loss or parameters became NaN or Inf), after which
      the task stops and reports ``TrainingOutcome(diverged=True)``.

    ``gradient`` finds each problem's h* with the cell's forward solver (a
    problem the task hands it carries none; ``reference`` keeps plain
    iteration) and counts what it costs: ``step_costs`` holds one
    :class:`~rbpbench.costs.Costs` per call, in order (F evaluations, J^T v and
    J v products), for a task's per-step curves; the runner adds their means
    per training step to the row's ``extra_metrics``.
    """

    seed: int
    device: torch.device
    dtype: torch.dtype
    params: dict[str, Any]
    gradient: Callable[[Problem], GradientResult]
    reference: Callable[[Problem], GradientResult]
    step_costs: list[Costs] = field(default_factory=list)

    def probes(self, total: int, count: int) -> Probes:
        """``count`` probes spread evenly over points ``0 .. total - 1``, first and last included (rounded)."""
        points = torch.linspace(0, total - 1, count).round().int().tolist()
        return Probes(frozenset(points), self.reference)

    def update(
        self,
        problem: Problem,
        result: GradientResult,
        optimizer: torch.optim.Optimizer,
        *,
        skip_non_finite: bool = False,
    ) -> bool:
        """Step ``optimizer`` with ``result``'s gradients of ``problem``'s parameters; True: the run diverged.

        Each of ``problem.params_f + problem.params_g`` (which ``optimizer``
        must hold) gets its gradient from ``result.grads_f + result.grads_g``
        as ``.grad``, and the optimiser steps. The run has diverged when the
        loss or the parameters after the step are NaN or Inf. With
        ``skip_non_finite`` a NaN or Inf loss or gradient stops the run before
        the step, so the parameters keep their last finite values (hyperopt
        reports the hyperparameters it learned).
        """
        params = problem.params_f + problem.params_g
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if not all(id(p) in held for p in params):
            raise ValueError("the optimiser does not hold every parameter of the problem")
        grads = result.grads_f + result.grads_g
        if skip_non_finite and not (math.isfinite(result.loss) and all_finite(grads)):
            return True
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        optimizer.step()
        if skip_non_finite:
            return not all_finite(params)
        return not (math.isfinite(result.loss) and all_finite(params))


@dataclass(frozen=True)
class Curve:
    """One curve of a training run, typed, for the report to draw as it is told.

    ``values`` are plotted against ``x`` (None: their index 0, 1, 2, ...), which
    has one number per value: the epochs at which a probe ran, say. ``label``
    names the values and ``x_label`` the x axis (None: the name, and "step", or
    what :data:`rbpbench.curves.LABELS` says for the name). Labels are plain
    text, shown in HTML captions too: write Unicode (a double bar, a minus sign), not TeX.
    """

    name: str
    values: Sequence[float]
    x: Sequence[float] | None = None
    label: str | None = None
    x_label: str | None = None

    def __post_init__(self) -> None:
        if self.x is not None and len(self.x) != len(self.values):
            raise ValueError(
                f"curve {self.name!r} has {len(self.values)} values and {len(self.x)} x values"
            )


# What a training run may give as its curves: typed curves, or name -> values (whose x is
# their index, or an x companion curve named by the convention of :mod:`rbpbench.curves`).
Curves = Mapping[str, Sequence[float]] | Sequence[Curve]


@dataclass
class TrainingOutcome:
    """What a training run reports.

    ``metrics`` fill the results table's training columns (``train_loss_initial``,
    ``train_loss_final``, ``success``, ``retrieval_error``, ``val_accuracy``,
    ``test_accuracy``, ``epochs``); other keys land in its ``extra_metrics``
    JSON. ``curves`` are stored beside the table, one file per cell: a list of
    :class:`Curve`, or a mapping of a name to its values per epoch or step.
    ``diverged`` marks a run whose loss or parameters became NaN or Inf.
    """

    metrics: dict[str, Any]
    curves: Curves = field(default_factory=dict)
    diverged: bool = False


class Trainer(Protocol):
    def __call__(self, run: TrainingRun) -> TrainingOutcome: ...


class ProblemBuilder(Protocol):
    def __call__(
        self, *, seed: int, device: torch.device, dtype: torch.dtype, **params: Any
    ) -> Problem: ...


@dataclass(frozen=True)
class MethodSpec:
    """A gradient method as a plugin contributes it.

    ``unrolls`` declares that the method's memory grows with T by design
    (BPTT, TBPTT); every other method must keep its memory flat in T.
    """

    name: str
    # A GradientMethod; typed loosely, as a method's own keyword-only parameters are not
    # the protocol's **params (rbpbench.config checks them against its signature).
    compute: Callable[..., GradientResult]
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    unrolls: bool = False


@dataclass(frozen=True)
class TaskFigure:
    """A figure of a task's own, which ``rbpbench report`` adds to each of the task's sections.

    ``draw(folder, rows, path)`` receives the results folder (its ``curves/``
    hold the cells' curves), the results table's rows of one leaderboard group
    (one task at one setting; every status) and the PNG file to write; it
    returns False when these rows give nothing to draw. ``name`` ends the
    file's name and ``caption`` (plain text) is shown under the figure.
    """

    name: str
    caption: str
    draw: Callable[[Path, pd.DataFrame, Path], bool]


@dataclass(frozen=True)
class TaskSpec:
    """A task as a plugin contributes it: a builder of problems plus defaults.

    Every task builds a :class:`Problem` (its gradient at the initial
    parameters is what every cell measures). A task that also trains, as the
    paper's three experiments do, gives ``train``: one cell is then one
    training run with the cell's method as the gradient estimator.

    ``check`` (optional) receives the parameters a sweep gives the task, its
    defaults merged, before anything runs, and raises ValueError saying which
    value is out of range (a step count below 1, a rate outside (0, 1)): the
    sweep then stops with that line instead of running error cells. The types
    of the values are checked before, against ``defaults``.

    ``figures`` (optional): the task's own figures, which ``rbpbench report``
    draws after the general ones (the leaderboard, the gradient error, the
    trade-off and every curve) in each of the task's sections.
    """

    name: str
    build: ProblemBuilder
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    train: Trainer | None = None
    check: Callable[[Mapping[str, Any]], None] | None = None
    # Convergence checks (docs/measurement.md): the relative residuals below which the
    # forward pass and an adjoint solve count as converged; None: the dtype's default
    # (rbpbench.convergence.default_tolerance). ``forward_converges=False`` declares a
    # forward that is no fixed-point iteration by design (hyperopt: a training run), so
    # its rows say "not checked" instead of "did not converge".
    forward_tolerance: float | None = None
    adjoint_tolerance: float | None = None
    forward_converges: bool = True
    figures: Sequence[TaskFigure] = ()


def check_result(result: Any, problem: Problem) -> None:
    """The result contract, which the runner applies to every cell: raise TypeError or ValueError.

    A :class:`GradientResult` whose ``grads_f`` and ``grads_g`` are tuples of
    detached tensors, one per parameter, of its shape, dtype and device; a
    float ``loss``, ``forward_residual`` and ``backward_residual`` (NaN and Inf
    are allowed here: the runner calls such a cell diverged); an int
    ``backward_iterations`` >= 0. Each message names the field.
    """
    if not isinstance(result, GradientResult):
        raise TypeError(f"the method returned {type(result).__name__}, not a GradientResult")
    for group, params in (("grads_f", problem.params_f), ("grads_g", problem.params_g)):
        grads = getattr(result, group)
        if not isinstance(grads, tuple):
            raise TypeError(f"{group} is a {type(grads).__name__}; it must be a tuple")
        if len(grads) != len(params):
            raise ValueError(
                f"{group} holds {len(grads)} gradients for the {len(params)} parameters"
            )
        for i, (g, p) in enumerate(zip(grads, params, strict=True)):
            if not isinstance(g, Tensor):
                raise TypeError(f"{group}[{i}] is a {type(g).__name__}; it must be a tensor")
            if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                raise ValueError(
                    f"{group}[{i}] is {tuple(g.shape)} {g.dtype} {g.device}; the parameter is "
                    f"{tuple(p.shape)} {p.dtype} {p.device}"
                )
            if g.requires_grad:
                raise ValueError(
                    f"{group}[{i}] requires grad (it keeps an autograd graph alive); "
                    "return detached gradients"
                )
    for name in ("loss", "forward_residual", "backward_residual"):
        value = getattr(result, name)
        if isinstance(value, bool) or not isinstance(value, float):
            raise TypeError(f"{name} is {type(value).__name__} {value!r}; it must be a float")
    iterations = result.backward_iterations
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise TypeError(
            f"backward_iterations is {type(iterations).__name__} {iterations!r}; "
            "it must be an int >= 0"
        )
