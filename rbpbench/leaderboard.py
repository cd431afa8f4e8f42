"""The leaderboard: per task, methods x truncation K, a mean and a 95% interval over seeds.

A task's metrics are the ones its rows fill (a column with at least one
value): success rate, accuracies and training loss for training tasks;
gradient error against BPTT and against the exact gradient, wall time, peak
memory and their ratios to BPTT for all. Failed cells are counted, never
dropped: a success rate counts them as failures, and a figure that only some
cells have says "(n of N)". The best figure of each column (each K) is marked.
Statistics: :mod:`rbpbench.stats`.

:func:`build` makes the tables; :func:`render` writes them as text, markdown,
html or csv.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from rbpbench.results import FLOAT_COLUMNS, INTEGER_COLUMNS, OK
from rbpbench.stats import Aggregate, t_interval, wilson_interval

FORMATS = ("text", "markdown", "html", "csv")
REFERENCE = "bptt"
LEGEND = (
    "mean ± half-width of the 95% confidence interval over seeds (Student t); success rates: "
    "the percentage of all cells with the 95% Wilson interval in brackets, a failed cell "
    "counting as a failure; (n of N): only n of the method's N cells have the figure; "
    "ratios are BPTT's cost divided by the method's, per seed (as in the paper's Table 3); "
    "the best of each column (ties at the printed precision included) is "
)
MARKS = {"text": "marked *", "markdown": "in bold", "html": "in bold green"}


@dataclass(frozen=True)
class Metric:
    """A figure of the leaderboard: which column, which way is better, how it is printed."""

    key: str
    title: str
    column: str
    better: str | None = "lower"  # "lower", "higher", or None: nothing is marked best
    fmt: str = ".3g"
    scale: float = 1.0
    kind: str = "mean"  # "mean" (t interval), "rate" (Wilson interval), "ratio" (BPTT / method)
    vs_bptt: bool = False  # relative to BPTT: BPTT is the reference, not a contender
    unit: str = ""  # "percent", "bytes" and "seconds" are scaled to suit the values


CATALOGUE: tuple[Metric, ...] = (
    Metric("success", "success rate", "success", "higher", kind="rate"),
    Metric("test_accuracy", "test accuracy", "test_accuracy", "higher", ".2f", unit="percent"),
    Metric(
        "val_accuracy", "best validation accuracy", "val_accuracy", "higher", ".2f", unit="percent"
    ),
    Metric("train_loss_final", "final training loss", "train_loss_final"),
    Metric(
        "retrieval_error",
        "retrieval error (fraction of wrong pixels)",
        "retrieval_error",
        fmt=".3f",
    ),
    Metric(
        "grad_error_exact",
        "relative gradient error vs exact gradient",
        "grad_rel_error_exact",
        fmt=".2e",
    ),
    Metric(
        "grad_error", "relative gradient error vs BPTT", "grad_rel_error", fmt=".2e", vs_bptt=True
    ),
    Metric("grad_cosine", "gradient cosine vs BPTT", "grad_cosine", "higher", ".4f", vs_bptt=True),
    Metric("wall_time", "wall time of one gradient", "wall_time_s", unit="seconds"),
    Metric(
        "time_ratio",
        "time ratio: BPTT's wall time / the method's",
        "wall_time_s",
        "higher",
        ".2f",
        kind="ratio",
        vs_bptt=True,
        unit="x",
    ),
    Metric(
        "peak_memory", "peak memory of one gradient", "peak_memory_bytes", fmt=".4g", unit="bytes"
    ),
    Metric(
        "memory_ratio",
        "memory ratio: BPTT's peak memory / the method's",
        "peak_memory_bytes",
        "higher",
        ".2f",
        kind="ratio",
        vs_bptt=True,
        unit="x",
    ),
    Metric("train_time", "training time", "train_time_s", unit="seconds"),
)
BY_KEY = {metric.key: metric for metric in CATALOGUE}


def metric_names() -> list[str]:
    """What ``--metric`` accepts: the catalogue's keys and any numeric column of the table."""
    numeric = [c for c in (*FLOAT_COLUMNS, *INTEGER_COLUMNS) if c not in ("truncation", "seed")]
    return [*BY_KEY, *[c for c in numeric if c not in BY_KEY]]


def resolve_metrics(names: Sequence[str]) -> list[Metric]:
    """Metrics by key or column name; ValueError naming the valid ones for an unknown name."""
    chosen = []
    for name in names:
        if name in BY_KEY:
            chosen.append(BY_KEY[name])
        elif name in metric_names():
            chosen.append(Metric(name, name, name, None, ".4g"))
        else:
            raise ValueError(f"unknown metric {name!r}; valid: {', '.join(metric_names())}")
    return chosen


