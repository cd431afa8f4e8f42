"""``contractive-rnn``: a small contractive RNN whose exact implicit gradient is known.

h <- tanh(W h + U x + b) with W = rho * Q for a random orthogonal Q, so W has
spectral norm rho < 1, ||J|| <= rho at every state and the forward pass is a
contraction. Every singular value and eigenvalue of W has modulus rho (a plain
Gaussian matrix scaled to norm rho would have spectral radius near rho / 2).
The contraction rate at the fixed point, rho(J) with J = diag(tanh') W, governs
how fast the forward pass, the Neumann series and RBP converge (Proposition
2); it is below rho by the saturation of tanh, which the drive sets and which
grows as rho nears 1 (the fixed point's amplitude grows like 1 / (1 - rho)).
Measured (seed 0, the ``spectral_radius`` column): at the default
``input_scale`` 0.5, rho(J) = 0.856, 0.936, 0.942 for rho = 0.9, 0.99, 0.999;
at 0.05, 0.899, 0.987, 0.994, and plain iteration then needs 273, 2122 and 4414
steps to a relative residual of 1e-13. A small ``input_scale`` is how to make
rho(J) track rho. A linear
readout y = V h + c scored by mean squared error against a fixed target gives
the loss. The state is a batch of B hidden vectors, small enough that the
exact gradient comes from a dense linear solve in float64 at the fixed point:
dL/dw_F = (dF/dw_F)^T z with (I - J)^T z = dL/dh*.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from rbpbench.gradients import grads_or_zeros
from rbpbench.problem import Problem
from rbpbench.tasks.settings import at_least, within

TASK = "contractive-rnn"

Params = tuple[Tensor, ...]


def rnn_step(h: Tensor, x: Tensor, params_f: Params) -> Tensor:
    w, u, b = params_f
    return torch.tanh(h @ w.T + x @ u.T + b)


def readout_loss(h: Tensor, target: Tensor, params_g: Params) -> Tensor:
    v, c = params_g
    return 0.5 * torch.mean((h @ v.T + c - target) ** 2)


def solve_fixed_point(
    x: Tensor, params_f: Params, h0: Tensor, *, tol: float = 1e-14, max_steps: int = 100_000
) -> Tensor:
    h = h0
    with torch.no_grad():
        for _ in range(max_steps):
            h_next = rnn_step(h, x, params_f)
            if float(torch.linalg.vector_norm(h_next - h)) <= tol:
                return h_next
            h = h_next
    raise RuntimeError(f"contractive-rnn: forward did not converge to {tol} in {max_steps} steps")


def exact_gradient(
    x: Tensor, target: Tensor, params_f: Params, params_g: Params, h0: Tensor
) -> Params:
    """The implicit gradient dL/dw_F at the fixed point, by a dense float64 solve."""
    f64 = torch.float64
    pf = tuple(p.detach().to(f64).requires_grad_(True) for p in params_f)
    pg = tuple(p.detach().to(f64) for p in params_g)
    x64, target64 = x.to(f64), target.to(f64)
    h_star = solve_fixed_point(x64, pf, h0.to(f64))
    jac = torch.autograd.functional.jacobian(lambda h: rnn_step(h, x64, pf), h_star)
    n = h_star.numel()
    jac = jac.reshape(n, n)
    h_leaf = h_star.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(readout_loss(h_leaf, target64, pg), h_leaf)
    eye = torch.eye(n, dtype=f64, device=h_star.device)
    z = torch.linalg.solve((eye - jac).T, g.reshape(n)).reshape_as(h_star)
    with torch.enable_grad():
        out = rnn_step(h_leaf, x64, pf)
    return grads_or_zeros((out,), pf, (z,))


def check(params: Mapping[str, Any]) -> None:
    """The task's ranges (its TaskSpec check, and build's): ValueError naming the first value out of range."""
    within(
        TASK, "spectral_norm", params.get("spectral_norm", 0.9), 0, 1, open_low=True, open_high=True
    )
    at_least(
        TASK, 1, ((k, params.get(k, 1)) for k in ("hidden", "inputs", "outputs", "batch", "steps"))
    )
    within(TASK, "input_scale", params.get("input_scale", 0.5), 0)


def build(
    *,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    spectral_norm: float = 0.9,
    hidden: int = 32,
    inputs: int = 8,
    outputs: int = 4,
    batch: int = 4,
    steps: int = 300,
    input_scale: float = 0.5,
    **unknown: Any,
) -> Problem:
    if unknown:
        raise TypeError(f"contractive-rnn: unknown parameters {sorted(unknown)}")
    check(
        {
            "spectral_norm": spectral_norm,
            "hidden": hidden,
            "inputs": inputs,
            "outputs": outputs,
            "batch": batch,
            "steps": steps,
            "input_scale": input_scale,
        }
    )
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device, dtype)

    orthogonal, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=gen, dtype=torch.float64))
    w = (spectral_norm * orthogonal).to(device, dtype)
    u = draw(hidden, inputs, scale=input_scale / math.sqrt(inputs))
    params_f = tuple(p.requires_grad_(True) for p in (w, u, draw(hidden, scale=0.1 * input_scale)))
    params_g = tuple(
        p.requires_grad_(True)
        for p in (draw(outputs, hidden, scale=1 / math.sqrt(hidden)), draw(outputs, scale=0.1))
    )
    x = draw(batch, inputs)
    target = draw(batch, outputs)
    h0 = torch.zeros(batch, hidden, device=device, dtype=dtype)
    return Problem(
        step=lambda h, t: rnn_step(h, x, params_f),  # type: ignore[arg-type]
        initial_state=h0,
        num_steps=steps,
        params_f=params_f,
        params_g=params_g,
        loss=lambda h: readout_loss(h, target, params_g),  # type: ignore[arg-type]
        seed=seed,
        exact_gradient=lambda: exact_gradient(x, target, params_f, params_g, h0),
        info={"spectral_norm": spectral_norm, "x": x, "target": target},
    )
