"""What a reader sees in the report's figures: sane axes, legible ticks, whole titles, and
captions without TeX."""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from rbpbench import curves, leaderboard
from rbpbench.reports import figures, report
from rbpbench.results import CellOutcome, ResultsFolder
from tests.tables import frame, row

# Cora at the paper's K = 5 (results/citation-table2): every method's error 1.0 up to rounding,
# peak memory from 14 MB (RBP) to 629 MB (BPTT).
CORA = {
    "bptt": (0.0, 628_573_064, 1.0),
    "tbptt": (1.0000001, 41_027_520, 0.5),
    "rbp": (1.0, 14_695_062, 0.4),
    "cg-rbp": (1.0000002, 29_899_532, 0.6),
    "neumann-rbp": (1.0, 14_711_646, 0.9),
}


def cora_group() -> leaderboard.Group:
    rows = [
        row("cora", method, 5, seed, grad_rel_error=error, peak_memory_bytes=memory,
            wall_time_s=time * (1 + seed))
        for method, (error, memory, time) in CORA.items()
        for seed in range(2)
    ]  # fmt: skip
    (group,) = leaderboard.build(leaderboard.prepared(frame(rows)))
    return group


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Figure]]:
    """The figures the drawing functions make, kept open (they close them once saved)."""
    plt.close("all")
    monkeypatch.setattr(plt, "close", lambda *args: None)
    kept: list[Figure] = []
    yield kept
    monkeypatch.undo()
    plt.close("all")


def last_figure() -> Figure:
    figure = plt.figure(plt.get_fignums()[-1])
    figure.canvas.draw()
    return figure


def test_the_gradient_error_at_a_single_k_has_a_sane_axis_without_offset(
    drawn: list[Figure], tmp_path: Path
) -> None:
    assert figures.gradient_error(cora_group(), tmp_path / "g.png")
    (axis,) = last_figure().axes
    for scale in (axis.xaxis, axis.yaxis):
        assert scale.get_offset_text().get_text() == ""
    low, high = axis.get_ylim()
    assert low < 1.0 < high and high - low > 0.01
    assert [t.get_text() for t in axis.get_xticklabels()] == ["5"]
    assert axis.get_xlim()[0] < 5 < axis.get_xlim()[1]


def visible_labels(texts: list[Text]) -> list[Text]:
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def test_the_memory_axis_s_log_labels_do_not_overlap(drawn: list[Figure], tmp_path: Path) -> None:
    assert figures.tradeoff(cora_group(), tmp_path / "t.png")
    figure = last_figure()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    memory = next(a for a in figure.axes if "memory" in a.get_xlabel())
    assert memory.get_xscale() == "log"
    assert visible_labels(memory.get_xticklabels(minor=True)) == []
    low, high = memory.get_xlim()
    labels = [
        t for t in visible_labels(memory.get_xticklabels())
        if low <= t.get_position()[0] <= high
    ]  # fmt: skip
    assert 2 <= len(labels) <= 8
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert not any(a.overlaps(b) for a, b in combinations(boxes, 2)), [t.get_text() for t in labels]


def test_a_curve_figure_s_title_fits_in_the_figure(drawn: list[Figure], tmp_path: Path) -> None:
    group = cora_group()
    data = pd.DataFrame(
        [
            {"cell_id": str(cell), "curve": "difference_norm", "step": step, "value": 2.0**-step}
            for cell in group.rows.cell_id
            for step in range(30)
        ]
    )
    assert figures.curve(group, data, curves.Series("difference_norm"), tmp_path / "c.png")
    figure = last_figure()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    title = figure._suptitle
    assert title is not None and curves.STEP_NORM in title.get_text()
    box, bounds = title.get_window_extent(renderer), figure.bbox
    assert bounds.x0 <= box.x0 and box.x1 <= bounds.x1 and box.y1 <= bounds.y1
    for axis in figure.axes:
        label = axis.yaxis.label.get_window_extent(renderer)
        assert bounds.x0 <= label.x0 and label.y1 <= bounds.y1


def test_captions_are_html_without_tex(tmp_path: Path) -> None:
    results = ResultsFolder(tmp_path)
    for method in ("bptt", "rbp"):
        record = row("toy", method, 5, 0, grad_rel_error=0.1, wall_time_s=0.1)
        drawn = {"difference_norm": [1.0, 0.1, 0.01], "forward_difference_norm": [1.0]}
        results.append(CellOutcome(record, drawn))
    page = report.write(tmp_path).read_text()
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert any(f"{curves.STEP_NORM} in the last inference pass" in c for c in captions)
    assert not any("$" in c or "\\" in c for c in captions), captions
