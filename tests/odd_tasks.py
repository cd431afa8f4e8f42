"""Tasks whose forward pass does not converge, loaded with ``-p tests.odd_tasks`` by the convergence tests."""

from __future__ import annotations

import torch

from rbpbench import Problem, TaskSpec, hookimpl
from rbpbench.tasks import contractive


def period_two(*, seed, device, dtype, steps=40):
    """h <- a - h from h = 0 with a = 1: the state alternates 0, 1, 0, 1 and never settles."""
    a = torch.ones((), device=device, dtype=dtype, requires_grad=True)
    return Problem(
        step=lambda h, t: a - h,
        initial_state=torch.zeros((), device=device, dtype=dtype),
        num_steps=steps,
        params_f=(a,),
        params_g=(),
        loss=lambda h: 0.5 * h**2,
        seed=seed,
    )


@hookimpl
def rbpbench_tasks() -> list[TaskSpec]:
    return [
        TaskSpec("period-two", period_two, "a period-2 oscillation", {"steps": 40}, torch.float64),
        TaskSpec(
            "declared-no-fixed-point",
            contractive.build,
            "contractive-rnn declaring that its forward is no fixed-point iteration",
            {"spectral_norm": 0.9, "hidden": 8, "batch": 2, "steps": 3},
            torch.float64,
            forward_converges=False,
        ),
    ]
