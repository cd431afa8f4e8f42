"""A task's own figures come from its plugin (``TaskSpec.figures``), and typed curves are drawn
as they say; curves written as name -> values, and files written before, still are."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

from rbpbench import curves, hookimpl
from rbpbench.plugins import Registry, load_registry
from rbpbench.problem import Curve, Problem, TaskFigure, TaskSpec
from rbpbench.reports import report
from rbpbench.results import CellOutcome, ResultsFolder
from tests.tables import row


def build(**_: object) -> Problem:
    raise NotImplementedError("the report never builds a problem")


def toy_registry(*figures: TaskFigure) -> Registry:
    class Toy:
        @hookimpl
        def rbpbench_tasks(self) -> list[TaskSpec]:
            return [TaskSpec("toy", build, "a third-party task", figures=figures)]

    return load_registry(extra_plugins=[("toy", Toy())], warn=False)


def store(folder: Path, task: str = "toy", cell_curves: object = None) -> None:
    results = ResultsFolder(folder)
    for method in ("bptt", "rbp"):
        for seed in range(2):
            record = row(task, method, 5, seed, grad_rel_error=0.1 * seed, wall_time_s=0.1)
            results.append(CellOutcome(record, cell_curves))  # type: ignore[arg-type]
    results.compact()  # as a sweep does when it ends


def sources(page: Path) -> set[str]:
    return {Path(s).name for s in re.findall(r'<img src="([^"]+)"', page.read_text())}


def test_a_third_party_task_s_figures_are_drawn_from_its_plugin(tmp_path: Path) -> None:
    seen: list[int] = []

    def draw(folder: Path, rows: pd.DataFrame, path: Path) -> bool:
        assert folder == tmp_path and set(rows.task) == {"toy"}
        seen.append(len(rows))
        path.write_bytes(b"\x89PNG the toy's own figure")
        return True

    def nothing(folder: Path, rows: pd.DataFrame, path: Path) -> bool:
        return False

    def broken(folder: Path, rows: pd.DataFrame, path: Path) -> bool:
        raise RuntimeError("the plugin's bug\nsecond line")

    store(tmp_path)
    registry = toy_registry(
        TaskFigure("My plot", "The toy's <own> figure", draw),
        TaskFigure("empty", "never shown", nothing),
        TaskFigure("broken", "never shown either", broken),
    )
    page = report.write(tmp_path, registry=registry)
    assert seen == [4]
    assert "toy-my-plot.png" in sources(page)
    text = page.read_text()
    assert "The toy&#x27;s &lt;own&gt; figure" in text or "The toy's &lt;own&gt; figure" in text
    assert "never shown" not in text and "toy-empty.png" not in sources(page)
    assert "RuntimeError: the plugin&#x27;s bug" in text and "second line" not in text
    assert "is not installed" not in text


def test_a_task_whose_plugin_is_not_installed_gets_the_general_figures_and_a_note(
    tmp_path: Path,
) -> None:
    store(tmp_path, task="elsewhere")
    page = report.write(tmp_path, registry=toy_registry())
    assert {"elsewhere-gradient-error.png", "elsewhere-tradeoff.png"} <= sources(page)
    assert "The task elsewhere is not installed here" in page.read_text()


def test_the_built_in_tasks_give_their_figures() -> None:
    registry = load_registry(warn=False)
    names = {task: [f.name for f in registry.task(task).figures] for task in registry.tasks}
    assert names["hopfield"] == ["retrievals"]
    assert names["cora"] == names["citeseer"] == names["pubmed"] == ["fig3"]
    assert names["hyperopt"] == ["fig4", "fig5"]
    assert "TASK_FIGURES" not in vars(report)


def test_typed_curves_are_stored_with_their_x_and_label_and_drawn_so(tmp_path: Path) -> None:
    typed = [
        Curve("probe_err", [0.5, 0.25, 0.125], x=[0, 5, 9], label="probe error", x_label="epoch"),
        Curve("loss", [3.0, 2.0, 1.0, 0.5]),
    ]
    store(tmp_path, cell_curves=typed)
    cell = str(pd.read_parquet(tmp_path / "results.parquet").cell_id.iloc[0])
    stored = pd.read_parquet(tmp_path / "curves" / f"{cell}.parquet")
    assert list(stored.columns) == ["curve", "step", "value", "x", "label", "x_label"]
    data = curves.load(tmp_path, [cell])
    series = {s.name: s for s in curves.series_in(data)}
    assert set(series) == {"probe_err", "loss"}
    assert series["probe_err"].label == "probe error" and series["probe_err"].x_label == "epoch"
    assert curves.xy(data, series["probe_err"]).x.tolist() == [0.0, 5.0, 9.0]
    assert curves.xy(data, series["loss"]).x.tolist() == [0, 1, 2, 3]
    page = report.write(tmp_path, registry=toy_registry())
    assert {"toy-curve-probe-err.png", "toy-curve-loss.png"} <= sources(page)
    assert "Curve probe_err: probe error against epoch" in page.read_text()
    with pytest.raises(ValueError, match="3 values and 2 x values"):
        Curve("bad", [1.0, 2.0, 3.0], x=[0.0, 1.0])


def test_curves_as_a_mapping_and_files_written_before_are_read_as_before(tmp_path: Path) -> None:
    store(tmp_path, cell_curves={"probe_epoch": [0.0, 4.0], "probe_grad_rel_error": [0.1, 0.2]})
    cell = str(pd.read_parquet(tmp_path / "results.parquet").cell_id.iloc[0])
    path = tmp_path / "curves" / f"{cell}.parquet"
    assert list(pd.read_parquet(path).columns) == ["curve", "step", "value"]
    # a file of the first format, as the committed results hold
    pd.DataFrame({"curve": ["meta_loss"] * 2, "step": [0, 1], "value": [1.0, 0.5]}).to_parquet(
        path, index=False
    )
    data = curves.load(tmp_path, [cell])
    assert math.isnan(data.x.iloc[0]) and data.label.iloc[0] is None
    assert [s.name for s in curves.series_in(data)] == ["meta_loss"]
    other = str(pd.read_parquet(tmp_path / "results.parquet").cell_id.iloc[1])
    both = curves.load(tmp_path, [cell, other])
    series = {s.name: s for s in curves.series_in(both)}
    assert series["probe_grad_rel_error"].x_curve == "probe_epoch"
    assert curves.xy(both, series["probe_grad_rel_error"]).x.tolist() == [0.0, 4.0]
