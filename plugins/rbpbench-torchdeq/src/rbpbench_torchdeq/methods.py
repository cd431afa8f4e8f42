"""``torchdeq-ift`` and ``torchdeq-phantom``: torchdeq's backward passes as rbpbench methods.

Both start from h*, found by the cell's forward solver without a graph
(:func:`rbpbench.solve_forward`: h_{T-1} for ``iterate``, the solver's answer
for ``anderson``, ``torchdeq-anderson``, ...), and hand torchdeq the final
step F = F_{T-1} of the problem, on the state laid out as one batch element
(:mod:`rbpbench_torchdeq.layout`). The gradients are made by torchdeq's own
code, ``torchdeq.grad.backward_factory``, with torchdeq's own ``DEQWrapper``
around F, exactly as a ``torchdeq`` DEQ layer makes them in training:

- ``torchdeq-ift`` is torchdeq's implicit differentiation (the
  ``torch.autograd.Function`` variant, its default): the output is F(h*),
  whose backward pass solves z = J^T z + g with torchdeq's backward solver
  (``solver``, at most K = ``max_iter`` iterations, stopping at ``tol``),
  J taken at F(h*), and then back-propagates z through F(h*) to w_F;
- ``torchdeq-phantom`` is torchdeq's phantom gradient: K damped steps
  h <- tau F(h) + (1 - tau) h from h* with a graph, and the loss at the last
  one back-propagated through them.

F is always ``problem.step``, so the harness counts every evaluation and
every vector-Jacobian product (:mod:`rbpbench.costs`).
"""

from __future__ import annotations

import math

import torch
from torchdeq.grad import backward_factory
from torchdeq.solver import get_solver
from torchdeq.utils.layer_utils import deq_decorator

from rbpbench import (
    GradientResult,
    LossTerms,
    MethodSpec,
    Problem,
    State,
    final_step,
    grads_or_zeros,
    solve_forward,
)
from rbpbench_torchdeq import layout

# torchdeq's default damping of the phantom gradient (backward_factory's and DEQIndexing's tau).
PHANTOM_TAU = 1.0


def _last_step(problem: Problem, template: State) -> layout.FlatMap:
    """F = F_{T-1} on torchdeq's layout; its ``first`` will be its first output, F(h*)."""
    return layout.FlatMap(lambda h, t: final_step(problem, h), template)


def ift(
    problem: Problem,
    truncation: int,
    *,
    diagnostics: bool = True,
    solver: str = "fixed_point_iter",
    tol: float = 1e-10,
    stop_mode: str = "rel",
    m: int = 6,
    lam: float = 0.0,
) -> GradientResult:
    """torchdeq's implicit differentiation at h*, its backward solver given K = ``truncation`` iterations.

    ``solver``: torchdeq's backward solver, ``fixed_point_iter`` (DEQ
    practice's default: z <- J^T z + g from z = 0, one J^T product per
    iteration), ``anderson`` or ``broyden``. ``tol``, ``stop_mode``: its
    stopping rule, the residual ||J^T z + g - z|| (``abs``) or that over
    ||J^T z + g|| (``rel``) below ``tol``. ``m``, ``lam``: Anderson's window and
    Gram regulariser (ignored by the other two; torchdeq's lam 1e-4 would
    stall it, see :func:`rbpbench_torchdeq.forward.anderson`).

    ``backward_iterations`` counts the J^T products the backward solver made;
    ``backward_residual`` is ||(I - J^T) z - g|| with J at h*, where rbpbench's
    own methods linearise, for the z torchdeq's solver returned: its J^T z
    comes from the same backward pass as (dF/dw_F)^T z, so it costs nothing
    extra. With ``diagnostics=False`` it is NaN and h* is not differentiated.
    """
    owner = "torchdeq-ift"
    layout.check_int(owner, "the truncation K", truncation, at_least=1)
    layout.check_choice(owner, "solver", solver, layout.SOLVERS)
    layout.check_number(owner, "tol", tol)
    layout.check_choice(owner, "stop_mode", stop_mode, layout.STOP_MODES)
    layout.check_int(owner, "m", m, at_least=2)
    layout.check_number(owner, "lam", lam)

    template = solve_forward(problem)
    x_star = layout.to_flat(template)
    if diagnostics:  # J^T z at h* then comes with the gradient, from the same backward pass
        x_star = x_star.detach().requires_grad_(True)
    last = _last_step(problem, template)
    backward_solver = layout.CountedSolver(get_solver(solver))
    solver_kwargs: dict[str, object] = {
        "max_iter": truncation,
        "tol": layout.torchdeq_tolerance(solver, tol),
        "stop_mode": stop_mode,
    }
    if solver == "anderson":
        solver_kwargs.update(m=m, lam=lam)
    produce_grad = backward_factory(
        grad_type="ift", b_solver=backward_solver, b_solver_kwargs=solver_kwargs
    )
    deq_func, _ = deq_decorator(last, x_star)
    with torch.enable_grad():
        (out,) = produce_grad(None, deq_func, x_star)
    f_star = last.first  # F(h*) with its graph: the gradient arriving there is torchdeq's z
    assert f_star is not None

    h_final = layout.from_flat(out.detach(), template)
    terms = LossTerms(problem, h_final)
    g = layout.to_flat(terms.g)
    extra = (f_star, x_star) if diagnostics else ()  # z and J^T z, for the residual
    grads = grads_or_zeros((out,), (*extra, *problem.params_f), (g,))
    through_state = grads[len(extra) :]
    residual = math.nan
    if diagnostics:
        z, jt_z = grads[0], grads[1]
        residual = float(torch.linalg.vector_norm(z - jt_z - g))
    return GradientResult(
        loss=terms.loss,
        grads_f=terms.total_grads_f(through_state),
        grads_g=terms.grads_g,
        forward_residual=float(torch.linalg.vector_norm(out.detach() - x_star.detach())),
        backward_iterations=backward_solver.calls,
        backward_residual=residual,
    )


