"""``rbpbench compare A B``: cells matched across versions, ratios and differences with their
intervals on hand-made tables of known values, --fail-on-regression's exit codes, and the
comparison in the report."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from scipy import stats

from rbpbench import compare, leaderboard, results
from rbpbench.cli import main
from rbpbench.results import CellOutcome, ResultsFolder
from tests.reports.test_hostile_tables import assert_inert
from tests.tables import frame, row

T = float(stats.t.ppf(0.975, 2))  # three seeds


def cell(method: str, seed: int, *, version: str = "0.1.0", **values: Any) -> dict[str, Any]:
    """A toy cell; B's rows come from another rbpbench version (another cell id)."""
    values.setdefault("wall_time_s", 1.0)
    values.setdefault("peak_memory_bytes", 1000)
    values.setdefault("grad_rel_error", 0.1)
    values.setdefault("grad_rel_error_exact", 0.2)
    out = row("toy", method, 5, seed, task_params={"hidden": 4, "steps": 20}, **values)
    out["rbpbench_version"] = version
    out["cell_id"] += f"-{version}"
    return out


def table_a() -> list[dict[str, Any]]:
    rows = [cell("neumann-rbp", s) for s in range(3)]
    rows[1]["grad_rel_error_exact"] = math.nan  # one seed without the exact figure
    rows += [cell("jfb", s) for s in range(4)]  # seed 3: only in A
    return rows


def table_b() -> list[dict[str, Any]]:
    rows = []
    for seed, d in enumerate((-0.1, 0.0, 0.1)):
        rows.append(
            cell(
                "neumann-rbp", seed, version="0.2.0",
                wall_time_s=2 * math.exp(d), peak_memory_bytes=1000,
                grad_rel_error=0.1 + 0.01 * (seed + 1), grad_rel_error_exact=0.2,
            )
        )  # fmt: skip
    for seed in range(3):
        rows.append(cell("jfb", seed, version="0.2.0", status="error" if seed == 2 else "ok"))
    rows.append(cell("rbp", 0, version="0.2.0"))  # only in B
    for record in rows:  # the same parameters, written another way; a forward named
        record["task_params"] = '{"steps": 20, "hidden": 4}'
        record["forward"], record["forward_params"] = "iterate", "{}"
    return rows


def store(path: Path, rows: list[dict[str, Any]]) -> Path:
    folder = ResultsFolder(path)
    for record in rows:
        folder.append(CellOutcome(record))
    return path


def by_method(comparison: compare.Comparison) -> dict[str, compare.GroupComparison]:
    return {g.method_label: g for g in comparison.groups}


def test_the_same_cells_are_matched_across_versions_and_compared() -> None:
    a = leaderboard.prepared(frame(table_a()))
    b = leaderboard.prepared(frame(table_b()))
    comparison = compare.compare(a, b, "before", "after")
    groups = by_method(comparison)
    assert list(groups) == ["neumann-rbp", "jfb", "rbp"]  # A's order, then B's new ones
    assert (comparison.matched, comparison.only_a, comparison.only_b) == (6, 1, 1)
    assert comparison.header() == (
        "A: before (7 cells); B: after (7 cells); 6 cells in both, 1 only in A, 1 only in B"
    )
    neumann = groups["neumann-rbp"]
    assert neumann.task_label == "toy" and neumann.truncation == 5 and neumann.matched == 3
    half = T * 0.1 / math.sqrt(3)  # the log ratios are ln 2 + (-0.1, 0, 0.1)
    assert neumann.time.mean == pytest.approx(2.0)
    assert neumann.time.low == pytest.approx(2 * math.exp(-half))
    assert neumann.time.high == pytest.approx(2 * math.exp(half))
    assert (neumann.memory.mean, neumann.memory.low, neumann.memory.high) == (1.0, 1.0, 1.0)
    assert neumann.grad_error.mean == pytest.approx(0.02)
    assert neumann.grad_error.half_width == pytest.approx(T * 0.01 / math.sqrt(3))
    assert (neumann.grad_error_exact.n, neumann.grad_error_exact.cells) == (2, 3)
    assert neumann.grad_error_exact.mean == 0.0
    assert not neumann.broke and not neumann.fixed
    jfb = groups["jfb"]
    assert (jfb.matched, jfb.only_a, jfb.only_b) == (3, 1, 0)
    assert [(c.seed, c.status_a, c.status_b) for c in jfb.broke] == [(2, "ok", "error")]
    assert (jfb.time.n, jfb.time.cells) == (2, 3)  # ratios over the cells ok in both
    rbp = groups["rbp"]
    assert (rbp.matched, rbp.only_a, rbp.only_b) == (0, 0, 1) and rbp.time.n == 0
    assert compare.cells(rbp)[6:8] == ["-", "-"]
    assert comparison.warnings() == []


