"""Cells that fail become rows with a status; the rest of the sweep goes on."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rbpbench import hookimpl
from rbpbench.methods.unrolled import bptt
from rbpbench.plugins import load_registry
from rbpbench.problem import GradientResult, MethodSpec
from rbpbench.results import ResultsFolder, read
from rbpbench.runner import Cell, CellRunner, expand, run_sweep


def raising(problem, truncation, **_):
    raise RuntimeError("solver exploded")


def not_a_number(problem, truncation, **_):
    result = bptt(problem, truncation)
    return GradientResult(
        loss=result.loss,
        grads_f=tuple(torch.full_like(g, math.nan) for g in result.grads_f),
        grads_g=result.grads_g,
        forward_residual=result.forward_residual,
        backward_iterations=1,
    )


class Faulty:
    @hookimpl
    def rbpbench_methods(self) -> list[MethodSpec]:
        return [
            MethodSpec("raises", raising, "always raises"),
            MethodSpec("nan", not_a_number, "returns NaN gradients"),
        ]


def test_failing_cells_are_rows_and_the_sweep_completes(tmp_path: Path) -> None:
    registry = load_registry(extra_plugins=[("faulty", Faulty())])
    cells = expand(["contractive-rnn"], ["raises", "nan", "neumann-rbp"], [4], [0, 1], ["cpu"])
    folder = ResultsFolder(tmp_path)
    run_sweep(cells, CellRunner(registry), folder)
    frame = read(tmp_path).set_index(["method", "seed"])
    assert len(frame) == 6
    assert frame.loc[("raises", 0), "status"] == "error"
    assert frame.loc[("raises", 0), "error"].startswith(
        "RuntimeError: solver exploded (at test_runner.py:"
    )
    assert frame.loc[("nan", 1), "status"] == "diverged"
    assert (frame.xs("neumann-rbp").status == "ok").all()
    assert frame.loc[("raises", 0), "method_distribution"] == "faulty local"


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_the_same_cell_twice_gives_identical_numbers(registry) -> None:
    runner = CellRunner(registry)
    for method in ("bptt", "tbptt", "rbp", "cg-rbp", "neumann-rbp"):
        cell = Cell("contractive-rnn", method, 7, 3, "cpu")
        compute = registry.method(method).compute
        first, second = compute(runner.problem(cell), 7), compute(runner.problem(cell), 7)
        assert first.loss == second.loss
        for a, b in zip(
            first.grads_f + first.grads_g, second.grads_f + second.grads_g, strict=True
        ):
            assert torch.equal(a, b), method
        row_a, row_b = runner.run(cell), runner.run(cell)
        for key in ("loss", "grad_rel_error", "grad_rel_error_exact", "backward_residual"):
            assert same(row_a[key], row_b[key]), (method, key)


def test_cells_are_task_and_seed_major() -> None:
    cells = expand(["a"], ["m1", "m2"], [1, 2], [0, 1], ["cpu"])
    assert [c.seed for c in cells] == [0] * 4 + [1] * 4
