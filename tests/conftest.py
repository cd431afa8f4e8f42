from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from rbpbench.data import DATA_DIR_ENV
from rbpbench.plugins import Registry, load_registry
from rbpbench.problem import Problem
from rbpbench.tasks import contractive

CPU = torch.device("cpu")
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "MNIST" / "raw"


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


@pytest.fixture
def mnist_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root holding MNIST's raw files: the CI copy if set, else links to the shared ones."""
    if os.environ.get(DATA_DIR_ENV) and (Path(os.environ[DATA_DIR_ENV]) / "MNIST" / "raw").is_dir():
        return Path(os.environ[DATA_DIR_ENV])
    if not SHARED_MNIST.is_dir():
        pytest.skip("no MNIST raw files on this machine")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for source in SHARED_MNIST.iterdir():
        (raw / source.name).symlink_to(source)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    return tmp_path
