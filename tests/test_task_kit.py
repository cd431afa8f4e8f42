"""The task conformance kit (rbpbench.testing.check_task): it passes good tasks and names what is wrong with bad ones."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from rbpbench import Problem, TaskSpec
from rbpbench.testing import (
    ConformanceError,
    TaskKitSettings,
    check_task,
    run_task_check,
    task_checks,
)
from tests.faulty_tasks import faulty_tasks

REPO = Path(__file__).resolve().parents[1]
FAULTY = {spec.name: spec for spec in faulty_tasks()}
CHECKS = [
    "defaults-accepted",
    "problem-contract",
    "deterministic",
    "leaves-problem-unchanged",
    "exact-gradient",
]


def failure(spec: TaskSpec, check: str, settings: TaskKitSettings | None = None) -> str:
    outcome = run_task_check(check, spec, settings or TaskKitSettings())
    assert outcome.status == "failed", outcome
    return outcome.detail


def test_contractive_rnn_passes_every_check() -> None:
    report = check_task("contractive-rnn")
    assert report.ok and [o.check for o in report.outcomes] == CHECKS == list(task_checks())
    assert all(o.status == "passed" for o in report.outcomes)
    text = str(report)
    assert text.startswith("conformance of task 'contractive-rnn': passed")
    assert "of central finite differences (float64)" in text


def test_hopfield_passes_and_has_no_exact_gradient_to_check() -> None:
    report = check_task("hopfield", params={"hidden": 32, "steps": 10})
    assert report.ok, str(report)
    statuses = {o.check: o.status for o in report.outcomes}
    assert statuses.pop("exact-gradient") == "skipped"
    assert set(statuses.values()) == {"passed"}
    assert "state a tensor (10, 1600) float32" in str(report)
    # the task's own parameter table, scoped as --task-param hopfield.hidden=... is
    quick = ["defaults-accepted", "problem-contract"]
    assert check_task("hopfield", params={"hopfield.hidden": 16, "steps": 5}, checks=quick).ok


def test_the_guides_example_task_passes_the_kit(tmp_path: Path) -> None:
    from tests.test_docs import load_module, write_examples

    write_examples(tmp_path)
    linear = load_module(tmp_path / "rbpbench-linear" / "rbpbench_linear.py")
    [task] = linear.rbpbench_tasks()
    report = check_task(task)
    assert report.ok and {o.status for o in report.outcomes} == {"passed"}, str(report)


def test_a_missing_dataset_skips_every_check_with_its_message() -> None:
    report = check_task(FAULTY["offline-task"])
    assert report.ok and {o.status for o in report.outcomes} == {"skipped"}
    assert all("FakeSet is not available offline" in o.detail for o in report.outcomes)


@pytest.mark.parametrize(
    ("task", "check", "message"),
    [
        ("noisy-task", "deterministic",
         "params_f[2] differs between two builds with seed 0: draw all randomness from a "
         "generator seeded with seed"),
        ("float64-task", "problem-contract",
         "initial_state is torch.float64; the task's dtype is torch.float32"),
        ("mutating-task", "leaves-problem-unchanged",
         "params_f[0] was modified by the forward pass (step or loss)"),
        ("wrong-exact-task", "exact-gradient",
         "but central finite differences of the fixed-point loss give"),
        ("seedless-task", "deterministic",
         "build(seed=1) gives the same problem as build(seed=0): the task ignores its seed"),
    ],
)  # fmt: skip
def test_a_broken_task_fails_its_check_with_a_clear_message(
    task: str, check: str, message: str
) -> None:
    assert message in failure(FAULTY[task], check)


def test_the_broken_tasks_pass_the_checks_they_do_not_break() -> None:
    report = check_task(FAULTY["wrong-exact-task"], raise_on_failure=False)
    assert [o.check for o in report.failures] == ["exact-gradient"]
    assert "exact_gradient()[0][" in report.failures[0].detail
    with pytest.raises(ConformanceError) as caught:
        check_task(FAULTY["mutating-task"])
    message = str(caught.value)
    assert message.startswith("task 'mutating-task' fails")
    assert "- leaves-problem-unchanged: params_f[0] was modified" in message


def test_a_task_without_randomness_can_say_so() -> None:
    spec = FAULTY["seedless-task"]
    settings = TaskKitSettings(seed_independent=True)
    assert run_task_check("deterministic", spec, settings).passed
    assert check_task(spec, seed_independent=True, checks=["deterministic"]).ok


def build_with(change: Any) -> TaskSpec:
    """contractive-rnn (small) with its problem changed by ``change(problem)``."""
    small = FAULTY["noisy-task"].build

    def build(*, seed: int, device: torch.device, dtype: torch.dtype, **params: Any) -> Problem:
        with torch.random.fork_rng():
            torch.manual_seed(0)  # the noise, made deterministic
            return change(small(seed=seed, device=device, dtype=dtype, **params))

    return TaskSpec("changed", build, "a changed problem", dtype=torch.float64)


def other_step(problem: Problem) -> Problem:
    return dataclasses.replace(problem, step=lambda h, t: torch.cat([h, h], dim=1))


def vector_loss(problem: Problem) -> Problem:
    return dataclasses.replace(problem, loss=lambda h: h.sum(dim=1))


def frozen(problem: Problem) -> Problem:
    problem.params_f[1].requires_grad_(False)
    return problem


def computed(problem: Problem) -> Problem:
    return dataclasses.replace(problem, params_f=tuple(p * 1 for p in problem.params_f))


def listed(problem: Problem) -> Problem:
    return dataclasses.replace(problem, params_g=list(problem.params_g))


def zero_steps(problem: Problem) -> Problem:
    return dataclasses.replace(problem, num_steps=0)


def seed_dropped(problem: Problem) -> Problem:
    return dataclasses.replace(problem, seed=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (other_step, "step(h0, 0) is a tensor (2, 16) float64; the initial state is a tensor "
                     "(2, 8) float64: a step must return a state like the one it is given"),
        (vector_loss, "loss(h_T) is a tensor of shape (2,); it must be a scalar tensor"),
        (frozen, "params_f[1] does not require grad"),
        (computed, "params_f[0] is no leaf tensor"),
        (listed, "params_g is a list; it must be a tuple"),
        (zero_steps, "num_steps is 0; it must be an int >= 1"),
    ],
    ids=lambda v: getattr(v, "__name__", "message"),
)  # fmt: skip
def test_the_problem_contract_names_what_is_wrong(change: Any, message: str) -> None:
    assert message in failure(build_with(change), "problem-contract")


def test_a_problem_that_forgets_its_seed_is_named() -> None:
    settings = TaskKitSettings(seed=3)
    detail = failure(build_with(seed_dropped), "problem-contract", settings)
    assert "problem.seed is 0 for build(seed=3); pass the seed on" in detail


def test_defaults_that_the_task_refuses_fail_the_defaults_check() -> None:
    def refuse(params: Any) -> None:
        if params["steps"] > 100:
            raise ValueError("changed: steps must be at most 100")

    spec = dataclasses.replace(build_with(lambda p: p), defaults={"steps": 200}, check=refuse)
    detail = failure(spec, "defaults-accepted")
    assert "the TaskSpec's check refuses the task's own defaults" in detail
    assert "steps must be at most 100" in detail

    def raising(*, seed: int, device: torch.device, dtype: torch.dtype, **_: Any) -> Problem:
        raise TypeError("build() got an unexpected keyword argument 'stepz'")

    broken = TaskSpec("broken", raising, "does not build", defaults={"stepz": 1})
    assert "build(seed=0, dtype=float32) raised TypeError: build() got an unexpected" in failure(
        broken, "defaults-accepted"
    )


def test_task_parameters_are_checked_as_the_cli_checks_them() -> None:
    with pytest.raises(ValueError, match="params: contractive-rnn has no parameter no_such_param"):
        check_task("contractive-rnn", params={"no_such_param": 1})
    with pytest.raises(ValueError, match=r"contractive-rnn.steps must be a whole number"):
        check_task("contractive-rnn", params={"steps": "many"})
    with pytest.raises(ValueError, match=r"spectral_norm must be in \(0, 1\)"):
        check_task("contractive-rnn", params={"spectral_norm": 1.5})
    report = check_task(
        "contractive-rnn", params={"contractive-rnn.hidden": 6}, checks=["problem-contract"]
    )
    assert "(4, 6) float64" in report.outcomes[0].detail
    with pytest.raises(KeyError, match="no rbpbench task 'nope' is installed"):
        check_task("nope")
    with pytest.raises(KeyError, match="no task conformance check 'speed'"):
        check_task("contractive-rnn", checks=["speed"])


def pytest_kit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "rbpbench.testing", "-p", "no:cacheprovider",
         *args],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_one_pytest_command_checks_tasks() -> None:
    result = pytest_kit("--rbpbench-task", "contractive-rnn,hopfield", "--rbpbench-param",
                        "hopfield.hidden=32", "--rbpbench-param", "steps=20", "-v")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "9 passed, 1 skipped" in result.stdout
    assert "test_task_conformance[hopfield-exact-gradient] SKIPPED" in result.stdout
    assert "test_conformance" not in result.stdout  # no method asked: no method tests
    assert "rbpbench task conformance kit: contractive-rnn,hopfield" in result.stdout


@pytest.mark.slow
def test_the_pytest_command_names_what_is_wrong_with_a_task() -> None:
    faulty = pytest_kit("--rbpbench-plugin", "tests.faulty_tasks", "--rbpbench-task",
                        "noisy-task,wrong-exact-task", "--rbpbench-method", "neumann-rbp",
                        "-k", "deterministic or exact")  # fmt: skip
    assert faulty.returncode == 1
    assert "noisy-task: params_f[2] differs between two builds with seed 0" in faulty.stdout
    assert "wrong-exact-task: exact_gradient()[0]" in faulty.stdout
    assert "2 failed" in faulty.stdout and "passed" in faulty.stdout  # the method checks too
    refused = pytest_kit("--rbpbench-task", "contractive-rnn", "--rbpbench-param",
                         "no_such_param=1")  # fmt: skip
    assert refused.returncode != 0
    assert "--rbpbench-param: contractive-rnn has no parameter no_such_param" in refused.stdout
    unknown = pytest_kit("--rbpbench-task", "nope")
    assert unknown.returncode != 0 and "no rbpbench task 'nope' is installed" in unknown.stdout
