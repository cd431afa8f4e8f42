"""The plugin registers through its entry point, and rbpbench runs its methods."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rbpbench.plugins import load_registry

METHODS = ("torchdeq-ift", "torchdeq-phantom")
FORWARDS = ("torchdeq-anderson", "torchdeq-broyden")


def test_the_plugin_registers_through_its_entry_point() -> None:
    registry = load_registry(warn=False)
    for name in METHODS:
        spec, origin = registry.methods[name]
        assert origin.distribution == "rbpbench-torchdeq" and origin.plugin == "torchdeq"
        assert not spec.unrolls
    for name in FORWARDS:
        forward, origin = registry.forwards[name]
        assert origin.distribution == "rbpbench-torchdeq" and origin.plugin == "torchdeq"
        assert not forward.differentiable
    assert set(registry.hooks["torchdeq"]) == {"rbpbench_methods", "rbpbench_forward_solvers"}
    assert registry.method("torchdeq-ift").defaults == {
        "solver": "fixed_point_iter",
        "tol": 1e-10,
        "stop_mode": "rel",
        "m": 6,
        "lam": 0.0,
    }
    assert registry.method("torchdeq-phantom").defaults == {"tau": 1.0}


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
        assert "rbpbench-torchdeq 0.1.0" in line
    plugins = rbpbench("plugins", cwd=tmp_path)
    assert plugins.returncode == 0, plugins.stderr
    line = next(row for row in plugins.stdout.splitlines() if row.startswith("torchdeq "))
    assert "rbpbench-torchdeq 0.1.0" in line and "loaded" in line
    out = tmp_path / "run"
    run = rbpbench(
        "run", "--tasks", "contractive-rnn", "--methods", "torchdeq-ift,torchdeq-phantom",
        "--truncation", "5,200", "--seeds", "0", "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    frame = pd.read_parquet(out / "results.parquet")
    assert set(frame.status) == {"ok"} and len(frame) == 4
    assert set(frame.method_distribution) == {"rbpbench-torchdeq 0.1.0"}
    at = frame.set_index(["method", "truncation"])
    assert at.loc[("torchdeq-ift", 200), "grad_rel_error_exact"] < 1e-6
    assert at.loc[("torchdeq-ift", 5), "grad_rel_error_exact"] > 1e-3
    assert at.loc[("torchdeq-phantom", 5), "grad_rel_error_exact"] > 1e-3
