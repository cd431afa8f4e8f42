"""The report's plots, drawn with matplotlib's Agg backend into PNG files.

Each function draws one figure for one group of the leaderboard (a task at one
setting) and returns False when the group has nothing to draw.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axis import Axis
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from rbpbench import curves as curve_convention
from rbpbench.leaderboard import REFERENCE, Group, Table

DPI = 90
PAPER_COLOURS = {
    "bptt": "#222222",
    "tbptt": "#1f77b4",
    "rbp": "#d62728",
    "cg-rbp": "#2ca02c",
    "neumann-rbp": "#ff7f0e",
}
OTHER_COLOURS = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def colours(methods: list[str]) -> dict[str, str]:
    others = iter(OTHER_COLOURS * (1 + len(methods) // len(OTHER_COLOURS)))
    return {m: PAPER_COLOURS.get(m) or next(others) for m in methods}


def _save(figure: plt.Figure, path: Path) -> None:
    if not figure.legends:  # a figure legend has laid the figure out already
        figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


# Above this many entries a legend goes below the axes, in columns, where it hides no point.
LEGEND_INSIDE_MAX = 8
LEGEND_COLUMNS = 4
LEGEND_WIDTH_IN = 11.0  # what four columns of "method @ forward" labels need


def _legend(figure: plt.Figure, axis: plt.Axes, fontsize: float = 7) -> None:
    """The axis's legend inside it when short; else one legend under the figure, in columns,
    with the figure made taller to hold it (a sweep of methods on several forwards has dozens)."""
    handles, labels = axis.get_legend_handles_labels()
    if len(labels) <= LEGEND_INSIDE_MAX:
        axis.legend(fontsize=fontsize)
        return
    rows = math.ceil(len(labels) / LEGEND_COLUMNS)
    height = figure.get_figheight()
    extra = 0.2 * rows
    figure.set_figheight(height + extra)
    figure.set_figwidth(max(figure.get_figwidth(), LEGEND_WIDTH_IN))
    figure.legend(
        handles,
        labels,
        loc="lower center",
        ncol=LEGEND_COLUMNS,
        fontsize=fontsize,
        frameon=False,
    )
    figure.tight_layout(rect=(0, extra / (height + extra), 1, 1))


def _table(group: Group, *keys: str) -> Table | None:
    for key in keys:
        for table in group.tables:
            if table.metric.key == key and any(a.n for a in table.cells.values()):
                return table
    return None


def _log_or_symlog(axis: plt.Axes, values: list[float], which: str = "y") -> None:
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if not positive:
        return
    setter = axis.set_yscale if which == "y" else axis.set_xscale
    if any(v == 0 for v in values):
        setter("symlog", linthresh=min(positive))
    elif max(positive) / min(positive) > 20:
        setter("log")
        decades = math.log10(max(positive) / min(positive))
        _log_ticks(axis.yaxis if which == "y" else axis.xaxis, decades)


def _log_ticks(scale: Axis, decades: float = 1.0) -> None:
    """Labels at 1, 2 and 5 times the powers of ten (at powers of ten alone over more than
    four decades, where the 1-2-5 ticks are too many to draw), written plainly, and no
    minor labels.

    Matplotlib's default labels minor ticks too when an axis spans under a
    couple of decades, and those labels (2x10^7, 3x10^7, ...) overlap.
    """
    subs = (1.0,) if decades > 4 else (1.0, 2.0, 5.0)
    scale.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
    scale.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    scale.set_minor_formatter(NullFormatter())


def _no_offset(axis: plt.Axes, values: list[float], which: Literal["x", "y"] = "y") -> None:
    """A linear axis over values that (nearly) coincide: a range around them, no offset text.

    Without it matplotlib zooms into the rounding noise (1.0 and 1.0000001) and
    labels the axis "1e-7 + 1.0000001".
    """
    scale = axis.yaxis if which == "y" else axis.xaxis
    if scale.get_scale() != "linear":
        return
    axis.ticklabel_format(axis=which, useOffset=False, style="plain")
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return
    low, high = min(finite), max(finite)
    magnitude = max(abs(low), abs(high))
    if high - low <= 1e-3 * magnitude:
        margin = 0.1 * magnitude if magnitude > 0 else 1.0
        (axis.set_ylim if which == "y" else axis.set_xlim)(low - margin, high + margin)


def _title(figure: plt.Figure, text: str, fontsize: float = 10) -> None:
    """A figure title wrapped to the figure's width, so that no line runs past its edges."""
    width_points = figure.get_figwidth() * 72
    chars = max(20, int(width_points / (0.62 * fontsize)))
    figure.suptitle(textwrap.fill(text, chars), fontsize=fontsize)


