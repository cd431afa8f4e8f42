"""Problem.adjoint_steps: the maps the RBP family may linearise instead of the last step."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rbpbench.methods.implicit import cg_rbp, neumann_rbp, rbp
from rbpbench.methods.unrolled import bptt, tbptt
from tests.conftest import contractive_problem


@pytest.mark.parametrize("method", [rbp, cg_rbp, neumann_rbp], ids=lambda m: m.__name__)
def test_naming_the_last_step_changes_nothing(method) -> None:
    problem = contractive_problem(steps=60, hidden=16)
    assert problem.adjoint_steps == ()  # existing tasks name none
    last = dataclasses.replace(
        problem, adjoint_steps=(lambda h: problem.step(h, problem.num_steps - 1),)
    )
    a, b = method(problem, 7), method(last, 7)
    assert a.loss == b.loss and a.backward_iterations == b.backward_iterations
    assert a.forward_residual == pytest.approx(b.forward_residual)
    assert a.backward_residual == pytest.approx(b.backward_residual, rel=1e-6, abs=1e-12)
    for x, y in zip(a.grads_f + a.grads_g, b.grads_f + b.grads_g, strict=True):
        torch.testing.assert_close(x, y)


def test_several_maps_average_their_gradients_and_unrolled_methods_ignore_them() -> None:
    problem = contractive_problem(steps=60, hidden=16)
    last = problem.num_steps - 1

    def halved(h):
        return 0.5 * problem.step(h, last)

    maps = [(lambda h: problem.step(h, last)), halved]
    singles = [neumann_rbp(dataclasses.replace(problem, adjoint_steps=(m,)), 5) for m in maps]
    both = neumann_rbp(dataclasses.replace(problem, adjoint_steps=tuple(maps)), 5)
    for i, g in enumerate(both.grads_f):
        torch.testing.assert_close(g, (singles[0].grads_f[i] + singles[1].grads_f[i]) / 2)
    for method in (bptt, tbptt):
        plain = method(problem, 5).grads_f
        named = method(dataclasses.replace(problem, adjoint_steps=(halved,)), 5).grads_f
        for x, y in zip(plain, named, strict=True):
            torch.testing.assert_close(x, y)
