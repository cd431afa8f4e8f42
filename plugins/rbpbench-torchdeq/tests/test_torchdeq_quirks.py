"""What torchdeq itself does that the plugin works around or documents, checked on torchdeq.

If a torchdeq release changes one of these, its test fails and the README's
"torchdeq's behaviour" section (and perhaps a workaround) needs a look.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from rbpbench_torchdeq import ANDERSON, BROYDEN, ift, phantom
from rbpbench_torchdeq.layout import FlatMap, default_tolerance, to_flat
from torchdeq.solver import get_solver
from torchdeq_helpers import problem, relative_residual, two_part_state_problem, with_forward

from rbpbench import state as S

F64_TOL = default_tolerance(torch.float64)


def test_torchdeq_runs_on_this_torch_without_a_warning() -> None:
    """Every torchdeq code path the plugin uses, with warnings as errors (torch 2.14: none)."""
    p = problem(0.9, steps=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for spec in (ANDERSON, BROYDEN):
            for q in (p, two_part_state_problem(steps=30)):
                spec.solve(q.step, S.detach(q.initial_state), num_steps=10)
        for solver in ("fixed_point_iter", "anderson", "broyden"):
            ift(with_forward(p, BROYDEN), 20, solver=solver)
            ift(p, 20, solver=solver, diagnostics=False)
        phantom(p, 5, tau=0.5)
        ift(problem(0.9, steps=60, dtype=torch.float32), 20, solver="broyden")


def test_broydens_lack_of_progress_rule_stops_it_below_three_times_tol() -> None:
    """torchdeq 0.1.0 compares residuals across the batch, not across iterations, so with one
    batch element Broyden stops after 30 iterations once its residual is below 3 * tol. The
    plugin passes tol / 3 (rbpbench_torchdeq.layout.BROYDEN_PROGRESS_FACTOR)."""
    p = problem(0.99, steps=10)
    f = FlatMap(p.step, S.detach(p.initial_state))
    tol = 1e-12
    with torch.no_grad():
        _, _, info = get_solver("broyden")(
            f, to_flat(S.detach(p.initial_state)), max_iter=1000, tol=tol, stop_mode="rel"
        )
    reached = float(info["rel_lowest"][0])
    assert tol < reached < 3 * tol and f.calls > 31
    solution = BROYDEN.solve(p.step, S.detach(p.initial_state), num_steps=9, tol=tol)
    assert relative_residual(p, solution.state) <= tol


def test_andersons_absolute_regulariser_stalls_it_at_tight_tolerances() -> None:
    """torchdeq's lam = 1e-4 is added to the Gram matrix of residuals whose squares fall far
    below it: at 1.8e-12 Anderson then needs more evaluations than plain iteration (measured
    459 against 160 at spectral norm 0.9), and does not converge in 1000 at 0.99. Hence lam 0."""
    p = problem(0.9, steps=10)
    h0 = S.detach(p.initial_state)
    stalled = ANDERSON.solve(p.step, h0, num_steps=9, lam=1e-4)
    fast = ANDERSON.solve(p.step, h0, num_steps=9)
    assert stalled.iterations > 2.5 * fast.iterations
    assert relative_residual(p, fast.state) <= F64_TOL


def test_anderson_below_three_iterations_returns_its_initial_guess() -> None:
    """torchdeq's Anderson spends two evaluations before its first mixing step and returns its
    starting point until then: as a backward solver with K <= 2, z = 0 and only the direct
    partials remain (none on contractive-rnn)."""
    p = problem(0.9, steps=60)
    result = ift(p, 2, solver="anderson")
    assert result.backward_iterations == 2
    assert all(not bool(g.any()) for g in result.grads_f)
    assert any(bool(g.any()) for g in ift(p, 3, solver="anderson").grads_f)


@pytest.mark.parametrize("name", ["anderson", "broyden", "fixed_point_iter"])
def test_torchdeqs_solvers_return_a_detached_iterate(name: str) -> None:
    """Why the forward specs declare differentiable=False (BPTT cannot go through them)."""
    p = problem(0.9, steps=10)
    f = FlatMap(p.step, S.detach(p.initial_state))
    with torch.enable_grad():
        z, _, _ = get_solver(name)(f, to_flat(S.detach(p.initial_state)), max_iter=20)
    assert f.first is not None and f.first.requires_grad  # F itself was recorded
    assert not z.requires_grad
