"""Krylov solvers for the adjoint system ``A z = g`` with ``A = I - J^T``.

Each has the signature of rbpbench's adjoint solvers (:data:`rbpbench.AdjointSolver`),
``solve(op, g, *, max_iter, tol, init)``, and returns an
:class:`rbpbench.AdjointSolution`; ``op.vjp(v)`` is J^T v and
``op.jvp(v)`` is J v. States may be tensors or tuples of tensors.

``tol`` is relative to the right-hand side for all three: a solver stops once
its (recurrence) estimate of ||g - A z|| falls to ``tol * ||g||``. ``max_iter``
is the truncation K; what one unit of K buys differs by solver (see each
docstring, and the distribution's README): GMRES and BiCGSTAB spend one J^T
product per unit, LSQR one J^T and one J product per unit, as CG-RBP does.

Written from the textbook algorithms: GMRES(m) after Saad and Schultz (1986)
and Saad, *Iterative Methods for Sparse Linear Systems*, Alg. 6.9; BiCGSTAB
after van der Vorst (1992); LSQR after Paige and Saunders (1982).
"""

from __future__ import annotations

import math

import torch

from rbpbench import AdjointSolution, JacobianOperator, State
from rbpbench import state as S


def _apply(op: JacobianOperator, v: State) -> State:
    """A v = (I - J^T) v: one Jacobian-transpose product."""
    return S.sub(v, op.vjp(v))


def _apply_transpose(op: JacobianOperator, v: State) -> State:
    """A^T v = (I - J) v: one Jacobian product."""
    return S.sub(v, op.jvp(v))


def _givens(a: float, b: float) -> tuple[float, float]:
    """(c, s) with [c s; -s c] [a; b] = [r; 0]."""
    if b == 0.0:
        return 1.0, 0.0
    r = math.hypot(a, b)
    return a / r, b / r


def _back_substitute(r: list[list[float]], rhs: list[float]) -> list[float]:
    """Solve the upper-triangular system R y = rhs; ``r[j][i]`` is entry (i, j) (columns)."""
    k = len(rhs)
    y = [0.0] * k
    for i in range(k - 1, -1, -1):
        acc = rhs[i] - sum(r[j][i] * y[j] for j in range(i + 1, k))
        y[i] = acc / r[i][i]
    return y


def gmres(
    op: JacobianOperator,
    g: State,
    *,
    max_iter: int,
    tol: float = 1e-10,
    init: State | None = None,
    restart: int = 50,
) -> AdjointSolution:
    """Restarted GMRES on ``(I - J^T) z = g``: at most ``max_iter`` J^T products in all.

    Every Arnoldi step costs one J^T product; a cycle of at most ``restart``
    steps minimises the residual over its Krylov space, then restarts from the
    iterate it reached. The residual that starts the next cycle is formed from
    the cycle's own basis (r = V (beta e_1 - H y)), so restarts cost no extra
    product and ``max_iter`` counts every product the solver makes (one more
    if ``init`` is given, for its initial residual). The basis is kept as one
    (restart + 1, n) matrix, orthogonalised by classical Gram-Schmidt applied
    twice. ``trace`` holds the residual estimate after every step;
    ``iterations`` is the number of Arnoldi steps taken.
    """
    if restart < 1:
        raise ValueError(f"gmres: restart must be >= 1, not {restart}")
    b = S.flatten(g)
    norm_b = float(torch.linalg.vector_norm(b))
    if init is None:
        z = torch.zeros_like(b)
        r = b
    else:
        z = S.flatten(init).clone()
        r = b - S.flatten(_apply(op, S.unflatten(z, g)))
    stop = tol * norm_b
    trace: list[float] = []
    steps = 0
    beta = float(torch.linalg.vector_norm(r))
    while steps < max_iter and beta > stop:
        m = min(restart, max_iter - steps)
        basis = torch.empty((m + 1, b.numel()), dtype=b.dtype, device=b.device)
        basis[0] = r / beta
        hessenberg: list[list[float]] = []  # column j: entries 0..j+1 of H, as computed
        rotated: list[list[float]] = []  # the same columns after the Givens rotations
        rotations: list[tuple[float, float]] = []
        residual = [beta]  # beta e_1 rotated along
        k = 0
        for j in range(m):
            w = S.flatten(_apply(op, S.unflatten(basis[j], g)))
            steps += 1
            h = basis[: j + 1] @ w
            w = w - basis[: j + 1].T @ h
            again = basis[: j + 1] @ w  # second pass: orthogonal to working precision
            w = w - basis[: j + 1].T @ again
            column = (h + again).tolist()
            next_norm = float(torch.linalg.vector_norm(w))
            column.append(next_norm)
            hessenberg.append(list(column))
            for i, (c, s) in enumerate(rotations):
                column[i], column[i + 1] = (
                    c * column[i] + s * column[i + 1],
                    -s * column[i] + c * column[i + 1],
                )
            c, s = _givens(column[j], column[j + 1])
            column[j], column[j + 1] = c * column[j] + s * column[j + 1], 0.0
            rotations.append((c, s))
            rotated.append(column)
            residual.append(-s * residual[j])
            residual[j] = c * residual[j]
            k = j + 1
            trace.append(abs(residual[k]))
            breakdown = next_norm <= 1e-14 * max(abs(x) for x in column[: j + 1])
            if breakdown or abs(residual[k]) <= stop:
                break
            basis[j + 1] = w / next_norm
        while k > 0 and rotated[k - 1][k - 1] == 0.0:  # A singular: drop the last direction
            k -= 1
        if k == 0:
            break
        y = _back_substitute(rotated[:k], residual[:k])
        coefficients = torch.tensor(y, dtype=b.dtype, device=b.device)
        z = z + basis[:k].T @ coefficients
        # r = V_{k+1} (beta e_1 - H_k y), without another product
        small = [beta] + [0.0] * k
        for j, column in enumerate(hessenberg[:k]):
            for i, value in enumerate(column):
                small[i] -= value * y[j]
        if breakdown or abs(residual[k]) <= stop:
            break
        r = basis[: k + 1].T @ torch.tensor(small, dtype=b.dtype, device=b.device)
        beta = float(torch.linalg.vector_norm(r))
    return AdjointSolution(S.unflatten(z, g), steps, trace)


