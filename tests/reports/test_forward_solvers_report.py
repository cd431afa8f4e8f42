"""The tables of docs/choosing-a-method.md come from a results table, computed, never typed."""

from __future__ import annotations

from pathlib import Path

from rbpbench.reports import forward_solvers
from rbpbench.results import ResultsFolder
from tests.tables import row


def cell(method: str, k: int, seed: int, forward: str, error: float, **values) -> dict:
    params = {"spectral_norm": 0.99, "steps": 100}
    out = row("contractive-rnn", method, k, seed, task_params=params, **values)
    out.update(
        cell_id=f"{out['cell_id']}-{forward}",
        forward=forward,
        grad_rel_error_exact=error,
        backward_vjps=k + 1,
        backward_jvps=0,
        forward_evaluations=100 if forward == "iterate" else 30,
        wall_time_s=0.01 * (seed + 1),
        peak_memory_bytes=2048,
        spectral_radius=0.95,
    )
    return out


def test_the_page_has_one_row_per_forward_method_and_k(tmp_path: Path) -> None:
    folder = ResultsFolder(tmp_path / "r")
    for seed in range(2):
        for forward in ("iterate", "anderson"):
            folder.append(cell("neumann-rbp", 5, seed, forward, 0.1 * (seed + 1)))
            folder.append(cell("neumann-rbp", 20, seed, forward, 0.01))
            folder.append(cell("jfb", 5, seed, forward, 0.9))
            folder.append(cell("jfb", 20, seed, forward, 0.9))  # K-free: shown once
    folder.append(cell("neumann-rbp", 5, 9, "iterate", 0.5, status="error"))  # not ok: left out
    folder.compact()
    assert forward_solvers.main([str(folder.folder)]) == 0
    text = (folder.folder / "choosing-a-method.md").read_text()
    assert "### spectral norm 0.99 (rho(J) = 0.9500)" in text
    assert "| iterate | neumann-rbp | 5 | 2 | 1.50e-01 | 6 | 100 | 15.00 | 2 |" in text
    assert "| anderson | neumann-rbp | 20 | 2 | 1.00e-02 | 21 | 30 |" in text
    assert text.count("| jfb |") == 2  # one per forward, at the smallest K


def test_a_folder_without_results_is_exit_2(tmp_path: Path, capsys) -> None:
    assert forward_solvers.main([str(tmp_path)]) == 2
    assert "holds no rbpbench results" in capsys.readouterr().err
