"""Wall-time benchmarks of each paper method's gradient on fixed contractive-rnn problems.

Run with ``python -m pytest tests/benchmarks --benchmark-json=FILE`` to keep the
figures. Nothing here asserts on a time: the machines are too noisy for that.
"""

from __future__ import annotations

import math

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from rbpbench import measure
from rbpbench.methods.plugin import rbpbench_methods
from rbpbench.problem import GradientResult
from rbpbench.tasks import contractive

METHODS = {spec.name: spec for spec in rbpbench_methods()}
STEPS = (100, 400)
TRUNCATION = 20
SPECTRAL_NORM = 0.9


@pytest.mark.parametrize("steps", STEPS, ids=lambda t: f"T{t}")
@pytest.mark.parametrize("method", list(METHODS))
def test_gradient(benchmark: BenchmarkFixture, method: str, steps: int) -> None:
    spec = METHODS[method]
    problem = contractive.build(
        seed=0,
        device=torch.device("cpu"),
        dtype=torch.float64,
        spectral_norm=SPECTRAL_NORM,
        steps=steps,
    )
    benchmark.group = f"T={steps}"
    benchmark.extra_info.update(
        method=method,
        task="contractive-rnn",
        steps=steps,
        truncation=TRUNCATION,
        spectral_norm=SPECTRAL_NORM,
        dtype="float64",
        device="cpu",
        torch_num_threads=torch.get_num_threads(),
    )

    def gradient() -> GradientResult:
        return spec.compute(problem, TRUNCATION, diagnostics=False, **spec.defaults)

    result = benchmark.pedantic(gradient, rounds=5, iterations=1, warmup_rounds=1)
    assert math.isfinite(result.loss)
    assert measure.all_finite(result.grads_f, result.grads_g)