def bicgstab(
    op: JacobianOperator,
    g: State,
    *,
    max_iter: int,
    tol: float = 1e-10,
    init: State | None = None,
) -> AdjointSolution:
    """BiCGSTAB on ``(I - J^T) z = g``: at most ``max_iter`` J^T products in all.

    A full BiCGSTAB iteration costs two products (A p and A s). When the budget
    runs out half way through one, the solver returns the better of the two
    iterates it holds (z + alpha p, whose residual s it knows, or z), so every
    product counts. ``iterations`` is the number of J^T products taken (one
    more if ``init`` is given, for its initial residual, not counted);
    ``trace`` holds the residual norm after each of them. A breakdown
    (rho or omega = 0) stops the solver with the iterate it has.
    """
    z = S.zeros_like(g) if init is None else init
    r = g if init is None else S.sub(g, _apply(op, init))
    shadow = r
    stop = tol * float(S.norm(g))
    trace: list[float] = []
    products = 0
    rho = alpha = omega = 1.0
    v = p = S.zeros_like(g)
    residual = float(S.norm(r))
    while products < max_iter and residual > stop:
        rho_next = float(S.dot(shadow, r))
        if rho_next == 0.0 or omega == 0.0:
            break
        beta = (rho_next / rho) * (alpha / omega)
        rho = rho_next
        p = S.add(r, S.add(p, v, -omega), beta)
        v = _apply(op, p)
        products += 1
        shadow_v = float(S.dot(shadow, v))
        if shadow_v == 0.0:
            break
        alpha = rho / shadow_v
        s = S.add(r, v, -alpha)
        s_norm = float(S.norm(s))
        trace.append(s_norm)
        if s_norm <= stop or products == max_iter:
            if s_norm <= residual:
                z, r, residual = S.add(z, p, alpha), s, s_norm
            break
        t = _apply(op, s)
        products += 1
        tt = float(S.dot(t, t))
        omega = float(S.dot(t, s)) / tt if tt > 0.0 else 0.0
        z = S.add(S.add(z, p, alpha), s, omega)
        r = S.add(s, t, -omega)
        residual = float(S.norm(r))
        trace.append(residual)
    return AdjointSolution(z, products, trace)


def lsqr(
    op: JacobianOperator,
    g: State,
    *,
    max_iter: int,
    tol: float = 1e-10,
    init: State | None = None,
) -> AdjointSolution:
    """LSQR on ``(I - J^T) z = g``: at most ``max_iter`` iterations.

    Golub-Kahan bidiagonalisation of A = I - J^T: every iteration costs one J^T
    product (A v) and one J product (A^T u), plus one J product to start.
    In exact arithmetic LSQR's iterates are CG's on the normal equations
    A^T A z = A^T g, which is what CG-RBP solves (Eq. 16 of the paper), so
    ``lsqr-rbp`` at K equals ``cg-rbp`` at K; LSQR is the numerically stable
    form, which the paper left for future work. Stops once the residual
    estimate phi_bar falls to ``tol * ||g||`` or the normal-equation residual
    ||A^T r|| vanishes (a least-squares solution of a singular system).
    ``trace`` holds the residual estimate per iteration.
    """
    z = S.zeros_like(g) if init is None else init
    rhs = g if init is None else S.sub(g, _apply(op, init))
    stop = tol * float(S.norm(g))
    beta = float(S.norm(rhs))
    trace: list[float] = []
    if beta == 0.0:
        return AdjointSolution(z, 0, trace)
    u = S.scale(rhs, 1.0 / beta)
    v = _apply_transpose(op, u)
    alpha = float(S.norm(v))
    if alpha == 0.0:
        return AdjointSolution(z, 0, trace)
    v = S.scale(v, 1.0 / alpha)
    w = v
    phi_bar, rho_bar = beta, alpha
    iterations = 0
    while iterations < max_iter and phi_bar > stop:
        u = S.add(_apply(op, v), u, -alpha)
        beta = float(S.norm(u))
        if beta > 0.0:
            u = S.scale(u, 1.0 / beta)
            v = S.add(_apply_transpose(op, u), v, -beta)
            alpha = float(S.norm(v))
            if alpha > 0.0:
                v = S.scale(v, 1.0 / alpha)
        else:
            alpha = 0.0
        rho = math.hypot(rho_bar, beta)
        c, s = rho_bar / rho, beta / rho
        theta = s * alpha
        rho_bar = -c * alpha
        phi = c * phi_bar
        phi_bar = s * phi_bar
        z = S.add(z, w, phi / rho)
        w = S.add(v, w, -theta / rho)
        iterations += 1
        trace.append(phi_bar)
        if alpha == 0.0 or beta == 0.0 or phi_bar * alpha * abs(c) == 0.0:
            break
    return AdjointSolution(z, iterations, trace)
