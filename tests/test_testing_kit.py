"""The conformance kit (rbpbench.testing): it passes good methods and names what is wrong with bad ones."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from rbpbench import GradientResult, MethodSpec, Problem
from rbpbench.methods.implicit import neumann_rbp
from rbpbench.methods.unrolled import bptt
from rbpbench.testing import (
    ConformanceError,
    ConformanceReport,
    check_method,
    checks_for,
    run_check,
)
from rbpbench.testing.kit import KitSettings

REPO = Path(__file__).resolve().parents[1]
BUILTINS = ("bptt", "tbptt", "rbp", "cg-rbp", "neumann-rbp")
FAST = KitSettings(spectral_norms=(0.5,), truncation=200)


def spec(compute: Any, name: str = "under-test", **kw: Any) -> MethodSpec:
    return MethodSpec(name, compute, "a method under test", **kw)


def failure(compute: Any, check: str, **kw: Any) -> str:
    outcome = run_check(check, spec(compute, **kw), FAST)
    assert outcome.status == "failed", outcome
    return outcome.detail


def neumann(problem: Problem, truncation: int, **kw: Any) -> GradientResult:
    return neumann_rbp(problem, truncation, diagnostics=kw.get("diagnostics", True))


def test_a_good_method_passes_every_check_and_the_report_says_so() -> None:
    report = check_method(spec(neumann))
    assert report.ok and not report.failures
    assert [o.check for o in report.outcomes] == [
        "result-contract",
        "exact-gradient-rho0.5",
        "exact-gradient-rho0.9",
        "exact-gradient-rho0.99",
        "deterministic",
        "leaves-problem-unchanged",
        "memory-flat-in-T",
    ]
    text = str(report)
    assert text.startswith("conformance of 'under-test': passed")
    assert "relative error" in text and "peak" in text


def test_an_installed_method_is_found_by_name() -> None:
    report = check_method("neumann-rbp", checks=["result-contract", "deterministic"])
    assert report.method == "neumann-rbp" and report.ok and len(report.outcomes) == 2
    with pytest.raises(
        KeyError, match=r"no rbpbench method 'nope' is installed; installed: .*bptt"
    ):
        check_method("nope")
    with pytest.raises(KeyError, match="no conformance check 'speed'"):
        check_method("neumann-rbp", checks=["speed"])


def wrong_dtype(problem: Problem, truncation: int, **_: Any) -> GradientResult:
    result = neumann(problem, truncation)
    return dataclasses.replace(result, grads_f=tuple(g.float() for g in result.grads_f))


def wrong_shape(problem: Problem, truncation: int, **_: Any) -> GradientResult:
    result = neumann(problem, truncation)
    return dataclasses.replace(result, grads_f=tuple(g.reshape(-1) for g in result.grads_f))


def as_list(problem: Problem, truncation: int, **_: Any) -> GradientResult:
    result = neumann(problem, truncation)
    return dataclasses.replace(result, grads_g=list(result.grads_g))  # type: ignore[arg-type]


def tensor_loss(problem: Problem, truncation: int, **_: Any) -> GradientResult:
    return dataclasses.replace(neumann(problem, truncation), loss=torch.tensor(1.0))  # type: ignore[arg-type]


def float_iterations(problem: Problem, truncation: int, **_: Any) -> GradientResult:
    return dataclasses.replace(neumann(problem, truncation), backward_iterations=3.0)  # type: ignore[arg-type]


def attached(problem: Problem, truncation: int, **_: Any) -> GradientResult:
    result = neumann(problem, truncation)
    return dataclasses.replace(
        result,
        grads_g=tuple(g + 0 * p for g, p in zip(result.grads_g, problem.params_g, strict=True)),
    )


def other_without_diagnostics(
    problem: Problem, truncation: int, *, diagnostics: bool = True, **_: Any
) -> GradientResult:
    return neumann_rbp(problem, truncation if diagnostics else truncation // 2)


@pytest.mark.parametrize(
    ("compute", "message"),
    [
        (wrong_dtype, "grads_f[0] is (32, 32) torch.float32 cpu; the parameter is "
                      "(32, 32) torch.float64 cpu (contractive-rnn in float64)"),
        (wrong_shape, "grads_f[0] is (1024,) torch.float64 cpu; the parameter is (32, 32)"),
        (as_list, "grads_g is a list; it must be a tuple"),
        (tensor_loss, "loss is Tensor tensor(1.); it must be a float"),
        (float_iterations, "backward_iterations is float 3.0; it must be an int >= 0"),
        (attached, "grads_g[0] requires grad (it keeps an autograd graph alive)"),
        (other_without_diagnostics, "grads_f[0] with diagnostics=False differs from diagnostics=True"),
    ],
    ids=lambda v: getattr(v, "__name__", "message"),
)  # fmt: skip
def test_the_result_contract_names_what_is_wrong(compute: Any, message: str) -> None:
    assert message in failure(compute, "result-contract")


def coarse(problem: Problem, truncation: int, **_: Any) -> GradientResult:
    return neumann(problem, max(1, truncation // 100))


def test_an_inaccurate_method_fails_with_its_error_and_a_larger_k_helps() -> None:
    detail = failure(coarse, "exact-gradient-rho0.5")
    assert "against the exact gradient of w_F at spectral norm 0.5, K=200" in detail
    assert "the tolerance is 1e-06" in detail
    generous = dataclasses.replace(FAST, truncation=5000)
    assert run_check("exact-gradient-rho0.5", spec(coarse), generous).passed
    loose = dataclasses.replace(FAST, tolerance=0.5)
    assert run_check("exact-gradient-rho0.5", spec(coarse), loose).passed


def noisy(problem: Problem, truncation: int, **_: Any) -> GradientResult:
    result = neumann(problem, truncation)
    noise = tuple(g + 1e-12 * torch.rand_like(g) for g in result.grads_f)  # global RNG: unseeded
    return dataclasses.replace(result, grads_f=noise)


def test_randomness_not_seeded_from_the_problem_is_caught() -> None:
    detail = failure(noisy, "deterministic")
    assert (
        "grads_f[0] differs between the first call and a second call on the same problem" in detail
    )


def accumulates(problem: Problem, truncation: int, **_: Any) -> GradientResult:
    result = bptt(problem, truncation)
    with torch.enable_grad():
        h = problem.initial_state
        for t in range(problem.num_steps):
            h = problem.step(h, t)
        problem.loss(h).backward()
    return result


def freezes(problem: Problem, truncation: int, **_: Any) -> GradientResult:
    result = neumann(problem, truncation)
    problem.params_g[0].requires_grad_(False)
    return result


def nudges(problem: Problem, truncation: int, **_: Any) -> GradientResult:
    with torch.no_grad():
        problem.params_f[2].add_(1e-9)
    return neumann(problem, truncation)


def shortens(problem: Problem, truncation: int, **_: Any) -> GradientResult:
    problem.num_steps = 10
    return neumann(problem, truncation)


def grad_off(problem: Problem, truncation: int, **_: Any) -> GradientResult:
    result = neumann(problem, truncation)
    torch.set_grad_enabled(False)
    return result


@pytest.mark.parametrize(
    ("compute", "message"),
    [
        (accumulates, "params_f[0].grad was None and is now set: the method accumulated into .grad"),
        (freezes, "params_g[0].requires_grad was True and is now False"),
        (nudges, "params_f[2] was modified by the method"),
        (shortens, "the method changed problem.num_steps or problem.seed"),
        (grad_off, "the method left autograd on flipped"),
    ],
    ids=lambda v: getattr(v, "__name__", "message"),
)  # fmt: skip
def test_a_method_that_touches_the_problem_is_caught(compute: Any, message: str) -> None:
    try:
        assert message in failure(compute, "leaves-problem-unchanged")
    finally:
        torch.set_grad_enabled(True)


def test_memory_growing_with_t_fails_unless_the_method_declares_it() -> None:
    detail = failure(bptt, "memory-flat-in-T")
    assert "peak memory grows with T" in detail and "unrolls=True" in detail
    declared = run_check("memory-flat-in-T", spec(bptt, unrolls=True), FAST)
    assert declared.status == "skipped" and "declares unrolls=True" in declared.detail


def test_an_exception_in_the_method_is_a_failure_that_names_it() -> None:
    def raises(problem: Problem, truncation: int, **_: Any) -> GradientResult:
        raise RuntimeError("solver exploded")

    detail = failure(raises, "deterministic")
    assert detail == "the method raised RuntimeError: solver exploded"


def test_every_check_runs_and_all_failures_are_listed_at_once() -> None:
    report = check_method(spec(wrong_dtype), spectral_norms=(0.5,), raise_on_failure=False)
    assert isinstance(report, ConformanceReport) and not report.ok
    assert [o.check for o in report.failures] == ["result-contract"]
    with pytest.raises(ConformanceError) as caught:
        check_method(spec(noisy), spectral_norms=(0.5,), truncation=200)
    message = str(caught.value)
    # unseeded noise also makes the diagnostics=False call differ
    assert message.startswith("'under-test' fails 2 conformance check(s):")
    assert "\n- result-contract: grads_f[0] with diagnostics=False differs" in message
    assert "\n- deterministic: grads_f[0] differs" in message


def test_method_parameters_reach_the_method() -> None:
    seen: list[dict[str, Any]] = []

    def records(problem: Problem, truncation: int, **params: Any) -> GradientResult:
        seen.append(params)
        return neumann(problem, truncation)

    check_method(
        spec(records, defaults={"a": 1, "b": 2}), params={"b": 3}, checks=["deterministic"]
    )
    assert seen and all(p == {"a": 1, "b": 3, "diagnostics": True} for p in seen)


def test_unknown_or_mistyped_method_parameters_are_refused_before_any_check() -> None:
    calls: list[dict[str, Any]] = []

    def records(problem: Problem, truncation: int, **params: Any) -> GradientResult:
        calls.append(params)
        return neumann(problem, truncation)

    typed = spec(records, defaults={"tol": 1e-12})
    with pytest.raises(ValueError, match=r"params: under-test has no parameter no_such_param; "
                                         r"valid: tol"):  # fmt: skip
        check_method(typed, params={"no_such_param": 1})
    with pytest.raises(ValueError, match=r"under-test.tol must be a number"):
        check_method(typed, params={"tol": "tiny"})
    assert calls == []  # the defaults never ran
    with pytest.raises(ValueError, match="neumann-rbp has no parameter no_such_param"):
        check_method("neumann-rbp", params={"no_such_param": 1})
    check_method(typed, params={"under-test.tol": 1e-9}, checks=["deterministic"])
    assert calls and all(c["tol"] == 1e-9 for c in calls)


def test_checks_follow_the_spectral_norms() -> None:
    names = list(checks_for(KitSettings(spectral_norms=(0.3, 0.95))))
    assert "exact-gradient-rho0.3" in names and "exact-gradient-rho0.95" in names


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTINS)
def test_the_built_in_methods_pass_the_kit(name: str) -> None:
    report = check_method(name)
    assert report.ok, str(report)
    memory = next(o for o in report.outcomes if o.check == "memory-flat-in-T")
    assert memory.status == ("skipped" if name in ("bptt", "tbptt") else "passed")


def pytest_kit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "rbpbench.testing", "-p", "no:cacheprovider",
         *args],
        capture_output=True, text=True, cwd=cwd, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_one_pytest_command_checks_a_method(tmp_path: Path) -> None:
    result = pytest_kit("--rbpbench-method", "neumann-rbp,bptt", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "13 passed, 1 skipped" in result.stdout
    assert "rbpbench conformance kit: neumann-rbp,bptt at K=1000, tolerance 1e-06" in result.stdout


@pytest.mark.slow
def test_the_pytest_command_reports_failures_and_usage_errors(tmp_path: Path) -> None:
    faulty = pytest_kit(
        "--rbpbench-plugin", "tests.faulty_methods", "--rbpbench-method", "wrong-shape",
        "-k", "result-contract", cwd=REPO,
    )  # fmt: skip
    assert faulty.returncode == 1
    assert (
        "wrong-shape: grads_f[0] is (1024,) torch.float64 cpu; the parameter is (32, 32)"
        in faulty.stdout
    )
    missing = pytest_kit(cwd=tmp_path)
    assert missing.returncode != 0
    assert "pytest --pyargs rbpbench.testing --rbpbench-method NAME" in missing.stdout
    unknown = pytest_kit("--rbpbench-method", "nope", cwd=tmp_path)
    assert unknown.returncode != 0
    assert "no rbpbench method 'nope' is installed" in unknown.stdout
    refused = pytest_kit(
        "--rbpbench-method", "neumann-rbp", "--rbpbench-param", "no_such_param=1", cwd=tmp_path
    )  # fmt: skip
    assert refused.returncode != 0
    assert (
        "--rbpbench-param: neumann-rbp has no parameter no_such_param; valid: (none)"
        in refused.stdout
    )
    assert "passed" not in refused.stdout  # the defaults were not run instead
