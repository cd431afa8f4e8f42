"""Running a problem's forward pass and linearising its last step.

Shared by every method, so that "which steps keep a graph" is decided in one
place: the unrolled methods keep the last few steps, the RBP family keeps one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

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


def grads_or_none(
    outputs: tuple[Tensor, ...],
    inputs: tuple[Tensor, ...],
    grad_outputs: tuple[Tensor, ...] | None = None,
    *,
    retain_graph: bool = False,
    create_graph: bool = False,
) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad`` with None for inputs the outputs do not depend on."""
    if grad_outputs is None:
        grad_outputs = tuple(torch.ones_like(y) for y in outputs)
    pairs = [(y, v) for y, v in zip(outputs, grad_outputs, strict=True) if y.requires_grad]
    if not inputs or not pairs:
        return tuple(None for _ in inputs)
    return torch.autograd.grad(
        [y for y, _ in pairs],
        inputs,
        [v for _, v in pairs],
        retain_graph=retain_graph,
        create_graph=create_graph,
        allow_unused=True,
    )


def grads_or_zeros(
    outputs: tuple[Tensor, ...],
    inputs: tuple[Tensor, ...],
    grad_outputs: tuple[Tensor, ...] | None = None,
    *,
    retain_graph: bool = False,
    create_graph: bool = False,
) -> tuple[Tensor, ...]:
    """``torch.autograd.grad`` with zeros for inputs the outputs do not depend on."""
    grads = grads_or_none(
        outputs, inputs, grad_outputs, retain_graph=retain_graph, create_graph=create_graph
    )
    return _zeros_where_absent(grads, inputs)


def _zeros_where_absent(
    grads: tuple[Tensor | None, ...], inputs: tuple[Tensor, ...]
) -> tuple[Tensor, ...]:
    return tuple(
        torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs, strict=True)
    )


def plus_direct(grads: tuple[Tensor, ...], direct: tuple[Tensor | None, ...]) -> tuple[Tensor, ...]:
    """``grads`` plus the direct partials, skipping the (usual) ones that are absent."""
    return tuple(a if b is None else a + b for a, b in zip(grads, direct, strict=True))


class LossTerms:
    """The loss at a final state and its partial derivatives.

    ``g`` = dL/dh (the right-hand side of the adjoint system), ``direct_f`` =
    the partial dL/dw_F that does not pass through h (None for a parameter the
    loss does not read directly: usually all of them, and a tensor of zeros
    the size of w_F would be held through the whole adjoint solve),
    ``grads_g`` = dL/dw_G.
    """

    def __init__(self, problem: Problem, final_state: State) -> None:
        h = S.detached_leaf(final_state)
        with torch.enable_grad():
            loss = problem.loss(h)
        wrt = S.as_tuple(h) + problem.params_f + problem.params_g
        grads = grads_or_none((loss,), wrt)
        n_h, n_f = len(S.as_tuple(h)), len(problem.params_f)
        self.loss = float(loss.detach())
        self.g: State = S.like(final_state, _zeros_where_absent(grads[:n_h], wrt[:n_h]))
        self.direct_f = grads[n_h : n_h + n_f]
        self.grads_g = _zeros_where_absent(grads[n_h + n_f :], wrt[n_h + n_f :])


class LastStep:
    """The last step ``h_T = F_{T-1}(h_{T-1})`` kept as a graph.

    ``linearised`` replaces F_{T-1} by another map of the state (one of
    ``Problem.adjoint_steps``); its graph then gives every product below.

    J is evaluated at ``h_{T-1}``, the point the step starts from (as in the
    authors' code). ``vjp`` gives J^T v, ``jvp`` gives J v by the
    double-backward trick (the VJP is linear in its cotangent u, so
    differentiating <J^T u, v> w.r.t. u yields J v), and ``param_vjp`` gives
    (dF/dw_F)^T z. No Jacobian is ever written out per task.
    """

    def __init__(
        self,
        problem: Problem,
        previous_state: State,
        linearised: Callable[[State], State] | None = None,
    ) -> None:
        self.problem = problem
        self.h_prev = S.detached_leaf(previous_state)
        with torch.enable_grad():
            if linearised is None:
                self.h_next = problem.step(self.h_prev, problem.num_steps - 1)
            else:
                self.h_next = linearised(self.h_prev)
        self._cotangent: tuple[Tensor, ...] | None = None
        self._jt_of_cotangent: tuple[Tensor, ...] | None = None

    @property
    def forward_residual(self) -> float:
        return float(S.norm(S.sub(S.detach(self.h_next), S.detach(self.h_prev))))

    def vjp(self, v: State) -> State:
        out = grads_or_zeros(
            S.as_tuple(self.h_next), S.as_tuple(self.h_prev), S.as_tuple(v), retain_graph=True
        )
        return S.like(v, out)

    def jvp(self, v: State) -> State:
        if self._jt_of_cotangent is None:
            with torch.enable_grad():
                self._cotangent = tuple(
                    torch.zeros_like(x, requires_grad=True) for x in S.as_tuple(self.h_next)
                )
                self._jt_of_cotangent = grads_or_zeros(
                    S.as_tuple(self.h_next),
                    S.as_tuple(self.h_prev),
                    self._cotangent,
                    retain_graph=True,
                    create_graph=True,
                )
        assert self._cotangent is not None
        out = grads_or_zeros(
            self._jt_of_cotangent, self._cotangent, S.as_tuple(v), retain_graph=True
        )
        return S.like(v, out)

    def param_vjp(self, z: State, *, release: bool) -> tuple[Tensor, ...]:
        """(dF/dw_F)^T z; ``release`` frees the step's graph afterwards."""
        grads = grads_or_zeros(
            S.as_tuple(self.h_next),
            self.problem.params_f,
            S.as_tuple(z),
            retain_graph=not release,
        )
        if release:
            self._cotangent = self._jt_of_cotangent = None
        return grads

    def adjoint_residual(self, z: State, g: State) -> float:
        """||(I - J^T) z - g||."""
        return float(S.norm(S.sub(S.sub(z, self.vjp(z)), g)))
