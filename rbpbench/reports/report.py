"""``rbpbench report RESULTS_DIR``: one self-contained HTML page with its PNG figures.

Writes ``RESULTS_DIR/report.html`` and the figures in ``RESULTS_DIR/report/``
(referenced by relative paths; the page loads nothing else: no scripts, no
fonts, no network). Per task: the leaderboard, the gradient error against
truncation, the trade-off of gradient error against time and memory, every
curve the cells recorded (see :mod:`rbpbench.curves`) and the task's own
figures, which its plugin gives in ``TaskSpec.figures`` (hopfield: the
retrievals; a task whose plugin is not installed gets the general figures and
a note); for a folder run with a paper preset, the
paper's published figures beside the measured ones.

With ``--compare BASELINE_DIR``, a section compares this folder's cells with the
baseline's (:mod:`rbpbench.compare`). Every text that comes from the results table or
``environment.json`` is escaped. ``RESULTS_DIR/report/.rbpbench-report.json`` lists the figures the
report wrote; the next report deletes those of them it does not write again,
and nothing else in ``report/``.
"""

from __future__ import annotations

import errno
import html
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import pandas as pd

from rbpbench import compare, leaderboard
from rbpbench import curves as curve_convention
from rbpbench.compare import Comparison
from rbpbench.leaderboard import Group
from rbpbench.plugins import PluginError, Registry, load_registry
from rbpbench.problem import TaskFigure
from rbpbench.reports import figures, paper
from rbpbench.results import (
    ENVIRONMENT_FILE,
    OK,
    REPORT_DIR,
    REPORT_PAGE,
    atomic_write,
    read,
)

FIGURES_DIR = REPORT_DIR
PAGE = REPORT_PAGE
MANIFEST = ".rbpbench-report.json"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def anchors(board: list[Group]) -> list[str]:
    """Per group, a distinct slug of its label for its anchor and its figures' file names."""
    out: list[str] = []
    for group in board:
        base = _slug(group.label) or "task"
        slug, n = base, 1
        while slug in out:
            n += 1
            slug = f"{base}-{n}"
        out.append(slug)
    return out


def task_figures(registry: Registry | None) -> dict[str, Sequence[TaskFigure]]:
    """Each installed task's own figures (``TaskSpec.figures``), by task name."""
    if registry is None:
        try:
            registry = load_registry(warn=False)
        except PluginError:
            return {}
    return {name: spec.figures for name, (spec, _) in registry.tasks.items()}


def _plain_name(name: str) -> bool:
    return name == Path(name).name and name not in ("", ".", "..", MANIFEST)


class Page:
    """The HTML body being written and the figures it shows."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.figures = folder / FIGURES_DIR
        self.parts: list[str] = []
        self.written: list[Path] = []

    @property
    def manifest(self) -> Path:
        return self.figures / MANIFEST

    def add(self, fragment: str) -> None:
        self.parts.append(fragment)

    def earlier(self) -> set[str]:
        """The figures an earlier report listed as its own: plain file names only."""
        try:
            names = json.loads(self.manifest.read_text()).get("figures", [])
        except (OSError, ValueError, AttributeError):
            return set()
        if not isinstance(names, list):
            return set()
        return {n for n in names if isinstance(n, str) and _plain_name(n)}

    def finish(self) -> None:
        """List the figures written; delete those an earlier report wrote and this one did not."""
        earlier = self.earlier()
        names = sorted(p.name for p in self.written)
        text = json.dumps({"written_by": "rbpbench report", "figures": names}, indent=1) + "\n"
        atomic_write(self.manifest, lambda p: p.write_text(text))
        for name in earlier - set(names):
            stale = self.figures / name
            if stale.is_file():
                stale.unlink()

    def figure(self, name: str, caption: str, draw: Callable[[Path], bool]) -> None:
        path = self.figures / f"{name}.png"
        if draw(path):
            self.written.append(path)
            src = f"{FIGURES_DIR}/{path.name}"
            self.add(
                f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )


ENVIRONMENT_KEYS = (
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


def _runs(path: Path) -> dict[str, dict[str, object]]:
    """environment.json's runs by run id; ValueError when it is not such a file."""
    runs = json.loads(path.read_text()).get("runs", {})
    if not isinstance(runs, dict):
        raise ValueError("its runs are not an object")
    return {str(k): v for k, v in runs.items() if isinstance(v, dict)}


