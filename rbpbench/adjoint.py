"""Solvers for the adjoint system ``(I - J^T) z = g`` of recurrent back-propagation.

Every solver has the same signature, ``solve(op, g, *, max_iter, tol, init)``
(an :data:`AdjointSolver`), and returns an :class:`AdjointSolution`, so
swapping solvers is swapping one name. ``op`` is a :class:`JacobianOperator`:
the two Jacobian products at the fixed point, ``op.vjp(v)`` = J^T v and
``op.jvp(v)`` = J v, both taken by autograd
(:class:`rbpbench.linearisation.LinearisedStep` is the one the methods pass).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from rbpbench import state as S
from rbpbench.state import State


class JacobianOperator(Protocol):
    """J at the point of linearisation, as two products: ``vjp(v)`` = J^T v, ``jvp(v)`` = J v."""

    def vjp(self, v: State) -> State: ...

    def jvp(self, v: State) -> State: ...


@dataclass
class AdjointSolution:
    """``z`` and how the solver got there.

    ``trace`` holds one norm per iteration: the change ||z_i - z_{i-1}|| for
    fixed-point iteration, the term norm ||(J^T)^i g|| for the Neumann series,
    the normal-equation residual for CG.
    """

    z: State
    iterations: int
    trace: list[float] = field(default_factory=list)


# ``solve(op, g, *, max_iter, **params) -> AdjointSolution``: ``op`` a JacobianOperator,
# ``g`` the right-hand side dL/dh_T, ``max_iter`` the truncation K, ``params`` the
# solver's own keywords (``tol``, ``init``, ...). A solver that does what one unit of
# K buys in its own way says so in its docstring.
AdjointSolver = Callable[..., AdjointSolution]


def fixed_point(
    op: JacobianOperator, g: State, *, max_iter: int, tol: float = 1e-8, init: State | None = None
) -> AdjointSolution:
    """Algorithm 1 (Almeida-Pineda): ``z <- J^T z + g``.

    Stops after ``max_iter`` iterations or once the change falls below ``tol``
    relative to ||z||. ``init=None`` means z0 = 0; its first iterate is g
    itself, so that iteration costs no Jacobian product.
    """
    z = S.zeros_like(g) if init is None else init
    trace: list[float] = []
    for i in range(1, max_iter + 1):
        z_next = g if (i == 1 and init is None) else S.add(op.vjp(z), g)
        change = float(S.norm(S.sub(z_next, z)))
        z = z_next
        trace.append(change)
        if change <= tol * float(S.norm(z)):
            return AdjointSolution(z, i, trace)
    return AdjointSolution(z, max_iter, trace)


def neumann(
    op: JacobianOperator, g: State, *, max_iter: int, tol: float = 0.0, init: State | None = None
) -> AdjointSolution:
    """Algorithm 2: ``z = sum_{k=0}^{K} (J^T)^k g`` with K = ``max_iter`` products.

    ``tol`` > 0 stops early once a term's norm falls below ``tol`` times the
    norm of the sum; ``init`` is unused (the series starts at g) and accepted
    only to keep the common signature.
    """
    del init
    term, total = g, g
    norms: list[Tensor] = []
    for i in range(1, max_iter + 1):
        term = op.vjp(term)
        total = S.add(total, term)
        norms.append(S.norm(term))
        if tol > 0 and float(norms[-1]) <= tol * float(S.norm(total)):
            return AdjointSolution(total, i, [float(n) for n in norms])
    return AdjointSolution(total, max_iter, [float(n) for n in norms])


def cg_normal_equations(
    op: JacobianOperator,
    g: State,
    *,
    max_iter: int,
    tol: float = 1e-10,
    init: State | None = None,
    damping: float = 0.0,
) -> AdjointSolution:
    """CG-RBP: conjugate gradient on ``(I - J)(I - J^T) z = (I - J) g`` (Eq. 16).

    Stops after ``max_iter`` iterations or once the normal-equation residual
    falls below ``tol`` relative to its right-hand side. ``damping`` adds
    ``damping * I`` to the normal matrix (the authors' code used 1e-5; the
    paper uses none, and neither do we by default).
    """

    def normal_matvec(p: State) -> State:
        bp = S.sub(p, op.vjp(p))
        out = S.sub(bp, op.jvp(bp))
        return S.add(out, p, damping) if damping else out

    b = S.sub(g, op.jvp(g))
    z = S.zeros_like(g) if init is None else init
    r = b if init is None else S.sub(b, normal_matvec(z))
    p = r
    rs = S.dot(r, r)
    stop = tol * float(S.norm(b))
    trace: list[float] = []
    iterations = 0
    while iterations < max_iter and float(torch.sqrt(rs)) > stop:
        ap = normal_matvec(p)
        alpha = rs / S.dot(p, ap)
        z = S.add(z, p, alpha)
        r = S.add(r, ap, -alpha)
        rs_next = S.dot(r, r)
        p = S.add(r, p, rs_next / rs)
        rs = rs_next
        iterations += 1
        trace.append(float(torch.sqrt(rs)))
    return AdjointSolution(z, iterations, trace)
