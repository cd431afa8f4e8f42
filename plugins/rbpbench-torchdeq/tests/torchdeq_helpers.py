"""Problems the tests share."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch

from rbpbench import BoundForward, ForwardSolverSpec, Problem, State
from rbpbench import state as S
from rbpbench.tasks import contractive

CPU = torch.device("cpu")


def steps_to_converge(spectral_norm: float) -> int:
    """T with rho ** T <= 1e-12, as the conformance kit takes it."""
    return math.ceil(math.log(1e-12) / math.log(spectral_norm))


def problem(
    spectral_norm: float,
    *,
    seed: int = 0,
    steps: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> Problem:
    return contractive.build(
        seed=seed,
        device=CPU,
        dtype=dtype,
        spectral_norm=spectral_norm,
        steps=steps_to_converge(spectral_norm) if steps is None else steps,
    )


def with_forward(
    p: Problem, spec: ForwardSolverSpec, params: Mapping[str, Any] | None = None
) -> Problem:
    """``p`` with ``spec`` bound as its forward solver (defaults merged), as the harness binds it."""
    return dataclasses.replace(p, forward=BoundForward(spec, {**spec.defaults, **(params or {})}))


def relative_residual(p: Problem, h: State) -> float:
    """||F(h) - h|| / ||F(h)|| for the problem's (time-invariant) step."""
    with torch.no_grad():
        fh = p.step(h, 0)
        return float(S.norm(S.sub(fh, h)) / S.norm(fh))


def two_part_state_problem(steps: int = 400) -> Problem:
    """A coupled two-tensor state, (h, c) <- (tanh(A h + B c + x), tanh(C h + d)), contractive."""
    gen = torch.Generator().manual_seed(3)

    def draw(*shape: int, scale: float) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).requires_grad_()

    a, b, c = draw(6, 6, scale=0.15), draw(6, 4, scale=0.15), draw(4, 6, scale=0.15)
    x, d, v = draw(6, scale=1.0), draw(4, scale=0.5), draw(10, scale=1.0)

    def step(state: State, t: int) -> State:
        h, s = S.as_tuple(state)
        return torch.tanh(a @ h + b @ s + x), torch.tanh(c @ h + d)

    return Problem(
        step=step,
        initial_state=(torch.zeros(6, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)),
        num_steps=steps,
        params_f=(a, b, c, x, d),
        params_g=(v,),
        # the readout reads w_F directly too (a direct partial dL/dw_F, as LossTerms handles it)
        loss=lambda state: (v @ torch.cat(S.as_tuple(state))) ** 2 + 0.1 * torch.sum(x**2),
    )