def _range(group: Group, table: Table, method: str, k: int) -> tuple[float, float]:
    rows = group.rows[(group.rows.method == method) & (group.rows.truncation == k)]
    values = rows[table.metric.column].astype("float64") * table.scale
    values = values[np.isfinite(values)]
    return float(values.min()), float(values.max())


def gradient_error(group: Group, path: Path) -> bool:
    """Gradient error against truncation K, one line per method: the mean, bars the range."""
    table = _table(group, "grad_error_exact", "grad_error")
    if table is None or len(group.truncations) < 1:
        return False
    palette = colours(group.methods)
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    drawn: list[float] = []
    for method in group.methods:
        if table.metric.vs_bptt and method == REFERENCE:
            continue
        points = [
            (k, table.cells[(method, k)]) for k in group.truncations if (method, k) in table.cells
        ]
        points = [(k, a) for k, a in points if a.n and math.isfinite(a.mean)]
        if not points:
            continue
        ks = [k for k, _ in points]
        means = [a.mean for _, a in points]
        # bars: the range over seeds (the leaderboard has the t intervals, which with two or
        # three seeds reach below zero and would fill a log axis)
        spans = [_range(group, table, method, k) for k in ks]
        below = [m - lo for m, (lo, _) in zip(means, spans, strict=True)]
        above = [hi - m for m, (_, hi) in zip(means, spans, strict=True)]
        axis.errorbar(
            ks,
            means,
            yerr=[below, above],
            marker="o",
            capsize=3,
            label=method,
            color=palette[method],
        )
        drawn += means
    if not drawn:
        plt.close(figure)
        return False
    _log_or_symlog(axis, drawn)
    _no_offset(axis, drawn)
    ks = group.truncations
    axis.set_xticks(ks if len(ks) <= 12 else ks[:: math.ceil(len(ks) / 12)])
    axis.ticklabel_format(axis="x", useOffset=False, style="plain")
    if len(ks) == 1:
        axis.set_xlim(ks[0] - 1, ks[0] + 1)
    axis.set_xlabel("truncation K")
    axis.set_ylabel(table.title.split(" at the")[0])
    axis.set_title(
        textwrap.fill(f"{group.label}: gradient error against truncation", 70), fontsize=10
    )
    axis.grid(alpha=0.3)
    _legend(figure, axis, fontsize=8)
    _save(figure, path)
    return True


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats in both cost and error, by increasing cost."""
    front: list[tuple[float, float]] = []
    for cost, error in sorted(points):
        if not front or error < front[-1][1]:
            front.append((cost, error))
    return front


def tradeoff(group: Group, path: Path) -> bool:
    """Gradient error against wall time, peak memory and the backward pass's Jacobian products
    (where counted), per method and K (a Pareto view)."""
    error = _table(group, "grad_error_exact", "grad_error")
    tables = (
        _table(group, "wall_time"),
        _table(group, "peak_memory"),
        _table(group, "jacobian_products"),
    )
    costs = [t for t in tables if t is not None]
    if error is None or not costs:
        return False
    palette = colours(group.methods)
    figure, axes = plt.subplots(1, len(costs), figsize=(5.2 * len(costs), 4.2), squeeze=False)
    for axis, cost in zip(axes[0], costs, strict=True):
        points = []
        for (method, k), agg in error.cells.items():
            spend = cost.cells.get((method, k))
            if spend is None or not (agg.n and spend.n):
                continue
            if not (math.isfinite(agg.mean) and math.isfinite(spend.mean)):
                continue
            points.append((spend.mean, agg.mean, method, k))
        if not points:
            continue
        for method in group.methods:
            mine = [(x, y, k) for x, y, m, k in points if m == method]
            if not mine:
                continue
            axis.scatter(
                [x for x, _, _ in mine],
                [y for _, y, _ in mine],
                color=palette[method],
                label=method,
                zorder=3,
            )
            for x, y, k in mine:
                axis.annotate(
                    f"K={k}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
        front = pareto_front([(x, y) for x, y, _, _ in points])
        axis.step(
            [x for x, _ in front],
            [y for _, y in front],
            where="post",
            color="#888888",
            linestyle="--",
            label="Pareto front",
            zorder=2,
        )
        _log_or_symlog(axis, [y for _, y, _, _ in points])
        _log_or_symlog(axis, [x for x, _, _, _ in points], "x")
        _no_offset(axis, [y for _, y, _, _ in points])
        _no_offset(axis, [x for x, _, _, _ in points], "x")
        axis.set_xlabel(cost.title)
        axis.set_ylabel(error.title.split(" at the")[0])
        axis.grid(alpha=0.3)
    _title(figure, f"{group.label}: gradient error against cost (lower left is better)")
    _legend(figure, axes[0][0])
    _save(figure, path)
    return True


def curve(group: Group, frame: pd.DataFrame, series: curve_convention.Series, path: Path) -> bool:
    """One curve across methods: a panel per K, the mean over seeds with the range as a band.

    BPTT, whose result does not depend on K, is drawn in every panel (from the
    cells at that K, else from all its cells).
    """
    data = curve_convention.xy(frame, series)
    if data.empty:
        return False
    rows = group.rows[["cell_id", "method", "truncation"]].astype({"cell_id": str})
    data = data.merge(rows, on="cell_id")
    palette = colours(group.methods)
    ks = group.truncations
    figure, axes = plt.subplots(
        1, len(ks), figsize=(min(max(4.0 * len(ks), 6.4), 16), 3.6), squeeze=False, sharey=True
    )
    values: list[float] = []
    for axis, k in zip(axes[0], ks, strict=True):
        for method in group.methods:
            mine = data[(data.method == method) & (data.truncation == k)]
            if mine.empty and method == REFERENCE:
                mine = data[data.method == method]
            if mine.empty:
                continue
            stats = mine.groupby("x").value.agg(["mean", "min", "max"]).sort_index()
            finite = stats[np.isfinite(stats["mean"])]
            marker = "o" if len(finite) <= 20 else None
            axis.plot(
                finite.index, finite["mean"], color=palette[method], label=method, lw=1.3,
                marker=marker, markersize=3,
            )  # fmt: skip
            if mine.cell_id.nunique() > 1:
                axis.fill_between(
                    finite.index,
                    finite["min"],
                    finite["max"],
                    color=palette[method],
                    alpha=0.15,
                    lw=0,
                )
            values += finite["mean"].tolist()
        axis.set_title(f"K={k}", fontsize=9)
        axis.set_xlabel(series.x_label)
        axis.grid(alpha=0.3)
    if not values:
        plt.close(figure)
        return False
    _log_or_symlog(axes[0][0], values)
    _no_offset(axes[0][0], values)
    axes[0][0].set_ylabel(textwrap.fill(series.label, 30))
    _title(figure, f"{group.label}: {series.label} (mean over seeds, band: range)")
    _legend(figure, axes[0][0])
    _save(figure, path)
    return True
