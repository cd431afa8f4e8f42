"""The leaderboard of a hand-made results table: aggregates, intervals, failures, best, ratios."""

from __future__ import annotations

import errno
import io
import math
import os
from pathlib import Path

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
    assert "not an rbpbench results table (no cell_id, task" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "report.html").exists()


# ---------------------------------------------------------------- tables from elsewhere


def stored(folder: Path, data: pd.DataFrame) -> Path:
    """``data`` as a results folder, written as it is (no schema applied)."""
    folder.mkdir(parents=True, exist_ok=True)
    data.to_parquet(folder / "results.parquet", index=False)
    return folder


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rbpbench: error: "), err
    return err


def test_optional_columns_may_be_missing(tmp_path: Path, capsys) -> None:
    folder = stored(tmp_path / "r", table().drop(columns=["device", "dtype", "error", "run_id"]))
    assert main(["leaderboard", str(folder)]) == 0
    assert "3 (1 error)" in capsys.readouterr().out
    assert main(["report", str(folder)]) == 0
    assert "Cells not ok" in (folder / "report.html").read_text()


@pytest.mark.parametrize(
    ("value", "shown"), [(2.5, "has 2.5"), ("ten", "has 'ten'"), (None, "truncation is empty")]
)
def test_a_truncation_that_is_not_a_whole_number_is_refused(
    tmp_path: Path, capsys, value: object, shown: str
) -> None:
    data = table()
    column = [str(k) if isinstance(value, str) else k for k in data.truncation.astype(object)]
    column[3] = value
    data["truncation"] = pd.Series(column, dtype="string" if isinstance(value, str) else None)
    folder = stored(tmp_path / "r", data)
    for command in ("leaderboard", "report"):
        assert main([command, str(folder)]) == 2
        assert shown in one_line_error(capsys)
    assert not (folder / "report.html").exists()


def test_whole_numbers_of_another_type_are_read_as_integers(tmp_path: Path, capsys) -> None:
    data = table().astype({"truncation": "float64", "seed": "string"})
    assert main(["leaderboard", str(stored(tmp_path / "r", data)), "--format", "markdown"]) == 0
    assert capsys.readouterr().out == leaderboard.render(table(), "markdown")


