"""A tiny training task whose cells have curves, loaded with ``-p tests.curved_tasks`` by the
tests of a cell's outcome crossing a worker process."""

from __future__ import annotations

import torch

from rbpbench import TaskSpec, hookimpl
from rbpbench.problem import TrainingOutcome, TrainingRun
from rbpbench.tasks import contractive

DEFAULTS = {"spectral_norm": 0.5, "hidden": 4, "batch": 2, "steps": 20}


def train(run: TrainingRun) -> TrainingOutcome:
    """One gradient on the task's problem; the curves are made up from its loss."""
    problem = contractive.build(seed=run.seed, device=run.device, dtype=run.dtype, **run.params)
    loss = run.gradient(problem).loss
    return TrainingOutcome(
        {"train_loss_initial": loss, "train_loss_final": loss / 2, "epochs": 2, "steps_seen": 3},
        curves={"train_loss": [loss, loss / 2], "probe_value": [0.25, 0.5, 0.75]},
    )


@hookimpl
def rbpbench_tasks() -> list[TaskSpec]:
    return [
        TaskSpec(
            "curved",
            contractive.build,
            "a contractive RNN trained for one step, with curves",
            DEFAULTS,
            torch.float64,
            train=train,
        )
    ]