def test_regressions_take_the_interval_s_lower_bound() -> None:
    a = leaderboard.prepared(frame(table_a()))
    b = leaderboard.prepared(frame(table_b()))
    comparison = compare.compare(a, b)
    low = by_method(comparison)["neumann-rbp"].time.low  # 1.56: the ratio is 2
    found = compare.regressions(comparison, 50)
    assert len(found) == 2
    assert found[0].startswith("toy neumann-rbp K=5: time B/A 2 [1.56, 2.56], above 1.5")
    assert found[1] == "toy jfb K=5: 1 cell(s) ok in A are not ok in B (seed 2 error)"
    assert low > 1.5
    # above the lower bound, the ratio's point estimate of 2 is no regression
    assert compare.regressions(comparison, 60) == [found[1]]


def test_one_seed_is_judged_on_its_ratio() -> None:
    a = leaderboard.prepared(frame([cell("jfb", 0)]))
    b = leaderboard.prepared(frame([cell("jfb", 0, wall_time_s=1.3, peak_memory_bytes=2500)]))
    comparison = compare.compare(a, b)
    found = compare.regressions(comparison, 20)
    assert [f.split(": ", 1)[1] for f in found] == [
        "time B/A 1.3, above 1.2 (+20%) (one seed, no interval)",
        "memory B/A 2.5, above 1.2 (+20%) (one seed, no interval)",
    ]
    assert compare.regressions(comparison, 150) == []


def test_labels_name_the_settings_that_vary() -> None:
    rows = [
        row("toy", "rbp", 5, 0, task_params={"steps": s}, method_params=m, wall_time_s=1.0)
        | {"cell_id": f"{s}-{m}"}
        for s in (10, 20)
        for m in ('{"init": "zeros"}', '{"init": "random"}')
    ]
    rows.append(row("toy", "jfb", 5, 0, forward="anderson", forward_params='{"m": 5}'))
    table = leaderboard.prepared(frame(rows))
    comparison = compare.compare(table, table)
    labels = [(g.task_label, g.method_label) for g in comparison.groups]
    assert labels == [
        ("toy (steps=10)", 'rbp [init="zeros"]'),
        ("toy (steps=10)", 'rbp [init="random"]'),
        ("toy (steps=20)", 'rbp [init="zeros"]'),
        ("toy (steps=20)", 'rbp [init="random"]'),
        ("toy (steps=-)", "jfb @ anderson"),
    ]
    assert all(g.time.mean == 1.0 for g in comparison.groups[:4])


def test_rows_repeating_a_cell_are_counted_and_the_last_used() -> None:
    old, new = cell("jfb", 0, wall_time_s=5.0), cell("jfb", 0, version="0.2.0", wall_time_s=2.0)
    comparison = compare.compare(
        leaderboard.prepared(frame([old, new])), leaderboard.prepared(frame([cell("jfb", 0)]))
    )
    assert comparison.repeated == (1, 0) and comparison.groups[0].time.mean == 0.5
    (warning,) = comparison.warnings()
    assert warning.startswith("rbpbench: warning: A: 1 row(s) repeat a cell")


