"""BPTT and truncated BPTT: back-propagation through an unrolled graph.

Truncation convention (shared with the RBP family): K is the number of
Jacobian-transpose products applied to the adjoint. TBPTT with K therefore
keeps a graph over the last K + 1 steps (the adjoint crosses K Jacobians on
its way from h_T back to h_{T-K}), which makes Proposition 1 exact at equal K:
once the last states sit at the fixed point, tbptt(K) == neumann-rbp(K).
BPTT keeps all T steps, i.e. it is tbptt with K = T - 1.
"""

from __future__ import annotations

import torch

from rbpbench import state as S
from rbpbench.forward import run_without_graph
from rbpbench.gradients import grads_or_zeros
from rbpbench.problem import GradientResult, Problem


def unrolled_gradient(problem: Problem, graph_steps: int) -> GradientResult:
    """Back-propagate through the last ``graph_steps`` steps; earlier steps keep no graph."""
    total = problem.num_steps
    graph_steps = max(1, min(graph_steps, total))
    h = run_without_graph(problem, total - graph_steps)
    with torch.enable_grad():
        for t in range(total - graph_steps, total):
            previous, h = h, problem.step(h, t)
        loss = problem.loss(h)
    forward_residual = float(S.norm(S.sub(S.detach(h), S.detach(previous))))
    grads = grads_or_zeros((loss,), problem.params_f + problem.params_g)
    n_f = len(problem.params_f)
    return GradientResult(
        loss=float(loss.detach()),
        grads_f=grads[:n_f],
        grads_g=grads[n_f:],
        forward_residual=forward_residual,
        backward_iterations=graph_steps,
    )


def bptt(problem: Problem, truncation: int, *, diagnostics: bool = True) -> GradientResult:
    """Full back-propagation through time; ``truncation`` is ignored."""
    return unrolled_gradient(problem, problem.num_steps)


def tbptt(problem: Problem, truncation: int, *, diagnostics: bool = True) -> GradientResult:
    """Truncated BPTT: the adjoint crosses the last ``truncation`` Jacobians."""
    return unrolled_gradient(problem, truncation + 1)
