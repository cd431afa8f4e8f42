"""The quick presets, end to end, as a user runs them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rbpbench.reports import hopfield as hopfield_report
from rbpbench.reports import hyperopt as hyperopt_report
from rbpbench.results import read_curves
from tests.helpers import run_cli

pytestmark = pytest.mark.slow


def test_the_hopfield_quick_preset_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "hopfield"
    # the suite's first trial (its five cells): the second costs as much and tells nothing more
    args = ("run", "--suite", "hopfield-quick", "--seeds", "0", "--jobs", "2", "--out", str(out))
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "success rate" in result.stdout and "retrieval error" in result.stdout
    frame = pd.read_parquet(out / "results.parquet")
    assert len(frame) == 5 and set(frame.status) == {"ok"}
    assert frame.success.notna().all() and (frame.epochs == 2).all()
    assert frame.retrieval_error.between(0, 1).all()
    for cell_id in frame.cell_id:
        curves = read_curves(out, cell_id)
        names = set(curves.curve)
        assert {"train_loss", "step_loss", "difference_norm", "retrieved", "corrupted"} <= names
        assert (curves[curves.curve == "difference_norm"].step.max()) == 49
    # the task's report: Table 1 beside the paper's figures, and the retrievals like Fig. 2
    assert hopfield_report.main([str(out), "--truncation", "10"]) == 0
    table = (out / "hopfield-table1.md").read_text()
    assert "| rbp | 10 | 1 |" in table and "| 1% (0.2% to 5.4%) |" in table  # the paper's K=10
    png = (out / "hopfield-retrievals.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_the_hyperopt_quick_preset_runs_end_to_end(tmp_path: Path, mnist_root: Path) -> None:
    """Needs MNIST's raw files (skipped without them, as the task tests are)."""
    out = tmp_path / "hyperopt"
    args = ["--suite", "quick", "--tasks", "hyperopt", "--seeds", "0", "--truncation", "5"]
    result = run_cli("run", *args, "--out", str(out))
    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(out / "results.parquet")
    assert len(frame) == 5 and set(frame.status) == {"ok"}, frame[["method", "error"]]
    assert (frame.epochs == 2).all() and frame.peak_memory_bytes.gt(0).all()
    for cell_id in frame.cell_id:
        names = set(read_curves(out, cell_id).curve)
        assert {"meta_loss", "inner_train_loss", "probe_grad_rel_error"} <= names
    # the task's report: Table 3's ratios, cost against T, the meta-training table and figures
    assert hyperopt_report.main([str(out)]) == 0
    report = (out / "hyperopt-report.md").read_text()
    assert "| 10 | 0 | full | 5 | x" in report and "| neumann-rbp | 5 | full |" in report
    for name in ("hyperopt-fig4.png", "hyperopt-fig5.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
