"""deq-mnist: the implicit layer's cell, its exact gradient, deterministic training, the quick
preset, and the skipped row without MNIST."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from rbpbench import state as S
from rbpbench.config import load_suite
from rbpbench.costs import Costs, counted
from rbpbench.methods.equilibrium import JFB
from rbpbench.methods.implicit import cg_rbp
from rbpbench.methods.unrolled import bptt
from rbpbench.problem import (
    BoundForward,
    ForwardSolution,
    ForwardSolverSpec,
    GradientResult,
    Problem,
    TrainingOutcome,
    TrainingRun,
)
from rbpbench.results import read_curves
from rbpbench.tasks import deq
from rbpbench.testing.task_kit import check_task
from tests.helpers import run_cli

CPU = torch.device("cpu")
F64 = torch.float64
TINY_TRAINING = {
    "hidden": 16,
    "batch": 64,
    "examples": 512,
    "val_examples": 200,
    "epochs": 2,
    "steps": 25,
    "lr": 0.003,
    "probes": 2,
}


def tiny_problem(
    seed: int = 0, *, hidden: int = 6, batch: int = 3, inputs: int = 10, steps: int = 200
) -> Problem:
    """A problem on random inputs (no MNIST) at the task's default spectral norm."""
    model = deq.DEQ(
        seed=seed,
        device=CPU,
        dtype=F64,
        hidden=hidden,
        spectral_norm=deq.Settings.spectral_norm,
        steps=steps,
        inputs=inputs,
    )
    generator = torch.Generator().manual_seed(seed + 100)
    images = torch.randn(batch, inputs, generator=generator, dtype=F64)
    labels = torch.randint(0, deq.CLASSES, (batch,), generator=generator)
    return model.problem(images, labels, seed)


