"""The matrix of cells and their execution.

A cell is one (task, method, truncation, seed, device). Running it builds the
task's problem, computes the method's gradient (a first pass for the values
and diagnostics, which also warms up; a timing pass; a memory pass), and
compares the gradient with BPTT's on the same problem and with the exact one
where the task has it. A cell that fails is a row with a status, never a lost
sweep.
"""

from __future__ import annotations

import itertools
import json
import math
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import rbpbench
from rbpbench import measure
from rbpbench.methods.unrolled import bptt
from rbpbench.plugins import Registry
from rbpbench.problem import GradientResult, Problem
from rbpbench.results import ResultsFolder, empty_row

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class Cell:
    task: str
    method: str
    truncation: int
    seed: int
    device: str
    task_params: tuple[tuple[str, Any], ...] = ()
    method_params: tuple[tuple[str, Any], ...] = ()


def expand(
    tasks: Sequence[str],
    methods: Sequence[str],
    truncations: Sequence[int],
    seeds: Sequence[int],
    devices: Sequence[str],
) -> list[Cell]:
    """Every combination, task-major so that cells sharing a BPTT reference run together."""
    return [
        Cell(task, method, k, seed, device)
        for task, device, seed, method, k in itertools.product(
            tasks, devices, seeds, methods, truncations
        )
    ]


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


@dataclass
class References:
    """BPTT's and the exact gradient of one problem, computed once for all methods."""

    bptt: tuple[Tensor, ...]
    exact: tuple[Tensor, ...] | None


@dataclass
class CellRunner:
    registry: Registry
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _references: dict[tuple[Any, ...], References] = field(default_factory=dict)

    def problem(self, cell: Cell) -> Problem:
        spec = self.registry.task(cell.task)
        params = {**spec.defaults, **dict(cell.task_params)}
        return spec.build(
            seed=cell.seed, device=torch.device(cell.device), dtype=spec.dtype, **params
        )

    def references(self, cell: Cell) -> References:
        key = (cell.task, cell.task_params, cell.seed, cell.device)
        if key not in self._references:
            problem = self.problem(cell)
            exact = problem.exact_gradient() if problem.exact_gradient else None
            # Cells come task- and seed-major, so one entry suffices and large
            # reference gradients do not pile up over a sweep.
            self._references = {key: References(bptt(problem, 0).grads_f, exact)}
        return self._references[key]

    def identity(self, cell: Cell) -> dict[str, Any]:
        task_spec, task_origin = self.registry.tasks[cell.task]
        method_spec, method_origin = self.registry.methods[cell.method]
        row = empty_row()
        row.update(
            run_id=self.run_id,
            task=cell.task,
            task_params=json.dumps(
                {**task_spec.defaults, **dict(cell.task_params)}, sort_keys=True
            ),
            method=cell.method,
            method_params=json.dumps(
                {**method_spec.defaults, **dict(cell.method_params)}, sort_keys=True
            ),
            truncation=cell.truncation,
            seed=cell.seed,
            device=cell.device,
            dtype=str(task_spec.dtype).removeprefix("torch."),
            error="",
            torch_version=torch.__version__,
            rbpbench_version=rbpbench.__version__,
            method_distribution=str(method_origin),
            task_distribution=str(task_origin),
        )
        return row

    def run(self, cell: Cell) -> dict[str, Any]:
        row = self.identity(cell)
        reason = device_unavailable(cell.device)
        if reason:
            row.update(status="skipped", error=reason)
            return row
        try:
            row.update(self._measure(cell))
        except Exception as exc:
            row.update(status="error", error=describe_exception(exc))
        return row

    def _measure(self, cell: Cell) -> dict[str, Any]:
        spec = self.registry.method(cell.method)
        params = {**spec.defaults, **dict(cell.method_params)}
        device = torch.device(cell.device)
        problem = self.problem(cell)

        def compute(diagnostics: bool) -> GradientResult:
            return spec.compute(problem, cell.truncation, diagnostics=diagnostics, **params)

        result = compute(True)  # values and diagnostics; also the warm-up
        figures = result_figures(result)
        if not (math.isfinite(result.loss) and measure.all_finite(result.grads_f, result.grads_g)):
            return {**figures, "status": "diverged", "error": "non-finite loss or gradient"}
        refs = self.references(cell)
        wall = measure.median_wall_time(lambda: compute(False), device)
        memory = measure.peak_memory(lambda: compute(False), device)
        return {
            **figures,
            "status": "ok",
            "grad_rel_error": measure.relative_error(result.grads_f, refs.bptt),
            "grad_cosine": measure.cosine(result.grads_f, refs.bptt),
            "grad_rel_error_exact": (
                measure.relative_error(result.grads_f, refs.exact) if refs.exact else math.nan
            ),
            "wall_time_s": wall,
            "peak_memory_bytes": memory.peak_bytes,
            "memory_method": memory.method,
        }


def result_figures(result: GradientResult) -> dict[str, Any]:
    return {
        "loss": result.loss,
        "forward_residual": result.forward_residual,
        "backward_iterations": result.backward_iterations,
        "backward_residual": result.backward_residual,
    }


def run_sweep(
    cells: Iterable[Cell],
    runner: CellRunner,
    out: ResultsFolder,
    on_row: Callable[[Mapping[str, Any]], None] = lambda row: None,
) -> None:
    for cell in cells:
        row = runner.run(cell)
        out.append(row)
        on_row(row)