def test_a_repeated_cell_id_warns_and_its_last_row_is_kept(tmp_path: Path, capsys) -> None:
    again = table().iloc[[0]].assign(status="timeout", error="slow", grad_rel_error_exact=None)
    folder = stored(tmp_path / "r", pd.concat([table(), again], ignore_index=True))
    assert main(["leaderboard", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "1 cell id(s) have more than one row" in err
    assert "the last row of each is used" in err
    assert "3 (1 timeout)" in out and "12 cells (2 not ok)" in out
    assert len(leaderboard.prepared(pd.read_parquet(folder / "results.parquet"))) == 12


def test_a_report_that_cannot_be_written_is_one_line(tmp_path: Path, capsys) -> None:
    folder = stored(tmp_path / "r", table())
    (folder / "report").write_text("a file where the figures go")
    assert main(["report", str(folder)]) == 2
    assert "report: not a folder" in one_line_error(capsys)


def test_a_report_in_a_folder_it_may_not_write_is_one_line(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rbpbench.reports import report

    folder = stored(tmp_path / "r", table())

    def refused(path: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(report, "_figures_folder", refused)
    assert main(["report", str(folder)]) == 2
    assert "report: Permission denied" in one_line_error(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_report_in_a_read_only_folder_is_one_line(tmp_path: Path, capsys) -> None:
    folder = stored(tmp_path / "r", table())
    folder.chmod(0o555)
    try:
        assert main(["report", str(folder)]) == 2
    finally:
        folder.chmod(0o755)
    assert "Permission denied" in one_line_error(capsys)


# ---------------------------------------------------------------- convergence

CONVERGENCE = {
    "forward_converged": "boolean",
    "forward_tolerance": "float64",
    "forward_relative_residual": "float64",
    "adjoint_converged": "boolean",
    "adjoint_tolerance": "float64",
    "adjoint_relative_residual": "float64",
}


def with_convergence(rows: list[dict[str, object]]) -> pd.DataFrame:
    """A table of ``rows`` with the convergence columns, whatever results.COLUMNS holds."""
    out = frame(rows)
    for column, dtype in CONVERGENCE.items():
        out[column] = pd.Series([r.get(column) for r in rows], index=out.index, dtype=dtype)
    return out


def checked(task: str, method: str, k: int, seed: int, converged: bool, **values: object):
    adjoint = None if method == "bptt" else values.pop("adjoint", k >= 10)
    return row(
        task, method, k, seed, forward_converged=converged, forward_tolerance=3.4e-4,
        forward_relative_residual=1e-5 if converged else 1e-2, adjoint_converged=adjoint,
        adjoint_tolerance=None if adjoint is None else 1e-6, **values,
    )  # fmt: skip


def unconverged_table() -> pd.DataFrame:
    """bptt and neumann-rbp at K=5 and 10, three seeds; the forward did not converge in
    bptt K=5 seed 0 and neumann-rbp K=5 seeds 0 and 1; neumann-rbp K=10 seed 2 failed;
    neumann-rbp's adjoint converged at K=10 only."""
    rows = []
    for method in ("bptt", "neumann-rbp"):
        for k in (5, 10):
            for seed in range(3):
                if (method, k, seed) == ("neumann-rbp", 10, 2):
                    rows.append(row("toy", method, k, seed, status="error", error="boom"))
                    continue
                unconverged = k == 5 and seed < (1 if method == "bptt" else 2)
                rows.append(
                    checked(
                        "toy", method, k, seed, not unconverged,
                        grad_rel_error_exact=0.01 * (seed + 1), wall_time_s=0.1,
                    )
                )  # fmt: skip
    return with_convergence(rows)


def test_unconverged_forwards_are_counted_per_group_and_method() -> None:
    (group,) = leaderboard.build(unconverged_table())
    assert group.unconverged == 3
    assert leaderboard.convergence_note(group) == (
        "3 of 11 cells: forward did not converge (relative residual above tolerance 3.4e-04)"
    )
    text = leaderboard.render(unconverged_table())
    assert "converge" in text
    assert "cells whose forward did not converge, of those checked" in text
    counts = text.split("-- cells whose forward did not converge")[1].split("--")[0]
    assert "2 of 3" in counts and "1 of 3" in counts and "0 of 2" in counts


def test_every_figure_with_an_unconverged_cell_is_marked() -> None:
    board = leaderboard.build(unconverged_table())
    exact = by_key(board, "grad_error_exact")
    assert exact.unconverged == {("bptt", 5): 1, ("neumann-rbp", 5): 2}
    assert by_key(board, "wall_time").unconverged == exact.unconverged
    text = leaderboard.render(unconverged_table())
    assert leaderboard.UNCONVERGED_LEGEND in text
    assert "†2" in text and "†1" in text
    markdown = leaderboard.render(unconverged_table(), "markdown")
    assert f"{leaderboard.UNCONVERGED_LEGEND}._" in markdown and "†2" in markdown
    assert "3 of 11 cells: forward did not converge" in markdown
    page = leaderboard.render(unconverged_table(), "html")
    assert '<p class="note">3 of 11 cells: forward did not converge' in page


def test_the_share_of_converged_adjoints_is_a_metric_of_the_methods_that_solve_one() -> None:
    board = leaderboard.build(unconverged_table())
    share = by_key(board, "adjoint_converged")
    assert set(share.cells) == {("neumann-rbp", 5), ("neumann-rbp", 10)}
    k5, k10 = share.cells[("neumann-rbp", 5)], share.cells[("neumann-rbp", 10)]
    assert (k5.mean, k5.cells) == (0.0, 3) and (k10.mean, k10.cells) == (1.0, 2)
    assert share.best == set() and share.title.startswith("adjoint converged")
    grid = leaderboard._grid(board[0], share, "{}")
    assert grid.loc["bptt"].tolist() == ["-", "-"]
    assert grid.loc["neumann-rbp", "K=10"] == "100% [34, 100] of 2"
    assert "adjoint converged" not in leaderboard.render(without_convergence(table()))


def test_a_task_that_does_not_check_its_forward_says_so() -> None:
    rows = [
        row("hyperopt", m, 10, s, wall_time_s=1.0, forward_converged=None,
            forward_tolerance=None, adjoint_converged=None, forward_relative_residual=0.02)
        for m in ("bptt", "neumann-rbp") for s in range(2)
    ]  # fmt: skip
    (group,) = leaderboard.build(with_convergence(rows))
    assert leaderboard.convergence_note(group) == leaderboard.NOT_CHECKED
    assert leaderboard.NOT_CHECKED in leaderboard.render(with_convergence(rows))
    assert "forward did not converge" not in leaderboard.render(with_convergence(rows))


def test_rows_written_before_the_convergence_columns_are_not_said_to_be_declared() -> None:
    rows = [row("old", m, 10, s, wall_time_s=1.0) for m in ("bptt", "rbp") for s in range(2)]
    (group,) = leaderboard.build(frame(rows))  # the columns exist (to_frame), all null
    assert leaderboard.convergence_note(group) is None
    assert "converge" not in leaderboard.render(frame(rows))


def test_the_csv_has_the_convergence_counts() -> None:
    data = pd.read_csv(io.StringIO(leaderboard.render(unconverged_table(), "csv")))
    pick = data[(data.metric == "grad_error_exact") & (data.method == "neumann-rbp")]
    k5 = pick[pick.truncation == 5].iloc[0]
    assert (k5.forward_checked, k5.forward_not_converged) == (3, 2)
    assert k5.forward_not_converged_in_figure == 2
    k10 = pick[pick.truncation == 10].iloc[0]
    assert (k10.forward_checked, k10.forward_not_converged) == (2, 0)
    old = leaderboard.render(without_convergence(table()), "csv")
    assert not any(c.startswith("forward") for c in pd.read_csv(io.StringIO(old)).columns)


def without_convergence(data: pd.DataFrame) -> pd.DataFrame:
    """A table as written before the convergence columns existed."""
    return data.drop(columns=[c for c in CONVERGENCE if c in data])


def test_a_table_without_the_columns_or_with_every_forward_converged_renders_as_before() -> None:
    old = without_convergence(table())
    records = old.astype(object).where(old.notna(), None).to_dict("records")
    ok = [r["status"] == "ok" for r in records]
    converged = with_convergence(
        [
            {**r, "forward_converged": True if good else None, "forward_tolerance": 1e-6}
            for r, good in zip(records, ok, strict=True)
        ]
    )
    for fmt in ("text", "markdown", "html"):
        before = leaderboard.render(old, fmt)
        assert "converge" not in before and leaderboard.UNCONVERGED_MARK not in before
        assert leaderboard.render(converged, fmt) == before


def test_a_method_on_another_forward_is_labelled_once_however_often_prepared() -> None:
    rows = [
        row("t", "bptt", 5, 0, forward="iterate", cell_id="a"),
        row("t", "bptt", 5, 0, forward="anderson", cell_id="b"),
    ]
    once = leaderboard.prepared(frame(rows))
    twice = leaderboard.prepared(leaderboard.prepared(frame(rows)))
    assert list(once.method) == list(twice.method) == ["bptt", "bptt @ anderson"]