@dataclass
class Table:
    """One metric over methods x truncation of one group."""

    metric: Metric
    title: str
    cells: dict[tuple[str, int], Aggregate]
    best: set[tuple[str, int]]
    scale: float
    unit: str = ""  # of the printed figures: "%", "ms", "MiB", "x", ...
    suffix: str = ""  # appended to every printed figure


@dataclass
class Group:
    """The cells of one task with one setting (parameters that vary within a task split it)."""

    task: str
    label: str
    rows: pd.DataFrame
    methods: list[str]
    truncations: list[int]
    counts: dict[tuple[str, int], Counter[str]]
    tables: list[Table] = field(default_factory=list)

    @property
    def seeds(self) -> int:
        return int(self.rows.seed.nunique())

    @property
    def trains(self) -> bool:
        """A training task: its gradient figures are taken at the initial parameters."""
        return bool(self.rows.train_loss_final.notna().any() or self.rows.success.notna().any())


def _varying_params(rows: pd.DataFrame) -> pd.DataFrame:
    """Per row, the task parameters (and device, dtype) that differ within ``rows``."""
    params = pd.DataFrame([json.loads(p) if isinstance(p, str) else {} for p in rows.task_params])
    params.index = rows.index
    params["device"], params["dtype"] = rows.device, rows.dtype
    keep = [c for c in params.columns if params[c].astype(str).nunique() > 1]
    return params[keep].astype(str)


