"""Running one cell, inside a worker process.

Running a cell builds the task's problem, binds the cell's forward solver to
it, computes the method's gradient (a first pass for the values and
diagnostics, which also warms up; a timing pass; a memory pass, which also
counts F evaluations and Jacobian products), and compares the gradient with
BPTT's through plain iteration on the same problem and with the exact one where
the task has it: the same references whatever the forward solver. Whatever happens, the
result is a row: an exception becomes ``error`` (or ``oom``), a non-finite
loss, state or gradient becomes ``diverged``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rbpbench import measure
from rbpbench.cells import Cell, identity_row
from rbpbench.convergence import (
    ForwardFacts,
    Tolerances,
    convergence_columns,
    forward_facts,
    split_params,
)
from rbpbench.costs import Costs, counted
from rbpbench.data import DatasetUnavailable
from rbpbench.forward import ForwardMismatch, check_forward, solve_forward
from rbpbench.linearisation import LinearisedStep
from rbpbench.methods.unrolled import bptt
from rbpbench.plugins import Registry
from rbpbench.problem import (
    BoundForward,
    Curves,
    GradientResult,
    Problem,
    TrainingRun,
    check_result,
)
from rbpbench.results import (
    DIVERGED,
    ERROR,
    OK,
    OOM,
    SKIPPED,
    TRAINING_COLUMNS,
    CellOutcome,
)


def device_unavailable(device: str) -> str | None:
    """Why ``device`` cannot run here, or None if it can."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return "CUDA is not available on this machine (torch.cuda.is_available() is False)"
        index = torch.device(device).index or 0
        if index >= torch.cuda.device_count():
            return f"{device} does not exist (this machine has {torch.cuda.device_count()} CUDA devices)"
    return None


