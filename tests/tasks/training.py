"""Helpers for the tests that pin a training task's outcome: a poisoned gradient, and what a pin compares.

The pins guard the shared training plumbing (``TrainingRun``'s probes and
updates): the same seed must give the same numbers whichever code path
schedules the probes, applies the gradient and watches for divergence.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import torch

from rbpbench.problem import GradientResult, Problem, TrainingOutcome

Gradient = Callable[[Problem], GradientResult]


def poisoned(gradient: Gradient, at: int) -> Gradient:
    """``gradient``, except that its ``at``-th call (from 1) returns NaN gradients with a finite loss."""
    calls = 0

    def compute(problem: Problem) -> GradientResult:
        nonlocal calls
        calls += 1
        result = gradient(problem)
        if calls != at:
            return result

        def nan(grads: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return tuple(torch.full_like(g, math.nan) for g in grads)

        return dataclasses.replace(result, grads_f=nan(result.grads_f), grads_g=nan(result.grads_g))

    return compute


def fingerprint(
    outcome: TrainingOutcome, metrics: Iterable[str], curves: Iterable[str]
) -> dict[str, float]:
    """The named metrics, every value of the named curves (``name[i]``), ``diverged`` as 0 or 1."""
    out = {"diverged": float(outcome.diverged)}
    out.update({name: float(outcome.metrics[name]) for name in metrics})
    for name in curves:
        out.update({f"{name}[{i}]": float(v) for i, v in enumerate(outcome.curves[name])})
    return out