def groups(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """The rows of each task, split by the settings that vary within it, in the table's order."""
    out = []
    for _, rows in frame.groupby("task", sort=False):
        varying = _varying_params(rows)
        if varying.empty or not len(varying.columns):
            out.append(rows)
            continue
        for _, part in rows.groupby([varying[c] for c in varying.columns], sort=False):
            out.append(part)
    return out


def _label(rows: pd.DataFrame, frame: pd.DataFrame) -> str:
    task = str(rows.task.iloc[0])
    varying = _varying_params(frame[frame.task == task]).loc[rows.index]
    settings = ", ".join(f"{c}={varying[c].iloc[0]}" for c in varying.columns)
    return f"{task} ({settings})" if settings else task


def _percent_scale(values: pd.Series) -> float:
    finite = values[values.notna()]
    return 100.0 if len(finite) and float(finite.abs().max()) <= 1.0 else 1.0


def _bytes_scale(values: pd.Series) -> tuple[float, str]:
    finite = values[values.notna() & (values > 0)]
    typical = float(finite.median()) if len(finite) else 1.0
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if typical >= 1024**power:
            return 1 / 1024**power, unit
    return 1.0, "B"


def _seconds_scale(values: pd.Series) -> tuple[float, str]:
    finite = values[values.notna() & (values > 0)]
    typical = float(finite.median()) if len(finite) else 1.0
    for factor, unit in ((1.0, "s"), (1e3, "ms")):
        if typical * factor >= 1:
            return factor, unit
    return 1e6, "µs"


def _ratios(rows: pd.DataFrame, column: str) -> pd.Series:
    """Per row, BPTT's figure (same seed, same K where it ran there) over the row's."""
    values = rows[column].astype("float64")
    reference = rows[rows.method == REFERENCE]
    by_seed_k = reference.groupby(["seed", "truncation"])[column].mean()
    by_seed = reference.groupby("seed")[column].mean()
    out = []
    for index, row in rows.iterrows():
        key = (row.seed, row.truncation)
        ref = by_seed_k.get(key, by_seed.get(row.seed, math.nan))
        value = values[index]
        out.append(float(ref) / value if value and math.isfinite(value) else math.nan)
    return pd.Series(out, index=rows.index, dtype="float64")


def _aggregate(metric: Metric, rows: pd.DataFrame, scale: float) -> Aggregate:
    if metric.kind == "rate":
        hits = int(rows[metric.column].fillna(False).astype(bool).sum())
        return wilson_interval(hits, len(rows))
    values = rows["_ratio"] if metric.kind == "ratio" else rows[metric.column].astype("float64")
    return t_interval((values * scale).tolist(), cells=len(rows))


def _printed(metric: Metric, mean: float) -> str:
    return f"{mean * 100:.0f}" if metric.kind == "rate" else format(mean, metric.fmt)


def _best(metric: Metric, cells: dict[tuple[str, int], Aggregate]) -> set[tuple[str, int]]:
    if metric.better is None:
        return set()
    best: set[tuple[str, int]] = set()
    for k in {k for _, k in cells}:
        contenders = {
            key: agg.mean
            for key, agg in cells.items()
            if key[1] == k
            and agg.n
            and math.isfinite(agg.mean)
            and not (metric.vs_bptt and key[0] == REFERENCE)
        }
        # a column of one method has no best; BPTT as the reference still makes a column
        if not contenders or sum(1 for key in cells if key[1] == k) < 2:
            continue
        pick = max if metric.better == "higher" else min
        # ties at the printed precision are all best
        printed = {key: _printed(metric, value) for key, value in contenders.items()}
        target = printed[pick(contenders, key=contenders.__getitem__)]
        best |= {key for key, text in printed.items() if text == target}
    return best


def applies(metric: Metric, rows: pd.DataFrame) -> bool:
    """Whether a default metric belongs on this group's board: its rows fill the column."""
    if metric.column not in rows or not rows[metric.column].notna().any():
        return False
    if metric.vs_bptt and metric.kind == "ratio":
        return bool((rows.method == REFERENCE).any()) and rows.method.nunique() > 1
    return True


def _scale(metric: Metric, rows: pd.DataFrame) -> tuple[float, str, str]:
    """The factor applied to the column, the unit in the title, and the suffix of each figure."""
    values = rows[metric.column].astype("float64") if metric.column in rows else pd.Series()
    if metric.kind == "rate":
        return 1.0, "%", ""
    if metric.unit == "percent":
        scale = _percent_scale(values)
        return scale, "%" if scale == 100 else "", ""
    if metric.unit == "bytes":
        scale, unit = _bytes_scale(values)
        return scale, unit, ""
    if metric.unit == "seconds":
        scale, unit = _seconds_scale(values)
        return scale, unit, ""
    return metric.scale, metric.unit, ""


def make_table(metric: Metric, group: Group) -> Table:
    rows = group.rows
    if metric.kind == "ratio":
        rows = rows.assign(_ratio=_ratios(rows, metric.column))
    scale, unit, suffix = _scale(metric, rows)
    title = f"{metric.title} ({unit})" if unit else metric.title
    if group.trains and metric.key in ("grad_error", "grad_error_exact", "grad_cosine"):
        title += " at the initial parameters"
    if metric.kind == "rate":
        title += ", failed cells counting as failures"
    cells = {
        (str(method), int(k)): _aggregate(metric, part, scale)
        for (method, k), part in rows.groupby(["method", "truncation"], sort=False)
    }
    return Table(metric, title, cells, _best(metric, cells), scale, unit, suffix)


def build(frame: pd.DataFrame, metrics: Sequence[Metric] | None = None) -> list[Group]:
    """The leaderboard of a results table: one group per task (and setting), one table per metric."""
    out = []
    for rows in groups(frame):
        methods = list(dict.fromkeys(str(m) for m in rows.method))
        truncations = sorted({int(k) for k in rows.truncation})
        counts: dict[tuple[str, int], Counter[str]] = {}
        for (method, k), part in rows.groupby(["method", "truncation"], sort=False):
            counts[(str(method), int(k))] = Counter(str(s) for s in part.status)
        group = Group(
            str(rows.task.iloc[0]), _label(rows, frame), rows, methods, truncations, counts
        )
        chosen = metrics if metrics is not None else [m for m in CATALOGUE if applies(m, rows)]
        group.tables = [make_table(metric, group) for metric in chosen if metric.column in rows]
        out.append(group)
    return out


# ---------------------------------------------------------------- formatting


def figure(agg: Aggregate | None, table: Table) -> str:
    """One cell of a table as printed, without the best mark."""
    if agg is None:
        return "-"
    if agg.n == 0:
        return f"n/a (0 of {agg.cells})"
    fmt, suffix = table.metric.fmt, table.suffix
    if agg.kind == "wilson":
        text = f"{agg.mean * 100:.0f}%"
        if agg.cells > 1:
            text += f" [{agg.low * 100:.0f}, {agg.high * 100:.0f}]"
        return f"{text} of {agg.cells}"
    text = format(agg.mean, fmt)
    if agg.has_interval:
        # the half-width to two significant figures, unless the figure has a fixed layout
        text += f" ± {format(agg.half_width, fmt if fmt[-1] in 'ef' else '.2g')}"
    text += suffix
    if agg.n < agg.cells:
        text += f" ({agg.n} of {agg.cells})"
    return text


def cell_count(counts: Counter[str] | None) -> str:
    if counts is None:
        return "-"
    total = sum(counts.values())
    bad = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()) if status != OK)
    return f"{total} ({bad})" if bad else str(total)


def _grid(group: Group, table: Table | None, mark: str) -> pd.DataFrame:
    """Methods x K as strings; ``mark`` wraps a best figure (``{}``-style template)."""
    data = {}
    for k in group.truncations:
        column = []
        for method in group.methods:
            key = (method, k)
            if table is None:
                column.append(cell_count(group.counts.get(key)))
                continue
            text = figure(table.cells.get(key), table)
            column.append(mark.format(text) if key in table.best else text)
        data[f"K={k}"] = column
    return pd.DataFrame(data, index=pd.Index(group.methods, name="method"))


