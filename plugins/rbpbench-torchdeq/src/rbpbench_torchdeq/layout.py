"""Between rbpbench's states and torchdeq's tensors, and what the two packages' solvers share.

rbpbench's state is a tensor of any shape or a tuple of tensors
(:mod:`rbpbench.state`); torchdeq's solvers and gradients take one tensor
whose first dimension is a batch, and decide convergence per batch element
(they stop once the worst element's residual is below ``tol``). This plugin
hands torchdeq the whole state as ONE batch element, shape ``(1, n)``, with
the state's entries concatenated in :func:`rbpbench.state.flatten`'s order.
Then torchdeq's residuals are the norms of the whole state, the ones
rbpbench measures (a batched task such as contractive-rnn would otherwise be
stopped on its worst sample, and Anderson would mix each sample with weights
of its own), and tuple states need no special case.

:class:`FlatMap` wraps a map of rbpbench states as such a function; every
torchdeq call in this plugin goes through one, so that F is always the
problem's own ``step`` (which the harness counts) and never a copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from rbpbench import State
from rbpbench import state as S

# torchdeq's solvers take one of two stopping rules; rbpbench's are relative.
STOP_MODES = ("rel", "abs")
# torchdeq's backward (and forward) solvers this plugin offers, by torchdeq's own names.
SOLVERS = ("fixed_point_iter", "anderson", "broyden")

# torchdeq 0.1.0's Broyden solver (torchdeq/solver/broyden.py) has a "lack of progress"
# stop meant to fire when the residual stalled over the last 30 iterations: it divides the
# largest by the smallest residual of each of those iterations *across the batch* (max and
# min over dim=1 of a (30, batch) stack), not across the iterations. With the one batch
# element this plugin passes (see above) that ratio is always 1, so after 30 iterations
# Broyden stops as soon as its residual is below 3 * tol. Passing tol / 3 makes its
# stopping rule what ``tol`` means everywhere in this plugin: stop once the residual is at
# most tol (during the first 30 iterations it then asks for tol / 3). tests/test_torchdeq
# _quirks.py shows the behaviour on torchdeq itself, so a torchdeq that fixes it is noticed.
BROYDEN_PROGRESS_FACTOR = 3.0


def default_tolerance(dtype: torch.dtype) -> float:
    """eps ** 0.75 of ``dtype``: 1.8e-12 in float64, 6.4e-6 in float32.

    The rule of rbpbench's own accelerated forward solvers: well below the
    harness's convergence tolerance sqrt(eps), well above the rounding floor
    of a contraction's residual (about 1e-15 in float64, 1e-7 in float32).
    """
    return float(torch.finfo(dtype).eps) ** 0.75


def solver_tolerance(tol: float, dtype: torch.dtype) -> float:
    """``tol``, or :func:`default_tolerance` of ``dtype`` where ``tol`` is 0."""
    return float(tol) if tol > 0 else default_tolerance(dtype)


def torchdeq_tolerance(solver: str, tol: float) -> float:
    """The ``tol`` to hand torchdeq's ``solver`` so that it stops once its residual is <= ``tol``."""
    return tol / BROYDEN_PROGRESS_FACTOR if solver == "broyden" else tol


def to_flat(state: State) -> Tensor:
    """The state as torchdeq's one batch element: shape (1, n)."""
    return S.flatten(state).reshape(1, -1)


def from_flat(x: Tensor, template: State) -> State:
    """A (1, n) tensor back in ``template``'s structure and shapes (views of ``x``)."""
    return S.unflatten(x.reshape(-1), template)


class FlatMap:
    """``x -> flatten(fn(unflatten(x), t))`` for torchdeq, counting its calls.

    ``t`` is the call's index (0, 1, 2, ...) when ``time`` is None, else
    ``time`` itself. ``first`` keeps the output of the first call, as torchdeq
    returned it to autograd (a method reads F(h*) and its gradient there).
    With ``trace`` each call's relative residual ||F(x) - x|| / ||F(x)|| is
    recorded (two norms, no evaluation of F).
    """

    def __init__(
        self,
        fn: Callable[[State, int], State],
        template: State,
        *,
        time: int | None = None,
        trace: bool = False,
    ) -> None:
        self.fn, self.template, self.time = fn, template, time
        self.calls = 0
        self.first: Tensor | None = None
        self.trace: list[float] | None = [] if trace else None

    def __call__(self, x: Tensor) -> Tensor:
        t = self.calls if self.time is None else self.time
        out = to_flat(self.fn(from_flat(x, self.template), t))
        self.calls += 1
        if self.first is None:
            self.first = out
        if self.trace is not None:
            self.trace.append(relative_residual(out, x))
        return out


def relative_residual(fx: Tensor, x: Tensor) -> float:
    """||F(x) - x|| / ||F(x)|| (the plain norm where F(x) is 0); NaN where not finite."""
    with torch.no_grad():
        size = float(torch.linalg.vector_norm(fx))
        r = float(torch.linalg.vector_norm(fx - x))
    if not (math.isfinite(size) and math.isfinite(r)):
        return math.nan
    return r / size if size > 0 else r


class CountedSolver:
    """One of torchdeq's solvers, counting the evaluations of the function it is given.

    torchdeq's IFT backward hands its solver ``y -> J^T y + g``, so the count is
    the number of Jacobian-transpose products the adjoint solve made.
    """

    def __init__(self, solver: Callable[..., tuple[Tensor, list[Tensor], dict[str, Tensor]]]):
        self.solver = solver
        self.calls = 0

    def __call__(
        self, func: Callable[[Tensor], Tensor], x0: Tensor, **kwargs: object
    ) -> tuple[Tensor, list[Tensor], dict[str, Tensor]]:
        def counted(y: Tensor) -> Tensor:
            self.calls += 1
            return func(y)

        return self.solver(counted, x0, **kwargs)


def check_choice(owner: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {', '.join(choices)}, not {value!r}")


def check_number(owner: str, name: str, value: float, *, positive: bool = False) -> None:
    """A finite number >= 0 (> 0 with ``positive``), else ValueError naming it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{owner}: {name} must be a finite number {bound}, not {value!r}")


def check_int(owner: str, name: str, value: int, *, at_least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < at_least:
        raise ValueError(f"{owner}: {name} must be an int >= {at_least}, not {value!r}")
