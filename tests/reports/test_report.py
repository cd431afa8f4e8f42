"""``rbpbench report``: its files from a hand-made table with curves, and from a small real run,
loaded in headless Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from rbpbench import curves, leaderboard
from rbpbench.reports import paper, report
from rbpbench.results import CellOutcome, ResultsFolder
from tests.helpers import run_cli
from tests.reports.browser import Browser, chromium
from tests.tables import frame, row

TABLE1 = {"batch": 1, "epochs": 10, "lr": 0.001, "hidden": 1024}


def store(folder: Path, rows: list[dict[str, object]]) -> None:
    """Rows with their curves under curves_key(), stored as a sweep stores cells' outcomes."""
    results = ResultsFolder(folder)
    for record in rows:
        curves = record.pop(curves_key(), None)
        results.append(CellOutcome(record, curves))  # type: ignore[arg-type]
    results.compact()  # as a sweep does when it ends


def images(page: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page.read_text())


def test_curves_are_read_by_the_convention() -> None:
    names = {"train_loss", "meta_loss", "probe_epoch", "probe_grad_rel_error", "retrieved"}
    names |= {"image_digits", "raw_state"}
    series = {s.name: s for s in curves.series_of(names)}
    assert set(series) == {"train_loss", "meta_loss", "probe_grad_rel_error"}
    assert series["probe_grad_rel_error"].x_curve == "probe_epoch"
    assert series["probe_grad_rel_error"].x_label == "epoch"
    assert series["meta_loss"].x_curve is None and series["meta_loss"].x_label == "meta step"
    assert curves.Series("new_curve").label == "new curve"
    citation = {s.name: s for s in curves.series_of({"train_loss", "eval_epoch", "val_accuracy"})}
    assert citation["val_accuracy"].x_curve == "eval_epoch" and "eval_epoch" not in citation
    assert citation["train_loss"].x_curve is None
    hyperopt = {s.name: s for s in curves.series_of({"meta_loss", "probe_meta_step", "probe_x2"})}
    assert hyperopt["probe_x2"].x_label == "meta step" and hyperopt["meta_loss"].x_curve is None


def test_a_report_draws_every_curve_of_a_new_task(tmp_path: Path) -> None:
    rows = []
    for method, scale in (("bptt", 1.0), ("neumann-rbp", 1.1), ("rbp", 3.0)):
        for seed in range(2):
            record = row(
                "toy", method, 10, seed, grad_rel_error=0.0 if method == "bptt" else 0.1 * scale,
                wall_time_s=0.2 / scale, peak_memory_bytes=int(2**20 / scale),
                success=method != "rbp", train_loss_final=0.5 * scale,
            )  # fmt: skip
            record[curves_key()] = {
                "meta_loss": [scale * 2.0**-i for i in range(8)],
                "probe_epoch": [0.0, 4.0, 7.0],
                "probe_grad_rel_error": [0.0, 0.01 * scale, 0.02 * scale],
                "image_pixels": [0.0, 1.0] * 50,
            }
            rows.append(record)
    rows.append(row("toy", "rbp", 10, 2, status="crashed", error="worker died\nlast frame"))
    store(tmp_path, rows)
    page = report.write(tmp_path)
    assert page == tmp_path / "report.html"
    sources = images(page)
    names = {Path(s).name for s in sources}
    assert {
        "toy-gradient-error.png", "toy-tradeoff.png",
        "toy-curve-meta-loss.png", "toy-curve-probe-grad-rel-error.png",
    } == names  # fmt: skip
    for source in sources:
        png = (tmp_path / source).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 2000
    text = page.read_text()
    assert "crashed" in text and "worker died" in text and "last frame" not in text
    assert "http://" not in text and "https://" not in text and "<script" not in text