def _header(group: Group) -> str:
    bad = sum(n for c in group.counts.values() for s, n in c.items() if s != OK)
    header = (
        f"{group.label}: {len(group.rows)} cells ({bad} not ok), {group.seeds} seed(s), "
        "methods x truncation K"
    )
    if REFERENCE not in group.methods:
        header += f"; no {REFERENCE} cells in this group, so no cost ratios to {REFERENCE}"
    return header


def _sections(group: Group) -> list[tuple[str, Table | None]]:
    return [("cells (statuses other than ok)", None), *[(t.title, t) for t in group.tables]]


def render_text(board: Sequence[Group]) -> str:
    blocks = [LEGEND + MARKS["text"] + "."]
    for group in board:
        text = [f"== {_header(group)} =="]
        for title, table in _sections(group):
            text.append(f"-- {title}\n{_grid(group, table, '{} *').to_string()}")
        blocks.append("\n".join(text))
    return "\n\n".join(blocks) + "\n"


def _markdown_table(grid: pd.DataFrame) -> str:
    header = ["method", *grid.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, values in grid.iterrows():
        lines.append("| " + " | ".join([str(method), *values.tolist()]) + " |")
    return "\n".join(lines)


def render_markdown(board: Sequence[Group]) -> str:
    blocks = [f"_{LEGEND}{MARKS['markdown']}._"]
    for group in board:
        blocks.append(f"## {_header(group)}")
        for title, table in _sections(group):
            blocks.append(f"**{title}**\n\n{_markdown_table(_grid(group, table, '**{}**'))}")
    return "\n\n".join(blocks) + "\n"


def legend_html() -> str:
    return f'<p class="legend">{html.escape(LEGEND + MARKS["html"])}.</p>'


def render_html_fragment(board: Sequence[Group], level: int = 2, legend: bool = True) -> str:
    """The tables as HTML (no document around them), for the report and ``--format html``."""
    parts = [legend_html()] if legend else []
    for group in board:
        parts.append(f"<h{level}>{html.escape(_header(group))}</h{level}>")
        for title, table in _sections(group):
            grid = _grid(group, table, "\x00{}\x01")
            rows = []
            for method, values in grid.iterrows():
                cells = "".join(
                    "<td>"
                    + html.escape(v)
                    .replace("\x00", '<strong class="best">')
                    .replace("\x01", "</strong>")
                    + "</td>"
                    for v in values
                )
                rows.append(f"<tr><th>{html.escape(str(method))}</th>{cells}</tr>")
            head = "".join(f"<th>{html.escape(c)}</th>" for c in ["method", *grid.columns])
            parts.append(
                f'<table class="board"><caption>{html.escape(title)}</caption>'
                f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            )
    return "\n".join(parts)


STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 80em; color: #222; }
table.board { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
table.board caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
table.board th, table.board td { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }
table.board th { background: #f0f0f0; }
strong.best { color: #05610f; }
p.legend { font-size: 0.85em; color: #555; }
img { max-width: 100%; height: auto; }
"""


def html_document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<title>{html.escape(title)}</title>\n<link rel="icon" href="data:,">\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def render_csv(board: Sequence[Group]) -> str:
    """One row per group, metric, method and K: the figures unformatted."""
    records = []
    for group in board:
        for table in group.tables:
            for (method, k), agg in table.cells.items():
                counts = group.counts.get((method, k), Counter())
                records.append(
                    {
                        "group": group.label,
                        "task": group.task,
                        "metric": table.metric.key,
                        "method": method,
                        "truncation": k,
                        "mean": agg.mean * (100 if agg.kind == "wilson" else 1),
                        "ci_low": agg.low * (100 if agg.kind == "wilson" else 1),
                        "ci_high": agg.high * (100 if agg.kind == "wilson" else 1),
                        "interval": agg.kind,
                        "n": agg.n,
                        "cells": agg.cells,
                        "not_ok": sum(n for s, n in counts.items() if s != OK),
                        "best": (method, k) in table.best,
                        "unit": table.unit,
                    }
                )
    buffer = io.StringIO()
    pd.DataFrame(records).to_csv(buffer, index=False)
    return buffer.getvalue()


def render(frame: pd.DataFrame, fmt: str = "text", metrics: Sequence[Metric] | None = None) -> str:
    """The leaderboard of ``frame`` in one of :data:`FORMATS`."""
    board = build(frame, metrics)
    if fmt == "text":
        return render_text(board)
    if fmt == "markdown":
        return render_markdown(board)
    if fmt == "html":
        return html_document("rbpbench leaderboard", render_html_fragment(board, level=2))
    if fmt == "csv":
        return render_csv(board)
    raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
