"""What the accelerated forward solvers (anderson, broyden) share: the tolerance rule and the residual.

Both stop when the relative residual ||F(h) - h|| / ||F(h)|| of an iterate h
(the quantity the harness measures as ``forward_relative_residual``, with
h* = h) is at most ``tol``. ``tol = 0.0`` means the dtype's default,
:func:`default_solver_tolerance`: eps ** 0.75, about 1.8e-12 in float64 and
6.4e-6 in float32. That is three quarters of the dtype's digits, a factor
eps ** -0.25 (about 1e4 in float64, 50 in float32) below the harness's own
convergence tolerance sqrt(eps) (:func:`rbpbench.convergence.default_tolerance`),
so a row is never flagged unconverged because of the solver's tolerance and
the forward's error, roughly tol / (1 - rho), stays below the gradient errors
a sweep compares; and it stays well above the floor that rounding leaves the
residual at (on contractive-rnn: 2e-16 to 5e-16 in float64, 1e-7 to 3e-7 in
float32, for anderson, broyden and plain iteration alike, so some 4000 and
20 to 80 times below the default), so both solvers reach it in practice.
Where they cannot (a task whose rounding floor is higher, or a user's tol
below the floor), they stop at ``max_iter``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rbpbench.problem import ForwardSolution
from rbpbench.state import State


def default_solver_tolerance(dtype: torch.dtype) -> float:
    """eps ** 0.75 of ``dtype`` (1.8e-12 in float64, 6.4e-6 in float32, 5.3e-4 in bfloat16)."""
    return float(torch.finfo(dtype).eps) ** 0.75


def solver_tolerance(tol: float, dtype: torch.dtype) -> float:
    """``tol``, or the dtype's default where ``tol`` is 0.0."""
    return float(tol) if tol > 0 else default_solver_tolerance(dtype)


def relative_residual(fx: Tensor, residual: Tensor) -> float:
    """||F(h) - h|| / ||F(h)|| (the plain norm where F(h) is 0), as a float, from flat tensors.

    NaN or Inf where either is not finite.
    """
    with torch.no_grad():
        size = float(torch.linalg.vector_norm(fx))
        r = float(torch.linalg.vector_norm(residual))
    if not (math.isfinite(size) and math.isfinite(r)):
        return math.nan
    return r / size if size > 0 else r


def check_positive_int(solver: str, name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{solver}: {name} must be an int >= 1, got {value!r}")


def check_non_negative(solver: str, name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not (
        math.isfinite(value) and value >= 0
    ):
        raise ValueError(f"{solver}: {name} must be a finite number >= 0, got {value!r}")


class _Dots(torch.autograd.Function):
    """``stack(vectors) @ y``, whose graph keeps references to the vectors, not a stacked copy."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, *vectors: Tensor) -> Tensor:
        ctx.save_for_backward(y, *vectors)
        return torch.stack(vectors) @ y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        y, *vectors = ctx.saved_tensors
        grad_y = grad @ torch.stack(vectors) if ctx.needs_input_grad[0] else None
        grads = [grad[i] * y if ctx.needs_input_grad[i + 1] else None for i in range(len(vectors))]
        return (grad_y, *grads)


class _Combine(torch.autograd.Function):
    """``coeffs @ stack(vectors)``, whose graph keeps references to the vectors, not a stacked copy."""

    @staticmethod
    def forward(ctx: Any, coeffs: Tensor, *vectors: Tensor) -> Tensor:
        ctx.save_for_backward(coeffs, *vectors)
        return coeffs @ torch.stack(vectors)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        coeffs, *vectors = ctx.saved_tensors
        grad_coeffs = torch.stack(vectors) @ grad if ctx.needs_input_grad[0] else None
        grads = [
            coeffs[i] * grad if ctx.needs_input_grad[i + 1] else None for i in range(len(vectors))
        ]
        return (grad_coeffs, *grads)


def dots(vectors: list[Tensor], y: Tensor) -> Tensor:
    """The inner products of each of ``vectors`` with ``y``: ``stack(vectors) @ y``.

    One matrix-vector product, the same arithmetic whether autograd records or
    not (so a solver takes the same iterations on a run with a graph as on the
    run without one that counted them); a recorded graph keeps references to
    the vectors, which the solver holds anyway, rather than a stacked copy per
    call, so a solver's graph grows by O(n), not O(m n), per iterate.
    """
    return _Dots.apply(y, *vectors)


def combine(coeffs: Tensor, vectors: list[Tensor]) -> Tensor:
    """sum_i coeffs[i] * vectors[i]: ``coeffs @ stack(vectors)`` (recorded as in :func:`dots`)."""
    return _Combine.apply(coeffs, *vectors)


@dataclass
class Iterates:
    """What both accelerated solvers keep of their iterates: the relative residual of each and
    the best one evaluated, which is what they return."""

    tol: float
    max_iter: int
    best: State
    best_residual: float = math.inf
    trace: list[float] = field(default_factory=list)

    def seen(self, k: int, h: State, fx: Tensor, residual: Tensor) -> bool:
        """Record iterate ``k`` (``fx`` = F(h) and ``residual`` = F(h) - h, flat); True: stop
        here, converged, at the budget's end or on a non-finite residual."""
        relative = relative_residual(fx, residual)
        self.trace.append(relative)
        if not math.isfinite(relative):
            return True
        if relative < self.best_residual:
            self.best, self.best_residual = h, relative
        return relative <= self.tol or k == self.max_iter - 1

    def solution(self) -> ForwardSolution:
        """The best iterate, with one evaluation of F per iterate seen."""
        return ForwardSolution(self.best, len(self.trace), self.trace)