def test_a_report_deletes_only_the_figures_an_earlier_report_wrote(tmp_path: Path) -> None:
    rows = [row("toy", m, 10, s, grad_rel_error=0.1, wall_time_s=0.1) for m in ("bptt", "rbp")
            for s in range(2)]  # fmt: skip
    rows[0][curves_key()] = {"meta_loss": [1.0, 0.5, 0.25]}
    store(tmp_path, rows)
    report.write(tmp_path)
    figures = tmp_path / "report"
    listed = json.loads((figures / report.MANIFEST).read_text())["figures"]
    assert "toy-curve-meta-loss.png" in listed and "toy-tradeoff.png" in listed
    (figures / "mine.png").write_bytes(b"a user's own figure")
    (figures / "notes.txt").write_text("and notes")
    for curve in (tmp_path / "curves").iterdir():
        curve.unlink()
    report.write(tmp_path)
    assert not (figures / "toy-curve-meta-loss.png").exists()
    assert (figures / "toy-tradeoff.png").exists()
    assert (figures / "mine.png").read_bytes() == b"a user's own figure"
    assert (figures / "notes.txt").exists()
    listed = json.loads((figures / report.MANIFEST).read_text())["figures"]
    assert "toy-curve-meta-loss.png" not in listed and "mine.png" not in listed
    # a manifest that is not one, or names a path outside report/, deletes nothing
    (figures / report.MANIFEST).write_text(json.dumps({"figures": ["../results.parquet"]}))
    report.write(tmp_path)
    (figures / "m").write_text("a file named like a letter of the manifest's list")
    (figures / report.MANIFEST).write_text(json.dumps({"figures": "mine.png"}))
    report.write(tmp_path)
    (figures / report.MANIFEST).write_text("not json")
    report.write(tmp_path)
    assert (tmp_path / "results.parquet").exists() and (figures / "mine.png").exists()
    assert (figures / "m").exists()


def curves_key() -> str:
    """Where these tests' rows carry their curves until they are stored beside the row."""
    return "_curves"


def test_the_paper_s_figures_come_beside_cells_run_with_its_preset() -> None:
    rows = [
        row("hopfield", m, k, s, success=(m != "rbp" or k == 30), task_params=TABLE1)
        for m in ("tbptt", "rbp", "bptt") for k in (10, 30) for s in range(2)
    ]  # fmt: skip
    (table1,) = paper.compare(frame(rows))
    assert table1.suite == "paper-table1"
    found = {(r.figure.method, r.truncation): r for r in table1.rows}
    assert set(found) == {("tbptt", 10), ("tbptt", 30), ("rbp", 10), ("rbp", 30)}
    assert found[("rbp", 10)].figure.value == 1 and found[("rbp", 10)].difference == -1
    assert found[("rbp", 30)].difference == pytest.approx(1)  # 100% measured, 99% published
    assert "| hopfield | rbp | 10 | success | 0% [0, 66] of 2 | 1 | -1.00 |" in paper.markdown(
        [table1]
    )
    # a setting the preset leaves free and the cells vary splits the comparison
    split = [
        row("hopfield", "rbp", 10, 0, success=False, task_params={**TABLE1, "source": source})
        for source in ("auto", "mnist")
    ]
    (table,) = paper.compare(frame(split))
    assert [r.group for r in table.rows] == ["hopfield (source=auto)", "hopfield (source=mnist)"]
    # the same task at other settings (the quick suite's) is not the paper's experiment
    quick = [row("hopfield", "rbp", 10, 0, success=False, task_params={"epochs": 2, "batch": 10})]
    assert paper.compare(frame(quick)) == []


def test_table_2_s_baseline_is_read_once_per_seed_from_the_cells_extra_metrics() -> None:
    cora = {"hidden": 64, "steps": 100, "epochs": 2000, "lr": 0.001, "momentum": 0.9}
    cora |= {"weight_decay": 0.0005, "eval_every": 20}
    rows = [
        row("cora", method, 5, seed, test_accuracy=0.40 + 0.10 * seed, train_loss_final=1.0,
            extra_metrics=json.dumps({"baseline_test_accuracy": 0.30 + 0.04 * seed}),
            task_params=cora)
        for method in ("tbptt", "neumann-rbp") for seed in range(2)
    ]  # fmt: skip
    (table2,) = paper.compare(frame(rows))
    found = {r.figure.method: r for r in table2.rows}
    assert set(found) == {"baseline", "tbptt", "neumann-rbp"}
    assert found["baseline"].measured.n == 2 and found["baseline"].measured.mean == pytest.approx(
        32
    )
    assert found["baseline"].difference == pytest.approx(32 - 39.96)
    assert found["neumann-rbp"].measured.mean == pytest.approx(45)
    assert found["neumann-rbp"].text.startswith("45.00 ± ")


