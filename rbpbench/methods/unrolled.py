"""BPTT and truncated BPTT: back-propagation through an unrolled graph.

Truncation convention (shared with the RBP family): K is the number of
Jacobian-transpose products applied to the adjoint. TBPTT with K therefore
keeps a graph over the last K + 1 steps (the adjoint crosses K Jacobians on
its way from h_T back to h_{T-K}), which makes Proposition 1 exact at equal K:
once the last states sit at the fixed point, tbptt(K) == neumann-rbp(K).
BPTT keeps all T steps, i.e. it is tbptt with K = T - 1.

On another forward solver than ``iterate`` (``rbpbench run --forward``), both
differentiate through that solver's own iterations: BPTT through all its
evaluations of F and the final step, TBPTT through the last K of them and the
final step (:func:`rbpbench.forward.solve_with_graph`). They then measure
unrolled differentiation of that solver.
"""

from __future__ import annotations

import torch

from rbpbench import state as S
from rbpbench.forward import final_step, solve_with_graph
from rbpbench.gradients import grads_or_zeros
from rbpbench.problem import GradientResult, Problem


def unrolled_gradient(problem: Problem, graph_steps: int | None) -> GradientResult:
    """Back-propagate through the last ``graph_steps`` evaluations of F, the final step
    included (None: all of them); earlier ones keep no graph."""
    before = None if graph_steps is None else max(0, graph_steps - 1)
    h_star, with_graph = solve_with_graph(problem, before)
    with torch.enable_grad():
        h = final_step(problem, h_star)
        loss = problem.loss(h)
    forward_residual = float(S.norm(S.sub(S.detach(h), S.detach(h_star))))
    grads = grads_or_zeros((loss,), problem.params_f + problem.params_g)
    n_f = len(problem.params_f)
    return GradientResult(
        loss=float(loss.detach()),
        grads_f=grads[:n_f],
        grads_g=grads[n_f:],
        forward_residual=forward_residual,
        backward_iterations=with_graph + 1,
    )


def bptt(problem: Problem, truncation: int, *, diagnostics: bool = True) -> GradientResult:
    """Full back-propagation through time; ``truncation`` is ignored."""
    return unrolled_gradient(problem, None)


def tbptt(problem: Problem, truncation: int, *, diagnostics: bool = True) -> GradientResult:
    """Truncated BPTT: the adjoint crosses the last ``truncation`` Jacobians."""
    return unrolled_gradient(problem, truncation + 1)