def test_the_cell_update_is_tanh_of_the_spectrally_normalised_recurrence() -> None:
    problem = tiny_problem()
    v, u, b = (p.detach() for p in problem.params_f)
    x = problem.info["images"]
    w = deq.Settings.spectral_norm * v / torch.linalg.matrix_norm(v, ord=2)
    z = torch.rand(3, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    expected = torch.tanh(z @ w.T + x @ u.T + b)
    with torch.no_grad():
        torch.testing.assert_close(problem.step(z, 0), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(problem.step(z, 17), expected, rtol=0, atol=0)  # no t
    # the initial parameters: ||W||_2 = rho with distinct singular values (so that sigma_max is
    # differentiable); the readout scores z with a cross-entropy
    singular = torch.linalg.svdvals(v)
    assert float(singular[0] - singular[1]) > 1e-3
    logits = z @ problem.params_g[0].detach().T + problem.params_g[1].detach()
    with torch.no_grad():
        loss = problem.loss(z)
    torch.testing.assert_close(
        loss, torch.nn.functional.cross_entropy(logits, problem.info["labels"])
    )


def test_the_cell_gradients_of_its_parameters_match_plain_autograd() -> None:
    """The written-out backward of (W, U x + b) against autograd through the same formula."""
    problem = tiny_problem()
    v, u, b = problem.params_f
    x = problem.info["images"]
    z = torch.rand(3, 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    cotangent = torch.rand(3, 6, generator=torch.Generator().manual_seed(3), dtype=F64)
    with torch.enable_grad():
        ours = torch.autograd.grad(problem.step(z, 0), (v, u, b), cotangent)
        w = deq.Settings.spectral_norm * v / torch.linalg.matrix_norm(v, ord=2)
        plain = torch.autograd.grad(torch.tanh(z @ w.T + x @ u.T + b), (v, u, b), cotangent)
        again = torch.autograd.grad(problem.step(z, 0), (v, u, b), cotangent)  # a second time
    for a, c, d in zip(ours, plain, again, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a, d, rtol=0, atol=0)


def test_the_exact_gradient_matches_cg_rbp_bptt_and_a_whole_dense_solve() -> None:
    problem = tiny_problem()
    exact = problem.exact_gradient()  # type: ignore[misc]
    through_iteration = bptt(problem, 0).grads_f  # T = 200 steps: converged far below 1e-12
    conjugate_gradients = cg_rbp(problem, 200).grads_f
    # the blocks per image against I - J written out whole (the images do not interact)
    z_star = deq.fixed_point(*_constants(problem))
    n = z_star.numel()
    jacobian = torch.autograd.functional.jacobian(lambda z: problem.step(z, 0), z_star)
    z_leaf = z_star.clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(problem.loss(z_leaf), z_leaf)
        adjoint = torch.linalg.solve(
            (torch.eye(n, dtype=F64) - jacobian.reshape(n, n)).T, g.reshape(n)
        )
        whole = torch.autograd.grad(
            problem.step(z_leaf, 0), problem.params_f, adjoint.reshape_as(z_star)
        )
    for name, grads in (
        ("bptt", through_iteration),
        ("cg-rbp", conjugate_gradients),
        ("whole dense solve", whole),
    ):
        for e, other in zip(exact, grads, strict=True):
            torch.testing.assert_close(other, e, rtol=1e-8, atol=1e-12, msg=name)


def _constants(problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """W and the injection of ``problem``, detached: the step at z = 0 gives tanh(injection)."""
    v, u, b = (p.detach() for p in problem.params_f)
    w = deq.Settings.spectral_norm * v / torch.linalg.matrix_norm(v, ord=2)
    return w, problem.info["images"] @ u.T + b


def test_a_forward_solver_that_stops_early_is_bound_and_counted() -> None:
    """The step does not depend on t: a solver that is not in order finds the same z*."""
    problem = tiny_problem(steps=40)
    stopping = dataclasses.replace(problem, forward=BoundForward(STOPPING))
    counting, costs = counted(stopping)
    result = JFB.compute(counting, 1, diagnostics=False)
    reference = JFB.compute(problem, 1, diagnostics=False)
    assert 10 < costs.forward_evaluations < 40  # the solver's iterations and the final step
    assert costs.backward_vjps == 1
    for a, b in zip(result.grads_f, reference.grads_f, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)


def stop_at_tolerance(step: Any, h0: Any, *, num_steps: int, tol: float = 1e-5) -> ForwardSolution:
    """Iterate until the relative change is at most ``tol`` (not in order: its own count)."""
    del num_steps
    h = h0
    for iterations in range(1, 10_000):
        h_next = step(h, iterations)
        if float(S.norm(S.sub(h_next, h))) <= tol * float(S.norm(h_next)):
            return ForwardSolution(h_next, iterations)
        h = h_next
    return ForwardSolution(h, 10_000)


STOPPING = ForwardSolverSpec("stopping", stop_at_tolerance, "iterate to a tolerance", {"tol": 1e-5})


def test_the_task_kit_passes_on_a_small_setting(mnist_root: Path) -> None:
    params = {"hidden": 8, "batch": 4, "examples": 100, "val_examples": 100, "steps": 80}
    report = check_task("deq-mnist", params=params)
    assert report.ok, report


def training_run(seed: int, forward: ForwardSolverSpec | None = None) -> TrainingRun:
    """A training run as the runner makes it: the forward bound and each step's cost counted."""
    step_costs: list[Costs] = []

    def gradient(problem: Problem) -> GradientResult:
        if forward is not None:
            problem = dataclasses.replace(problem, forward=BoundForward(forward))
        problem, costs = counted(problem)
        result = JFB.compute(problem, 1, diagnostics=False)
        step_costs.append(costs)
        return result

    return TrainingRun(
        seed=seed,
        device=CPU,
        dtype=torch.float32,
        params={**dataclasses.asdict(deq.Settings()), **TINY_TRAINING},
        gradient=gradient,
        reference=lambda problem: bptt(problem, 0, diagnostics=False),
        step_costs=step_costs,
    )


def fingerprint(outcome: TrainingOutcome) -> dict[str, Any]:
    assert isinstance(outcome.curves, list)
    return {
        "metrics": {k: v for k, v in outcome.metrics.items() if k != "step_time_s"},
        "curves": {c.name: (list(c.values), c.x) for c in outcome.curves},
        "diverged": outcome.diverged,
    }


def test_a_training_run_is_deterministic_per_seed_and_records_its_curves(
    mnist_root: Path,
) -> None:
    first = deq.train(training_run(0))
    assert fingerprint(first) == fingerprint(deq.train(training_run(0)))
    assert fingerprint(first) != fingerprint(deq.train(training_run(1)))
    assert not first.diverged
    steps = 2 * (512 // 64)
    metrics = first.metrics
    assert metrics["epochs"] == 2 and metrics["training_steps"] == steps
    assert 0 <= metrics["val_accuracy"] <= 1 and 0 <= metrics["test_accuracy"] <= 1
    assert metrics["train_loss_final"] < metrics["train_loss_initial"]
    curves = {c.name: c for c in first.curves}  # type: ignore[union-attr]
    for name in ("step_loss", "step_accuracy", "step_forward_residual"):
        assert len(curves[name].values) == steps
    assert list(curves["step_forward_evaluations"].values) == [25.0] * steps  # iterate: T
    assert list(curves["step_backward_vjps"].values) == [1.0] * steps  # JFB: one VJP
    assert curves["probe_grad_rel_error"].x == [0.0, steps - 1.0]
    assert len(curves["probe_grad_rel_error_exact"].values) == 2
    # JFB's gradient is biased, BPTT through T = 25 steps nearly exact: both errors are JFB's
    for bptt_error, exact_error in zip(
        curves["probe_grad_rel_error"].values,
        curves["probe_grad_rel_error_exact"].values,
        strict=True,
    ):
        assert 0.05 < bptt_error < 2 and exact_error == pytest.approx(bptt_error, rel=0.05)
    assert curves["val_accuracy"].x == [1, 2]


def test_training_with_a_solver_that_stops_early_records_its_evaluations(
    mnist_root: Path,
) -> None:
    outcome = deq.train(training_run(0, STOPPING))
    curves = {c.name: c for c in outcome.curves}  # type: ignore[union-attr]
    evaluations = curves["step_forward_evaluations"].values
    assert len(evaluations) == outcome.metrics["training_steps"]
    assert all(1 < e < 200 for e in evaluations) and len(set(evaluations)) > 1


def test_bad_parameters_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"spectral_norm must be in \(0, 1\)"):
        deq.Settings.of({"spectral_norm": 1.0})
    with pytest.raises(ValueError, match="examples \\+ val_examples must be at most 60000"):
        deq.Settings.of({"examples": 58000, "val_examples": 5000})
    with pytest.raises(ValueError, match="batch must be at most examples"):
        deq.Settings.of({"examples": 100, "batch": 128})
    with pytest.raises(TypeError, match="unknown parameters"):
        deq.Settings.of({"hiden": 3})


def test_a_cell_without_mnist_is_a_skipped_row(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ("run", "--tasks", "deq-mnist", "--methods", "jfb", "--seeds", "0", "--truncation", "1")
    result = run_cli(*args, "--data-dir", str(tmp_path / "empty"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    row = pd.read_parquet(out / "results.parquet").iloc[0]
    assert row.status == "skipped"
    assert "place the four raw files under" in row.error and "MNIST/raw" in row.error


def test_the_suites_name_the_task() -> None:
    quick = load_suite("quick")
    assert "deq-mnist" in quick["tasks"]
    deq.Settings.of(quick["task_params"]["deq-mnist"])
    full = load_suite("deq-mnist")
    assert full["tasks"] == ["deq-mnist"]
    settings = deq.Settings.of(full["task_params"]["deq-mnist"])
    assert settings.examples + settings.val_examples == deq.MNIST_TRAIN


@pytest.mark.slow
def test_the_quick_variant_trains_end_to_end(mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "quick"
    args = ("run", "--suite", "quick", "--tasks", "deq-mnist", "--methods", "jfb,neumann-rbp")
    result = run_cli(
        *args, "--truncation", "5", "--seeds", "0", "--data-dir", str(mnist_root), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(out / "results.parquet")
    assert len(frame) == 2 and set(frame.status) == {"ok"}, frame[["method", "error"]]
    assert (frame.train_loss_final < 0.5 * frame.train_loss_initial).all()
    assert (frame.test_accuracy > 0.85).all() and (frame.val_accuracy > 0.85).all()
    assert frame.forward_evaluations.notna().all() and frame.grad_rel_error_exact.notna().all()
    for row in frame.itertuples():
        extra = json.loads(row.extra_metrics)
        assert extra["forward_evaluations_per_step"] == 40
        assert math.isfinite(extra["max_probe_grad_rel_error_exact"])
        names = set(read_curves(out, row.cell_id).curve)
        assert {"step_loss", "step_accuracy", "step_forward_evaluations", "val_accuracy"} <= names