def test_the_data_file_holds_tables_1_to_3() -> None:
    figures = paper.figures()
    assert {f.table for f in figures} == {"table1", "table2", "table3"}
    cora = {f.method: (f.value, f.spread) for f in figures if f.task == "cora"}
    assert cora["neumann-rbp"] == (46.63, 8.3) and cora["baseline"] == (39.96, 3.4)
    table3 = {(f.metric, f.truncation): f.value for f in figures if f.table == "table3"}
    assert table3[("time_ratio", 100)] == 2.68 and table3[("memory_ratio", 10)] == 4.35


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real sweeps into one folder: contractive-rnn (three methods, two K, two seeds),
    then a tiny hopfield (bptt and neumann-rbp, one seed: its cells are the slow ones)."""
    out = tmp_path_factory.mktemp("report") / "run"
    contractive = ["--tasks", "contractive-rnn", "--methods", "bptt,rbp,neumann-rbp"]
    contractive += ["--truncation", "5,10", "--seeds", "0-1", "--task-param", "steps=60"]
    hopfield = ["--tasks", "hopfield", "--methods", "bptt,neumann-rbp", "--truncation", "5"]
    hopfield += ["--seeds", "0"]
    for key, value in (("epochs", 2), ("batch", 10), ("hidden", 32), ("steps", 20)):
        hopfield += ["--task-param", f"{key}={value}"]
    for sweep in (contractive, hopfield):
        result = run_cli("run", *sweep, "--jobs", "2", "--out", str(out))
        assert result.returncode == 0, result.stderr
    result = run_cli("report", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow
def test_a_report_from_a_small_real_run_produces_its_files(small_run: Path) -> None:
    page = small_run / "report.html"
    names = {Path(s).name for s in images(page)}
    assert {
        "contractive-rnn-gradient-error.png", "contractive-rnn-tradeoff.png",
        "hopfield-gradient-error.png", "hopfield-tradeoff.png", "hopfield-retrievals.png",
        "hopfield-curve-train-loss.png", "hopfield-curve-difference-norm.png",
    } <= names  # fmt: skip
    assert all((small_run / "report" / n).stat().st_size > 2000 for n in names)
    frame = pd.read_parquet(small_run / "results.parquet")
    assert len(frame) == 3 * 2 * 2 + 2


@pytest.mark.slow
@pytest.mark.skipif(
    chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
def test_the_report_loads_in_headless_chromium_without_errors(small_run: Path) -> None:
    with Browser(str(chromium())) as browser:
        # the checker itself: a page with a missing image and a console error is caught
        bad = small_run / "bad.html"
        bad.write_text('<img src="nothing.png"><script>console.error("boom")</script>')
        caught = browser.load(bad.as_uri())
        assert caught.broken_images == ["nothing.png"] and any("boom" in e for e in caught.errors)
        loaded = browser.load((small_run / "report.html").as_uri())
    assert loaded.errors == []
    assert len(loaded.images) >= 7 and loaded.broken_images == []


def test_the_report_summarises_convergence_and_marks_the_figures(tmp_path: Path) -> None:
    from tests.test_leaderboard import checked, unconverged_table, with_convergence

    extra = [
        checked("other", m, 10, s, True, grad_rel_error=0.1, wall_time_s=0.1)
        for m in ("bptt", "cg-rbp") for s in range(2)
    ]  # fmt: skip
    extra += [
        row(
            "hyperopt",
            m,
            10,
            0,
            wall_time_s=0.1,
            forward_converged=None,
            forward_tolerance=None,
            forward_relative_residual=0.02,
        )
        for m in ("bptt", "neumann-rbp")
    ]
    records = unconverged_table().astype(object).where(unconverged_table().notna(), None)
    data = with_convergence([*records.to_dict("records"), *extra])
    data.to_parquet(tmp_path / "results.parquet", index=False)
    text = report.write(tmp_path).read_text()
    summary = text.split("<ul>")[1].split("</ul>")[0]
    assert (
        "<li>toy: 3 of 11 cells: forward did not converge (relative residual above tolerance "
        "3.4e-04); adjoint converged in 2 of 5 cells that solve one</li>"
    ) in summary
    assert (
        "<li>other: forward converged in all 4 cells checked; adjoint converged in 2 of 2"
        in summary
    )
    assert f"<li>hyperopt: {leaderboard.NOT_CHECKED}</li>" in summary
    assert "†2" in text and leaderboard.UNCONVERGED_LEGEND in text
