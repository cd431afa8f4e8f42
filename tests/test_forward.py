"""The forward building blocks and the forward axis of a sweep."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from rbpbench import state as S
from rbpbench.cells import Cell, identity_row
from rbpbench.cli import main
from rbpbench.forward import (
    ITERATE,
    ForwardMismatch,
    final_step,
    run_without_graph,
    solve_forward,
    solve_with_graph,
    solver_evaluations,
)
from rbpbench.problem import BoundForward, ForwardSolution, ForwardSolverSpec, Problem
from rbpbench.runner import CellRunner
from tests.conftest import contractive_problem

ROOT = Path(__file__).resolve().parents[1]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def halving(step, h0, *, num_steps, tol: float = 1e-13):
    """A toy accelerated solver: iterate, but stop at a tolerance (not in order: a different
    count of evaluations than iterate)."""
    h, iterations = h0, 0
    for iterations in range(1, 10_000):
        h_next = step(h, iterations)
        change, size = S.norm(S.sub(h_next, h)).detach(), S.norm(h_next).detach()
        if float(change) <= tol * float(size):
            return ForwardSolution(h_next, iterations)
        h = h_next
    return ForwardSolution(h, iterations)


STOPPING = ForwardSolverSpec("stopping", halving, "iterate to a tolerance", {"tol": 1e-13})


def test_iterate_is_the_paper_forward() -> None:
    problem = contractive_problem(steps=40)
    assert torch.equal(solve_forward(problem), run_without_graph(problem, 39))
    h, with_graph = solve_with_graph(problem, 5)
    assert with_graph == 5 and h.requires_grad
    assert solver_evaluations(problem) == 39


def test_graph_over_the_last_evaluations_of_another_solver() -> None:
    problem = dataclasses.replace(
        contractive_problem(steps=40, spectral_norm=0.5), forward=BoundForward(STOPPING)
    )
    total = solver_evaluations(problem)
    assert total > 10
    h, with_graph = solve_with_graph(problem, 4)
    assert with_graph == 4
    h_all, with_graph = solve_with_graph(problem)
    assert with_graph == total
    assert torch.allclose(h.detach(), h_all.detach(), rtol=0, atol=0)
    # the graph spans the last four evaluations only: BPTT through them equals a hand-written one
    loss = problem.loss(final_step(problem, h))
    grads = torch.autograd.grad(loss, problem.params_f)
    start = run_without_graph(problem, total - 4)
    with torch.enable_grad():
        x = start
        for _ in range(5):
            x = problem.step(x, 0)
        expected = torch.autograd.grad(problem.loss(x), problem.params_f)
    for a, b in zip(grads, expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_a_time_varying_problem_refuses_an_out_of_order_solver() -> None:
    problem = dataclasses.replace(
        contractive_problem(steps=10), time_varying=True, forward=BoundForward(STOPPING)
    )
    with pytest.raises(ForwardMismatch, match="depends on t"):
        solve_forward(problem)
    solve_forward(dataclasses.replace(problem, forward=BoundForward(ITERATE)))


def test_a_solver_that_returns_something_else_is_named() -> None:
    broken = ForwardSolverSpec("broken", lambda step, h0, *, num_steps: h0, "returns a tensor")
    problem = dataclasses.replace(contractive_problem(steps=10), forward=BoundForward(broken))
    with pytest.raises(TypeError, match="forward solver broken returned Tensor"):
        solve_forward(problem)


def test_the_default_forward_keeps_the_cell_ids_of_committed_results(registry) -> None:
    """A folder written before forward solvers existed still resumes: same cell ids."""
    table = pd.read_parquet(ROOT / "results" / "hopfield-table1" / "results.parquet")
    row = table.iloc[0]
    method = registry.method(str(row.method))
    task = registry.task(str(row.task))
    task_params = {
        k: v for k, v in json.loads(row.task_params).items() if task.defaults.get(k) != v
    }
    method_params = {
        k: v for k, v in json.loads(row.method_params).items() if method.defaults.get(k) != v
    }
    cell = Cell(
        str(row.task),
        str(row.method),
        int(row.truncation),
        int(row.seed),
        str(row.device),
        tuple(sorted(task_params.items())),
        tuple(sorted(method_params.items())),
    )
    fresh = identity_row(cell, registry, "run")
    if fresh["rbpbench_version"] != row.rbpbench_version:
        pytest.skip("rbpbench's version changed since the folder was written")
    assert fresh["cell_id"] == row.cell_id
    assert fresh["forward"] == "iterate" and fresh["forward_params"] == "{}"
    with_stopping = dataclasses.replace(
        registry, forwards={**registry.forwards, "stopping": (STOPPING, fresh_origin(registry))}
    )
    other = identity_row(dataclasses.replace(cell, forward="stopping"), with_stopping, "run")
    assert other["cell_id"] != row.cell_id


def fresh_origin(registry):
    return registry.forwards["iterate"][1]


def test_a_time_varying_task_with_an_accelerated_forward_is_a_skipped_row(registry) -> None:
    registry = dataclasses.replace(
        registry, forwards={**registry.forwards, "stopping": (STOPPING, fresh_origin(registry))}
    )
    runner = CellRunner(registry, "run")
    original = runner.problem

    def time_varying(cell: Cell, *, with_forward: bool = True) -> Problem:
        return dataclasses.replace(original(cell, with_forward=with_forward), time_varying=True)

    runner.problem = time_varying  # type: ignore[method-assign]
    cell = Cell("contractive-rnn", "neumann-rbp", 5, 0, "cpu", (("steps", 20),), (), "stopping")
    row = runner.run(cell).row
    assert row["status"] == "skipped" and "depends on t" in row["error"]
    row = runner.run(dataclasses.replace(cell, forward="iterate")).row
    assert row["status"] == "ok"


def test_unknown_forward_and_forward_parameter_are_one_line(capsys, tmp_path) -> None:
    code, _, err = cli(capsys, "run", "--forward", "newton", "--out", str(tmp_path / "a"))
    assert (
        code == 2 and "unknown forward solver newton" in err and len(err.strip().splitlines()) == 1
    )
    code, _, err = cli(capsys, "run", "--forward-param", "window=3", "--out", str(tmp_path / "b"))
    assert code == 2 and "iterate has no parameter window" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_rows_carry_the_forward_and_its_costs(tmp_path) -> None:
    from rbpbench import run

    frame = run(
        tasks="contractive-rnn",
        methods="neumann-rbp,jfb",
        truncation=[3],
        seeds=[0],
        task_params={"steps": 30},
        out=tmp_path / "out",
        progress=False,
    )
    assert list(frame.forward) == ["iterate", "iterate"]
    assert list(frame.forward_evaluations) == [30, 30]
    assert list(frame.backward_vjps) == [4, 1]
    assert list(frame.backward_jvps) == [0, 0]


# -- the built-in accelerated forwards under every method ---------------------------------------

IMPLICIT = ("rbp", "cg-rbp", "neumann-rbp", "gmres-rbp")


def bound(problem: Problem, registry, name: str, **params) -> Problem:
    spec = registry.forward(name)
    return dataclasses.replace(problem, forward=BoundForward(spec, {**spec.defaults, **params}))


def relative(a, b) -> float:
    num = sum(float(torch.sum((x - y) ** 2)) for x, y in zip(a, b, strict=True)) ** 0.5
    return num / sum(float(torch.sum(y**2)) for y in b) ** 0.5


@pytest.mark.parametrize("forward", ["anderson", "broyden"])
def test_accelerated_forwards_need_far_fewer_evaluations(registry, forward: str) -> None:
    """At rho(J) = 0.99 (input_scale 0.05), iterate needs ~2,100 steps to a relative residual
    of 1e-13; the accelerated solvers reach their tolerance (1.8e-12) in a fraction of that."""
    problem = contractive_problem(spectral_norm=0.99, input_scale=0.05, steps=2500)
    fast = bound(problem, registry, forward)
    assert solver_evaluations(fast) * 3 <= solver_evaluations(problem)
    h = solve_forward(fast)
    with torch.no_grad():
        f_h = problem.step(h, 0)
    assert float(S.norm(S.sub(f_h, h)) / S.norm(f_h)) <= 1.8e-12


@pytest.mark.parametrize("forward", ["iterate", "anderson", "broyden"])
@pytest.mark.parametrize("method", IMPLICIT)
def test_the_rbp_family_matches_the_exact_gradient_on_every_forward(
    registry, forward: str, method: str
) -> None:
    if method not in registry.methods:
        pytest.skip(f"{method} is not installed")
    problem = bound(contractive_problem(spectral_norm=0.9, steps=400), registry, forward)
    params = {"init": "zeros", "tol": 1e-14} if method == "rbp" else {}
    result = registry.method(method).compute(problem, 300, **params)
    assert relative(result.grads_f, problem.exact_gradient()) < 1e-8


def test_bptt_through_anderson_is_unrolled_differentiation_of_anderson(registry) -> None:
    """Through a converged Anderson solve BPTT reaches the implicit gradient too; TBPTT with a
    short window through the same iterations does not (the mixing carries the past)."""
    problem = bound(contractive_problem(spectral_norm=0.9, steps=400), registry, "anderson")
    from rbpbench.methods.unrolled import bptt, tbptt

    exact = problem.exact_gradient()
    assert relative(bptt(problem, 0).grads_f, exact) < 1e-6
    assert relative(tbptt(problem, 3).grads_f, exact) > 1e-3


def test_a_solver_out_of_budget_is_an_unconverged_row(registry) -> None:
    runner = CellRunner(registry, "run")
    cell = Cell(
        "contractive-rnn",
        "cg-rbp",
        50,
        0,
        "cpu",
        (("spectral_norm", 0.99), ("steps", 50)),
        (),
        "anderson",
        (("max_iter", 3),),
    )
    row = runner.run(cell).row
    assert row["status"] == "ok", row["error"]
    assert row["forward_converged"] is False or row["forward_converged"] == False  # noqa: E712
    assert row["forward_evaluations"] == 3 + 1  # three iterates, then the final step


@pytest.mark.parametrize("method", ["neumann-rbp", "jfb", "phantom"])
def test_memory_stays_flat_in_the_forward_iterations(registry, method: str) -> None:
    """Ten times the Anderson iterations, the same peak memory (a tolerance it cannot meet)."""
    from rbpbench.measure import peak_memory

    problem = contractive_problem(spectral_norm=0.99, hidden=64, batch=8, steps=10)
    peaks = []
    for iterations in (30, 300):
        on = bound(problem, registry, "anderson", max_iter=iterations, tol=1e-300)
        spec = registry.method(method)

        def call(on: Problem = on, spec=spec) -> None:
            spec.compute(on, 10, diagnostics=False)

        call()
        peaks.append(peak_memory(call, torch.device("cpu"), repeats=3).peak_bytes)
    assert peaks[1] <= 1.25 * peaks[0], peaks


def test_a_forward_parameter_out_of_range_is_one_line_before_anything_runs(
    capsys, tmp_path
) -> None:
    out = tmp_path / "a"
    code, _, err = cli(capsys, "run", "--forward", "anderson", "--forward-param", "m=0",
                       "--out", str(out))  # fmt: skip
    assert code == 2 and "forward parameters: anderson: m must be" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    code, _, err = cli(capsys, "run", "--forward", "broyden", "--forward-param",
                       "broyden.tol=-1.0", "--out", str(out))  # fmt: skip
    assert code == 2 and "broyden: tol" in err and not out.exists()