def _environment(folder: Path, frame: pd.DataFrame) -> str:
    path = folder / ENVIRONMENT_FILE
    if not path.exists():
        return "<p>No environment.json in this folder.</p>"
    try:
        runs = _runs(path)
    except (OSError, ValueError, AttributeError) as exc:
        return f"<p>environment.json cannot be read: {html.escape(str(exc))}</p>"
    used = [(r, runs[r]) for r in dict.fromkeys(str(r) for r in frame.run_id) if r in runs]
    head = "".join(f"<th>{k}</th>" for k in ("run_id", *ENVIRONMENT_KEYS))
    body = "".join(
        f"<tr><td>{html.escape(run_id)}</td>"
        + "".join(f"<td>{html.escape(str(run.get(k, '')))}</td>" for k in ENVIRONMENT_KEYS)
        + "</tr>"
        for run_id, run in used
    )
    return (
        '<table class="board"><caption>environment.json: the runs of these cells</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


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


def _first_line(value: object) -> str:
    lines = value.splitlines() if isinstance(value, str) else []
    return lines[0] if lines else ""


def _text(value: object) -> str:
    return "" if value is None or value is pd.NA else str(value)


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
            f"<td>{html.escape(_text(v))}</td>"
            for v in (
                row.task,
                row.method,
                row.truncation,
                row.seed,
                row.device,
                row.status,
                _first_line(row.error),
            )
        )
        + "</tr>"
        for row in bad.itertuples()
    )
    return f'<table class="board"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _convergence(board: list[Group]) -> str:
    """Per group, what its header says about forward convergence and its adjoints' share."""
    items = []
    for group in board:
        notes = [note for note in (_forward(group), _adjoints(group)) if note]
        if notes:
            items.append(f"<li>{html.escape(group.label + ': ' + '; '.join(notes))}</li>")
    if not items:
        return ""
    return (
        "<p>Convergence (forward: the relative residual ||h_T - h_{T-1}|| / ||h_T|| at or "
        "below the task's tolerance; adjoint: the backward residual relative to ||g|| at or "
        "below its tolerance, for methods that solve an adjoint system):</p>"
        f"<ul>{''.join(items)}</ul>"
    )


def _forward(group: Group) -> str | None:
    note = leaderboard.convergence_note(group)
    checked = int(leaderboard.flags(group.rows, leaderboard.FORWARD).notna().sum())
    if note is None and checked:
        return f"forward converged in all {checked} cells checked"
    return note


def _adjoints(group: Group) -> str | None:
    flags = leaderboard.flags(group.rows, leaderboard.ADJOINT).dropna()
    if flags.empty:
        return None
    return (
        f"adjoint converged in {int(flags.astype(bool).sum())} of {len(flags)} cells that solve one"
    )


def _group_section(
    page: Page, group: Group, slug: str, own: dict[str, Sequence[TaskFigure]]
) -> None:
    page.add(f'<h2 id="{slug}">{html.escape(group.label)}</h2>')
    page.add(leaderboard.render_html_fragment([group], level=3, with_legend=False))
    page.figure(
        f"{slug}-gradient-error",
        "Gradient error against truncation K: mean over seeds, bars their range (the "
        "leaderboard above has the 95% intervals).",
        lambda p: figures.gradient_error(group, p),
    )
    page.figure(
        f"{slug}-tradeoff",
        "Trade-off: gradient error against wall time, peak memory and the Jacobian products "
        "of the backward pass (J^T v and J v, counted by the harness), one point "
        "per method and K (means over seeds); the dashed line joins the points that no "
        "other beats in both error and cost.",
        lambda p: figures.tradeoff(group, p),
    )
    data = curve_convention.load(page.folder, [str(c) for c in group.rows.cell_id])
    for series in curve_convention.series_in(data):
        page.figure(
            f"{slug}-curve-{_slug(series.name)}",
            f"Curve {series.name}: {series.label} against {series.x_label}, per method, one "
            "panel per K; the line is the mean over seeds, the band their range.",
            partial(figures.curve, group, data, series),
        )
    if group.task not in own:
        page.add(
            f"<p>The task {html.escape(group.task)} is not installed here (no plugin gives it): "
            "its own figures, if its plugin has any, are not drawn; the general ones are.</p>"
        )
    for task_figure in own.get(group.task, ()):
        page.figure(
            f"{slug}-{_slug(task_figure.name) or 'figure'}",
            task_figure.caption,
            partial(_task_figure, page, task_figure, group),
        )


