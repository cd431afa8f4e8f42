"""``broyden``: limited-memory Broyden's method for the root of g(h) = F(h) - h.

The state is handled as one flat vector (a tuple state is concatenated, see
:func:`rbpbench.state.flatten`). The solver keeps an approximation B of the
inverse Jacobian of g, starting from B_0 = -I (the inverse Jacobian of g when
F's Jacobian is small, so that the first step h_1 = h_0 - B_0 g(h_0) = F(h_0)
is a step of plain iteration), stored as B = -I + sum_i u_i v_i^T with at most
``memory`` pairs. Iterate k evaluates F once, at h_k, and moves to
h_{k+1} = h_k - B_k g(h_k): a full quasi-Newton step with no line search (a
line search would cost extra evaluations of F, which the harness counts; a
contractive F does not need one). After the evaluation at h_{k+1}, "good"
Broyden's rank-one update makes B satisfy the secant condition
B_{k+1} dg = dh (dh = h_{k+1} - h_k, dg = g(h_{k+1}) - g(h_k)) and changes it
least in the directions orthogonal to B_k^T dh:

    B_{k+1} = B_k + (dh - B_k dg) (dh^T B_k) / (dh^T B_k dg).

The update is skipped when the secant pair says nothing reliable: when its
denominator is near zero, |dh^T B_k dg| <= sqrt(eps) ||B_k^T dh|| ||dg||, or
when dg is at the level of the rounding in g, ||dg|| <= 16 eps (||F(h_{k+1})||
+ ||h_{k+1}||) (a map with no fixed point such as F(h) = h + c, or an iterate
at the dtype's floor, where an update from noise would send the next step
anywhere).

Parameters (``BROYDEN.defaults``):

- ``memory`` (30): the most rank-one pairs kept. When B holds ``memory``
  pairs, the solver restarts from B = -I (that iterate's step is one of plain
  iteration) and builds B afresh. Dropping the oldest pair instead (a sliding
  window, as some DEQ code does) is not sound for Broyden's product form,
  where each pair was computed against the B that held the older ones: on
  contractive-rnn (seed 0, rho 0.99 and 0.999, float64) it diverged to NaN
  with memory 10, 30 and 60, where restarting converged. More memory saves
  evaluations of F (at rho = 0.999, seed 0: memory 20, 30, 50, 100 took 215,
  193, 156, 118 against iterate's 374) for 2 ``memory`` stored vectors and
  O(memory n) work per iterate; 30 is the usual DEQ-sized compromise.
- ``tol`` (0.0 = the dtype's default, eps ** 0.75: 1.8e-12 in float64, 6.4e-6
  in float32; see :mod:`rbpbench.forwards.common`): stop when the relative
  residual ||F(h_k) - h_k|| / ||F(h_k)|| is at most tol.
- ``max_iter`` (1000): the most evaluations of F, h_0's included; the solver's
  own budget, independent of the task's T (``num_steps`` is ignored).

It returns the best iterate evaluated (the lowest relative residual; Broyden's
residual is not monotone): h_k itself, not F(h_k), since the harness's final
step F(h*) starts there and the residual the harness measures is then the one
recorded here. When the solver converges that is the last iterate. It never
raises for non-convergence (the harness measures the residual and flags the
row): at ``max_iter`` it returns the best iterate so far, and on a NaN or Inf
it stops and returns the best finite one. ``trace`` holds the relative
residual of every evaluated iterate (NaN for a non-finite one, the last) and
``iterations`` counts the evaluations of F (each iterate costs exactly one).
With autograd enabled every operation is out of place (the pairs are kept in
lists), so BPTT and TBPTT differentiate through the solver's iterations, the
updates of B included; the graph grows by a few state-sized tensors per
iterate whatever ``memory`` (see :func:`rbpbench.forwards.common.dots`), and
the arithmetic is the same with autograd recording or not, so a run with a
graph takes the iterations that a run without one counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from rbpbench import state as S
from rbpbench.forwards.common import (
    Iterates,
    check_non_negative,
    check_positive_int,
    combine,
    dots,
    solver_tolerance,
)
from rbpbench.problem import ForwardSolution, ForwardSolverSpec
from rbpbench.state import State

# dg at or below ROUNDING * eps * (||F(h)|| + ||h||) is rounding noise: no secant information.
ROUNDING = 16


def check_params(*, memory: int, tol: float, max_iter: int) -> None:
    """Raise ValueError naming the first parameter out of range."""
    check_positive_int("broyden", "memory", memory)
    check_non_negative("broyden", "tol", tol)
    check_positive_int("broyden", "max_iter", max_iter)


def _apply(y: Tensor, left: list[Tensor], right: list[Tensor]) -> Tensor:
    """(-I + sum_i left_i right_i^T) y."""
    if not left:
        return -y
    return combine(dots(right, y), left) - y


def broyden(
    step: Callable[[State, int], State],
    h0: State,
    *,
    num_steps: int,
    memory: int = 30,
    tol: float = 0.0,
    max_iter: int = 1000,
) -> ForwardSolution:
    """Limited-memory good Broyden for F(h) = h from ``h0``: the best iterate, its count and residuals."""
    del num_steps  # the solver's own budget is max_iter
    check_params(memory=memory, tol=tol, max_iter=max_iter)
    x = S.flatten(h0)
    tol = solver_tolerance(tol, x.dtype)
    eps = float(torch.finfo(x.dtype).eps)
    guard = math.sqrt(eps)
    us: list[Tensor] = []  # B = -I + sum_i u_i v_i^T
    vs: list[Tensor] = []
    h: State = h0
    seen = Iterates(tol, max_iter, h0)
    g_prev: Tensor | None = None
    move: Tensor | None = None  # dh = h_k - h_{k-1} = -B_{k-1} g(h_{k-1})
    for k in range(max_iter):
        fx = S.flatten(step(h, k))
        g = fx - x
        if seen.seen(k, h, fx, g):
            break
        if len(us) == memory:  # full: restart from B = -I (this iterate's step is plain iteration)
            us, vs, move = [], [], None
        b_g = _apply(g, us, vs)  # B g(h_k), B the one the step to h_k took
        if move is not None and g_prev is not None:
            # The secant pair dh = move, dg = g(h_k) - g(h_{k-1}): B dg = b_g + move, since
            # move = -B g(h_{k-1}); so dh - B dg = -b_g and the update is u v^T with
            # v = B^T dh, u = -b_g / (v . dg).
            dg = g - g_prev
            v = _apply(move, vs, us)  # B^T dh
            denominator = torch.dot(v, dg)
            with torch.no_grad():
                dg_norm = float(torch.linalg.vector_norm(dg))
                size = float(torch.linalg.vector_norm(v)) * dg_norm
                noise = (
                    ROUNDING
                    * eps
                    * float(torch.linalg.vector_norm(fx) + torch.linalg.vector_norm(x))
                )
                usable = dg_norm > noise and abs(float(denominator)) > guard * size
            if usable:
                u = -b_g / denominator
                b_g = b_g + u * torch.dot(v, g)  # the updated B times g(h_k)
                us.append(u)
                vs.append(v)
        move = -b_g
        g_prev = g
        x = x + move
        h = S.unflatten(x, h0)
    return seen.solution()


BROYDEN = ForwardSolverSpec(
    "broyden",
    broyden,
    "limited-memory good Broyden (memory pairs, no line search) to a relative residual tol",
    defaults={"memory": 30, "tol": 0.0, "max_iter": 1000},
    check=lambda params: check_params(**params),
)
