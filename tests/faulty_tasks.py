"""A plugin of misbehaving tasks, for the task conformance kit's tests (``-p tests.faulty_tasks``).

Each is contractive-rnn with one thing wrong; the kit must name it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from rbpbench import Problem, TaskSpec, hookimpl
from rbpbench.data import DatasetUnavailable
from rbpbench.tasks import contractive

SMALL = {"hidden": 8, "batch": 2, "steps": 200, "spectral_norm": 0.8}


def base(seed: int, device: torch.device, dtype: torch.dtype, **params: Any) -> Problem:
    return contractive.build(seed=seed, device=device, dtype=dtype, **{**SMALL, **params})


def noisy(*, seed: int, device: torch.device, dtype: torch.dtype, **params: Any) -> Problem:
    """Draws from the global random generator: two builds with one seed differ."""
    problem = base(seed, device, dtype, **params)
    with torch.no_grad():
        problem.params_f[2].add_(1e-3 * torch.rand_like(problem.params_f[2]))
    return problem


def float64_always(
    *, seed: int, device: torch.device, dtype: torch.dtype, **params: Any
) -> Problem:
    """Ignores the dtype it is given."""
    return base(seed, device, torch.float64, **params)


def mutating(*, seed: int, device: torch.device, dtype: torch.dtype, **params: Any) -> Problem:
    """Its step shrinks W in place each time it runs."""
    problem = base(seed, device, dtype, **params)
    inner, weight = problem.step, problem.params_f[0]

    def step(h: Any, t: int) -> Any:
        with torch.no_grad():
            weight.mul_(0.9999)
        return inner(h, t)

    return dataclasses.replace(problem, step=step)


def wrong_exact(*, seed: int, device: torch.device, dtype: torch.dtype, **params: Any) -> Problem:
    """Its exact gradient of W is transposed."""
    problem = base(seed, device, dtype, **params)
    exact = problem.exact_gradient
    assert exact is not None

    def transposed() -> tuple[torch.Tensor, ...]:
        grad_w, *rest = exact()
        return (grad_w.T, *rest)

    return dataclasses.replace(problem, exact_gradient=transposed)


def seedless(*, seed: int, device: torch.device, dtype: torch.dtype, **params: Any) -> Problem:
    """Builds the problem of seed 0 whatever the seed (but says the seed it was given)."""
    return dataclasses.replace(base(0, device, dtype, **params), seed=seed)


def offline(*, seed: int, device: torch.device, dtype: torch.dtype, **params: Any) -> Problem:
    raise DatasetUnavailable("FakeSet is not available offline: place its files under /nowhere")


def faulty_tasks() -> list[TaskSpec]:
    def spec(name: str, build: Any, summary: str, **kw: Any) -> TaskSpec:
        return TaskSpec(name, build, summary, defaults={"steps": 200}, dtype=torch.float64, **kw)

    return [
        spec("noisy-task", noisy, "unseeded noise in its parameters"),
        dataclasses.replace(
            spec("float64-task", float64_always, "declares float32, builds float64"),
            dtype=torch.float32,
        ),
        spec("mutating-task", mutating, "its step changes W"),
        spec("wrong-exact-task", wrong_exact, "a transposed exact gradient"),
        spec("seedless-task", seedless, "one problem for every seed"),
        spec("offline-task", offline, "needs a dataset that is not there"),
    ]


@hookimpl
def rbpbench_tasks() -> list[TaskSpec]:
    return faulty_tasks()
