"""``rbpbench report RESULTS_DIR``: one self-contained HTML page with its PNG figures.

Writes ``RESULTS_DIR/report.html`` and the figures in ``RESULTS_DIR/report/``
(referenced by relative paths; the page loads nothing else: no scripts, no
fonts, no network). Per task: the leaderboard, the gradient error against
truncation, the trade-off of gradient error against time and memory, every
curve the cells recorded (see :mod:`rbpbench.curves`) and the task's own
figures (hopfield: the retrievals); for a folder run with a paper preset, the
paper's published figures beside the measured ones.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd

from rbpbench import curves as curve_convention
from rbpbench import leaderboard
from rbpbench.leaderboard import Group
from rbpbench.reports import figures, paper
from rbpbench.results import OK, atomic_write

FIGURES_DIR = "report"
PAGE = "report.html"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _hopfield_retrievals(folder: Path, group: Group, path: Path) -> bool:
    from rbpbench.reports.hopfield import retrieval_figure

    rows = group.rows[group.rows.status.isin([OK, "diverged"])]
    if rows.empty or not (folder / "curves").exists():
        return False
    ks = sorted(int(k) for k in rows.truncation.unique())
    k = 20 if 20 in ks else ks[len(ks) // 2]
    seed = int(rows.seed.min())
    try:
        retrieval_figure(folder, rows, seed, k, path)
    except (ValueError, FileNotFoundError, KeyError):
        return False
    return True


# A task may add figures of its own: task name -> (file name, caption, drawer).
TASK_FIGURES: dict[str, list[tuple[str, str, Callable[[Path, Group, Path], bool]]]] = {
    "hopfield": [
        (
            "retrievals",
            "Retrievals from corrupted digits (like the paper's Fig. 2): the corrupted input, "
            "then each method's binarised output",
            _hopfield_retrievals,
        )
    ],
}


class Page:
    """The HTML body being written and the figures it shows."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.figures = folder / FIGURES_DIR
        self.parts: list[str] = []
        self.written: list[Path] = []

    def add(self, fragment: str) -> None:
        self.parts.append(fragment)

    def figure(self, name: str, caption: str, draw: Callable[[Path], bool]) -> None:
        path = self.figures / f"{name}.png"
        if draw(path):
            self.written.append(path)
            src = f"{FIGURES_DIR}/{path.name}"
            self.add(
                f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )


def _environment(folder: Path, frame: pd.DataFrame) -> str:
    path = folder / "environment.json"
    if not path.exists():
        return "<p>No environment.json in this folder.</p>"
    runs = json.loads(path.read_text()).get("runs", {})
    used = [runs[r] for r in dict.fromkeys(str(r) for r in frame.run_id) if r in runs]
    keys = (
        "time",
        "hostname",
        "cpu_model",
        "cpu_count",
        "torch_version",
        "torch_num_threads",
        "cuda_devices",
        "git_commit",
        "git_dirty",
    )
    head = "".join(f"<th>{k}</th>" for k in ("run_id", *keys))
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(str(run.get(k, '')))}</td>" for k in ("run_id", *keys))
        + "</tr>"
        for run in used
    )
    return f'<table class="board"><caption>environment.json: the runs of these cells</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _comparisons(frame: pd.DataFrame) -> str:
    parts = []
    for comparison in paper.compare(frame):
        head = "".join(
            f"<th>{h}</th>"
            for h in ("task", "method", "K", "metric", "measured", "paper", "measured - paper")
        )
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in paper.cells(row)) + "</tr>"
            for row in comparison.rows
        )
        parts.append(
            f'<table class="board"><caption>{html.escape(comparison.caption)}; measured: the '
            f"cells run with the task parameters of <code>--suite {html.escape(comparison.suite)}"
            f"</code></caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )
    return "\n".join(parts)


def _failures(frame: pd.DataFrame) -> str:
    bad = frame[frame.status != OK]
    if bad.empty:
        return "<p>Every cell ended ok.</p>"
    head = "".join(
        f"<th>{h}</th>" for h in ("task", "method", "K", "seed", "device", "status", "error")
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(v))}</td>"
            for v in (
                row.task,
                row.method,
                row.truncation,
                row.seed,
                row.device,
                row.status,
                str(row.error or "").splitlines()[0] if row.error else "",
            )
        )
        + "</tr>"
        for row in bad.itertuples()
    )
    return f'<table class="board"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _group_section(page: Page, group: Group) -> None:
    slug = _slug(group.label)
    page.add(f'<h2 id="{slug}">{html.escape(group.label)}</h2>')
    page.add(leaderboard.render_html_fragment([group], level=3, legend=False))
    page.figure(
        f"{slug}-gradient-error",
        "Gradient error against truncation K: mean over seeds, bars their range (the "
        "leaderboard above has the 95% intervals).",
        lambda p: figures.gradient_error(group, p),
    )
    page.figure(
        f"{slug}-tradeoff",
        "Trade-off: gradient error against wall time and against peak memory, one point "
        "per method and K (means over seeds); the dashed line joins the points that no "
        "other beats in both error and cost.",
        lambda p: figures.tradeoff(group, p),
    )
    data = curve_convention.load(page.folder, [str(c) for c in group.rows.cell_id])
    for series in curve_convention.series_of(set(data.curve)):
        page.figure(
            f"{slug}-curve-{_slug(series.name)}",
            f"Curve {series.name}: {series.label} against {series.x_label}, per method, one "
            "panel per K; the line is the mean over seeds, the band their range.",
            partial(figures.curve, group, data, series),
        )
    for name, caption, draw in TASK_FIGURES.get(group.task, []):
        page.figure(f"{slug}-{name}", caption, partial(draw, page.folder, group))


def write(folder: Path) -> Path:
    """Write the report of a results folder; returns the page's path."""
    frame = pd.read_parquet(folder / "results.parquet")
    page = Page(folder)
    page.figures.mkdir(parents=True, exist_ok=True)
    statuses = Counter(str(s) for s in frame.status)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    board = leaderboard.build(frame)
    page.add(f"<h1>rbpbench report: {html.escape(folder.resolve().name)}</h1>")
    page.add(
        f"<p>{len(frame)} cells ({summary}) of {frame.task.nunique()} task(s): "
        + ", ".join(f'<a href="#{_slug(g.label)}">{html.escape(g.label)}</a>' for g in board)
        + ".</p>"
    )
    comparisons = _comparisons(frame)
    if comparisons:
        page.add("<h2>Comparison with the paper</h2>" + comparisons)
    page.add(leaderboard.legend_html())
    for group in board:
        _group_section(page, group)
    page.add("<h2>Cells not ok</h2>" + _failures(frame))
    page.add("<h2>Environment</h2>" + _environment(folder, frame))
    path = folder / PAGE
    document = leaderboard.html_document(f"rbpbench report: {folder.name}", "\n".join(page.parts))
    atomic_write(path, lambda p: p.write_text(document))
    # figures of an earlier report that this one does not show
    for stale in set(page.figures.glob("*.png")) - set(page.written):
        stale.unlink()
    return path
