"""Forward and adjoint convergence columns: measured by the harness, compared with tolerances."""

from __future__ import annotations

import math

import pytest
import torch

from rbpbench.cells import Cell
from rbpbench.convergence import (
    ForwardFacts,
    Tolerances,
    convergence_columns,
    default_tolerance,
)
from rbpbench.plugins import PluginConfig, load_registry
from rbpbench.problem import TaskSpec
from rbpbench.runner import CellRunner


@pytest.fixture(scope="module")
def runner() -> CellRunner:
    return CellRunner(load_registry(PluginConfig(modules=("tests.odd_tasks",))), "test")


def contractive(method: str, truncation: int = 10, **params: object) -> Cell:
    return Cell("contractive-rnn", method, truncation, 0, "cpu", tuple(sorted(params.items())))


def test_the_default_tolerance_is_half_the_digits_of_the_dtype() -> None:
    assert default_tolerance(torch.float64) == pytest.approx(1.49e-8, rel=1e-2)
    assert default_tolerance(torch.float32) == pytest.approx(3.45e-4, rel=1e-2)


def test_a_converged_forward_is_marked_converged(runner: CellRunner) -> None:
    row = runner.run(contractive("neumann-rbp", spectral_norm=0.5)).row
    assert row["status"] == "ok" and row["forward_converged"] is True
    assert row["forward_relative_residual"] < 1e-14
    assert row["forward_tolerance"] == default_tolerance(torch.float64)


def test_too_few_steps_is_an_ok_row_marked_unconverged(runner: CellRunner) -> None:
    for method in ("bptt", "neumann-rbp"):
        row = runner.run(contractive(method, steps=3, spectral_norm=0.99)).row
        assert row["status"] == "ok"
        assert row["forward_converged"] is False
        assert row["forward_relative_residual"] > 0.1


def test_a_period_two_oscillation_is_unconverged(runner: CellRunner) -> None:
    row = runner.run(Cell("period-two", "bptt", 4, 0, "cpu")).row
    assert row["forward_converged"] is False
    assert row["forward_relative_residual"] == pytest.approx(1.0)  # |1 - 0| / |1|


def test_a_user_tolerance_is_a_task_parameter_the_builder_never_sees(runner: CellRunner) -> None:
    row = runner.run(contractive("bptt", steps=3, spectral_norm=0.99, forward_tolerance=1.0)).row
    assert row["status"] == "ok", row["error"]
    assert row["forward_converged"] is True and row["forward_tolerance"] == 1.0
    assert '"forward_tolerance": 1.0' in row["task_params"]  # part of the cell's identity


def test_a_task_declaring_no_fixed_point_is_not_checked(runner: CellRunner) -> None:
    row = runner.run(Cell("declared-no-fixed-point", "neumann-rbp", 4, 0, "cpu")).row
    assert row["status"] == "ok"
    assert row["forward_converged"] is None and row["forward_tolerance"] is None
    assert row["forward_relative_residual"] > 0  # still measured and shown


def test_adjoint_convergence_follows_the_solver(runner: CellRunner) -> None:
    truncated = runner.run(contractive("neumann-rbp", 5)).row
    assert truncated["adjoint_converged"] is False
    assert truncated["adjoint_relative_residual"] == pytest.approx(0.9**6, rel=0.5)
    solved = runner.run(contractive("cg-rbp", 200)).row
    assert solved["adjoint_converged"] is True
    assert solved["adjoint_relative_residual"] < default_tolerance(torch.float64)
    unrolled = runner.run(contractive("bptt", 5)).row
    assert unrolled["adjoint_converged"] is None and unrolled["adjoint_tolerance"] is None


def test_columns_from_measured_facts() -> None:
    tolerances = Tolerances(forward=1e-3, adjoint=1e-2)
    row = convergence_columns(ForwardFacts(1e-4, 2.0), 0.01, tolerances)
    assert row == {
        "forward_relative_residual": 1e-4,
        "forward_tolerance": 1e-3,
        "forward_converged": True,
        "adjoint_relative_residual": 0.005,
        "adjoint_tolerance": 1e-2,
        "adjoint_converged": True,
    }
    blown_up = convergence_columns(ForwardFacts(math.nan, 1.0), math.inf, tolerances)
    assert blown_up["forward_converged"] is False and blown_up["adjoint_converged"] is False
    assert convergence_columns(None, math.nan, tolerances) == {}


def test_tolerances_come_from_the_task_then_the_user() -> None:
    spec = TaskSpec("t", lambda **_: None, "", forward_tolerance=1e-5)  # type: ignore[arg-type,return-value]
    assert Tolerances.of(spec, {}).forward == 1e-5
    assert Tolerances.of(spec, {"forward_tolerance": 0.1}).forward == 0.1
    assert Tolerances.of(spec, {}).adjoint == default_tolerance(torch.float32)
    undeclared = TaskSpec("u", lambda **_: None, "", forward_converges=False)  # type: ignore[arg-type,return-value]
    assert Tolerances.of(undeclared, {}).forward is None


@pytest.mark.slow
def test_fail_on_unconverged_gives_exit_1(tmp_path) -> None:
    from tests.helpers import run_cli

    args = ("run", "--methods", "bptt,neumann-rbp", "--truncation", "10", "--seeds", "0",
            "--task-param", "spectral_norm=0.99")  # fmt: skip
    short = run_cli(*args, "--task-param", "steps=3", "--out", str(tmp_path / "a"),
                    "--fail-on", "unconverged")  # fmt: skip
    assert short.returncode == 1
    assert "2 cells whose forward pass did not converge to tolerance" in short.stderr
    assert "did not converge" in short.stdout  # the leaderboard says so too
    long = run_cli(*args, "--out", str(tmp_path / "b"), "--fail-on", "unconverged")
    assert long.returncode == 0, long.stderr
    truncated = run_cli(*args, "--out", str(tmp_path / "b"), "--fail-on", "adjoint-unconverged")
    assert truncated.returncode == 1
    assert "1 cells whose adjoint system was not solved" in truncated.stderr


def test_a_tolerance_must_be_a_positive_number(registry) -> None:
    from rbpbench.config import UsageError, resolve

    for bad in ("abc", 0, -1.0, float("nan"), True):
        with pytest.raises(UsageError, match=r"contractive-rnn\.forward_tolerance must be a posit"):
            resolve({}, registry, task_param_flags={"forward_tolerance": bad})
    settings = resolve({}, registry, task_param_flags={"contractive-rnn.adjoint_tolerance": 1e-4})
    assert settings.task_params["contractive-rnn"] == {"adjoint_tolerance": 1e-4}