def describe_exception(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def failure_status(exc: BaseException) -> str:
    return OOM if is_out_of_memory(exc) else ERROR


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class References:
    """What every method's gradient on one problem is compared with, computed once."""

    bptt_f: tuple[Tensor, ...]
    bptt_g: tuple[Tensor, ...]
    exact_f: tuple[Tensor, ...] | None


@dataclass
class ProblemFacts:
    """What the harness measures of a problem itself, once: its forward's convergence and rho(J)."""

    forward: ForwardFacts
    spectral_radius: float


def problem_facts(
    problem: Problem,
    *,
    dense_max: int = measure.DENSE_MAX_STATE,
    products: int = measure.SPECTRAL_PRODUCTS,
) -> ProblemFacts:
    """One forward to h* (h_{T-1} with ``iterate``); from there the forward's residual, g,
    and rho(J).

    rho(J) is that of the linearisation the RBP family uses: the final step, or
    the first adjoint step where the problem names some.
    """
    h_prev = solve_forward(problem)
    linearised = problem.adjoint_steps[0] if problem.adjoint_steps else None
    step = LinearisedStep(problem, h_prev, linearised)
    radius = measure.spectral_radius(
        step.vjp, step.h_prev, dense_max=dense_max, products=products, seed=problem.seed
    )
    return ProblemFacts(forward_facts(problem, h_prev), radius)


@dataclass
class CellRunner:
    registry: Registry
    run_id: str
    # The spectral_radius column: dense eigenvalues for states of at most
    # spectral_dense_max numbers, else Arnoldi within spectral_products J^T v
    # products (measure.spectral_estimate, docs/measurement.md).
    spectral_dense_max: int = measure.DENSE_MAX_STATE
    spectral_products: int = measure.SPECTRAL_PRODUCTS
    _references: dict[tuple[Any, ...], References] = field(default_factory=dict)
    _facts: dict[tuple[Any, ...], ProblemFacts] = field(default_factory=dict)

    def problem(self, cell: Cell, *, with_forward: bool = True) -> Problem:
        """The cell's problem, with the cell's forward solver bound (``with_forward``) or with
        plain iteration (the references)."""
        spec = self.registry.task(cell.task)
        params, _ = split_params({**spec.defaults, **dict(cell.task_params)})
        problem = spec.build(
            seed=cell.seed, device=torch.device(cell.device), dtype=spec.dtype, **params
        )
        if with_forward:
            problem.forward = self.forward(cell)
        return problem

    def forward(self, cell: Cell) -> BoundForward:
        spec = self.registry.forward(cell.forward)
        return BoundForward(spec, {**spec.defaults, **dict(cell.forward_params)})

    def tolerances(self, cell: Cell) -> Tolerances:
        _, overrides = split_params(dict(cell.task_params))
        return Tolerances.of(self.registry.task(cell.task), overrides)

    def references(self, cell: Cell) -> References:
        key = (cell.task, cell.task_params, cell.seed, cell.device)
        if key not in self._references:
            problem = self.problem(cell, with_forward=False)
            exact = problem.exact_gradient() if problem.exact_gradient else None
            reference = bptt(problem, 0, diagnostics=False)
            # Cells come task- and seed-major, so one entry suffices and large
            # reference gradients do not pile up over a sweep.
            self._references = {key: References(reference.grads_f, reference.grads_g, exact)}
        return self._references[key]

    def facts(self, cell: Cell, problem: Problem) -> ProblemFacts:
        key = (
            cell.task,
            cell.task_params,
            cell.seed,
            cell.device,
            cell.forward,
            cell.forward_params,
        )
        if key not in self._facts:
            self._facts = {
                key: problem_facts(
                    problem, dense_max=self.spectral_dense_max, products=self.spectral_products
                )
            }
        return self._facts[key]

    def run(self, cell: Cell) -> CellOutcome:
        """The cell's row, and a training task's curves beside it."""
        return self.run_batch([cell])[0]

    def run_batch(
        self, cells: Sequence[Cell], progress: Callable[[str, int], None] | None = None
    ) -> list[CellOutcome]:
        """The cells' outcomes, in order; the memory passes of CPU cells share one capture.

        Each cell runs as :meth:`run` would run it, except that the memory pass of
        a CPU cell of a task that does not train waits for the others' and all
        run under one memray capture (:func:`measure.peak_memories`: the same
        figures, one start and stop of the profiler instead of one per cell).
        The capture's time is shared out equally in ``cell_time_s``. ``progress``
        hears ("started", i) before cell i and ("capture", n) before a capture of n
        passes.
        """
        started = []
        for i, cell in enumerate(cells):
            if progress:
                progress("started", i)
            started.append(self._start(cell))
        waiting = [s for s in started if s.memory_pass is not None]
        if waiting:
            if progress:
                progress("capture", len(waiting))
            begin = time.perf_counter()
            figures = measure.peak_memories(
                [s.guarded_memory_pass for s in waiting], torch.device("cpu")
            )
            share = (time.perf_counter() - begin) / len(waiting)
            for s, figure in zip(waiting, figures, strict=True):
                s.record_memory(figure)
                s.elapsed += share
        return [s.outcome() for s in started]

    def _start(self, cell: Cell) -> StartedCell:
        """Everything of a cell but, for a CPU cell of a task that does not train, its memory pass."""
        start = time.perf_counter()
        row = identity_row(cell, self.registry, self.run_id)
        row["worker"] = worker_name()
        started = StartedCell(row)
        reason = device_unavailable(cell.device)
        if reason:
            row.update(status=SKIPPED, error=reason)
            return started
        try:
            columns, memory = self._measure(cell)
            row.update(columns)
            trains = self.registry.task(cell.task).train is not None
            if memory is not None:
                started.memory_pass, started.costs = memory
                if cell.device != "cpu" or trains:
                    # Measured now: on CUDA a capture costs nothing to start, and a
                    # training task's capture keeps its place before the training.
                    device = torch.device(cell.device)
                    started.record_memory(measure.peak_memory(started.pop_memory_pass(), device))
            if row["status"] == OK and trains:
                trained, started.curves = self._train(cell)
                row.update(trained)
        except (DatasetUnavailable, ForwardMismatch) as exc:
            started.memory_pass = None
            row.update(status=SKIPPED, error=str(exc))
        except Exception as exc:
            started.memory_pass = None
            row.update(status=failure_status(exc), error=describe_exception(exc))
        finally:
            if cell.device.startswith("cuda") and torch.cuda.is_available():
                torch.cuda.empty_cache()
        started.elapsed = time.perf_counter() - start
        return started

    def _measure(
        self, cell: Cell
    ) -> tuple[dict[str, Any], tuple[Callable[[], object], Costs] | None]:
        """The cell's columns but the memory ones, and its memory pass with the costs it
        counts (None for a diverged cell)."""
        spec = self.registry.method(cell.method)
        params = {**spec.defaults, **dict(cell.method_params)}
        device = torch.device(cell.device)
        problem = self.problem(cell)
        check_forward(problem)  # a time-varying problem with an accelerated forward: skipped

        def compute(diagnostics: bool, on: Problem = problem) -> GradientResult:
            return spec.compute(on, cell.truncation, diagnostics=diagnostics, **params)

        result = compute(True)  # values and diagnostics; also the warm-up
        check_result(result, problem)
        figures = result_figures(result)
        if not (
            math.isfinite(result.loss)
            and math.isfinite(result.forward_residual)
            and measure.all_finite(result.grads_f, result.grads_g)
        ):
            columns = {
                **figures,
                **self._convergence(cell, problem, result, may_fail=True),
                "status": DIVERGED,
                "error": "non-finite loss, state or gradient",
            }
            return columns, None
        facts = self.facts(cell, problem)
        refs = self.references(cell)
        wall, repeats = measure.median_wall_time(lambda: compute(False), device)
        # The memory pass runs on a copy of the problem whose steps count their use: the
        # counting costs no memory a figure would notice, and the timed pass runs without it.
        counting, costs = counted(problem)
        both = result.grads_f + result.grads_g
        columns = {
            **figures,
            **self._convergence(cell, problem, result),
            "status": OK,
            "grad_rel_error": measure.relative_error(result.grads_f, refs.bptt_f),
            "grad_cosine": measure.cosine(result.grads_f, refs.bptt_f),
            "grad_rel_error_g": (
                measure.relative_error(result.grads_g, refs.bptt_g) if refs.bptt_g else math.nan
            ),
            "grad_rel_error_total": measure.relative_error(both, refs.bptt_f + refs.bptt_g),
            "grad_cosine_total": measure.cosine(both, refs.bptt_f + refs.bptt_g),
            "grad_rel_error_exact": (
                measure.relative_error(result.grads_f, refs.exact_f) if refs.exact_f else math.nan
            ),
            "spectral_radius": facts.spectral_radius,
            "wall_time_s": wall,
            "timing_repeats": repeats,
        }
        return columns, (lambda: compute(False, counting), costs)

    def _convergence(
        self, cell: Cell, problem: Problem, result: GradientResult, *, may_fail: bool = False
    ) -> dict[str, Any]:
        """The convergence columns; for a diverged cell, whatever can still be measured."""
        try:
            facts: ForwardFacts | None = self.facts(cell, problem).forward
        except Exception:
            if not may_fail:
                raise
            facts = None
        return convergence_columns(facts, result.backward_residual, self.tolerances(cell))

    def _train(self, cell: Cell) -> tuple[dict[str, Any], Curves]:
        """One training run with the cell's method as the gradient estimator: its columns, and
        its curves."""
        task = self.registry.task(cell.task)
        assert task.train is not None
        method = self.registry.method(cell.method)
        params = {**method.defaults, **dict(cell.method_params)}
        forward = self.forward(cell)
        step_costs: list[Costs] = []

        def gradient(problem: Problem) -> GradientResult:
            if problem.forward is None:
                problem = dataclasses.replace(problem, forward=forward)
            problem, costs = counted(problem)
            result = method.compute(problem, cell.truncation, diagnostics=False, **params)
            step_costs.append(costs)
            return result

        start = time.perf_counter()
        outcome = task.train(
            TrainingRun(
                seed=cell.seed,
                device=torch.device(cell.device),
                dtype=task.dtype,
                params=split_params({**task.defaults, **dict(cell.task_params)})[0],
                gradient=gradient,
                reference=lambda problem: bptt(problem, 0, diagnostics=False),
                step_costs=step_costs,
            )
        )
        figures = {k: v for k, v in outcome.metrics.items() if k in TRAINING_COLUMNS}
        extra = {k: v for k, v in outcome.metrics.items() if k not in TRAINING_COLUMNS}
        extra.update(mean_costs_per_step(step_costs))
        row = {
            **figures,
            "extra_metrics": json.dumps(extra, sort_keys=True, default=float),
            "train_time_s": time.perf_counter() - start,
        }
        if outcome.diverged:
            row.update(status=DIVERGED, error="training diverged: non-finite loss or parameters")
        return row, outcome.curves


@dataclass
class StartedCell:
    """A cell run up to its memory pass: its row so far, and the pass still to measure."""

    row: dict[str, Any]
    curves: Curves | None = None
    memory_pass: Callable[[], object] | None = None
    costs: Costs | None = None
    memory_error: Exception | None = None
    elapsed: float = 0.0

    def pop_memory_pass(self) -> Callable[[], object]:
        memory_pass, self.memory_pass = self.memory_pass, None
        assert memory_pass is not None
        return memory_pass

    def guarded_memory_pass(self) -> None:
        """The memory pass, an exception kept rather than raised: one failing pass must
        not end a capture that other cells' passes share."""
        try:
            self.pop_memory_pass()()
        except Exception as exc:
            self.memory_error = exc

    def record_memory(self, figure: measure.MemoryFigure) -> None:
        if self.memory_error is not None:
            self.row.update(
                status=failure_status(self.memory_error),
                error=describe_exception(self.memory_error),
            )
            return
        assert self.costs is not None
        self.row.update(
            peak_memory_bytes=figure.peak_bytes,
            memory_method=figure.method,
            **self.costs.columns(),
        )

    def outcome(self) -> CellOutcome:
        self.row["cell_time_s"] = self.elapsed
        return CellOutcome(self.row, self.curves)


def mean_costs_per_step(step_costs: list[Costs]) -> dict[str, float]:
    """The mean cost of a training run's gradients, per training step (``extra_metrics`` keys)."""
    if not step_costs:
        return {}
    count = len(step_costs)
    return {
        f"{name}_per_step": sum(c.columns()[name] for c in step_costs) / count
        for name in Costs().columns()
    }


def result_figures(result: GradientResult) -> dict[str, Any]:
    return {
        "loss": result.loss,
        "forward_residual": result.forward_residual,
        "backward_iterations": result.backward_iterations,
        "backward_residual": result.backward_residual,
    }
