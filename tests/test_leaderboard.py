"""The leaderboard of a hand-made results table: aggregates, intervals, failures, best, ratios."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest

from rbpbench import leaderboard
from rbpbench.cli import main
from rbpbench.results import ResultsFolder
from tests.tables import frame, row

T_975_2DF = 4.302652729749462


def table() -> pd.DataFrame:
    """Three seeds of bptt and neumann-rbp at K=5 and K=10 on a task with an exact gradient.

    neumann-rbp at K=5 seed 2 failed (an error row without figures).
    """
    rows = []
    for seed in range(3):
        for k in (5, 10):
            rows.append(
                row(
                    "contractive-rnn", "bptt", k, seed,
                    grad_rel_error=0.0, grad_rel_error_exact=1e-6 * (seed + 1),
                    wall_time_s=0.3, peak_memory_bytes=4096 * (seed + 1),
                )
            )  # fmt: skip
            if k == 5 and seed == 2:
                rows.append(
                    row("contractive-rnn", "neumann-rbp", k, seed, status="error", error="boom")
                )
                continue
            rows.append(
                row(
                    "contractive-rnn", "neumann-rbp", k, seed,
                    grad_rel_error=0.1 * (seed + 1) / k, grad_rel_error_exact=0.1 * (seed + 1) / k,
                    wall_time_s=0.1, peak_memory_bytes=1024 * (seed + 1),
                )
            )  # fmt: skip
    return frame(rows)


def by_key(board: list[leaderboard.Group], key: str) -> leaderboard.Table:
    (group,) = board
    return next(t for t in group.tables if t.metric.key == key)


def test_means_and_intervals_over_seeds() -> None:
    board = leaderboard.build(table())
    exact = by_key(board, "grad_error_exact")
    agg = exact.cells[("neumann-rbp", 10)]
    # values 0.01, 0.02, 0.03: mean 0.02, sd 0.01, t interval with 2 degrees of freedom
    assert agg.mean == pytest.approx(0.02)
    assert agg.half_width == pytest.approx(T_975_2DF * 0.01 / math.sqrt(3))
    assert leaderboard.figure(agg, exact) == "2.00e-02 ± 2.48e-02"
    memory = by_key(board, "peak_memory")
    assert memory.title == "peak memory of one gradient (KiB)"
    assert memory.cells[("bptt", 5)].mean == pytest.approx(8.0)


def test_failed_cells_are_counted_never_dropped() -> None:
    board = leaderboard.build(table())
    (group,) = board
    assert leaderboard.cell_count(group.counts[("neumann-rbp", 5)]) == "3 (1 error)"
    exact = by_key(board, "grad_error_exact")
    agg = exact.cells[("neumann-rbp", 5)]
    assert (agg.n, agg.cells) == (2, 3)
    assert leaderboard.figure(agg, exact).endswith("(2 of 3)")
    text = leaderboard.render(table())
    assert "3 (1 error)" in text and "(2 of 3)" in text


def test_a_failed_cell_counts_as_a_failed_trial_in_the_success_rate() -> None:
    rows = [row("hop", "rbp", 10, s, success=True, train_loss_final=1.0) for s in range(2)]
    rows.append(row("hop", "rbp", 10, 2, status="timeout", error="too slow"))
    rows += [row("hop", "bptt", 10, s, success=True, train_loss_final=0.5) for s in range(3)]
    board = leaderboard.build(frame(rows))
    rate = by_key(board, "success")
    agg = rate.cells[("rbp", 10)]
    assert agg.mean == pytest.approx(2 / 3) and agg.cells == 3
    assert leaderboard.figure(agg, rate) == "67% [21, 94] of 3"
    assert rate.best == {("bptt", 10)}


def test_the_best_of_each_column_is_marked_bptt_not_competing_against_itself() -> None:
    board = leaderboard.build(table())
    assert by_key(board, "grad_error_exact").best == {("bptt", 5), ("bptt", 10)}
    # against BPTT, BPTT is the reference: the best of the others is marked
    assert by_key(board, "grad_error").best == {("neumann-rbp", 5), ("neumann-rbp", 10)}
    assert by_key(board, "wall_time").best == {("neumann-rbp", 5), ("neumann-rbp", 10)}
    markdown = leaderboard.render(table(), "markdown")
    assert "| neumann-rbp | **" in markdown
    html = leaderboard.render(table(), "html")
    assert html.startswith("<!DOCTYPE html>") and '<strong class="best">' in html


def test_ratios_to_bptt_are_bptt_cost_over_the_method_s_per_seed() -> None:
    board = leaderboard.build(table())
    time = by_key(board, "time_ratio")
    assert time.cells[("neumann-rbp", 10)].mean == pytest.approx(3.0)
    assert time.cells[("bptt", 10)].mean == pytest.approx(1.0)
    memory = by_key(board, "memory_ratio")
    assert memory.cells[("neumann-rbp", 10)].mean == pytest.approx(4.0)
    assert memory.cells[("neumann-rbp", 5)].n == 2


def test_a_group_without_bptt_says_why_it_has_no_ratios() -> None:
    rows = [row("hyperopt", "neumann-rbp", 10, 0, wall_time_s=1.0, peak_memory_bytes=10)]
    text = leaderboard.render(frame(rows), "text")
    assert "no bptt cells in this group, so no cost ratios to bptt" in text
    assert "time ratio" not in text
    assert "no bptt cells" not in leaderboard.render(table(), "text")


def test_a_task_shows_only_the_metrics_its_rows_fill() -> None:
    keys = {t.metric.key for t in leaderboard.build(table())[0].tables}
    assert "success" not in keys and "test_accuracy" not in keys
    assert {"grad_error_exact", "grad_error", "wall_time", "peak_memory"} <= keys
    rows = [
        row("cora", m, 10, s, val_accuracy=0.5 + 0.01 * s, test_accuracy=0.4 + 0.01 * s,
            success=None, train_loss_final=1.0)
        for m in ("bptt", "neumann-rbp") for s in range(3)
    ]  # fmt: skip
    board = leaderboard.build(frame(rows))
    accuracy = by_key(board, "test_accuracy")
    assert accuracy.title == "test accuracy (%)"
    assert accuracy.cells[("bptt", 10)].mean == pytest.approx(41.0)  # fractions shown as percent


def test_settings_that_vary_within_a_task_split_it() -> None:
    rows = [
        row("hyperopt", "bptt", 10, 0, wall_time_s=1.0, task_params={"steps": steps})
        for steps in (100, 1000)
    ]
    labels = [g.label for g in leaderboard.build(frame(rows))]
    assert labels == ["hyperopt (steps=100)", "hyperopt (steps=1000)"]


def test_csv_holds_the_figures_unformatted() -> None:
    data = pd.read_csv(io.StringIO(leaderboard.render(table(), "csv")))
    pick = data[(data.metric == "grad_error_exact") & (data.method == "neumann-rbp")]
    k10 = pick[pick.truncation == 10].iloc[0]
    assert k10["mean"] == pytest.approx(0.02) and k10.n == 3 and k10.cells == 3
    assert pick[pick.truncation == 5].iloc[0].not_ok == 1


def test_the_cli_prints_the_leaderboard_and_rejects_bad_input(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = ResultsFolder(tmp_path / "r")
    for record in table().astype(object).where(table().notna(), None).to_dict("records"):
        folder.append(record)
    assert main(["leaderboard", str(tmp_path / "r"), "--format", "markdown"]) == 0
    assert "| neumann-rbp |" in capsys.readouterr().out
    assert main(["leaderboard", str(tmp_path / "r"), "--metric", "wall_time,forward_residual"]) == 0
    out = capsys.readouterr().out
    assert "wall time of one gradient" in out and "relative gradient error" not in out
    assert main(["leaderboard", str(tmp_path / "r"), "--metric", "speed"]) == 2
    assert "unknown metric 'speed'; valid: success," in capsys.readouterr().err
    assert main(["leaderboard", str(tmp_path / "nowhere")]) == 2
    assert "holds no results table" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.parquet").write_bytes(b"not parquet")
    assert main(["leaderboard", str(tmp_path / "bad")]) == 2
    assert "results.parquet cannot be read" in capsys.readouterr().err
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "bad" / "results.parquet")
    assert main(["report", str(tmp_path / "bad")]) == 2
    assert "is not an rbpbench results table (no cell_id, task" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "report.html").exists()
