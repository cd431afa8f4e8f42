from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from rbpbench.plugins import Registry, load_registry
from rbpbench.problem import Problem
from rbpbench.tasks import contractive

CPU = torch.device("cpu")


def pytest_configure(config: pytest.Config) -> None:
    """Make the folder of --benchmark-json, so the README's test command works in a fresh clone."""
    target = config.getoption("benchmark_json", default=None)
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry()


def contractive_problem(seed: int = 0, **params: object) -> Problem:
    return contractive.build(seed=seed, device=CPU, dtype=torch.float64, **params)  # type: ignore[arg-type]


def started_at_fixed_point(problem: Problem) -> Problem:
    """The same problem with h0 = h*, so every state of the forward pass is the fixed point."""
    h = problem.initial_state
    with torch.no_grad():
        for _ in range(20_000):
            h_next = problem.step(h, 0)
            if torch.equal(h_next, h):
                break
            h = h_next
    return dataclasses.replace(problem, initial_state=h)
