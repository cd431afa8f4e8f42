"""Registers the built-in tasks; found through the ``rbpbench`` entry-point group."""

from __future__ import annotations

import torch

from rbpbench.hookspecs import hookimpl
from rbpbench.problem import TaskSpec
from rbpbench.tasks import contractive


@hookimpl
def rbpbench_tasks() -> list[TaskSpec]:
    return [
        TaskSpec(
            "contractive-rnn",
            contractive.build,
            "tanh RNN with ||W||_2 = rho < 1; exact implicit gradient by a dense solve",
            defaults={"spectral_norm": 0.9, "hidden": 32, "batch": 4, "steps": 300},
            dtype=torch.float64,
        ),
    ]
