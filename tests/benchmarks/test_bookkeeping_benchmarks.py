"""What the harness costs per cell, beside the methods: storing a row, and a cell that costs nothing.

Run with ``python -m pytest tests/benchmarks --benchmark-json=FILE`` (CI writes
artifacts/benchmarks.json). Nothing here asserts on a time.

- ``test_store_a_row[rows]``: one finished cell stored in a results folder that
  already holds 100 or 10,000 rows. With the journal it is one fsync'd line
  whatever the size; before it, the whole table was rewritten (58 ms at 100
  rows, 495 ms at 6,000 on the issue's machine).
- ``test_null_cell``: a cell whose task is a one-number problem and whose
  method returns zeros at once, run by the worker's CellRunner in this
  process: the harness's own cost per cell (problem, references, three passes,
  spectral radius, row), without the pipe and the pool.
- ``test_null_cells_in_a_batch``: 32 such cells in one batch, as the pool sends
  cheap cells to a worker: one memory capture for all (divide the time by 32).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from rbpbench import GradientResult, MethodSpec, Problem, TaskSpec
from rbpbench.cells import Cell
from rbpbench.plugins import Registry
from rbpbench.results import ResultsFolder
from rbpbench.runner import CellRunner
from tests.tables import row


@pytest.mark.parametrize("rows", [100, 10_000])
def test_store_a_row(benchmark: BenchmarkFixture, tmp_path, rows: int) -> None:
    folder = ResultsFolder(tmp_path / "r")
    folder.compact_every_s = float("inf")  # time the per-cell write, not a compaction
    for seed in range(rows):
        folder.rows[f"old-{seed}"] = row("t", "m", 5, seed, loss=1.0)
    folder.compact()
    seeds = iter(range(rows, rows + 10_000))
    benchmark.group = "store one finished cell"
    benchmark.extra_info.update(rows_in_table=rows)
    benchmark.pedantic(
        lambda: folder.append(row("t", "m", 5, next(seeds), loss=1.0)),
        rounds=20,
        iterations=1,
        warmup_rounds=1,
    )


def build_null(*, seed: int, device: torch.device, dtype: torch.dtype) -> Problem:
    w = torch.zeros(1, device=device, dtype=dtype, requires_grad=True)
    return Problem(
        step=lambda h, t: 0.5 * h + w,
        initial_state=torch.zeros(1, device=device, dtype=dtype),
        num_steps=2,
        params_f=(w,),
        params_g=(),
        loss=lambda h: (h * h).sum(),
        seed=seed,
    )


def null_method(problem: Problem, truncation: int, *, diagnostics: bool = True) -> GradientResult:
    return GradientResult(
        loss=0.0,
        grads_f=tuple(torch.zeros_like(p) for p in problem.params_f),
        grads_g=(),
        forward_residual=0.0,
        backward_iterations=0,
    )


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    """What the test process holds leaves the collector's sight, as a worker's does
    (worker_main): the collection before each memory capture is then a worker's."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


def null_runner() -> CellRunner:
    from rbpbench.plugins import core_origin

    origin = core_origin()
    registry = Registry(
        methods={"null": (MethodSpec("null", null_method, "zeros"), origin)},
        tasks={"null": (TaskSpec("null", build_null, "one number"), origin)},
    )
    return CellRunner(registry, "bench")


def test_null_cell(benchmark: BenchmarkFixture, frozen_heap: None) -> None:
    runner = null_runner()
    seeds = iter(range(1_000_000))
    benchmark.group = "a cell that costs nothing"

    def cell() -> None:
        outcome = runner.run(Cell("null", "null", 1, next(seeds), "cpu"))
        assert outcome.row["status"] == "ok", outcome.row["error"]

    benchmark.pedantic(cell, rounds=20, iterations=1, warmup_rounds=1)


def test_null_cells_in_a_batch(benchmark: BenchmarkFixture, frozen_heap: None) -> None:
    runner = null_runner()
    seeds = iter(range(1_000_000))
    benchmark.group = "a cell that costs nothing"
    benchmark.extra_info.update(cells_per_round=32)

    def batch() -> None:
        cells = [Cell("null", "null", 1, next(seeds), "cpu") for _ in range(32)]
        outcomes = runner.run_batch(cells)
        assert all(o.row["status"] == "ok" for o in outcomes)

    benchmark.pedantic(batch, rounds=5, iterations=1, warmup_rounds=1)
