"""The forward pass without a graph: the steps no gradient needs.

Shared by every method, so that "which steps keep a graph" is decided in one
place: the unrolled methods run all but their last few steps through
:func:`run_without_graph`, the RBP family all but the last one (which
:mod:`rbpbench.linearisation` then keeps as a graph).
"""

from __future__ import annotations

import torch

from rbpbench import state as S
from rbpbench.problem import Problem
from rbpbench.state import State


def run_without_graph(problem: Problem, num_steps: int) -> State:
    """``h_{num_steps}`` from the initial state, with no autograd graph kept."""
    h = S.detach(problem.initial_state)
    with torch.no_grad():
        for t in range(num_steps):
            h = problem.step(h, t)
    return h