def test_the_command_prints_each_format_and_fails_on_regression(tmp_path: Path, capsys) -> None:
    a, b = store(tmp_path / "a", table_a()), store(tmp_path / "b", table_b())
    assert main(["compare", str(a), str(b)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"A: {a} (7 cells); B: {b} (7 cells)")
    assert "2 [1.56, 2.56]" in captured.out and "+2.00e-02 ± 2.5e-02" in captured.out
    assert "1 (error)" in captured.out
    assert main(["compare", str(a), str(b), "--format", "markdown"]) == 0
    markdown = capsys.readouterr().out
    assert "| task | method | K | cells in both |" in markdown
    assert "| toy | jfb | 5 | 3 | 1 | 0 |" in markdown
    assert main(["compare", str(a), str(b), "--format", "csv"]) == 0
    csv = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert csv.method.tolist() == ["neumann-rbp", "jfb", "rbp"]
    assert csv.time_ratio[0] == pytest.approx(2.0) and csv.ok_to_not_ok.tolist() == [0, 1, 0]
    assert main(["compare", str(a), str(b), "--fail-on-regression", "60"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "rbpbench: regression: toy jfb K=5: 1 cell(s) ok in A are not ok in B (seed 2 error)"
    ]
    fixed = [r | {"status": "ok"} for r in table_b()]
    store(tmp_path / "fixed", fixed)
    assert main(["compare", str(a), str(tmp_path / "fixed"), "--fail-on-regression", "60"]) == 0
    assert main(["compare", str(a), str(tmp_path / "fixed"), "--fail-on-regression", "50"]) == 1
    assert "time B/A 2 [1.56, 2.56], above 1.5" in capsys.readouterr().err
    # the other way round, B is faster: no regression, and jfb's cell is not ok -> ok
    assert main(["compare", str(b), str(a), "--fail-on-regression", "0"]) == 0


def test_nothing_in_common_is_said_and_is_no_failure(tmp_path: Path, capsys) -> None:
    a = store(tmp_path / "a", [cell("jfb", 0)])
    b = store(tmp_path / "b", [cell("rbp", 0)])
    assert main(["compare", str(a), str(b), "--fail-on-regression", "10"]) == 0
    assert capsys.readouterr().err == f"rbpbench: warning: no cell of {a} is also in {b}\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{empty}", "{a}"], "holds no results table"),
        (["{a}", "{missing}"], "holds no results table"),
        (["{a}", ""], "compare takes folders, not ''"),
        (["{a}", "{a}", "--fail-on-regression", "ten"], "--fail-on-regression takes a percentage"),
        (["{a}", "{a}", "--fail-on-regression", "-5"], "--fail-on-regression takes a percentage"),
        (["{a}", "{a}", "--fail-on-regression", "nan"], "--fail-on-regression takes a percentage"),
        (["{a}", "{bad}"], "truncation must be a whole number"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys, args, message) -> None:
    store(tmp_path / "a", [cell("jfb", 0)])
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    frame([cell("jfb", 0)]).astype({"truncation": "float64"}).assign(truncation=2.5).to_parquet(
        tmp_path / "bad" / results.RESULTS_PARQUET
    )
    paths = {k: str(tmp_path / k) for k in ("a", "empty", "missing", "bad")}
    assert main(["compare", *(a.format(**paths) for a in args)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rbpbench: error: ") and message in lines[0]
    assert captured.out == ""


def test_the_report_shows_the_comparison_escaped(tmp_path: Path, capsys) -> None:
    hostile = "<script>alert(1)</script>"
    a = store(tmp_path / "a&<b>", [cell(hostile, s) for s in range(2)])
    b = store(tmp_path / "b", [cell(hostile, s, version="2", wall_time_s=3.0) for s in range(2)])
    assert main(["report", str(b), "--compare", str(a)]) == 0
    page = (b / "report.html").read_text()
    assert_inert(page)
    section = page.split('<h2 id="compare">', 1)[1].split("<h2", 1)[0]
    assert f"Comparison: {b} against {str(a).replace('&', '&amp;').replace('<', '&lt;')}" in (
        section.replace("&gt;", ">")
    )
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section and "<script" not in section
    assert "<td>3 [3, 3]</td>" in section  # the time ratio of 3 over both seeds
    assert main(["report", str(b)]) == 0
    assert 'id="compare"' not in (b / "report.html").read_text()  # without --compare, none
    assert main(["report", str(b), "--compare", str(tmp_path / "none")]) == 2
    assert "holds no results table" in capsys.readouterr().err
