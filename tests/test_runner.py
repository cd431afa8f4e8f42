"""Running cells in-process: measurement, failure statuses, determinism."""

from __future__ import annotations

import math
import os

import torch

from rbpbench.cells import Cell, expand
from rbpbench.plugins import PluginConfig, load_registry
from rbpbench.runner import CellRunner


def faulty_runner() -> CellRunner:
    return CellRunner(load_registry(PluginConfig(modules=("tests.faulty_methods",))), "test")


def cell(method: str, seed: int = 0, **task_params: object) -> Cell:
    return Cell("contractive-rnn", method, 4, seed, "cpu", tuple(sorted(task_params.items())))


def test_an_ok_row_holds_every_figure() -> None:
    row = faulty_runner().run(cell("neumann-rbp", steps=150)).row
    assert row["status"] == "ok" and row["error"] == ""
    for key in ("grad_rel_error", "grad_rel_error_total", "grad_rel_error_exact"):
        assert 0 < row[key] < 1, key
    assert row["grad_rel_error_g"] < 1e-12  # the readout's gradient needs only h_T
    assert 0.8 < row["spectral_radius"] < 0.9  # rho = 0.9 scaled down by tanh' at the fixed point
    assert row["timing_repeats"] >= 1 and row["wall_time_s"] < row["cell_time_s"]
    assert row["memory_method"] == "memray" and row["peak_memory_bytes"] > 0
    assert len(row["cell_id"]) == 16 and row["worker"].endswith(f":{os.getpid()}")


def test_exceptions_become_error_and_oom_rows() -> None:
    runner = faulty_runner()
    error = runner.run(cell("raises")).row
    assert error["status"] == "error"
    assert error["error"].startswith("RuntimeError: solver exploded (at faulty_methods.py:")
    assert runner.run(cell("exhausts-memory")).row["status"] == "oom"
    shape = runner.run(cell("wrong-shape")).row
    assert shape["status"] == "error"
    assert "grads_f[0] is (1024,) torch.float64 cpu; the parameter is (32, 32)" in shape["error"]


def test_a_result_breaking_the_contract_is_an_error_row_naming_the_field() -> None:
    runner = faulty_runner()
    listed = runner.run(cell("list-grads")).row
    assert listed["status"] == "error"
    assert "grads_f is a list; it must be a tuple" in listed["error"]
    graph = runner.run(cell("keeps-graph")).row
    assert graph["status"] == "error"
    assert "grads_f[0] requires grad" in graph["error"]


def test_non_finite_gradients_are_a_diverged_row() -> None:
    row = faulty_runner().run(cell("nan")).row
    assert row["status"] == "diverged" and "non-finite" in row["error"]


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_the_same_cell_twice_gives_identical_numbers(registry) -> None:
    runner = CellRunner(registry, "test")
    for method in ("bptt", "tbptt", "rbp", "cg-rbp", "neumann-rbp"):
        c = Cell("contractive-rnn", method, 7, 3, "cpu")
        compute = registry.method(method).compute
        first, second = compute(runner.problem(c), 7), compute(runner.problem(c), 7)
        assert first.loss == second.loss
        for a, b in zip(
            first.grads_f + first.grads_g, second.grads_f + second.grads_g, strict=True
        ):
            assert torch.equal(a, b), method
        row_a, row_b = runner.run(c).row, runner.run(c).row
        for key in (
            "loss",
            "grad_rel_error",
            "grad_rel_error_exact",
            "backward_residual",
            "spectral_radius",
        ):
            assert same(row_a[key], row_b[key]), (method, key)
        assert row_a["cell_id"] == row_b["cell_id"]


def test_a_batch_gives_each_cell_the_figures_it_gets_alone() -> None:
    runner = faulty_runner()
    cells = [cell("neumann-rbp", 0), cell("neumann-rbp", 1), cell("bptt", 0, steps=300)]
    alone = [runner.run(c).row for c in cells]
    together = [outcome.row for outcome in runner.run_batch(cells)]
    for a, b in zip(alone, together, strict=True):
        assert b["status"] == "ok" and b["memory_method"] == "memray"
        for key in ("loss", "grad_rel_error", "forward_evaluations", "backward_vjps"):
            assert a[key] == b[key], key
        assert abs(a["peak_memory_bytes"] - b["peak_memory_bytes"]) <= 64 << 10
        assert b["wall_time_s"] < b["cell_time_s"]
    assert together[2]["peak_memory_bytes"] > 2 * together[0]["peak_memory_bytes"]  # BPTT's graph


def test_a_memory_pass_failing_in_a_batch_is_an_error_row_of_its_cell_alone() -> None:
    cells = [cell("neumann-rbp"), cell("fails-when-counted"), cell("nan"), cell("bptt")]
    rows = [outcome.row for outcome in faulty_runner().run_batch(cells)]
    assert [r["status"] for r in rows] == ["ok", "error", "diverged", "ok"]
    assert rows[1]["error"].startswith("RuntimeError: the counted pass is refused")
    assert rows[3]["peak_memory_bytes"] > 0 and rows[3]["backward_vjps"] == 300  # T VJPs


def test_cells_are_task_and_seed_major() -> None:
    cells = expand(["a"], ["m1", "m2"], [1, 2], [0, 1], ["cpu"])
    assert [c.seed for c in cells] == [0] * 4 + [1] * 4


def test_cuda_cells_without_cuda_are_skipped_rows(registry) -> None:
    row = CellRunner(registry, "test").run(Cell("contractive-rnn", "bptt", 1, 0, "cuda:7")).row
    if not torch.cuda.is_available():
        assert row["status"] == "skipped" and "CUDA is not available" in row["error"]
    else:
        assert row["status"] == "skipped" and "does not exist" in row["error"]