def phantom(
    problem: Problem, truncation: int, *, diagnostics: bool = True, tau: float = PHANTOM_TAU
) -> GradientResult:
    """torchdeq's phantom gradient: K = ``truncation`` damped steps from h*, back-propagated.

    The gradient is that of the loss at torchdeq's output, the K-th damped
    step z_K (w_G's too); ``loss`` is the loss at h_T = F(h*), the first
    evaluation of F (the same point once h* is a fixed point), as every
    method reports it. ``backward_iterations`` is K; there is no adjoint, so
    ``backward_residual`` is NaN.
    """
    del diagnostics  # no adjoint, no residual to measure
    owner = "torchdeq-phantom"
    layout.check_int(owner, "the truncation K", truncation, at_least=1)
    layout.check_number(owner, "tau", tau, positive=True)

    template = solve_forward(problem)
    x_star = layout.to_flat(template)
    last = _last_step(problem, template)
    produce_grad = backward_factory(grad_type=truncation, tau=tau)
    deq_func, _ = deq_decorator(last, x_star)
    with torch.enable_grad():
        (z_k,) = produce_grad(None, deq_func, x_star)
        loss = problem.loss(layout.from_flat(z_k, template))
    grads = grads_or_zeros((loss,), problem.params_f + problem.params_g)
    assert last.first is not None
    f_star = last.first.detach()
    if truncation == 1 and tau == 1:
        loss_at_final = float(loss.detach())  # z_1 is F(h*) itself
    else:
        with torch.no_grad():
            loss_at_final = float(problem.loss(layout.from_flat(f_star, template)))
    n_f = len(problem.params_f)
    return GradientResult(
        loss=loss_at_final,
        grads_f=grads[:n_f],
        grads_g=grads[n_f:],
        forward_residual=float(torch.linalg.vector_norm(f_star - x_star)),
        backward_iterations=truncation,
    )


IFT = MethodSpec(
    "torchdeq-ift",
    ift,
    "torchdeq's implicit differentiation: its backward solver on z = J^T z + g, at most K iterations",
    defaults={"solver": "fixed_point_iter", "tol": 1e-10, "stop_mode": "rel", "m": 6, "lam": 0.0},
)
PHANTOM = MethodSpec(
    "torchdeq-phantom",
    phantom,
    "torchdeq's phantom gradient: K damped steps h <- tau F(h) + (1-tau) h from h*, back-propagated",
    defaults={"tau": PHANTOM_TAU},
)
