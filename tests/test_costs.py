"""The cost columns, counted by the harness: exact on a problem whose counts are worked out by hand.

contractive-rnn with T steps of iterate: every method evaluates F T times
(T - 1 to h*, then the final step), except phantom, which adds its K damped
steps after the T - 1. Backward passes through an evaluation of F:

- neumann-rbp(K): K products J^T v, then (dF/dw)^T z: K + 1; no J v;
- cg-rbp(K) for K iterations that all run: one backward pass that builds the
  graph of J^T u for the double-backward trick, one J^T v per iteration and
  (dF/dw)^T z: K + 2; J v: one for the right-hand side (I - J) g and one per
  iteration: K + 1;
- rbp(K) from z0 = 0 with a tolerance of 0: the first iterate is g itself (no
  product), then K - 1 products, then (dF/dw)^T z: K;
- bptt: T steps back-propagated; tbptt(K): K + 1; jfb: 1; phantom(K): K.
"""

from __future__ import annotations

import torch

from rbpbench import state as S
from rbpbench.costs import Costs, counted
from rbpbench.gradients import grads_or_zeros
from rbpbench.methods.equilibrium import jfb, phantom
from rbpbench.methods.implicit import cg_rbp, neumann_rbp, rbp
from rbpbench.methods.unrolled import bptt, tbptt
from rbpbench.problem import Problem
from tests.conftest import contractive_problem

T, K = 60, 7


def costs_of(method, problem: Problem, truncation: int, **params) -> tuple[Costs, object]:
    copy, costs = counted(problem)
    result = method(copy, truncation, diagnostics=False, **params)
    return costs, result


def test_counts_by_hand() -> None:
    problem = contractive_problem(steps=T)
    expected = {
        "neumann-rbp": (neumann_rbp, {}, Costs(T, K + 1, 0)),
        "cg-rbp": (cg_rbp, {"tol": 0.0}, Costs(T, K + 2, K + 1)),
        "rbp": (rbp, {"init": "zeros", "tol": 0.0}, Costs(T, K, 0)),
        "bptt": (bptt, {}, Costs(T, T, 0)),
        "tbptt": (tbptt, {}, Costs(T, K + 1, 0)),
        "jfb": (jfb, {}, Costs(T, 1, 0)),
        "phantom": (phantom, {}, Costs(T - 1 + K, K, 0)),
    }
    for name, (method, params, want) in expected.items():
        got, _ = costs_of(method, problem, K, **params)
        assert got == want, name


def test_counting_changes_no_number() -> None:
    problem = contractive_problem(steps=T)
    for method in (neumann_rbp, cg_rbp, bptt, tbptt, phantom):
        _, counted_result = costs_of(method, problem, K)
        plain = method(problem, K, diagnostics=False)
        for a, b in zip(counted_result.grads_f, plain.grads_f, strict=True):
            assert torch.equal(a, b)


def test_a_method_with_its_own_autograd_is_charged_too() -> None:
    """A plugin that never touches rbpbench's building blocks: two J^T v and one J v, by hand."""
    problem = contractive_problem(steps=T)
    copy, costs = counted(problem)
    h = copy.initial_state
    with torch.no_grad():
        for t in range(T - 1):
            h = copy.step(h, t)
    x = h.detach().requires_grad_(True)
    with torch.enable_grad():
        y = copy.step(x, T - 1)
        v = torch.ones_like(y)
        (vjp,) = torch.autograd.grad(y, x, v, retain_graph=True)  # 1 VJP
        u = torch.zeros_like(y, requires_grad=True)
        (jt_u,) = torch.autograd.grad(y, x, u, create_graph=True)  # 1 VJP (building J^T u)
        (jv,) = torch.autograd.grad(jt_u, u, v)  # 1 JVP
    assert costs == Costs(T, 2, 1)
    # and the JVP is the true J v
    with torch.enable_grad():
        w = problem.params_f
        f = lambda z: problem.step(z, 0)  # noqa: E731
        _, expected = torch.func.jvp(f, (x.detach(),), (v,))
    assert torch.allclose(jv, expected)
    del vjp, w


def test_tuple_states_count_one_product_per_step() -> None:
    a = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    problem = Problem(
        step=lambda h, t: (a * h[0] + 1, a * h[1] - h[0]),
        initial_state=(torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)),
        num_steps=10,
        params_f=(a,),
        params_g=(),
        loss=lambda h: (h[0] ** 2).sum() + h[1].sum(),
    )
    got, _ = costs_of(bptt, problem, 0)
    assert got == Costs(10, 10, 0)
    got, _ = costs_of(neumann_rbp, problem, 4)
    assert got == Costs(10, 5, 0)
    # the gradient is unchanged by the counting
    plain = bptt(problem, 0)
    counted_result = bptt(counted(problem)[0], 0)
    assert torch.equal(plain.grads_f[0], counted_result.grads_f[0])
    assert S.is_finite(grads_or_zeros((a * 1.0,), (a,)))
