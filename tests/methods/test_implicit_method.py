"""implicit_method: a method of the RBP family from an adjoint solver, with explicit parameters."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import pytest
import torch

from rbpbench import (
    AdjointSolution,
    LinearisedStep,
    MethodSpec,
    State,
    adjoint,
    implicit_gradient,
    implicit_method,
)
from rbpbench import state as S
from rbpbench.config import accepted_params, param_defaults
from rbpbench.measure import relative_error
from rbpbench.methods.implicit import cg_rbp, neumann_rbp, rbp, uniform_start
from rbpbench.methods.unrolled import bptt, tbptt
from tests.conftest import contractive_problem


def same(a: Any, b: Any) -> bool:
    """Identical gradients and diagnostics."""
    grads = zip(a.grads_f + a.grads_g, b.grads_f + b.grads_g, strict=True)
    fields = ("loss", "forward_residual", "backward_iterations", "backward_residual")
    return all(torch.equal(x, y) for x, y in grads) and all(
        getattr(a, f) == getattr(b, f) for f in fields
    )


def test_the_built_in_methods_compute_what_their_solvers_give() -> None:
    """Bit for bit what implicit_gradient gives with the solver called by hand, as before."""
    problem = contractive_problem(seed=3, spectral_norm=0.9, steps=80)

    def by_hand(solve: Any) -> Any:
        return implicit_gradient(problem, solve, diagnostics=True)

    def fixed(step: LinearisedStep, g: State) -> AdjointSolution:
        z0 = uniform_start(g, problem.seed)
        return adjoint.fixed_point(step, g, max_iter=7, tol=1e-8, init=z0)

    assert same(rbp(problem, 7), by_hand(fixed))
    assert same(
        rbp(problem, 7, init="zeros", tol=0.0),
        by_hand(lambda step, g: adjoint.fixed_point(step, g, max_iter=7, tol=0.0)),
    )
    assert same(
        cg_rbp(problem, 7, damping=1e-5),
        by_hand(
            lambda step, g: adjoint.cg_normal_equations(
                step, g, max_iter=7, tol=1e-10, damping=1e-5
            )
        ),
    )
    assert same(neumann_rbp(problem, 7), by_hand(lambda s, g: adjoint.neumann(s, g, max_iter=7)))


def test_an_unknown_parameter_is_refused_with_the_valid_ones() -> None:
    problem = contractive_problem(steps=5)
    with pytest.raises(TypeError, match=r"^rbp has no parameter tolerance; valid: init, tol$"):
        rbp(problem, 3, tolerance=1e-3)
    with pytest.raises(TypeError, match=r"^neumann-rbp has no parameter tol; valid: \(none\)$"):
        neumann_rbp(problem, 3, tol=1e-3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'tol'"):
        bptt(problem, 3, tol=1e-3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'init'"):
        tbptt(problem, 3, init="zeros")  # type: ignore[call-arg]


def test_the_parameters_are_reported_as_keyword_only_arguments() -> None:
    assert str(inspect.signature(rbp)) == (
        "(problem, truncation, *, diagnostics=True, init='uniform', tol=1e-08) -> 'GradientResult'"
    )
    assert rbp.__name__ == "rbp" and cg_rbp.__name__ == "cg_rbp"
    for compute, defaults in (
        (rbp, {"init": "uniform", "tol": 1e-8}),
        (cg_rbp, {"tol": 1e-10, "damping": 0.0}),
        (neumann_rbp, {}),
        (bptt, {}),
        (tbptt, {}),
    ):
        assert accepted_params(compute, {}) == set(defaults)
        assert param_defaults(compute, {}) == defaults


def relaxed(
    op: LinearisedStep, g: State, *, max_iter: int, omega: float, tol: float
) -> AdjointSolution:
    z = S.zeros_like(g)
    for i in range(1, max_iter + 1):
        residual = S.sub(S.add(op.vjp(z), g), z)
        z = S.add(z, residual, omega)
        if float(S.norm(residual)) <= tol * float(S.norm(g)):
            return AdjointSolution(z, i)
    return AdjointSolution(z, max_iter)


def test_a_solver_is_a_method() -> None:
    seen: list[tuple[int, dict[str, Any]]] = []

    def check(truncation: int, params: Mapping[str, Any]) -> None:
        seen.append((truncation, dict(params)))
        if not 0 < params["omega"] < 2:
            raise ValueError(f"omega must be in (0, 2), not {params['omega']}")

    spec = implicit_method(
        relaxed, name="relaxed-rbp", summary="relaxed", defaults={"omega": 1.0, "tol": 0.0},
        check=check,
    )  # fmt: skip
    assert isinstance(spec, MethodSpec) and not spec.unrolls
    assert spec.defaults == {"omega": 1.0, "tol": 0.0}
    problem = contractive_problem(seed=2, spectral_norm=0.8, steps=60)
    # omega = 1 is the fixed-point iteration from zero (up to rounding: it sums differently)
    ours, original = spec.compute(problem, 9), rbp(problem, 9, init="zeros", tol=0.0)
    assert relative_error(ours.grads_f, original.grads_f) < 1e-12
    assert ours.backward_iterations == original.backward_iterations == 9
    assert seen == [(9, {"omega": 1.0, "tol": 0.0})]
    with pytest.raises(ValueError, match="omega must be in"):
        spec.compute(problem, 9, omega=2.5)


def test_a_solver_that_does_not_take_a_parameter_is_refused_at_once() -> None:
    with pytest.raises(TypeError, match="takes no keyword restart"):
        implicit_method(relaxed, name="x", summary="x", defaults={"omega": 1.0, "restart": 2})
    with pytest.raises(TypeError, match="takes no keyword omega"):
        implicit_method(adjoint.neumann, name="x", summary="x", defaults={"omega": 1.0})
    with pytest.raises(TypeError, match="max_iter is passed by rbpbench"):
        implicit_method(adjoint.neumann, name="x", summary="x", defaults={"max_iter": 3})
    implicit_method(lambda op, g, **kw: kw, name="x", summary="x", defaults={"any": 1})
