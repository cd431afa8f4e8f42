"""The gradients of deep-equilibrium practice: Jacobian-free backpropagation and the phantom gradient.

Both start from h*, found by the cell's forward solver without a graph, and
neither solves the adjoint system (I - J^T) z = dL/dh:

- ``jfb`` (Jacobian-free backpropagation, Fung et al. 2022) takes z = dL/dh
  itself, i.e. the Neumann series cut after its first term, and returns
  (dF/dw_F)^T dL/dh at the final step. It ignores K: its cost is one VJP.
- ``phantom`` (the unrolled phantom gradient, Geng et al. 2021) takes K damped
  steps h <- (1 - tau) h + tau F(h) from h* with a graph and back-propagates
  the loss through them. With tau = 1 it is TBPTT started at the fixed point:
  phantom with K steps equals tbptt with K - 1 (which keeps K steps) once the
  forward has converged; with K = 1 and tau = 1 it equals jfb. Its memory grows
  with K, not with T or the forward's iterations.
"""

from __future__ import annotations

import torch

from rbpbench import state as S
from rbpbench.adjoint import AdjointSolution, JacobianOperator
from rbpbench.forward import final_step, solve_forward
from rbpbench.gradients import grads_or_zeros
from rbpbench.methods.implicit import implicit_method
from rbpbench.problem import GradientResult, MethodSpec, Problem
from rbpbench.state import State

# torchdeq's default damping of the phantom gradient (its ``tau``).
PHANTOM_TAU = 1.0


def no_adjoint_solve(op: JacobianOperator, g: State, *, max_iter: int) -> AdjointSolution:
    """z = g: no Jacobian product at all, whatever the budget."""
    del op, max_iter
    return AdjointSolution(g, 0)


JFB = implicit_method(
    no_adjoint_solve,
    name="jfb",
    summary="Jacobian-free backpropagation: z = dL/dh, one VJP (K is ignored)",
)
# compute(problem, truncation, *, diagnostics=True): K is ignored
jfb = JFB.compute


def phantom(
    problem: Problem, truncation: int, *, diagnostics: bool = True, tau: float = PHANTOM_TAU
) -> GradientResult:
    """The unrolled phantom gradient: ``truncation`` damped steps from h*, back-propagated."""
    del diagnostics  # no adjoint, so no residual to measure
    if not 0 < tau <= 1:
        raise ValueError(f"phantom: tau must be in (0, 1], not {tau!r}")
    if truncation < 1:
        raise ValueError(f"phantom: K must be at least 1 (steps with a graph), not {truncation}")
    h_star = solve_forward(problem)
    h: State = h_star
    forward_residual = float("nan")
    with torch.enable_grad():
        for k in range(truncation):
            f_h = final_step(problem, h)
            if k == 0:
                forward_residual = float(S.norm(S.sub(S.detach(f_h), h_star)))
            h = f_h if tau == 1 else S.add(S.scale(h, 1 - tau), f_h, tau)
        loss = problem.loss(h)
    grads = grads_or_zeros((loss,), problem.params_f + problem.params_g)
    n_f = len(problem.params_f)
    return GradientResult(
        loss=float(loss.detach()),
        grads_f=grads[:n_f],
        grads_g=grads[n_f:],
        forward_residual=forward_residual,
        backward_iterations=truncation,
    )


PHANTOM = MethodSpec(
    "phantom",
    phantom,
    "phantom gradient: K damped steps h <- (1-tau) h + tau F(h) from h*, back-propagated",
    defaults={"tau": PHANTOM_TAU},
)