def _task_figure(page: Page, task_figure: TaskFigure, group: Group, path: Path) -> bool:
    """Draw a task's own figure; a plugin's drawing that fails leaves a note, not a failed report."""
    try:
        return bool(task_figure.draw(page.folder, group.rows, path))
    except Exception as exc:  # a plugin's code: whatever it raises, the report goes on
        page.add(
            f"<p>The figure {html.escape(task_figure.name)} of the task "
            f"{html.escape(group.task)} could not be drawn: "
            f"{html.escape(type(exc).__name__ + ': ' + _first_line(str(exc)))}</p>"
        )
        return False


def _figures_folder(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR, "not a folder; the report writes its figures there", str(path)
        )
    path.mkdir(parents=True, exist_ok=True)


def write(
    folder: Path,
    frame: pd.DataFrame | None = None,
    registry: Registry | None = None,
    *,
    comparison: Comparison | None = None,
) -> Path:
    """Write the report of a results folder (of ``frame``, its table, when given); returns the
    page's path. The tasks' own figures come from ``registry`` (None: the installed plugins);
    ``comparison`` (:func:`rbpbench.compare.compare`, this folder as B) adds its section.
    OSError where the folder cannot be written; TableError for a table the leaderboard cannot
    read (:func:`rbpbench.leaderboard.prepared`)."""
    frame = leaderboard.prepared(read(folder) if frame is None else frame)
    page = Page(folder)
    _figures_folder(page.figures)
    statuses = Counter(str(s) for s in frame.status)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    board = leaderboard.build(frame)
    slugs = anchors(board)
    page.add(f"<h1>rbpbench report: {html.escape(folder.resolve().name)}</h1>")
    page.add(
        f"<p>{len(frame)} cells ({html.escape(summary)}) of {frame.task.nunique()} task(s): "
        + ", ".join(
            f'<a href="#{slug}">{html.escape(g.label)}</a>'
            for g, slug in zip(board, slugs, strict=True)
        )
        + ".</p>"
    )
    if not (folder / "curves").is_dir():
        page.add(
            "<p>This folder has no <code>curves/</code> (the reference results are committed "
            "without them): the report draws no curves and none of the figures the tasks "
            "draw from them.</p>"
        )
    convergence = _convergence(board)
    if convergence:
        page.add(convergence)
    if comparison is not None:
        page.add(
            f'<h2 id="compare">Comparison: {html.escape(comparison.b)} against '
            f"{html.escape(comparison.a)}</h2>" + compare.render_html_fragment(comparison)
        )
    comparisons = _comparisons(frame)
    if comparisons:
        page.add("<h2>Comparison with the paper</h2>" + comparisons)
    page.add(leaderboard.legend_html(board))
    own = task_figures(registry)
    for group, slug in zip(board, slugs, strict=True):
        _group_section(page, group, slug, own)
    page.add("<h2>Cells not ok</h2>" + _failures(frame))
    page.add("<h2>Environment</h2>" + _environment(folder, frame))
    path = folder / PAGE
    document = leaderboard.html_document(f"rbpbench report: {folder.name}", "\n".join(page.parts))
    atomic_write(path, lambda p: p.write_text(document))
    page.finish()
    return path
