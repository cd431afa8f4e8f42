"""TrainingRun's shared training plumbing: probe schedule and records, optimiser update, divergence."""

from __future__ import annotations

import math

import pytest
import torch

from rbpbench.problem import GradientResult, Problem, TrainingRun


def quadratic() -> Problem:
    weight = torch.ones(2, requires_grad=True)
    readout = torch.ones(1, requires_grad=True)
    return Problem(
        step=lambda h, t: 0.5 * h * weight,  # type: ignore[operator]
        initial_state=torch.ones(2),
        num_steps=3,
        params_f=(weight,),
        params_g=(readout,),
        loss=lambda h: readout * (h**2).sum(),  # type: ignore[operator]
    )


def result(loss: float, grad: float) -> GradientResult:
    return GradientResult(loss, (torch.full((2,), grad),), (torch.full((1,), grad),), 0.0, 0)


def training_run() -> TrainingRun:
    return TrainingRun(
        seed=0,
        device=torch.device("cpu"),
        dtype=torch.float32,
        params={},
        gradient=lambda p: result(1.0, 2.0),
        reference=lambda p: result(1.0, 1.0),
    )


def test_probes_are_spread_over_the_run_and_record_the_error_against_the_reference() -> None:
    run, problem = training_run(), quadratic()
    assert run.probes(10, 3).points == {0, 4, 9}
    assert run.probes(10, 0).points == set() and run.probes(1, 3).points == {0}
    probes = run.probes(4, 2)
    for point in range(4):
        probes(point, problem, run.gradient(problem))
    assert probes.taken == [(0, 1.0), (3, 1.0)] and probes.errors == [1.0, 1.0]
    assert probes.curves("probe_epoch") == {
        "probe_epoch": [0.0, 3.0],
        "probe_grad_rel_error": [1.0, 1.0],
    }


def test_update_steps_every_parameter_and_reports_divergence() -> None:
    run, problem = training_run(), quadratic()
    params = problem.params_f + problem.params_g
    optimizer = torch.optim.SGD(params, lr=0.5)
    assert run.update(problem, result(1.0, 2.0), optimizer) is False
    assert all(torch.equal(p, torch.zeros_like(p)) for p in params)
    # a NaN loss: the step is taken, then the run has diverged
    assert run.update(problem, result(math.nan, 2.0), optimizer) is True
    assert all(torch.equal(p, torch.full_like(p, -1.0)) for p in params)
    # skip_non_finite: a NaN gradient stops the run before the optimiser sees it
    assert run.update(problem, result(1.0, math.nan), optimizer, skip_non_finite=True) is True
    assert all(torch.equal(p, torch.full_like(p, -1.0)) for p in params)
    # without it, the NaN reaches the parameters and the run has diverged
    assert run.update(problem, result(1.0, math.nan), optimizer) is True
    assert all(bool(p.isnan().all()) for p in params)


def test_update_refuses_an_optimiser_that_misses_a_parameter() -> None:
    run, problem = training_run(), quadratic()
    optimizer = torch.optim.SGD(problem.params_f, lr=0.5)
    with pytest.raises(ValueError, match="does not hold every parameter"):
        run.update(problem, result(1.0, 2.0), optimizer)
