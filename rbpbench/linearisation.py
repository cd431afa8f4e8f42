"""The last step linearised, and the loss terms at the final state: what an implicit gradient needs.

The RBP family runs the first T - 1 steps without a graph
(:func:`rbpbench.forward.run_without_graph`), keeps the last step as a graph
(:class:`LinearisedStep`), takes the loss and its partials at h_T
(:class:`LossTerms`), solves the adjoint system (I - J^T) z = dL/dh_T with the
step's Jacobian products and returns (dF/dw_F)^T z plus the direct partials.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rbpbench import state as S
from rbpbench.gradients import grads_or_none, grads_or_zeros, zeros_where_absent
from rbpbench.problem import Problem
from rbpbench.state import State


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
        self.g: State = S.like(final_state, zeros_where_absent(grads[:n_h], wrt[:n_h]))
        self.direct_f = grads[n_h : n_h + n_f]
        self.grads_g = zeros_where_absent(grads[n_h + n_f :], wrt[n_h + n_f :])

    def total_grads_f(self, through_state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """dL/dw_F: the part through the state, (dF/dw_F)^T z, plus the direct partials."""
        return tuple(
            a if b is None else a + b for a, b in zip(through_state, self.direct_f, strict=True)
        )


class LinearisedStep:
    """The last step ``h_T = F_{T-1}(h_{T-1})`` kept as a graph: the Jacobian operator.

    ``linearised`` replaces F_{T-1} by another map of the state (one of
    ``Problem.adjoint_steps``); its graph then gives every product below.

    J is evaluated at ``h_{T-1}``, the point the step starts from (as in the
    authors' code). ``vjp`` gives J^T v, ``jvp`` gives J v by the
    double-backward trick (the VJP is linear in its cotangent u, so
    differentiating <J^T u, v> w.r.t. u yields J v), and ``param_vjp`` gives
    (dF/dw_F)^T z. No Jacobian is ever written out per task. A
    :class:`~rbpbench.adjoint.JacobianOperator`, so every adjoint solver takes it.
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
        """||h_T - h_{T-1}||."""
        return float(S.norm(S.sub(S.detach(self.h_next), S.detach(self.h_prev))))

    def vjp(self, v: State) -> State:
        """J^T v."""
        out = grads_or_zeros(
            S.as_tuple(self.h_next), S.as_tuple(self.h_prev), S.as_tuple(v), retain_graph=True
        )
        return S.like(v, out)

    def jvp(self, v: State) -> State:
        """J v."""
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
