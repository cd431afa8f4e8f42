"""The Krylov RBP methods on contractive-rnn against its exact gradient, and through rbpbench."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from rbpbench_krylov import bicgstab_rbp, gmres_rbp, lsqr_rbp

from rbpbench import GradientResult, Problem, State
from rbpbench import state as S
from rbpbench.measure import relative_error
from rbpbench.methods.implicit import cg_rbp, neumann_rbp
from rbpbench.methods.unrolled import bptt
from rbpbench.plugins import load_registry
from rbpbench.tasks import contractive

CPU = torch.device("cpu")
METHODS = {"gmres-rbp": gmres_rbp, "bicgstab-rbp": bicgstab_rbp, "lsqr-rbp": lsqr_rbp}


def problem(spectral_norm: float, seed: int = 0) -> Problem:
    steps = math.ceil(math.log(1e-12) / math.log(spectral_norm))
    return contractive.build(
        seed=seed, device=CPU, dtype=torch.float64, spectral_norm=spectral_norm, steps=steps
    )


@pytest.mark.parametrize("spectral_norm", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("name", METHODS)
def test_converges_to_the_exact_gradient(name: str, spectral_norm: float) -> None:
    p = problem(spectral_norm)
    result = METHODS[name](p, 400)
    assert p.exact_gradient is not None
    assert relative_error(result.grads_f, p.exact_gradient()) < 1e-8
    # diagnostics as the built-in RBP methods give them
    assert result.forward_residual < 1e-10
    assert 0 < result.backward_iterations < 400  # stopped on its tolerance
    assert result.backward_residual < 1e-8


@pytest.mark.parametrize("name", METHODS)
def test_diagnostics_match_neumann_rbp_where_they_must(name: str) -> None:
    p = problem(0.9)
    ours, neumann = METHODS[name](p, 5), neumann_rbp(p, 5)
    assert ours.loss == neumann.loss and ours.forward_residual == neumann.forward_residual
    assert all(torch.equal(a, b) for a, b in zip(ours.grads_g, neumann.grads_g, strict=True))
    assert ours.backward_iterations <= 5 and math.isfinite(ours.backward_residual)
    assert math.isnan(METHODS[name](p, 5, diagnostics=False).backward_residual)


def test_lsqr_rbp_equals_cg_rbp_at_equal_k() -> None:
    p = problem(0.9)
    for k in (2, 5, 10, 20):
        assert relative_error(lsqr_rbp(p, k).grads_f, cg_rbp(p, k).grads_f) < 1e-8


def test_gmres_rbp_beats_neumann_rbp_and_cg_rbp_at_equal_products_near_rho_one() -> None:
    """Full GMRES minimises the true residual; CG squares the condition number.

    At K = 60 GMRES-RBP and Neumann-RBP take 60 J^T products, CG-RBP at K = 30
    takes 30 J^T and 30 J products (measured: 1.9e-6, 1.1e-2 and 1.3e-1).
    """
    p = problem(0.99)
    assert p.exact_gradient is not None
    exact = p.exact_gradient()
    gmres = relative_error(gmres_rbp(p, 60, restart=60).grads_f, exact)
    assert gmres < relative_error(neumann_rbp(p, 60).grads_f, exact) / 100
    assert gmres < relative_error(cg_rbp(p, 30).grads_f, exact) / 100


def test_parameters_are_passed_and_checked() -> None:
    p = problem(0.9)
    loose = gmres_rbp(p, 200, tol=1e-3)
    tight = gmres_rbp(p, 200, tol=1e-12)
    assert loose.backward_iterations < tight.backward_iterations
    with pytest.raises(ValueError, match="truncation K must be >= 1"):
        gmres_rbp(p, 0)
    with pytest.raises(ValueError, match="restart"):
        gmres_rbp(p, 5, restart=0)
    with pytest.raises(ValueError, match="tol"):
        lsqr_rbp(p, 5, tol=-1.0)


def two_part_state_problem(steps: int = 400) -> Problem:
    """A coupled two-tensor state, (h, c) <- (tanh(A h + B c + x), tanh(C h + d)), contractive."""
    gen = torch.Generator().manual_seed(3)

    def draw(*shape: int, scale: float) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).requires_grad_()

    a, b, c = draw(6, 6, scale=0.15), draw(6, 4, scale=0.15), draw(4, 6, scale=0.15)
    x, d, v = draw(6, scale=1.0), draw(4, scale=0.5), draw(10, scale=1.0)

    def step(state: State, t: int) -> State:
        h, s = S.as_tuple(state)
        return torch.tanh(a @ h + b @ s + x), torch.tanh(c @ h + d)

    return Problem(
        step=step,
        initial_state=(torch.zeros(6, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)),
        num_steps=steps,
        params_f=(a, b, c, x, d),
        params_g=(v,),
        loss=lambda state: (v @ torch.cat(S.as_tuple(state))) ** 2,
    )


@pytest.mark.parametrize("name", METHODS)
def test_tuple_states_work_and_agree_with_bptt(name: str) -> None:
    p = two_part_state_problem()
    ours: GradientResult = METHODS[name](p, 100)
    reference = bptt(p, 0)
    assert relative_error(ours.grads_f, reference.grads_f) < 1e-9
    assert relative_error(ours.grads_g, reference.grads_g) < 1e-12


def test_the_plugin_registers_through_its_entry_point() -> None:
    registry = load_registry()
    for name in METHODS:
        spec, origin = registry.methods[name]
        assert origin.distribution == "rbpbench-krylov" and origin.plugin == "krylov"
        assert not spec.unrolls
    assert registry.hooks["krylov"] == ("rbpbench_methods",)
    assert registry.method("gmres-rbp").defaults == {"restart": 50, "tol": 1e-10}


def rbpbench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rbpbench", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(os.environ),
        timeout=600,
    )


@pytest.mark.slow
def test_rbpbench_lists_and_runs_the_methods(tmp_path: Path) -> None:
    listing = rbpbench("list", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    for name in METHODS:
        line = next(row for row in listing.stdout.splitlines() if row.split()[:1] == [name])
        assert "rbpbench-krylov 0.1.0" in line
    plugins = rbpbench("plugins", cwd=tmp_path)
    assert plugins.returncode == 0, plugins.stderr
    line = next(row for row in plugins.stdout.splitlines() if row.startswith("krylov "))
    assert "rbpbench-krylov 0.1.0" in line and "loaded" in line and "rbpbench_methods" in line
    assert "gmres-rbp, bicgstab-rbp, lsqr-rbp" in line
    out = tmp_path / "run"
    run = rbpbench(
        "run", "--tasks", "contractive-rnn", "--methods", "gmres-rbp,bicgstab-rbp,lsqr-rbp",
        "--truncation", "5,200", "--seeds", "0", "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    frame = pd.read_parquet(out / "results.parquet")
    assert set(frame.status) == {"ok"} and len(frame) == 6
    assert set(frame.method_distribution) == {"rbpbench-krylov 0.1.0"}
    at = frame.set_index(["method", "truncation"])
    for name in METHODS:
        assert at.loc[(name, 200), "grad_rel_error_exact"] < 1e-6
        assert at.loc[(name, 5), "grad_rel_error_exact"] > 1e-3
        assert at.loc[(name, 200), "backward_residual"] < at.loc[(name, 5), "backward_residual"]
