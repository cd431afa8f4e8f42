"""``torchdeq-anderson`` and ``torchdeq-broyden``: torchdeq's forward solvers as rbpbench forward solvers.

Each is ``solve(step, h0, *, num_steps, **params) -> ForwardSolution``
(:class:`rbpbench.problem.ForwardSolverSpec`), a thin call of torchdeq's own
solver (``torchdeq.solver.get_solver("anderson")``, ``("broyden")``) on the
state laid out as one batch element (:mod:`rbpbench_torchdeq.layout`):

- the stopping rule is torchdeq's ``stop_mode="rel"``: the relative residual
  ||F(h) - h|| / (||F(h)|| + 1e-9) of an iterate below ``tol``; ``tol = 0``
  (the default) means eps ** 0.75 of the state's dtype (1.8e-12 in float64,
  6.4e-6 in float32), as for rbpbench's own solvers, instead of torchdeq's
  DEQ-practice 1e-3;
- ``max_iter`` is torchdeq's: the iteration budget, independent of the
  task's T (``num_steps`` is ignored);
- ``step`` is called with t = 0, 1, 2, ... (its call's index); such a solver
  only runs on problems whose step does not depend on t, which rbpbench
  checks before the cell runs;
- the returned state is torchdeq's (the iterate of lowest residual; for
  Anderson the image F(x_k) of that iterate, as torchdeq returns it);
  ``iterations`` counts the evaluations of F; ``trace`` holds the relative
  residual of every point F was evaluated at.

torchdeq's solvers write into preallocated buffers in place and detach the
iterate they return, so autograd cannot go through them: the specs declare
``differentiable=False`` and rbpbench skips BPTT and TBPTT on these forwards.
The solvers run under ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchdeq.solver import get_solver

from rbpbench import ForwardSolution, ForwardSolverSpec, State
from rbpbench_torchdeq import layout


def _run(
    name: str,
    step: Callable[[State, int], State],
    h0: State,
    *,
    tol: float,
    max_iter: int,
    **params: object,
) -> ForwardSolution:
    x0 = layout.to_flat(h0).detach()
    tol = layout.solver_tolerance(tol, x0.dtype)
    f = layout.FlatMap(step, h0, trace=True)
    with torch.no_grad():
        z, _, _ = get_solver(name)(
            f,
            x0,
            max_iter=max_iter,
            tol=layout.torchdeq_tolerance(name, tol),
            stop_mode="rel",
            **params,
        )
    assert f.trace is not None
    return ForwardSolution(layout.from_flat(z, h0), f.calls, f.trace)


def anderson(
    step: Callable[[State, int], State],
    h0: State,
    *,
    num_steps: int,
    m: int = 6,
    beta: float = 1.0,
    lam: float = 0.0,
    tol: float = 0.0,
    max_iter: int = 1000,
) -> ForwardSolution:
    """torchdeq's ``anderson_solver`` from ``h0``: window ``m``, mixing ``beta``, regulariser ``lam``.

    ``beta`` is torchdeq's ``tau`` (1: the mixed images; smaller: part of the
    way). ``lam`` is added, as it is, to the Gram matrix of the window's
    residuals: absolute, so torchdeq's 1e-4 dominates once the residuals are
    below about 1e-2 and then stalls the solver (measured: it converges more
    slowly than plain iteration), hence 0 here. Evaluations of F: exactly
    ``max_iter`` when it does not converge (two to start, one per iteration).
    """
    del num_steps  # the solver's own budget is max_iter
    owner = "torchdeq-anderson"
    layout.check_int(owner, "m", m, at_least=2)
    layout.check_number(owner, "beta", beta, positive=True)
    layout.check_number(owner, "lam", lam)
    layout.check_number(owner, "tol", tol)
    layout.check_int(owner, "max_iter", max_iter, at_least=3)
    return _run("anderson", step, h0, tol=tol, max_iter=max_iter, m=m, lam=lam, tau=beta)


def broyden(
    step: Callable[[State, int], State],
    h0: State,
    *,
    num_steps: int,
    memory: int = 0,
    tol: float = 0.0,
    max_iter: int = 1000,
) -> ForwardSolution:
    """torchdeq's ``broyden_solver`` from ``h0`` (no line search): at most ``max_iter`` + 1 evaluations.

    ``memory`` is torchdeq's ``LBFGS_thres``, the number of rank-one updates of
    the inverse Jacobian kept (0: all of them, torchdeq's None); torchdeq
    allocates 2 * memory state-sized vectors up front, 2 * max_iter with 0.
    Smaller values overwrite the oldest updates in a ring, which on
    contractive-rnn at spectral norm 0.99 gave NaN at memory 10 and 30.
    """
    del num_steps  # the solver's own budget is max_iter
    owner = "torchdeq-broyden"
    layout.check_int(owner, "memory", memory, at_least=0)
    layout.check_number(owner, "tol", tol)
    layout.check_int(owner, "max_iter", max_iter, at_least=1)
    return _run(
        "broyden", step, h0, tol=tol, max_iter=max_iter, LBFGS_thres=memory or None, ls=False
    )


ANDERSON = ForwardSolverSpec(
    "torchdeq-anderson",
    anderson,
    "torchdeq's Anderson acceleration (window m, mixing beta, Gram regulariser lam) to a relative residual tol",
    defaults={"m": 6, "beta": 1.0, "lam": 0.0, "tol": 0.0, "max_iter": 1000},
    differentiable=False,
)
BROYDEN = ForwardSolverSpec(
    "torchdeq-broyden",
    broyden,
    "torchdeq's Broyden method (no line search, memory updates kept) to a relative residual tol",
    defaults={"memory": 0, "tol": 0.0, "max_iter": 1000},
    differentiable=False,
)
